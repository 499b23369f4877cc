package asd

import "sync"

// bodyPool recycles the buffers fragment puts are read into. A put of a
// 4 MiB SCO under the default 4+2 policy brings six 1 MiB bodies; a fresh
// allocation for each costs a zeroing pass and, once the Go scavenger has
// returned the memory, page faults on every page (expensive in a VM), all
// per byte written. Buffers are kept per power-of-two size class up to
// 16 MiB (maxPooledShift); larger bodies are allocated as before. Every pooled buffer
// has bodySlack bytes past its power of two: a put's buffer holds the
// fragment header before the body and is aligned for O_DIRECT, and a
// 1 MiB body would otherwise take a 2 MiB buffer.
type bodyPool struct {
	classes [bodyClasses]sync.Pool
}

const (
	minPooledShift = 16 // 64 KiB
	maxPooledShift = 24 // 16 MiB
	bodyClasses    = maxPooledShift - minPooledShift + 1
	// bodySlack covers the largest fragment header of a pooled body (16
	// MiB in 4 KiB blocks: 16 KiB of checksums, key and tag) and twice
	// fsutil.DirectAlign.
	bodySlack = 32 << 10
)

func classCap(c int) int { return 1<<(minPooledShift+c) + bodySlack }

// class is the size class that holds n bytes, or -1 if n is not pooled.
func bodyClass(n int) int {
	if n > classCap(bodyClasses-1) {
		return -1
	}
	c := 0
	for classCap(c) < n {
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
	b := make([]byte, n, classCap(c))
	return &b
}

// put gives a buffer from get back; nobody may use it afterwards.
func (p *bodyPool) put(b *[]byte) {
	c := bodyClass(cap(*b))
	if c < 0 || cap(*b) != classCap(c) {
		return // not one of ours (an unpooled size)
	}
	p.classes[c].Put(b)
}
