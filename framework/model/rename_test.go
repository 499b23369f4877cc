package model

import (
	"context"
	"errors"
	"testing"
)

func TestRenameVDisk(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	a, err := s.ReserveVDisk(ctx, "a", "id-a", "n1", 1, VDiskReady)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReserveVDisk(ctx, "b", "id-b", "n1", 1, VDiskReady); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from, to string
		want     error
	}{
		{"a", "b", ErrExists},
		{"nope", "c", ErrNotFound},
		{"a", "c", nil},
	} {
		if err := s.RenameVDisk(ctx, tc.from, tc.to); !errors.Is(err, tc.want) {
			t.Fatalf("rename %s to %s: %v, want %v", tc.from, tc.to, err, tc.want)
		}
	}
	if _, err := s.VDisk(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old name: %v", err)
	}
	c, err := s.VDisk(ctx, "c")
	if err != nil || c.ID != a.ID || c.Name != "c" || c.Owner != a.Owner {
		t.Fatalf("renamed record %+v %v", c, err)
	}
}
