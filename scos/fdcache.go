package scos

import (
	"container/list"
	"os"
	"strings"
	"sync"
)

// FileCache keeps up to max files open for reading, least recently used
// evicted first. A handle is reference counted: eviction or invalidation
// closes it only once no reader holds it, so a read never races a close.
// Bounding it bounds the file descriptors that reads of many objects
// (backend objects, SCOs in a volume's write buffer) keep open.
type FileCache struct {
	mu    sync.Mutex
	max   int
	files map[string]*CachedFile
	lru   list.List // of *CachedFile, front = most recent
}

// CachedFile is an open file handed out by a FileCache; give it back
// with Release.
type CachedFile struct {
	path    string
	f       *os.File
	refs    int
	dropped bool
	elem    *list.Element
}

// NewFileCache returns a cache that keeps at most max files open.
func NewFileCache(max int) *FileCache {
	return &FileCache{max: max, files: map[string]*CachedFile{}}
}

// ReadAt reads from the cached file.
func (cf *CachedFile) ReadAt(p []byte, off int64) (int, error) { return cf.f.ReadAt(p, off) }

// Acquire opens path for reading, or takes the handle already open.
func (c *FileCache) Acquire(path string) (*CachedFile, error) {
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
	cf := &CachedFile{path: path, f: f, refs: 1}
	cf.elem = c.lru.PushFront(cf)
	c.files[path] = cf
	for c.lru.Len() > c.max {
		c.dropLocked(c.lru.Back().Value.(*CachedFile))
	}
	return cf, nil
}

// Release gives back a handle from Acquire.
func (c *FileCache) Release(cf *CachedFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cf.refs--
	if cf.dropped && cf.refs == 0 {
		cf.f.Close()
	}
}

// Invalidate forgets path: the file was replaced or deleted.
func (c *FileCache) Invalidate(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cf, ok := c.files[path]; ok {
		c.dropLocked(cf)
	}
}

// InvalidatePrefix forgets every path that starts with prefix.
func (c *FileCache) InvalidatePrefix(prefix string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, cf := range c.files {
		if strings.HasPrefix(p, prefix) {
			c.dropLocked(cf)
		}
	}
}

func (c *FileCache) dropLocked(cf *CachedFile) {
	delete(c.files, cf.path)
	c.lru.Remove(cf.elem)
	cf.dropped = true
	if cf.refs == 0 {
		cf.f.Close()
	}
}
