package nbd

import (
	"testing"
	"time"
)

func TestBufPool(t *testing.T) {
	var p bufPool
	for _, tc := range []struct{ n, cap int }{
		{0, 4096}, {1, 4096}, {4096, 4096}, {4097, 8192}, {1 << 20, 1 << 20}, {32<<20 - 1, 32 << 20},
	} {
		b := p.get(tc.n)
		if len(*b) != tc.n || cap(*b) != tc.cap {
			t.Errorf("get(%d): len %d cap %d, want cap %d", tc.n, len(*b), cap(*b), tc.cap)
		}
		p.put(b)
	}
	big := p.get(1<<maxBufShift + 1)
	if len(*big) != 1<<maxBufShift+1 {
		t.Fatalf("unpooled buffer of %d bytes", len(*big))
	}
	p.put(big) // dropped, not pooled
	p.put(nil)
}

func TestInflightLimitBytes(t *testing.T) {
	l := newInflightLimit(10, 100)
	l.acquire(60)
	acquired := make(chan struct{})
	go func() {
		l.acquire(60) // over the byte budget: waits
		close(acquired)
	}()
	select {
	case <-acquired:
		t.Fatal("byte budget not enforced")
	case <-time.After(20 * time.Millisecond):
	}
	l.release(60)
	<-acquired
	l.release(60)
	// A request larger than the whole budget passes when alone.
	l.acquire(1000)
	l.release(1000)
}
