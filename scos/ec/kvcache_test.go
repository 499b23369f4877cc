package ec

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/ovs-storage/ovs/scos"
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

// pausingKV lets a test hold a Get between reading the store and
// returning, as a slow network round trip would.
type pausingKV struct {
	KVStore
	read, resume chan struct{} // nil: no pause
}

func (p *pausingKV) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := p.KVStore.Get(ctx, key)
	if p.read != nil {
		p.read <- struct{}{}
		<-p.resume
	}
	return v, err
}

// A read that fetched a value before a write replaced it must not cache
// it after the write: the cache would serve the old value for good.
func TestCachingKVReadRacingWrite(t *testing.T) {
	ctx := context.Background()
	inner, err := OpenBoltKV(filepath.Join(t.TempDir(), "kv.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	slow := &pausingKV{KVStore: inner}
	c := newCachingKV(slow, 1<<20, "obj/")
	for _, write := range []struct {
		name string
		do   func() error
	}{
		{"set", func() error { return c.Set(ctx, "obj/a", []byte("new")) }},
		{"test-and-set", func() error { return c.TestAndSet(ctx, "obj/a", []byte("old"), []byte("new")) }},
		{"guarded", func() error {
			return c.GuardedTestAndSet(ctx, scos.Fence{Key: "owner"}, "obj/a", []byte("old"), []byte("new"))
		}},
		{"drop", func() error {
			if err := inner.Set(ctx, "obj/a", []byte("new")); err != nil {
				return err
			}
			c.drop(func(string) bool { return true })
			return nil
		}},
	} {
		if err := c.Set(ctx, "obj/a", []byte("old")); err != nil {
			t.Fatal(err)
		}
		c.forget("obj/a")
		slow.read, slow.resume = make(chan struct{}), make(chan struct{})
		got := make(chan []byte)
		go func() {
			v, _ := c.Get(ctx, "obj/a")
			got <- v
		}()
		<-slow.read // the Get holds "old"
		slow.read = nil
		if err := write.do(); err != nil {
			t.Fatalf("%s: %v", write.name, err)
		}
		close(slow.resume)
		if v := <-got; string(v) != "old" {
			t.Fatalf("%s: the racing read returned %q", write.name, v)
		}
		if v, err := c.Get(ctx, "obj/a"); err != nil || string(v) != "new" {
			t.Fatalf("%s: after the write the cache serves %q, %v; want new", write.name, v, err)
		}
	}
}
