package ec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ovs-storage/ovs/scos"
)

func TestBoltKV(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meta.db")
	kv, err := OpenBoltKV(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBoltKV(path); err == nil {
		t.Fatal("a second open of the same store succeeded")
	}
	if _, err := kv.Get(ctx, "a"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	steps := []struct {
		name          string
		key           string
		expected, val []byte
		wantErr       error
	}{
		{"create", "a", nil, []byte("1"), nil},
		{"create again", "a", nil, []byte("2"), ErrKVConflict},
		{"wrong expected", "a", []byte("x"), []byte("2"), ErrKVConflict},
		{"replace", "a", []byte("1"), []byte("2"), nil},
		{"empty value", "e", nil, []byte{}, nil},
		{"empty is present", "e", nil, []byte("x"), ErrKVConflict},
		{"delete with test", "e", []byte{}, nil, nil},
		{"delete absent", "e", nil, nil, nil},
	}
	for _, s := range steps {
		if err := kv.TestAndSet(ctx, s.key, s.expected, s.val); !errors.Is(err, s.wantErr) || (err == nil) != (s.wantErr == nil) {
			t.Fatalf("%s: %v, want %v", s.name, err, s.wantErr)
		}
	}
	if v, err := kv.Get(ctx, "a"); err != nil || string(v) != "2" {
		t.Fatalf("get a: %q %v", v, err)
	}
	for i := range 1200 {
		if err := kv.Set(ctx, fmt.Sprintf("p/%05d", i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	kv.Set(ctx, "p", []byte("not under p/"))
	kv.Set(ctx, "q/1", []byte("after"))
	n := 0
	err = kvRangeAll(ctx, kv, "p/", func(e KV) (bool, error) {
		if e.Key != fmt.Sprintf("p/%05d", n) {
			return false, fmt.Errorf("entry %d is %s", n, e.Key)
		}
		n++
		return true, nil
	})
	if err != nil || n != 1200 {
		t.Fatalf("range all: %d %v", n, err)
	}
	page, err := kv.Range(ctx, "p/", "p/01197", 10)
	if err != nil || len(page) != 2 || page[0].Key != "p/01198" {
		t.Fatalf("range after: %v %v", page, err)
	}
	if err := kv.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Close(); err != nil {
		t.Fatal(err)
	}
	kv, err = OpenBoltKV(path)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	if _, err := kv.Get(ctx, "a"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("deleted key back after reopen: %v", err)
	}
	if v, err := kv.Get(ctx, "p/00007"); err != nil || v[0] != 7 {
		t.Fatalf("reopen: %v %v", v, err)
	}
	// Concurrent test-and-set increments never lose an update.
	kv.Set(ctx, "ctr", []byte{0})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < 10; {
				cur, _ := kv.Get(ctx, "ctr")
				if kv.TestAndSet(ctx, "ctr", cur, []byte{cur[0] + 1}) == nil {
					done++
				}
			}
		}()
	}
	wg.Wait()
	if v, _ := kv.Get(ctx, "ctr"); v[0] != 80 {
		t.Fatalf("counter %d, want 80", v[0])
	}
}

// The cost of a fence on a manifest commit: one more lookup in the same
// bbolt transaction.
func BenchmarkBoltKVTestAndSet(b *testing.B) {
	ctx := context.Background()
	kv, err := OpenBoltKV(filepath.Join(b.TempDir(), "kv.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer kv.Close()
	kv.Set(ctx, "ovs/owner/1", []byte("n0/1"))
	guard := scos.Fence{Key: "ovs/owner/1", Value: []byte("n0/1")}
	manifest := make([]byte, 200)
	for _, guarded := range []bool{false, true} {
		b.Run(fmt.Sprintf("guarded=%v", guarded), func(b *testing.B) {
			kv.Delete(ctx, "obj/ns/x")
			var old []byte
			for i := 0; b.Loop(); i++ {
				manifest[0] = byte(i)
				var err error
				if guarded {
					err = kv.GuardedTestAndSet(ctx, guard, "obj/ns/x", old, manifest)
				} else {
					err = kv.TestAndSet(ctx, "obj/ns/x", old, manifest)
				}
				if err != nil {
					b.Fatal(err)
				}
				old = bytes.Clone(manifest)
			}
		})
	}
}
