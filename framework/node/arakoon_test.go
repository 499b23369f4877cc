package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/internal/freeport"

	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/ec"
)

// freeAddr returns a 127.0.0.1 address that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	a, err := freeport.Addrs(1)
	if err != nil {
		t.Fatal(err)
	}
	return a[0]
}

// startTestArakoonKV starts the embedded 1-node arakoon of `ovs up` (TLS,
// its own secret) and returns the backend's KV store on it.
func startTestArakoonKV(t testing.TB) BackendKV {
	t.Helper()
	dir := t.TempDir()
	sec, err := secret.Ensure(dir)
	if err != nil {
		t.Fatal(err)
	}
	ara, err := StartEmbeddedArakoon(filepath.Join(dir, "arakoon"), freeAddr(t), freeAddr(t), sec,
		filepath.Join(dir, secret.FileName), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ara.Close() })
	return BackendKV{ara.Client}
}

// The guard of BackendKV.GuardedTestAndSet on a real arakoon: one
// sequence asserting the owner record and the key.
func TestArakoonKVGuardedTestAndSet(t *testing.T) {
	kv := startTestArakoonKV(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kv.Set(ctx, "ovs/owner/7", []byte("nodeA/1")); err != nil {
		t.Fatal(err)
	}
	mine := scos.Fence{Key: "ovs/owner/7", Value: []byte("nodeA/1")}
	stale := scos.Fence{Key: "ovs/owner/7", Value: []byte("nodeA/0")}
	absent := scos.Fence{Key: "ovs/owner/none"}
	bytesOf := func(s string) []byte {
		if s == "" {
			return nil
		}
		return []byte(s)
	}
	for _, c := range []struct {
		name             string
		guard            scos.Fence
		expected, wanted string // "" = nil
		wantErr          error
		after            string // what the key holds after; "" = absent
	}{
		{"create under the fence", mine, "", "1", nil, "1"},
		{"replace under the fence", mine, "1", "2", nil, "2"},
		{"key conflict", mine, "1", "3", ec.ErrKVConflict, "2"},
		{"create conflict", mine, "", "3", ec.ErrKVConflict, "2"},
		{"stale guard", stale, "2", "4", scos.ErrFenced, "2"},
		{"stale guard and key conflict: fenced wins", stale, "1", "4", scos.ErrFenced, "2"},
		{"guard asserting absence", absent, "2", "5", nil, "5"},
		{"stale delete", stale, "5", "", scos.ErrFenced, "5"},
		{"delete conflict", mine, "4", "", ec.ErrKVConflict, "5"},
		{"delete under the fence", mine, "5", "", nil, ""},
		{"absent stays absent", mine, "", "", nil, ""},
		{"absent stays absent, fenced", stale, "", "", scos.ErrFenced, ""},
	} {
		err := kv.GuardedTestAndSet(ctx, c.guard, "obj/vd-7/sco", bytesOf(c.expected), bytesOf(c.wanted))
		if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.wantErr)
		}
		if errors.Is(err, scos.ErrFenced) && errors.Is(err, ec.ErrKVConflict) {
			t.Fatalf("%s: %v is both fenced and a conflict", c.name, err)
		}
		got, err := kv.Get(ctx, "obj/vd-7/sco")
		if c.after == "" && !errors.Is(err, ec.ErrKeyNotFound) || c.after != "" && string(got) != c.after {
			t.Fatalf("%s: key holds %q, %v; want %q", c.name, got, err, c.after)
		}
	}
	if v, err := kv.Get(ctx, "ovs/owner/7"); err != nil || string(v) != "nodeA/1" {
		t.Fatalf("the owner record changed: %q, %v", v, err)
	}
}

// The cost of a fence on a manifest commit over arakoon: a sequence of
// two asserts and a set instead of a test-and-set, one raft round either
// way.
func BenchmarkArakoonKVTestAndSet(b *testing.B) {
	kv := startTestArakoonKV(b)
	ctx := context.Background()
	if err := kv.Set(ctx, "ovs/owner/1", []byte("n0/1")); err != nil {
		b.Fatal(err)
	}
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
