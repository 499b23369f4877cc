package memdev

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCompareAndWriteRace: of callers racing with the same compare
// buffer, exactly one writes.
func TestCompareAndWriteRace(t *testing.T) {
	ctx := context.Background()
	s := New(1 << 20)
	cur := make([]byte, 512)
	for round := range 50 {
		var wins atomic.Int32
		var wg sync.WaitGroup
		for g := range 8 {
			data := bytes.Repeat([]byte{byte(round*8 + g + 1)}, 512)
			wg.Add(1)
			go func() {
				defer wg.Done()
				i, err := s.CompareAndWrite(ctx, PageSize-256, cur, data, false)
				switch {
				case err != nil:
					t.Error(err)
				case i == -1:
					wins.Add(1)
				case i != 0:
					t.Errorf("miscompare at %d, want 0", i)
				}
			}()
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d winners", round, n)
		}
		s.Read(cur, PageSize-256)
	}
}

func TestCompareAndWriteErrors(t *testing.T) {
	ctx := context.Background()
	s := New(PageSize)
	for _, tc := range []struct {
		name      string
		off       int64
		cmp, data int
	}{
		{"past the end", PageSize - 100, 512, 512},
		{"negative offset", -1, 512, 512},
		{"lengths differ", 0, 512, 100},
	} {
		if _, err := s.CompareAndWrite(ctx, tc.off, make([]byte, tc.cmp), make([]byte, tc.data), false); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	if s.Page(0) != nil {
		t.Fatal("a refused compare and write allocated a page")
	}
}
