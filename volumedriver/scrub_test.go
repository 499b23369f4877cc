package volumedriver

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// TestScrubReclaimsOverwrites: 10 overwrites of the same data with the
// intermediate snapshots deleted; scrubbing brings the backend down to
// within 1.3x of the live data, and every view still reads right.
func TestScrubReclaimsOverwrites(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 24 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	rng := rand.New(rand.NewPCG(50, 51))
	m := &model{data: make([]byte, size)}
	var keep []byte
	for round := 0; round < 10; round++ {
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(rng.IntN(256))
		}
		if err := v.WriteAt(ctx, p, 0, false); err != nil {
			t.Fatal(err)
		}
		m.write(p, 0)
		if _, err := v.CreateSnapshot(ctx, fmt.Sprintf("s%d", round), ""); err != nil {
			t.Fatal(err)
		}
		if round == 4 {
			keep = append([]byte(nil), m.data...)
		}
	}
	// Keep s4 and s9 (= the current data); the others merge away.
	for round := 0; round < 9; round++ {
		if round != 4 {
			if err := v.DeleteSnapshot(ctx, fmt.Sprintf("s%d", round)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := d.Scrub(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scrub: %+v", res)
	// Live: the current data and snapshot s4 (plus s9 = current).
	live := int64(2 * size)
	waitFor(t, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.state.Garbage) == 0
	})
	got, err := v.backendSCOBytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if float64(got) > 1.3*float64(live) {
		t.Fatalf("backend holds %d bytes of SCOs for %d live bytes (%.2fx)", got, live, float64(got)/float64(live))
	}
	if res.BackendBytesBefore < 9*size {
		t.Fatalf("before: %d", res.BackendBytesBefore)
	}
	check(t, v, m)
	// Restart, new host, rollback: all still right.
	d.Close()
	d = e.open()
	v, _ = d.Volume("a")
	check(t, v, m)
	crash(d)
	os.RemoveAll(e.dir)
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	check(t, v, m)
	if err := v.Rollback(ctx, "s4"); err != nil {
		t.Fatal(err)
	}
	check(t, v, &model{data: keep})
}

// TestScrubUnderIO: writes and reads go on while a scrub runs.
func TestScrubUnderIO(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer func() { d.Close() }()
	const size = 16 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	rng := rand.New(rand.NewPCG(60, 61))
	m := &model{data: make([]byte, size)}
	for i := 0; i < 4; i++ {
		randomWrites(t, v, m, rng, 100, 300_000)
		v.Sync(ctx)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(62, 63))
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			randomWrites(t, v, m, r, 5, 20_000)
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	rewritten := 0
	for i := 0; i < 3; i++ {
		res, err := d.Scrub(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		rewritten += res.SCOsRewritten
		mu.Lock()
		check(t, v, m)
		mu.Unlock()
		v.Sync(ctx)
	}
	close(stop)
	wg.Wait()
	check(t, v, m)
	if rewritten == 0 {
		t.Fatal("no SCO was rewritten: the test does not exercise relocation")
	}
	// After a crash the relocated metadata is rebuilt from the new TLogs.
	v.Flush(ctx)
	crash(d)
	d = e.open()
	v, _ = d.Volume("a")
	check(t, v, m)
}

// TestScrubKeepsCloneBase: SCOs a clone is built on are not scrubbed away.
func TestScrubKeepsCloneBase(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	const size = 8 << 20
	d.Create(ctx, "p", size, CreateOptions{})
	p, _ := d.Volume("p")
	rng := rand.New(rand.NewPCG(70, 71))
	pm := &model{data: make([]byte, size)}
	randomWrites(t, p, pm, rng, 100, 100_000)
	d.CreateSnapshot(ctx, "p", "base", "")
	base := append([]byte(nil), pm.data...)
	d.Clone(ctx, "c", "p", "base")
	for i := 0; i < 3; i++ {
		randomWrites(t, p, pm, rng, 100, 100_000)
	}
	p.Sync(ctx)
	if _, err := d.Scrub(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.state.Garbage) == 0
	})
	c, _ := d.Volume("c")
	d.cache.Clear()
	check(t, c, &model{data: base})
	check(t, p, pm)
}

// scrubbingBackend runs hook before the first read of SCO 1, while the
// read's location is already resolved.
type scrubbingBackend struct {
	scos.Backend
	once sync.Once
	hook func()
}

func (b *scrubbingBackend) ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error {
	if n, err := scos.ParseSCOName(name); err == nil && n.Number == 1 && b.hook != nil {
		b.once.Do(b.hook)
	}
	return b.Backend.ReadAt(ctx, ns, name, p, off)
}

// TestReadAcrossScrubDeletion: a read that resolved a cluster's location
// before a scrub moved it, and reaches the backend only after the old
// object was deleted, reads the cluster from where it is now instead of
// failing.
func TestReadAcrossScrubDeletion(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.WriteBufferBytes = 1 // reads come from the backend
	e.opts.GarbageGrace = time.Millisecond
	sb := &scrubbingBackend{Backend: e.backend}
	d, err := Open(ctx, e.dir, sb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const size = 8 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(60, 61))
	full := make([]byte, size)
	for i := range full {
		full[i] = byte(rng.IntN(256))
	}
	v.WriteAt(ctx, full, 0, false)
	m.write(full, 0)
	// Garbage: the first half of SCO 1 (which holds the first 4 MiB); a
	// scrub rewrites its second half to a new SCO and deletes it.
	quarter := bytes.Repeat([]byte{0x77}, size/4)
	v.WriteAt(ctx, quarter, 0, false)
	m.write(quarter, 0)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	sb.hook = func() {
		if _, err := d.Scrub(ctx, "a"); err != nil {
			t.Errorf("scrub: %v", err)
		}
		waitFor(t, func() bool {
			v.mu.Lock()
			defer v.mu.Unlock()
			return len(v.state.Garbage) == 0
		})
	}
	check(t, v, m)
}
