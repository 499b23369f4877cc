package asd

import "testing"

func TestBodyPool(t *testing.T) {
	var p bodyPool
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
		b := p.get(tc.n)
		if len(*b) != tc.n {
			t.Errorf("get(%d): len %d", tc.n, len(*b))
		}
		want := tc.wantCap
		if want == 0 {
			want = tc.n
		}
		if cap(*b) != want {
			t.Errorf("get(%d): cap %d, want %d", tc.n, cap(*b), want)
		}
		p.put(b)
		// A recycled buffer comes back at the asked length.
		if b2 := p.get(tc.n); len(*b2) != tc.n {
			t.Errorf("get(%d) after put: len %d", tc.n, len(*b2))
		}
	}
	// A foreign buffer of an odd capacity is not taken in.
	odd := make([]byte, 100<<10)
	p.put(&odd)
	if b := p.get(100 << 10); cap(*b) != 128<<10 {
		t.Errorf("odd buffer reused: cap %d", cap(*b))
	}
}
