package bufpool

import "testing"

func TestPool(t *testing.T) {
	var p Pool
	for _, tc := range []struct {
		n       int
		wantCap int // 0: not pooled, exactly n
	}{
		{0, 64 << 10},
		{1, 64 << 10},
		{64 << 10, 64 << 10},
		{64<<10 + 1, 128 << 10},
		{1 << 20, 1 << 20},
		{3 << 20, 4 << 20},
		{16 << 20, 16 << 20},
		{16<<20 + 1, 0},
	} {
		b := p.Get(tc.n)
		if len(*b) != tc.n {
			t.Errorf("Get(%d): len %d", tc.n, len(*b))
		}
		want := tc.wantCap
		if want == 0 {
			want = tc.n
		}
		if cap(*b) != want {
			t.Errorf("Get(%d): cap %d, want %d", tc.n, cap(*b), want)
		}
		p.Put(b)
		// A recycled buffer comes back at the asked length.
		if b2 := p.Get(tc.n); len(*b2) != tc.n {
			t.Errorf("Get(%d) after put: len %d", tc.n, len(*b2))
		}
	}
	// A foreign buffer of an odd capacity is not taken in.
	odd := make([]byte, 100<<10)
	p.Put(&odd)
	if b := p.Get(100 << 10); cap(*b) != 128<<10 {
		t.Errorf("odd buffer reused: cap %d", cap(*b))
	}
}
