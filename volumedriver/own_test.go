package volumedriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// ownedBy is an Options.Owned that serves the given ids under their epochs.
func ownedBy(ids map[string]uint64) func(string) (uint64, bool) {
	return func(id string) (uint64, bool) {
		e, ok := ids[id]
		return e, ok
	}
}

// quarantined lists what the driver in dir set aside of vdisk id.
func quarantined(t *testing.T, dir, id string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, quarantineDir, "*-"+id))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func fillPattern(p []byte, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range p {
		p[i] = byte(rng.IntN(255) + 1)
	}
}

func mustWrite(t *testing.T, v *Volume, m *model, p []byte, off int64) {
	t.Helper()
	if err := v.WriteAt(context.Background(), p, off, false); err != nil {
		t.Fatal(err)
	}
	m.write(p, off)
}

func TestOwnedFilterAtOpen(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	for _, n := range []string{"a", "b"} {
		if _, err := d.Create(ctx, n, 8<<20, CreateOptions{ID: "id" + n}); err != nil {
			t.Fatal(err)
		}
	}
	va, _ := d.Volume("a")
	ma := &model{data: make([]byte, 8<<20)}
	p := make([]byte, 64<<10)
	fillPattern(p, 1)
	mustWrite(t, va, ma, p, 4096)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Another host is creating a vdisk: its namespace has no volume.json yet.
	if err := e.backend.CreateNamespace(ctx, "vd-idc"); err != nil {
		t.Fatal(err)
	}
	if err := e.backend.Put(ctx, "vd-idc", snapshotsObject, []byte("{}"), false); err != nil {
		t.Fatal(err)
	}

	e.opts.Owned = ownedBy(map[string]uint64{"ida": 0})
	d = e.open()
	defer d.Close()
	if names := d.Names(); len(names) != 1 || names[0] != "a" {
		t.Fatalf("vdisks served: %v, want [a]", names)
	}
	if _, err := d.Info(ctx, "b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("info of a vdisk owned elsewhere: %v", err)
	}
	va, _ = d.Volume("a")
	check(t, va, ma)
	// Namespaces it does not own are untouched.
	for _, o := range []struct{ ns, obj string }{{"vd-idb", volumeObject}, {"vd-idc", snapshotsObject}} {
		if _, err := e.backend.Stat(ctx, o.ns, o.obj); err != nil {
			t.Fatalf("%s/%s after Open: %v", o.ns, o.obj, err)
		}
	}
	// b's local state is stale: set aside, not deleted, not used.
	if _, err := os.Stat(filepath.Join(e.dir, "idb")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("local dir of a vdisk owned elsewhere: %v", err)
	}
	if q := quarantined(t, e.dir, "idb"); len(q) != 1 {
		t.Fatalf("quarantined local dirs of b: %v", q)
	}
	if q := quarantined(t, e.dir, "ida"); len(q) != 0 {
		t.Fatalf("a's local dir was set aside: %v", q)
	}
}

func TestEpochMismatchRestoresFromBackend(t *testing.T) {
	for _, tc := range []struct {
		name        string
		epoch       uint64 // the second open's
		syncAll     bool   // the local-only writes reach the backend first
		wantLocal   bool   // the local-only writes read back
		wantSetAway bool   // the local dir is quarantined
		damage      bool   // state.json is garbage at the second open
	}{
		// The epoch file beside state.json says whose the local TLogs are.
		{name: "same epoch, state.json damaged", epoch: 1, damage: true, wantLocal: true},
		{name: "new epoch, state.json damaged", epoch: 2, damage: true, wantLocal: false, wantSetAway: true},
		{name: "same epoch", epoch: 1, wantLocal: true},
		{name: "new epoch", epoch: 2, wantLocal: false, wantSetAway: true},
		{name: "new epoch, all uploaded", epoch: 2, syncAll: true, wantLocal: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newTestEnv(t)
			e.opts.AutoSyncInterval = time.Hour // nothing goes up unless synced
			e.opts.Owned = ownedBy(map[string]uint64{"ida": 1})
			d := e.open()
			if _, err := d.Create(ctx, "a", 32<<20, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
				t.Fatal(err)
			}
			v, _ := d.Volume("a")
			m := &model{data: make([]byte, 32<<20)}
			rng := rand.New(rand.NewPCG(3, 4))
			randomWrites(t, v, m, rng, 100, 200_000)
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			uploaded := append([]byte(nil), m.data...)
			randomWrites(t, v, m, rng, 50, 100_000) // in the open TLog only
			if tc.syncAll {
				if err := v.Sync(ctx); err != nil {
					t.Fatal(err)
				}
			}
			crash(d)
			if tc.damage {
				if err := os.WriteFile(filepath.Join(e.dir, "ida", "state.json"), []byte("{garbage"), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			e.opts.Owned = ownedBy(map[string]uint64{"ida": tc.epoch})
			d = e.open()
			defer d.Close()
			v, err := d.Volume("a")
			if err != nil {
				t.Fatal(err)
			}
			want := uploaded
			if tc.wantLocal {
				want = m.data
			}
			if !bytes.Equal(readAll(t, v), want) {
				t.Fatalf("contents after reopening under epoch %d: local-only writes present=%v wanted %v",
					tc.epoch, bytes.Equal(readAll(t, v), m.data), tc.wantLocal)
			}
			if q := quarantined(t, e.dir, "ida"); (len(q) == 1) != tc.wantSetAway || len(q) > 1 {
				t.Fatalf("quarantined: %v, want set aside: %v", q, tc.wantSetAway)
			}
			st, err := readLocalState(v.dir)
			if err != nil || st.Epoch != tc.epoch {
				t.Fatalf("state.json epoch %d (%v), want %d", st.Epoch, err, tc.epoch)
			}
			if info, _ := d.Info(ctx, "a"); info.Epoch != tc.epoch || info.State != "ok" {
				t.Fatalf("info: epoch %d state %q", info.Epoch, info.State)
			}
			// It serves writes under the new tenure.
			randomWrites(t, v, m, rng, 10, 50_000)
		})
	}
}

// twoHosts is two drivers over one backend, serving nothing at Open.
func twoHosts(t *testing.T) (e *testEnv, d1, d2 *Driver) {
	t.Helper()
	e = newTestEnv(t)
	e.opts.Owned = ownedBy(nil)
	d1 = e.open()
	opts2 := e.opts
	var err error
	d2, err = Open(context.Background(), filepath.Join(t.TempDir(), "volumes"), e.backend, opts2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d1.Close(); d2.Close() })
	return e, d1, d2
}

func TestReleaseThenAdopt(t *testing.T) {
	ctx := context.Background()
	e, d1, d2 := twoHosts(t)
	const size = 64 << 20
	if _, err := d1.Create(ctx, "a", size, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	v, _ := d1.Volume("a")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(5, 6))
	randomWrites(t, v, m, rng, 200, 300_000)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d1.CreateSnapshot(ctx, "a", "s1", ""); err != nil {
		t.Fatal(err)
	}
	randomWrites(t, v, m, rng, 100, 100_000) // acknowledged, not uploaded

	if err := d1.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Volume("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("released vdisk still on the first host: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "ida")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("local state left after release: %v", err)
	}
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, ErrReleased) {
		t.Fatalf("write through a stale handle: %v", err)
	}
	if err := v.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, ErrReleased) {
		t.Fatalf("read through a stale handle: %v", err)
	}

	info, err := d2.Adopt(ctx, "ida", 3)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "a" || info.Epoch != 3 || info.Snapshots != 1 {
		t.Fatalf("adopted: %+v", info)
	}
	v2, _ := d2.Volume("a")
	check(t, v2, m)
	if _, err := d2.Adopt(ctx, "ida", 3); !errors.Is(err, ErrExists) {
		t.Fatalf("adopt of a vdisk served already: %v", err)
	}
	if _, err := d2.Adopt(ctx, "nosuch", 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("adopt of an unknown id: %v", err)
	}
	// And back, with writes in between.
	randomWrites(t, v2, m, rng, 50, 100_000)
	if err := d2.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Adopt(ctx, "ida", 4); err != nil {
		t.Fatal(err)
	}
	v1, _ := d1.Volume("a")
	check(t, v1, m)
}

// TestReleaseUnderWrites: writers hammer the vdisk while it is released;
// every write either completes before (and reads back on the new host) or
// fails whole with ErrReleased.
func TestReleaseUnderWrites(t *testing.T) {
	ctx := context.Background()
	_, d1, d2 := twoHosts(t)
	const (
		writers = 4
		region  = 8 << 20
		block   = 6000 // unaligned: each write is split into pieces
	)
	if _, err := d1.Create(ctx, "a", writers*region, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	v, _ := d1.Volume("a")
	acked := make([]int, writers)
	var failed [writers]bool
	var started sync.WaitGroup
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		started.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var once sync.Once
			defer once.Do(started.Done)
			p := make([]byte, block)
			for k := 0; (k+1)*block+100 < region; k++ {
				if k == 20 {
					once.Do(started.Done)
				}
				fillPattern(p, uint64(w*1_000_000+k))
				err := v.WriteAt(ctx, p, int64(w*region+100+k*block), k%7 == 0)
				if err != nil {
					if !errors.Is(err, ErrReleased) {
						errs <- fmt.Errorf("writer %d block %d: %w", w, k, err)
					}
					failed[w] = true
					return
				}
				acked[w] = k + 1
			}
			errs <- fmt.Errorf("writer %d wrote its whole region before the release", w)
		}()
	}
	started.Wait()
	if err := d1.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := d2.Adopt(ctx, "ida", 2); err != nil {
		t.Fatal(err)
	}
	v2, _ := d2.Volume("a")
	pattern := make([]byte, block)
	got := make([]byte, block)
	zero := make([]byte, block)
	for w := 0; w < writers; w++ {
		if !failed[w] {
			t.Errorf("writer %d never saw ErrReleased", w)
		}
		// Acknowledged blocks, then the failed one and the rest: zeros.
		for k := 0; k <= acked[w]; k++ {
			if err := v2.ReadAt(ctx, got, int64(w*region+100+k*block)); err != nil {
				t.Fatal(err)
			}
			want := zero
			if k < acked[w] {
				want = pattern
				fillPattern(want, uint64(w*1_000_000+k))
			}
			if !bytes.Equal(got, want) {
				first, n := -1, 0
				for i := range got {
					if got[i] != want[i] {
						n++
						if first < 0 {
							first = i
						}
					}
				}
				t.Fatalf("writer %d block %d (of %d acknowledged): wrong contents after the handover: %d bytes differ from %d", w, k, acked[w], n, first)
			}
		}
	}
	t.Logf("acknowledged blocks per writer before the release: %v", acked)
}

// TestReleaseTime reports how long a release of a vdisk with 64 MiB not yet
// uploaded takes on the local backend (a figure, not an assertion).
func TestReleaseTime(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.AutoSyncInterval = time.Hour
	d := e.open()
	defer d.Close()
	if _, err := d.Create(ctx, "a", 256<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	p := make([]byte, 1<<20)
	fillPattern(p, 7)
	for i := 0; i < 64; i++ {
		if err := v.WriteAt(ctx, p, int64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	info, _ := d.Info(ctx, "a")
	start := time.Now()
	if err := d.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	t.Logf("release of %d MiB not yet uploaded took %v", info.PendingUploadBytes>>20, time.Since(start).Round(time.Millisecond))
}

// flakyBackend makes every mutation fail with err while err is set.
type flakyBackend struct {
	scos.Backend
	err atomic.Pointer[error]
}

func (b *flakyBackend) fail() error {
	if e := b.err.Load(); e != nil {
		return fmt.Errorf("test backend: %w", *e)
	}
	return nil
}

func (b *flakyBackend) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	if err := b.fail(); err != nil {
		return err
	}
	return b.Backend.Put(ctx, ns, name, data, overwrite)
}

func (b *flakyBackend) PutFile(ctx context.Context, ns, name string, f *os.File, overwrite bool) error {
	if err := b.fail(); err != nil {
		return err
	}
	return b.Backend.(scos.FilePutter).PutFile(ctx, ns, name, f, overwrite)
}

func (b *flakyBackend) Delete(ctx context.Context, ns, name string) error {
	if err := b.fail(); err != nil {
		return err
	}
	return b.Backend.Delete(ctx, ns, name)
}

func TestReleaseFailureKeepsServing(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.AutoSyncInterval = time.Hour
	b := &flakyBackend{Backend: e.backend}
	d, err := Open(ctx, e.dir, b, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Create(ctx, "a", 16<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, 16<<20)}
	p := make([]byte, 1<<20)
	fillPattern(p, 8)
	mustWrite(t, v, m, p, 0)
	down := errors.New("backend down")
	b.err.Store(&down)
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := d.Release(rctx, "a"); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("release with the backend down: %v", err)
	}
	// Served as before.
	if info, _ := d.Info(ctx, "a"); info.State != "ok" {
		t.Fatalf("state after a failed release: %q", info.State)
	}
	fillPattern(p, 9)
	mustWrite(t, v, m, p, 1<<20)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	check(t, v, m)
	b.err.Store(nil)
	if err := d.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
}

func TestFencing(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.AutoSyncInterval = time.Hour
	b := &flakyBackend{Backend: e.backend}
	type call struct{ name, id string }
	calls := make(chan call, 10)
	e.opts.OnFenced = func(name, id string) { calls <- call{name, id} }
	d, err := Open(ctx, e.dir, b, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, n := range []string{"a", "b"} {
		if _, err := d.Create(ctx, n, 16<<20, CreateOptions{ID: "id" + n, Epoch: 1}); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, 16<<20)}
	p := make([]byte, 256<<10)
	fillPattern(p, 10)
	mustWrite(t, v, m, p, 0)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	// Another host took the vdisk over: the backend refuses this one's writes.
	fenced := scos.ErrFenced
	b.err.Store(&fenced)
	fillPattern(p, 11)
	mustWrite(t, v, m, p, 1<<20) // acknowledged before anyone knew
	if err := v.Sync(ctx); !errors.Is(err, ErrFenced) || !errors.Is(err, scos.ErrFenced) {
		t.Fatalf("sync with the namespace fenced: %v", err)
	}
	select {
	case c := <-calls:
		if c != (call{"a", "ida"}) {
			t.Fatalf("OnFenced(%v)", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnFenced not called")
	}
	for what, err := range map[string]error{
		"write": v.WriteAt(ctx, p, 0, false),
		"read":  v.ReadAt(ctx, p, 0),
		"flush": v.Flush(ctx),
		"trim":  v.Trim(ctx, 0, 4096),
	} {
		if !errors.Is(err, ErrFenced) || !errors.Is(err, scos.ErrFenced) {
			t.Errorf("%s on a fenced vdisk: %v", what, err)
		}
	}
	if _, err := d.CreateSnapshot(ctx, "a", "s", ""); !errors.Is(err, ErrFenced) {
		t.Errorf("snapshot of a fenced vdisk: %v", err)
	}
	if err := d.Release(ctx, "a"); !errors.Is(err, ErrFenced) {
		t.Errorf("release of a fenced vdisk: %v", err)
	}
	if info, _ := d.Info(ctx, "a"); info.State != "fenced" {
		t.Errorf("state: %q", info.State)
	}
	d.Fence("a") // again: no second call
	if err := d.Drop("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Info(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dropped vdisk: %v", err)
	}
	q := quarantined(t, e.dir, "ida")
	if len(q) != 1 {
		t.Fatalf("quarantined: %v", q)
	}
	if st, err := readLocalState(q[0]); err != nil || st.OpenTLog == "" {
		t.Fatalf("quarantined state: %+v %v", st, err)
	}

	// The control plane learns of a new owner before any write fails.
	b.err.Store(nil)
	vb, _ := d.Volume("b")
	d.Fence("b")
	select {
	case c := <-calls:
		if c != (call{"b", "idb"}) {
			t.Fatalf("OnFenced(%v)", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnFenced not called for Fence")
	}
	if err := vb.Flush(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("flush after Fence: %v", err)
	}
	select {
	case c := <-calls:
		t.Fatalf("OnFenced called again: %v", c)
	default:
	}
}

func TestCreateAndCloneWithID(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	info, err := d.Create(ctx, "a", 8<<20, CreateOptions{ID: "ida", Epoch: 7})
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "ida" || info.Epoch != 7 {
		t.Fatalf("created: %+v", info)
	}
	if _, err := d.Create(ctx, "b", 8<<20, CreateOptions{ID: "ida"}); err == nil {
		t.Fatal("a second vdisk with the same id was created")
	}
	for _, bad := range []string{"quarantine", "../x", "-a"} {
		if _, err := d.Create(ctx, "c", 8<<20, CreateOptions{ID: bad}); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("create with id %q: %v", bad, err)
		}
	}
	if _, err := d.CreateSnapshot(ctx, "a", "s", ""); err != nil {
		t.Fatal(err)
	}
	info, err = d.CloneWith(ctx, "c", "a", "s", CloneOptions{ID: "idc", Epoch: 9})
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "idc" || info.Epoch != 9 || info.Parent != "a@s" {
		t.Fatalf("cloned: %+v", info)
	}
}
