package remote

import "fmt"

// devEntry is a device the connection opened, shared by its requests for
// that vdisk.
type devEntry struct {
	name    string
	ready   chan struct{} // closed when the open finished
	dev     Device
	release func()
	err     error
	refs    int  // requests using it; guarded by sconn.devMu
	evicted bool // out of the map: release when refs drops to 0
}

// acquire returns the connection's device for name, opening it on first
// use. Requests for a name being opened wait for that open. The caller
// calls unref when done.
func (c *sconn) acquire(name []byte) (*devEntry, error) {
	c.devMu.Lock()
	e := c.devs[string(name)]
	if e != nil {
		e.refs++
		c.devMu.Unlock()
		<-e.ready
		if e.err != nil {
			c.unref(e)
			return nil, e.err
		}
		return e, nil
	}
	e = &devEntry{name: string(name), ready: make(chan struct{}), refs: 1}
	c.devs[e.name] = e
	c.devMu.Unlock()

	dev, release, err := c.srv.target.OpenDevice(c.ctx, e.name)
	if err == nil && dev == nil {
		err = fmt.Errorf("remote: target returned no device for %q", e.name)
	}
	if err != nil {
		// Not cached: the next request tries again.
		e.err = fmt.Errorf("open vdisk %q: %w", e.name, err)
		c.devMu.Lock()
		if c.devs[e.name] == e {
			delete(c.devs, e.name)
		}
		e.evicted = true
		c.devMu.Unlock()
		if release != nil {
			release()
		}
		close(e.ready)
		c.unref(e)
		return nil, e.err
	}
	e.dev, e.release = dev, release
	close(e.ready)
	return e, nil
}

// evict drops e from the cache (its vdisk left this node); it is released
// once the requests using it are done.
func (c *sconn) evict(e *devEntry) {
	c.devMu.Lock()
	if c.devs[e.name] == e {
		delete(c.devs, e.name)
	}
	e.evicted = true
	c.devMu.Unlock()
}

func (c *sconn) unref(e *devEntry) {
	c.devMu.Lock()
	e.refs--
	last := e.refs == 0 && e.evicted
	c.devMu.Unlock()
	if last && e.release != nil {
		e.release()
	}
}

// releaseAll releases every cached device (the connection ended, so no
// request holds one).
func (c *sconn) releaseAll() {
	c.devMu.Lock()
	var rel []func()
	for name, e := range c.devs {
		delete(c.devs, name)
		e.evicted = true
		if e.refs == 0 && e.release != nil {
			rel = append(rel, e.release)
		}
	}
	c.devMu.Unlock()
	for _, r := range rel {
		r()
	}
}
