// Package bufpool recycles the large buffers of the write path, the
// fragment bodies an ASD reads: a put of a 4 MiB SCO under the default
// 4+2 policy brings six 1 MiB bodies; a fresh allocation for each costs a
// zeroing pass and, once the Go scavenger has returned the memory, page
// faults on every page (expensive in a VM), all per byte written.
package bufpool

import "sync"

// Pool keeps buffers per power-of-two size class up to 16 MiB; larger
// ones are allocated and dropped. The zero Pool is ready to use.
type Pool struct {
	classes [bodyClasses]sync.Pool
}

const (
	minPooledShift = 16 // 64 KiB
	maxPooledShift = 24 // 16 MiB
	bodyClasses    = maxPooledShift - minPooledShift + 1
)

// bodyClass is the size class that holds n bytes, or -1 if n is not pooled.
func bodyClass(n int) int {
	if n > 1<<maxPooledShift {
		return -1
	}
	c := 0
	for 1<<(minPooledShift+c) < n {
		c++
	}
	return c
}

// Get returns a buffer of length n and a capacity of n rounded up to a
// power of two (at least 64 KiB); its contents are undefined.
func (p *Pool) Get(n int) *[]byte {
	c := bodyClass(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(minPooledShift+c))
	return &b
}

// Put gives a buffer from Get back; nobody may use it afterwards.
func (p *Pool) Put(b *[]byte) {
	c := bodyClass(cap(*b))
	if c < 0 || cap(*b) != 1<<(minPooledShift+c) {
		return // not one of ours (an unpooled size)
	}
	p.classes[c].Put(b)
}
