package ec

import (
	"container/list"
	"sync"
)

// readAhead turns a sequential run of small ranged reads of one object
// (the volume driver reads a cold 1 MiB extent cluster by cluster) into
// one big read per window: after readAheadAfter reads that each start
// where the previous ended, a read fetches the window from its offset
// (one batched request per ASD) and keeps it; the next reads of the run
// are served from memory. It is bounded: readAheadObjects objects are
// tracked, and at most readAheadBuffers windows kept (least recently used
// first out). A window is tied to the object's id, so an object replaced
// under the same name is never served from an old window.
type readAhead struct {
	window int64
	mu     sync.Mutex
	lru    *list.List // of *raEntry, most recent first
	byKey  map[string]*list.Element
	bufs   int // entries holding a window
}

const (
	defaultReadAhead = 1 << 20
	readAheadAfter   = 2
	readAheadObjects = 256
	readAheadBuffers = 16
)

type raEntry struct {
	key    string
	id     [16]byte
	next   int64 // where the run continues
	run    int   // sequential reads so far
	buf    []byte
	bufOff int64
}

func newReadAhead(window int64) *readAhead {
	return &readAhead{window: window, lru: list.New(), byKey: map[string]*list.Element{}}
}

// get serves [off, off+len(p)) from a kept window, and reports whether it
// did. It also records the read for the detection of runs.
func (r *readAhead) get(key string, id [16]byte, off int64, p []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entry(key, id)
	if off == e.next {
		e.run++
	} else {
		e.run = 0
	}
	e.next = off + int64(len(p))
	if e.buf != nil && off >= e.bufOff && off+int64(len(p)) <= e.bufOff+int64(len(e.buf)) {
		copy(p, e.buf[off-e.bufOff:])
		return true
	}
	return false
}

// want returns the window [off, end) to fetch for a read at off of n
// bytes of an object of size bytes, or end <= off when the read is not
// part of a run (or as big as a window).
func (r *readAhead) want(key string, id [16]byte, off, n, size int64) int64 {
	if r.window <= 0 || n >= r.window {
		return off
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entry(key, id)
	if e.run < readAheadAfter {
		return off
	}
	return min(size, off+r.window)
}

// put keeps a fetched window.
func (r *readAhead) put(key string, id [16]byte, off int64, buf []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entry(key, id)
	if e.buf == nil {
		r.bufs++
	}
	e.buf, e.bufOff = buf, off
	// Drop the windows of the least recently used objects past the bound.
	for el := r.lru.Back(); r.bufs > readAheadBuffers && el != nil; el = el.Prev() {
		if o := el.Value.(*raEntry); o != e && o.buf != nil {
			o.buf = nil
			r.bufs--
		}
	}
}

// entry returns the entry of key for object id (a fresh one if the object
// changed), most recently used; r.mu is held.
func (r *readAhead) entry(key string, id [16]byte) *raEntry {
	if el := r.byKey[key]; el != nil {
		e := el.Value.(*raEntry)
		r.lru.MoveToFront(el)
		if e.id != id {
			if e.buf != nil {
				r.bufs--
			}
			*e = raEntry{key: key, id: id}
		}
		return e
	}
	e := &raEntry{key: key, id: id}
	r.byKey[key] = r.lru.PushFront(e)
	if r.lru.Len() > readAheadObjects {
		old := r.lru.Remove(r.lru.Back()).(*raEntry)
		delete(r.byKey, old.key)
		if old.buf != nil {
			r.bufs--
		}
	}
	return e
}
