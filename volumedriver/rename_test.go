package volumedriver

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestRenameSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 8 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create(ctx, "b", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	randomWrites(t, a, m, rand.New(rand.NewPCG(1, 2)), 30, 100_000)
	for _, tc := range []struct {
		name, from, to string
		want           error
	}{
		{"taken", "a", "b", ErrExists},
		{"bad name", "a", "-x", ErrInvalidArgument},
		{"unknown", "nope", "c", ErrNotFound},
	} {
		if _, err := d.Rename(ctx, tc.from, tc.to); !errors.Is(err, tc.want) {
			t.Errorf("%s: rename %s to %s: %v, want %v", tc.name, tc.from, tc.to, err, tc.want)
		}
	}
	info, err := d.Rename(ctx, "a", "c")
	if err != nil || info.Name != "c" {
		t.Fatalf("rename: %+v %v", info, err)
	}
	if _, err := d.Volume("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old name still served: %v", err)
	}
	if name, ok := d.NameOf(info.ID); !ok || name != "c" {
		t.Fatalf("NameOf = %q %v", name, ok)
	}
	c, _ := d.Volume("c")
	check(t, c, m) // the same volume, I/O goes on
	d.Close()
	d = e.open()
	defer d.Close()
	c, err = d.Volume("c")
	if err != nil {
		t.Fatalf("after restart: %v (names %v)", err, d.Names())
	}
	check(t, c, m)
}

func TestSnapshotView(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	const size = 8 << 20
	d.Create(ctx, "p", size, CreateOptions{})
	p, _ := d.Volume("p")
	rng := rand.New(rand.NewPCG(3, 4))
	pm := &model{data: make([]byte, size)}
	randomWrites(t, p, pm, rng, 40, 100_000)
	d.CreateSnapshot(ctx, "p", "s", "")
	atS := append([]byte(nil), pm.data...)
	randomWrites(t, p, pm, rng, 40, 100_000)
	id := p.id
	if _, err := d.OpenSnapshotView(ctx, id, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown snapshot: %v", err)
	}
	// Before a sync the backend's snapshots.json may lack the snapshot
	// (not found) or list it past the uploaded TLogs (not synced).
	if _, err := d.OpenSnapshotView(ctx, id, "s"); err != nil && !errors.Is(err, ErrSnapshotNotSynced) && !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("unsynced snapshot: %v", err)
	}
	if err := d.Sync(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	// A clone's snapshot reads through the clone and its parent.
	d.Clone(ctx, "c", "p", "s")
	c, _ := d.Volume("c")
	cm := &model{data: append([]byte(nil), atS...)}
	randomWrites(t, c, cm, rng, 20, 50_000)
	d.CreateSnapshot(ctx, "c", "cs", "")
	atCS := append([]byte(nil), cm.data...)
	randomWrites(t, c, cm, rng, 20, 50_000)
	d.Sync(ctx, "c")
	for _, tc := range []struct {
		vdisk *Volume
		snap  string
		want  []byte
	}{{p, "s", atS}, {c, "cs", atCS}} {
		sv, err := d.OpenSnapshotView(ctx, tc.vdisk.id, tc.snap)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if err := sv.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Fatalf("%s@%s reads other data than at the snapshot", tc.vdisk.name(), tc.snap)
		}
		if err := sv.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
