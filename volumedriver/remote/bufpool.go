package remote

import (
	"math/bits"
	"sync"
)

const (
	minBufShift = 12 // smallest pooled buffer: 4 KiB
	maxBufShift = 25 // largest pooled buffer: MaxData (32 MiB)
)

// bufPool hands out payload buffers in power-of-two size classes so that
// the data path does not allocate. Buffers are *[]byte so that Put does not
// allocate.
type bufPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n; its content is undefined.
func (p *bufPool) get(n int) *[]byte {
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

// put gives a buffer back; nil is ignored.
func (p *bufPool) put(b *[]byte) {
	if b == nil {
		return
	}
	c := bufClass(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}

// inflightLimit bounds the requests of one connection in flight, in number
// and in payload bytes. Only the connection's reader acquires.
type inflightLimit struct {
	mu       sync.Mutex
	cond     sync.Cond
	n        int
	bytes    int64
	maxN     int
	maxBytes int64
}

func newInflightLimit(maxN int, maxBytes int64) *inflightLimit {
	l := &inflightLimit{maxN: maxN, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

// acquire waits for room for one request with size payload bytes. A request
// larger than the whole byte budget passes when it is alone.
func (l *inflightLimit) acquire(size int64) {
	l.mu.Lock()
	for l.n >= l.maxN || (l.n > 0 && l.bytes+size > l.maxBytes) {
		l.cond.Wait()
	}
	l.n++
	l.bytes += size
	l.mu.Unlock()
}

func (l *inflightLimit) release(size int64) {
	l.mu.Lock()
	l.n--
	l.bytes -= size
	l.mu.Unlock()
	l.cond.Signal()
}
