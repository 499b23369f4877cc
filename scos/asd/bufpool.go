package asd

import "sync"

// bodyPool recycles the buffers fragment puts are read into. A put of a
// 4 MiB SCO under the default 4+2 policy brings six 1 MiB bodies; a fresh
// allocation for each costs a zeroing pass and, once the Go scavenger has
// returned the memory, page faults on every page (expensive in a VM), all
// per byte written. Buffers are kept per power-of-two size class up to
// maxPooledBody; larger bodies are allocated as before.
type bodyPool struct {
	classes [bodyClasses]sync.Pool
}

const (
	minPooledShift = 16 // 64 KiB
	maxPooledShift = 24 // 16 MiB
	bodyClasses    = maxPooledShift - minPooledShift + 1
)

// class is the size class that holds n bytes, or -1 if n is not pooled.
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

// get returns a buffer of length n; its contents are undefined.
func (p *bodyPool) get(n int) *[]byte {
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

// put gives a buffer from get back; nobody may use it afterwards.
func (p *bodyPool) put(b *[]byte) {
	c := bodyClass(cap(*b))
	if c < 0 || cap(*b) != 1<<(minPooledShift+c) {
		return // not one of ours (an unpooled size)
	}
	p.classes[c].Put(b)
}
