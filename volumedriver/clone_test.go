package volumedriver

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"testing"
)

func TestCloneChainFlattenTemplate(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 32 << 20
	d.Create(ctx, "p", size, CreateOptions{})
	p, _ := d.Volume("p")
	rng := rand.New(rand.NewPCG(40, 41))
	pm := &model{data: make([]byte, size)}
	randomWrites(t, p, pm, rng, 150, 200_000)
	if _, err := d.CreateSnapshot(ctx, "p", "s", ""); err != nil {
		t.Fatal(err)
	}
	atS := append([]byte(nil), pm.data...)
	if _, err := d.Clone(ctx, "c1", "p", ""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("clone of a non-template without a snapshot: %v", err)
	}
	if _, err := d.Clone(ctx, "c1", "p", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("clone of an unknown snapshot: %v", err)
	}
	info, err := d.Clone(ctx, "c1", "p", "s")
	if err != nil {
		t.Fatal(err)
	}
	if info.Parent != "p@s" {
		t.Fatalf("clone info %+v", info)
	}
	c1, _ := d.Volume("c1")
	check(t, c1, &model{data: atS})
	// The parent moves on; the clone keeps its view and takes writes.
	randomWrites(t, p, pm, rng, 100, 200_000)
	c1m := &model{data: append([]byte(nil), atS...)}
	randomWrites(t, c1, c1m, rng, 100, 100_000)
	check(t, c1, c1m)
	check(t, p, pm)
	// A clone of a clone.
	d.CreateSnapshot(ctx, "c1", "s1", "")
	atS1 := append([]byte(nil), c1m.data...)
	if _, err := d.Clone(ctx, "c2", "c1", "s1"); err != nil {
		t.Fatal(err)
	}
	c2, _ := d.Volume("c2")
	check(t, c2, &model{data: atS1})
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"delete parent", d.Delete(ctx, "p", true)},
		{"delete middle", d.Delete(ctx, "c1", true)},
		{"delete snapshot", d.DeleteSnapshot(ctx, "p", "s")},
	} {
		if !errors.Is(tc.err, ErrBusy) {
			t.Errorf("%s with clones: %v", tc.name, tc.err)
		}
	}
	// Restart, then a new host: clones come back from the backend.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	c2, _ = d.Volume("c2")
	check(t, c2, &model{data: atS1})
	d.Sync(ctx, "c1")
	d.Sync(ctx, "p")
	crash(d)
	os.RemoveAll(e.dir)
	d = e.open()
	// d is opened again below: close the last one.
	defer func() { d.Close() }()
	c1, _ = d.Volume("c1")
	c2, _ = d.Volume("c2")
	p, _ = d.Volume("p")
	check(t, c1, c1m)
	check(t, c2, &model{data: atS1})
	check(t, p, pm)

	// Flatten c2 while writing to it, then its chain can go.
	c2m := &model{data: append([]byte(nil), atS1...)}
	randomWrites(t, c2, c2m, rng, 20, 50_000)
	if info, err := d.Flatten(ctx, "c2"); err != nil || info.Parent != "" {
		t.Fatalf("flatten: %+v %v", info, err)
	}
	check(t, c2, c2m)
	if err := d.Delete(ctx, "c1", false); err != nil {
		t.Fatalf("delete c1 after flattening its clone: %v", err)
	}
	check(t, c2, c2m)
	crash(d)
	os.RemoveAll(e.dir)
	d = e.open()
	c2, _ = d.Volume("c2")
	check(t, c2, c2m)

	// Templates: read-only, and clones come from their latest snapshot.
	if _, err := d.SetTemplate(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	p, _ = d.Volume("p")
	if err := p.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a template: %v", err)
	}
	if _, err := d.Clone(ctx, "fromtpl", "p", ""); err != nil {
		t.Fatal(err)
	}
	ft, _ := d.Volume("fromtpl")
	check(t, ft, pm)
}
