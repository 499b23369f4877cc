package volumedriver

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

// TestSnapshotViewAcrossScrub: a snapshot view kept open while its vdisk
// is scrubbed reads the snapshot after the SCOs the scrub replaced are
// deleted, on the owner's host and on another host (whose view the owner
// cannot know of). A snapshot is never scrubbed away, but the SCOs it
// refers to are: one that also holds clusters overwritten before the
// snapshot is rewritten as a new version, and the old one deleted.
func TestSnapshotViewAcrossScrub(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.WriteBufferBytes = 1 // reads come from the backend
	e.opts.GarbageGrace = time.Millisecond
	d := e.open()
	defer d.Close()
	const size = 8 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(70, 71))
	full := make([]byte, size)
	for i := range full {
		full[i] = byte(rng.IntN(256))
	}
	if err := v.WriteAt(ctx, full, 0, false); err != nil {
		t.Fatal(err)
	}
	m.write(full, 0)
	// Garbage before the snapshot: half of SCO 1 (the first 4 MiB) is
	// overwritten, so the scrub rewrites its other half, which the
	// snapshot sees.
	half := bytes.Repeat([]byte{0x5a}, size/4)
	if err := v.WriteAt(ctx, half, 0, false); err != nil {
		t.Fatal(err)
	}
	m.write(half, 0)
	if _, err := d.CreateSnapshot(ctx, "a", "s", ""); err != nil {
		t.Fatal(err)
	}
	atS := append([]byte(nil), m.data...)
	// After the snapshot: what only the snapshot sees now.
	randomWrites(t, v, m, rng, 30, 200_000)
	if err := d.Sync(ctx, "a"); err != nil {
		t.Fatal(err)
	}

	// Another host with its own volume directory on the same backend.
	o := *e
	o.dir = filepath.Join(t.TempDir(), "other")
	d2 := o.open()
	defer d2.Close()

	views := map[string]*SnapshotView{}
	for name, drv := range map[string]*Driver{"owner": d, "other host": d2} {
		sv, err := drv.OpenSnapshotView(ctx, v.id, "s")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer sv.Close()
		views[name] = sv
	}
	res, err := d.Scrub(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if res.SCOsRewritten+res.SCOsDeleted == 0 {
		t.Fatalf("the scrub replaced nothing (%+v): the test does not test", res)
	}
	waitFor(t, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.state.Garbage) == 0
	})
	for name, sv := range views {
		got := make([]byte, size)
		if err := sv.ReadAt(ctx, got, 0); err != nil {
			t.Fatalf("%s: read the snapshot view after the scrub: %v", name, err)
		}
		if !bytes.Equal(got, atS) {
			t.Fatalf("%s: the snapshot view reads other data after the scrub", name)
		}
	}
	check(t, v, m)
}
