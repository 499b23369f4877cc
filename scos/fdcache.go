package scos

import (
	"container/list"
	"os"
	"strings"
	"sync"
)

// fdCache keeps up to max files open for reading, least recently used
// evicted first. A handle is reference counted: eviction or invalidation
// closes it only once no reader holds it, so a read never races a close.
type fdCache struct {
	mu    sync.Mutex
	max   int
	files map[string]*cachedFile
	lru   list.List // of *cachedFile, front = most recent
}

type cachedFile struct {
	path    string
	f       *os.File
	refs    int
	dropped bool
	elem    *list.Element
}

func newFDCache(max int) fdCache {
	return fdCache{max: max, files: map[string]*cachedFile{}}
}

func (c *fdCache) acquire(path string) (*cachedFile, error) {
	c.mu.Lock()
	if cf, ok := c.files[path]; ok {
		cf.refs++
		c.lru.MoveToFront(cf.elem)
		c.mu.Unlock()
		return cf, nil
	}
	c.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cf, ok := c.files[path]; ok { // opened meanwhile by another reader
		f.Close()
		cf.refs++
		c.lru.MoveToFront(cf.elem)
		return cf, nil
	}
	cf := &cachedFile{path: path, f: f, refs: 1}
	cf.elem = c.lru.PushFront(cf)
	c.files[path] = cf
	for c.lru.Len() > c.max {
		c.dropLocked(c.lru.Back().Value.(*cachedFile))
	}
	return cf, nil
}

func (c *fdCache) release(cf *cachedFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cf.refs--
	if cf.dropped && cf.refs == 0 {
		cf.f.Close()
	}
}

// invalidate forgets path: the object was replaced or deleted.
func (c *fdCache) invalidate(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cf, ok := c.files[path]; ok {
		c.dropLocked(cf)
	}
}

func (c *fdCache) invalidatePrefix(prefix string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, cf := range c.files {
		if strings.HasPrefix(p, prefix) {
			c.dropLocked(cf)
		}
	}
}

func (c *fdCache) dropLocked(cf *cachedFile) {
	delete(c.files, cf.path)
	c.lru.Remove(cf.elem)
	cf.dropped = true
	if cf.refs == 0 {
		cf.f.Close()
	}
}
