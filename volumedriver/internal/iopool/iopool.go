// Package iopool holds what the volume driver's wire servers (NBD and
// node-to-node forwarding) share on their data path: pooled payload
// buffers, a per-connection bound on requests in flight, the workers that
// serve a connection's requests and the writer that batches its replies.
package iopool

import (
	"math/bits"
	"sync"
)

const (
	minBufShift = 12 // smallest pooled buffer: 4 KiB
	maxBufShift = 26 // largest pooled buffer: 64 MiB
)

// BufPool hands out payload buffers in power-of-two size classes so that
// the hot path does not allocate. Buffers are *[]byte to keep sync.Pool
// from allocating on Put.
type BufPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// Get returns a buffer of length n. Its content is undefined.
func (p *BufPool) Get(n int) *[]byte {
	c := bufClass(n)
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	if v := p.classes[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// Put gives a buffer back; nil is ignored.
func (p *BufPool) Put(b *[]byte) {
	if b == nil {
		return
	}
	c := bufClass(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}

// InflightLimit bounds the requests of one connection that are in flight,
// both in number and in payload bytes. Only the connection's reader
// acquires; handlers release.
type InflightLimit struct {
	mu       sync.Mutex
	cond     sync.Cond
	n        int
	bytes    int64
	maxN     int
	maxBytes int64
}

func NewInflightLimit(maxN int, maxBytes int64) *InflightLimit {
	l := &InflightLimit{maxN: maxN, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

// Acquire waits for room for one request with a payload of size bytes. A
// request larger than the whole byte budget is let through when it is alone.
func (l *InflightLimit) Acquire(size int64) {
	l.mu.Lock()
	for l.n >= l.maxN || (l.n > 0 && l.bytes+size > l.maxBytes) {
		l.cond.Wait()
	}
	l.n++
	l.bytes += size
	l.mu.Unlock()
}

func (l *InflightLimit) Release(size int64) {
	l.mu.Lock()
	l.n--
	l.bytes -= size
	l.mu.Unlock()
	l.cond.Signal()
}
