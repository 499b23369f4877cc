package scos

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

func TestCachingKV(t *testing.T) {
	ctx := context.Background()
	inner, err := OpenBoltKV(filepath.Join(t.TempDir(), "kv.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	c := newCachingKV(inner, 200, "obj/")
	for _, step := range []struct {
		name string
		do   func() error
		key  string
		want string // "" = absent
	}{
		{"set", func() error { return c.Set(ctx, "obj/a", []byte("1")) }, "obj/a", "1"},
		{"tas", func() error { return c.TestAndSet(ctx, "obj/a", []byte("1"), []byte("2")) }, "obj/a", "2"},
		{"tas conflict", func() error {
			if err := c.TestAndSet(ctx, "obj/a", []byte("1"), []byte("3")); !errors.Is(err, ErrKVConflict) {
				return errors.New("no conflict")
			}
			return nil
		}, "obj/a", "2"},
		{"tas delete", func() error { return c.TestAndSet(ctx, "obj/a", []byte("2"), nil) }, "obj/a", ""},
		{"uncached prefix", func() error { return c.Set(ctx, "other", []byte("x")) }, "other", "x"},
		{"delete", func() error { c.Set(ctx, "obj/b", []byte("b")); return c.Delete(ctx, "obj/b") }, "obj/b", ""},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got, err := c.Get(ctx, step.key)
		if step.want == "" {
			if !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("%s: %s = %q, %v; want absent", step.name, step.key, got, err)
			}
			continue
		}
		if err != nil || string(got) != step.want {
			t.Fatalf("%s: %s = %q, %v; want %q", step.name, step.key, got, err, step.want)
		}
		// What the cache says is what the store says.
		if direct, _ := inner.Get(ctx, step.key); string(direct) != step.want {
			t.Fatalf("%s: store holds %q", step.name, direct)
		}
	}
	// The byte bound holds.
	for i := 0; i < 100; i++ {
		c.Set(ctx, "obj/"+string(rune('a'+i%26))+string(rune('a'+i/26)), make([]byte, 20))
	}
	if c.bytes > 200 {
		t.Fatalf("cache holds %d bytes, bound 200", c.bytes)
	}
}
