package volumedriver

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

func TestSnapshotRollback(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 64 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	rng := rand.New(rand.NewPCG(20, 21))
	m := &model{data: make([]byte, size)}
	randomWrites(t, v, m, rng, 200, 200_000)
	if _, err := v.CreateSnapshot(ctx, "s1", "first"); err != nil {
		t.Fatal(err)
	}
	atS1 := append([]byte(nil), m.data...)
	if _, err := v.CreateSnapshot(ctx, "s1", ""); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate snapshot: %v", err)
	}
	if _, err := v.CreateSnapshot(ctx, "big", strings.Repeat("x", 5000)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("oversized metadata: %v", err)
	}
	randomWrites(t, v, m, rng, 200, 200_000)
	if _, err := v.CreateSnapshot(ctx, "s2", ""); err != nil {
		t.Fatal(err)
	}
	randomWrites(t, v, m, rng, 100, 200_000)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	snaps := v.Snapshots()
	if len(snaps) != 2 || !snaps[0].Synced || snaps[0].Metadata != "first" || snaps[1].WrittenBytes == 0 {
		t.Fatalf("snapshots %+v", snaps)
	}
	randomWrites(t, v, m, rng, 50, 200_000) // not synced, then discarded
	if err := v.Rollback(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	check(t, v, &model{data: atS1})
	if snaps := v.Snapshots(); len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("after rollback: %+v", snaps)
	}
	// Writes after the rollback, then a restart, then a new host.
	m = &model{data: append([]byte(nil), atS1...)}
	randomWrites(t, v, m, rng, 100, 100_000)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The discarded objects go away in the background.
	waitFor(t, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.state.Garbage) == 0
	})
	objs, _ := e.backend.List(ctx, v.ns, "")
	for _, o := range objs {
		if n, err := scos.ParseSCOName(o.Name); err == nil {
			if _, err := e.backend.Stat(ctx, v.ns, o.Name); err != nil {
				t.Fatal(err)
			}
			_ = n
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	v, _ = d.Volume("a")
	check(t, v, m)
	crash(d)
	os.RemoveAll(e.dir)
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	check(t, v, m)
	if snaps := v.Snapshots(); len(snaps) != 1 || snaps[0].Name != "s1" || !snaps[0].Synced {
		t.Fatalf("snapshots from the backend: %+v", snaps)
	}
	if err := v.Rollback(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	check(t, v, &model{data: atS1})
	if err := v.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := v.Rollback(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rollback to a deleted snapshot: %v", err)
	}
	check(t, v, &model{data: atS1}) // deleting a snapshot changes no data
}

// TestRollbackCrash: a crash right after the switch to the snapshot leaves
// a volume that restarts at the snapshot.
func TestRollbackCrash(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 32 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	rng := rand.New(rand.NewPCG(30, 31))
	m := &model{data: make([]byte, size)}
	randomWrites(t, v, m, rng, 100, 200_000)
	v.CreateSnapshot(ctx, "s", "")
	atS := append([]byte(nil), m.data...)
	randomWrites(t, v, m, rng, 100, 200_000)
	if err := v.Rollback(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	crash(d)
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	check(t, v, &model{data: atS})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slowPutBackend delays every Put (honoring its context) and counts the
// puts that were canceled, as a remote backend under load would.
type slowPutBackend struct {
	scos.Backend
	delay    atomic.Int64 // nanoseconds
	canceled atomic.Int64
}

func (b *slowPutBackend) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	select {
	case <-time.After(time.Duration(b.delay.Load())):
	case <-ctx.Done():
		b.canceled.Add(1)
		return ctx.Err()
	}
	return b.Backend.Put(ctx, ns, name, data, overwrite)
}

// TestCloseUploadsLastSnapshotsJSON: a rollback right before a clean stop
// reaches the backend before Close returns (a new host sees the rolled-back
// data and snapshot list), and the rollback does not cancel the upload of
// a TLog it keeps.
func TestCloseUploadsLastSnapshotsJSON(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	sb := &slowPutBackend{Backend: e.backend}
	sb.delay.Store(int64(100 * time.Millisecond))
	e.opts.AutoSyncInterval = time.Hour
	d, err := Open(ctx, e.dir, sb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	const size = 16 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	rng := rand.New(rand.NewPCG(70, 71))
	m := &model{data: make([]byte, size)}
	randomWrites(t, v, m, rng, 50, 200_000)
	if _, err := v.CreateSnapshot(ctx, "s1", ""); err != nil {
		t.Fatal(err)
	}
	atS1 := append([]byte(nil), m.data...)
	randomWrites(t, v, m, rng, 50, 200_000)
	if _, err := v.CreateSnapshot(ctx, "s2", ""); err != nil {
		t.Fatal(err)
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// s3's TLog starts uploading (slowly); the rollback to s3 keeps it.
	randomWrites(t, v, m, rng, 50, 200_000)
	if _, err := v.CreateSnapshot(ctx, "s3", ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := v.Rollback(ctx, "s3"); err != nil {
		t.Fatal(err)
	}
	if n := sb.canceled.Load(); n != 0 {
		t.Fatalf("a rollback to s3 canceled %d puts of what it keeps", n)
	}
	// The rollback to s1 is the last thing before the stop.
	if err := v.Rollback(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// A new host: only the backend.
	if err := os.RemoveAll(e.dir); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	defer d.Close()
	v, err = d.Volume("a")
	if err != nil {
		t.Fatal(err)
	}
	check(t, v, &model{data: atS1})
	if snaps := v.Snapshots(); len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Fatalf("on a new host after rollback and stop: snapshots %+v, want [s1]", snaps)
	}
}

// TestCloseIsBounded: with a backend that never answers, Close gives up
// after CloseTimeout instead of hanging.
func TestCloseIsBounded(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	sb := &slowPutBackend{Backend: e.backend}
	e.opts.CloseTimeout = 300 * time.Millisecond
	d, err := Open(ctx, e.dir, sb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create(ctx, "a", 8<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	v.WriteAt(ctx, make([]byte, 1<<20), 0, false)
	sb.delay.Store(int64(time.Hour))
	if _, err := v.CreateSnapshot(ctx, "s1", ""); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("Close took %v with CloseTimeout 300ms", took)
	}
}
