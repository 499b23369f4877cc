package ec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
)

// The guard of GuardedTestAndSet, on BoltKV and through the cache.
func TestGuardedTestAndSet(t *testing.T) {
	ctx := context.Background()
	bolt, err := OpenBoltKV(filepath.Join(t.TempDir(), "kv.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	for _, kv := range []struct {
		name string
		kv   KVStore
	}{{"bolt", bolt}, {"cached", newCachingKV(bolt, 1<<20, "obj/")}} {
		t.Run(kv.name, func(t *testing.T) { testGuardedTestAndSet(t, ctx, kv.kv) })
	}
}

func testGuardedTestAndSet(t *testing.T, ctx context.Context, kv KVStore) {
	if err := kv.Set(ctx, "owner", []byte("a/1")); err != nil {
		t.Fatal(err)
	}
	kv.Delete(ctx, "obj/x")
	mine := scos.Fence{Key: "owner", Value: []byte("a/1")}
	stale := scos.Fence{Key: "owner", Value: []byte("a/0")}
	absent := scos.Fence{Key: "nobody", Value: nil}
	for _, c := range []struct {
		name             string
		guard            scos.Fence
		expected, wanted string // "" = nil
		wantErr          error
		after            string // what obj/x holds after; "" = absent
	}{
		{"create under the fence", mine, "", "1", nil, "1"},
		{"replace under the fence", mine, "1", "2", nil, "2"},
		{"key conflict", mine, "1", "3", ErrKVConflict, "2"},
		{"stale guard", stale, "2", "4", scos.ErrFenced, "2"},
		{"stale guard and key conflict: fenced wins", stale, "1", "4", scos.ErrFenced, "2"},
		{"guard asserting absence", absent, "2", "5", nil, "5"},
		{"stale delete", stale, "5", "", scos.ErrFenced, "5"},
		{"delete under the fence", mine, "5", "", nil, ""},
		{"absent stays absent", mine, "", "", nil, ""},
	} {
		err := kv.GuardedTestAndSet(ctx, c.guard, "obj/x", nilIfEmpty(c.expected), nilIfEmpty(c.wanted))
		if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.wantErr)
		}
		if errors.Is(err, scos.ErrFenced) && errors.Is(err, ErrKVConflict) {
			t.Fatalf("%s: %v is both fenced and a conflict", c.name, err)
		}
		got, err := kv.Get(ctx, "obj/x")
		if c.after == "" && !errors.Is(err, ErrKeyNotFound) || c.after != "" && string(got) != c.after {
			t.Fatalf("%s: obj/x = %q, %v; want %q", c.name, got, err, c.after)
		}
	}
	if v, _ := kv.Get(ctx, "owner"); string(v) != "a/1" {
		t.Fatalf("the guard's key changed: %q", v)
	}
}

func nilIfEmpty(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// fenceEnv is a Backend (the owner) and a second one over the same KV
// and ASDs (another node), with the owner record of namespace vd-7.
type fenceEnv struct {
	*ecEnv
	other *Backend
}

const (
	fenceNS  = "vd-7"
	fenceKey = "ovs/owner/7"
)

func newFenceEnv(t *testing.T, soleWriter bool) *fenceEnv {
	t.Helper()
	e := newECEnv(t, spreadNodes(3), Config{
		Presets: []Preset{{Name: "p21", Policies: []Policy{{2, 1, 3, 1}}}}, Preset: "p21",
		SoleWriter: soleWriter,
	})
	cfg := e.cfg
	cfg.SoleWriter = false
	other, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if err := e.kv.Set(context.Background(), fenceKey, []byte("nodeA/1")); err != nil {
		t.Fatal(err)
	}
	return &fenceEnv{ecEnv: e, other: other}
}

// takeOver is the new owner's epoch change.
func (e *fenceEnv) takeOver(value string) {
	e.t.Helper()
	if err := e.kv.Set(context.Background(), fenceKey, []byte(value)); err != nil {
		e.t.Fatal(err)
	}
}

// sees checks what every reader (owner and other node) finds in ns:
// exactly want (name -> data).
func (e *fenceEnv) sees(what string, want map[string][]byte) {
	e.t.Helper()
	ctx := context.Background()
	var names []string
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	for i, b := range []*Backend{e.b, e.other} {
		if ok, err := b.NamespaceExists(ctx, fenceNS); !ok || err != nil {
			e.t.Fatalf("%s: reader %d: namespace exists %v, %v", what, i, ok, err)
		}
		list, err := b.List(ctx, fenceNS, "")
		if err != nil {
			e.t.Fatalf("%s: reader %d: list: %v", what, i, err)
		}
		var got []string
		for _, o := range list {
			got = append(got, o.Name)
		}
		if !slices.Equal(got, names) {
			e.t.Fatalf("%s: reader %d lists %v, want %v", what, i, got, names)
		}
		for n, data := range want {
			got, err := b.Get(ctx, fenceNS, n)
			if err != nil || !bytes.Equal(got, data) {
				e.t.Fatalf("%s: reader %d: %s = %q, %v; want %q", what, i, n, got, err, data)
			}
		}
	}
}

func TestECBackendFence(t *testing.T) {
	for _, sole := range []bool{false, true} {
		t.Run(fmt.Sprintf("solewriter=%v", sole), func(t *testing.T) {
			ctx := context.Background()
			e := newFenceEnv(t, sole)
			b := e.b
			b.SetFence(fenceNS, &scos.Fence{Key: fenceKey, Value: []byte("nodeA/1")})
			if err := b.CreateNamespace(ctx, fenceNS); err != nil {
				t.Fatal(err)
			}
			want := map[string][]byte{}
			for _, n := range []string{"sco1", "sco2", "tlog1"} {
				want[n] = []byte("v1 of " + n)
				mustPut(t, b, fenceNS, n, want[n])
			}
			if err := b.Put(ctx, fenceNS, "sco1", []byte("v2 of sco1"), true); err != nil {
				t.Fatalf("overwrite under the fence: %v", err)
			}
			want["sco1"] = []byte("v2 of sco1")
			if err := b.Delete(ctx, fenceNS, "tlog1"); err != nil {
				t.Fatalf("delete under the fence: %v", err)
			}
			delete(want, "tlog1")
			mustPut(t, b, fenceNS, "tlog1", []byte("v1 of tlog1"))
			want["tlog1"] = []byte("v1 of tlog1")
			e.sees("while the fence holds", want)
			if _, err := b.CollectGarbage(ctx); err != nil {
				t.Fatal(err)
			}
			fragments := e.totalFragments()

			e.takeOver("nodeB/2")
			for _, op := range []struct {
				name string
				do   func() error
			}{
				{"overwrite", func() error { return b.Put(ctx, fenceNS, "sco1", []byte("v3 of sco1"), true) }},
				{"new object", func() error { return b.Put(ctx, fenceNS, "sco3", []byte("v1 of sco3"), false) }},
				{"delete", func() error { return b.Delete(ctx, fenceNS, "sco2") }},
				{"delete namespace", func() error { return b.DeleteNamespace(ctx, fenceNS) }},
				{"overwrite again", func() error { return b.Put(ctx, fenceNS, "sco2", []byte("v2 of sco2"), true) }},
			} {
				if err := op.do(); !errors.Is(err, scos.ErrFenced) {
					t.Fatalf("%s after the owner changed: %v, want scos.ErrFenced", op.name, err)
				}
				e.sees(op.name+" refused", want)
			}
			// The refused puts' fragments are garbage, collected as such.
			if _, err := b.CollectGarbage(ctx); err != nil {
				t.Fatal(err)
			}
			if n := e.totalFragments(); n != fragments {
				t.Fatalf("%d fragments after collecting the refused puts', want %d", n, fragments)
			}

			// The new owner writes; the fenced node reads what it wrote.
			e.other.SetFence(fenceNS, &scos.Fence{Key: fenceKey, Value: []byte("nodeB/2")})
			want["sco1"] = []byte("v3 of sco1, by B")
			if err := e.other.Put(ctx, fenceNS, "sco1", want["sco1"], true); err != nil {
				t.Fatalf("the new owner's put: %v", err)
			}
			if !sole {
				// (A sole writer is alone by definition: it keeps caching.)
				e.sees("after the new owner's write", want)
			}
			if err := e.other.DeleteNamespace(ctx, fenceNS); err != nil {
				t.Fatalf("the new owner's namespace delete: %v", err)
			}
		})
	}
}

// Without SoleWriter, only fenced namespaces are cached, and removing the
// fence drops what was cached.
func TestECBackendFenceCache(t *testing.T) {
	ctx := context.Background()
	e := newFenceEnv(t, false)
	b := e.b
	for _, ns := range []string{fenceNS, "vd-parent"} {
		if err := b.CreateNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
		mustPut(t, b, ns, "obj", []byte("0123456789"))
	}
	b.SetFence(fenceNS, &scos.Fence{Key: fenceKey, Value: []byte("nodeA/1")})
	size := func(ns string) int64 {
		t.Helper()
		info, err := b.Stat(ctx, ns, "obj")
		if err != nil {
			t.Fatal(err)
		}
		return info.Size
	}
	size(fenceNS)
	size("vd-parent")
	// Another node changes both objects (a stand-in for what only its
	// maintenance may do to a fenced namespace).
	for _, ns := range []string{fenceNS, "vd-parent"} {
		if err := e.other.Put(ctx, ns, "obj", []byte("0123456789abcdefghij"), true); err != nil {
			t.Fatal(err)
		}
	}
	if got := size("vd-parent"); got != 20 {
		t.Fatalf("an unfenced namespace was served from the cache: size %d, want 20", got)
	}
	if got := size(fenceNS); got != 10 {
		t.Fatalf("the fenced namespace is not cached: size %d, want the cached 10", got)
	}
	b.SetFence(fenceNS, nil)
	b.cache.mu.Lock()
	for k := range b.cache.entries {
		if ns, _ := keyNamespace(k); ns == fenceNS {
			t.Errorf("cached after the fence was removed: %s", k)
		}
	}
	b.cache.mu.Unlock()
	if got := size(fenceNS); got != 20 {
		t.Fatalf("after removing the fence: size %d, want 20", got)
	}
}

// Maintenance never judges fragments by a cached manifest: another node's
// maintenance may have changed it. A deletion record naming fragments the
// live manifest uses (as a failed repair's does) must not delete them even
// on the node whose cache still holds the old manifest.
func TestECBackendFenceMaintenanceReadsThrough(t *testing.T) {
	ctx := context.Background()
	e := newFenceEnv(t, false)
	b := e.b
	b.SetFence(fenceNS, &scos.Fence{Key: fenceKey, Value: []byte("nodeA/1")})
	if err := b.CreateNamespace(ctx, fenceNS); err != nil {
		t.Fatal(err)
	}
	mustPut(t, b, fenceNS, "obj", []byte("version 1"))
	if _, err := b.Stat(ctx, fenceNS, "obj"); err != nil { // cached now
		t.Fatal(err)
	}
	v2 := []byte("version 2, written elsewhere")
	if err := e.other.Put(ctx, fenceNS, "obj", v2, true); err != nil {
		t.Fatal(err)
	}
	live, err := e.other.ObjectManifest(ctx, fenceNS, "obj")
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range live.Fragments {
		if !b.stillReferenced(ctx, f.ASD, asd.FragmentInfo{Key: live.FragmentKey(i), Tag: fenceNS + "/obj"}) {
			t.Fatalf("scrub would delete live fragment %d as an orphan", i)
		}
	}
	b.discard(ctx, fenceNS, "obj", live, nil)
	if _, err := b.CollectGarbage(ctx); err != nil {
		t.Fatal(err)
	}
	checkGet(t, e.other, fenceNS, "obj", v2)
}

// An owner change during a stream of puts: every put that returned nil is
// visible, none that returned an error is, and once a writer is fenced it
// stays fenced.
func TestECBackendFenceConcurrent(t *testing.T) {
	ctx := context.Background()
	e := newFenceEnv(t, false)
	b := e.b
	b.SetFence(fenceNS, &scos.Fence{Key: fenceKey, Value: []byte("nodeA/1")})
	if err := b.CreateNamespace(ctx, fenceNS); err != nil {
		t.Fatal(err)
	}
	const writers, perWriter, takeOverAfter = 4, 40, 30
	type outcome struct {
		name string
		data []byte
		err  error
	}
	var (
		mu        sync.Mutex
		results   [writers][]outcome
		succeeded int
		tookOver  = make(chan struct{})
		once      sync.Once
		wg        sync.WaitGroup
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				// Fresh objects, and one overwritten again and again.
				for _, name := range []string{fmt.Sprintf("w%d-%03d", w, i), fmt.Sprintf("w%d", w)} {
					data := fmt.Appendf(nil, "%s version %d", name, i)
					err := b.Put(ctx, fenceNS, name, data, true)
					mu.Lock()
					results[w] = append(results[w], outcome{name, data, err})
					if err == nil {
						succeeded++
						if succeeded == takeOverAfter {
							once.Do(func() { close(tookOver) })
						}
					}
					mu.Unlock()
				}
			}
		}()
	}
	go func() {
		<-tookOver
		e.takeOver("nodeB/2")
	}()
	wg.Wait()
	select {
	case <-tookOver:
	default:
		t.Fatal("the owner never changed")
	}
	want := map[string][]byte{}
	refused := 0
	for w := range writers {
		fenced := false
		for _, o := range results[w] {
			switch {
			case o.err == nil && fenced:
				t.Fatalf("%s: put succeeded after the writer was fenced", o.name)
			case o.err == nil:
				want[o.name] = o.data // the latest success wins
			case errors.Is(o.err, scos.ErrFenced):
				fenced = true
				refused++
			default:
				t.Fatalf("%s: %v", o.name, o.err)
			}
		}
	}
	if refused == 0 {
		t.Fatal("no put was refused")
	}
	t.Logf("%d objects visible, %d puts refused", len(want), refused)
	e.sees("after the owner change", want)
}
