package volumedriver

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/ovs-storage/ovs/internal/progress"
)

// TestScrubReportsProgress: a scrub given a tracker reports its stages,
// and by the switch it has read every TLog and rewritten every byte it
// set out to.
func TestScrubReportsProgress(t *testing.T) {
	e := newTestEnv(t)
	var (
		mu  sync.Mutex
		tr  = progress.New()
		saw = map[string]progress.Snapshot{}
	)
	e.opts.Failpoint = func(point string) {
		mu.Lock()
		saw[point] = tr.Snapshot()
		mu.Unlock()
	}
	d := e.open()
	defer d.Close()
	ctx := context.Background()
	const size = 8 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	rng := rand.New(rand.NewPCG(60, 61))
	// Overwrite half of the data: its SCOs end up half live, below the
	// rewrite threshold.
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(rng.IntN(256))
	}
	if err := v.WriteAt(ctx, p, 0, false); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < size; off += 8192 {
		if err := v.WriteAt(ctx, p[:4096], off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := d.Scrub(progress.With(ctx, tr), "a")
	if err != nil {
		t.Fatal(err)
	}
	if res.SCOsRewritten == 0 {
		t.Fatalf("nothing to rewrite, the test proves nothing: %+v", res)
	}
	mu.Lock()
	defer mu.Unlock()
	before := saw["scrub-before-switch"]
	if before.Stage != "rewrite tlogs" || before.Total == 0 || before.Done != before.Total {
		t.Errorf("before the switch: %+v, want every TLog of stage rewrite tlogs done", before)
	}
	if after := saw["scrub-after-switch"]; after.Stage != "switch" {
		t.Errorf("after the switch: %+v, want stage switch", after)
	}
}

// TestFlattenReportsProgress: a flatten given a tracker counts the mapped
// range it copied, all of it by the time it syncs.
func TestFlattenReportsProgress(t *testing.T) {
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	ctx := context.Background()
	const size = 8 << 20
	d.Create(ctx, "p", size, CreateOptions{})
	p, _ := d.Volume("p")
	rng := rand.New(rand.NewPCG(62, 63))
	randomWrites(t, p, &model{data: make([]byte, size)}, rng, 50, 100_000)
	if _, err := d.CreateSnapshot(ctx, "p", "s", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Clone(ctx, "c", "p", "s"); err != nil {
		t.Fatal(err)
	}
	c, _ := d.Volume("c")
	tr := progress.New()
	copied, err := c.copyInherited(progress.With(ctx, tr))
	if err != nil {
		t.Fatal(err)
	}
	s := tr.Snapshot()
	if copied == 0 || s.Stage != "copy" || s.Unit != "bytes" || s.Total == 0 || s.Done != s.Total {
		t.Errorf("copied %d bytes, progress %+v: want stage copy with done = total > 0", copied, s)
	}
	if _, err := d.Flatten(progress.With(ctx, tr), "c"); err != nil {
		t.Fatal(err)
	}
}
