package asd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
)

// fragCache keeps fragment files open with their decoded headers, so that
// a small read costs one stat and one pread instead of an open, a stat,
// two header reads, a header decode and a close (most of an ASD's time per
// 4 KiB read before it). Each use checks the path's inode, size, mtime and
// ctime with one stat: a fragment replaced by a put (a new inode), deleted,
// or changed in place behind the ASD's back (bit rot, tests) is reopened
// and its header decoded and checked again, never served from the cache.
//
// The ASD and the volume driver's direct reads of the ASDs of its host
// (localReader) each keep one.
type fragCache struct {
	dir, id string // the ASD's directory and id (for errors)
	mu      sync.Mutex
	max     int
	files   map[string]*openFrag
}

type openFrag struct {
	f     *os.File
	h     FragmentHeader
	id    fileID
	refs  int // users, plus one while in the cache
	cache *fragCache
}

// fileID is what tells a changed file from the one cached.
type fileID struct {
	ino, size    int64
	mtime, ctime syscall.Timespec
}

func statID(st *syscall.Stat_t) fileID {
	return fileID{ino: int64(st.Ino), size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
}

func newFragCache(dir, id string, max int) *fragCache {
	return &fragCache{dir: dir, id: id, max: max, files: map[string]*openFrag{}}
}

// acquire returns the open fragment key (release it when done).
func (c *fragCache) acquire(key string) (*openFrag, error) {
	path := FragmentPath(c.dir, key)
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		c.forget(key)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s on asd %s", ErrFragmentNotFound, key, c.id)
		}
		return nil, fmt.Errorf("asd %s: %s: %w", c.id, key, err)
	}
	id := statID(&st)
	c.mu.Lock()
	if of := c.files[key]; of != nil && of.id == id {
		of.refs++
		c.mu.Unlock()
		return of, nil
	}
	c.mu.Unlock()
	f, h, err := openFragment(c.dir, c.id, key)
	if err != nil {
		return nil, err
	}
	// The identity of what was opened (the path may have changed since
	// the stat above).
	var fst syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &fst); err != nil {
		f.Close()
		return nil, fmt.Errorf("asd %s: %s: %w", c.id, key, err)
	}
	of := &openFrag{f: f, h: h, id: statID(&fst), refs: 2, cache: c}
	c.mu.Lock()
	if old := c.files[key]; old != nil {
		old.unrefLocked()
	}
	if len(c.files) >= c.max {
		for k, v := range c.files { // a random victim: map order
			delete(c.files, k)
			v.unrefLocked()
			break
		}
	}
	c.files[key] = of
	c.mu.Unlock()
	return of, nil
}

func (c *fragCache) forget(key string) {
	c.mu.Lock()
	if of := c.files[key]; of != nil {
		delete(c.files, key)
		of.unrefLocked()
	}
	c.mu.Unlock()
}

func (c *fragCache) closeAll() {
	c.mu.Lock()
	for k, of := range c.files {
		delete(c.files, k)
		of.unrefLocked()
	}
	c.mu.Unlock()
}

func (of *openFrag) unrefLocked() {
	of.refs--
	if of.refs == 0 {
		of.f.Close()
	}
}

func (of *openFrag) release() {
	of.cache.mu.Lock()
	of.unrefLocked()
	of.cache.mu.Unlock()
}
