package iopool

import (
	"testing"
	"time"
)

func TestBufPool(t *testing.T) {
	var p BufPool
	for _, tc := range []struct{ n, cap int }{
		{0, 4096}, {1, 4096}, {4096, 4096}, {4097, 8192}, {1 << 20, 1 << 20}, {32<<20 - 1, 32 << 20},
	} {
		b := p.Get(tc.n)
		if len(*b) != tc.n || cap(*b) != tc.cap {
			t.Errorf("get(%d): len %d cap %d, want cap %d", tc.n, len(*b), cap(*b), tc.cap)
		}
		p.Put(b)
	}
	big := p.Get(1<<maxBufShift + 1)
	if len(*big) != 1<<maxBufShift+1 {
		t.Fatalf("unpooled buffer of %d bytes", len(*big))
	}
	p.Put(big) // dropped, not pooled
	p.Put(nil)
}

func TestInflightLimitBytes(t *testing.T) {
	l := NewInflightLimit(10, 100)
	l.Acquire(60)
	acquired := make(chan struct{})
	go func() {
		l.Acquire(60) // over the byte budget: waits
		close(acquired)
	}()
	select {
	case <-acquired:
		t.Fatal("byte budget not enforced")
	case <-time.After(20 * time.Millisecond):
	}
	l.Release(60)
	<-acquired
	l.Release(60)
	// A request larger than the whole budget passes when alone.
	l.Acquire(1000)
	l.Release(1000)
}
