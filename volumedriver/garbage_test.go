package volumedriver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

func TestScrubDue(t *testing.T) {
	const MiB = 1 << 20
	tests := []struct {
		name                   string
		stored, garbage, floor int64
		ratio                  float64
		want                   bool
	}{
		{"no garbage", 64 * MiB, 0, 0, 0.25, false},
		{"under the ratio", 100 * MiB, 19 * MiB, 0, 0.25, false},
		{"over the ratio", 100 * MiB, 30 * MiB, 0, 0.25, true},
		{"over, but less than an SCO", 12 * MiB, 3 * MiB, 0, 0.25, false},
		{"all garbage", 64 * MiB, 64 * MiB, 0, 0.25, true},
		{"over, but the last scrub left about as much", 100 * MiB, 30 * MiB, 27 * MiB, 0.25, false},
		{"over, and grown well past what the last scrub left", 100 * MiB, 40 * MiB, 27 * MiB, 0.25, true},
		{"disabled", 100 * MiB, 90 * MiB, 0, -1, false},
		{"bad figures (garbage over stored)", 10 * MiB, 20 * MiB, 0, 0.25, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := scrubDue(tc.stored, tc.garbage, tc.floor, 4*MiB, tc.ratio); got != tc.want {
				t.Fatalf("scrubDue(stored %d, garbage %d, floor %d, ratio %v) = %v, want %v",
					tc.stored, tc.garbage, tc.floor, tc.ratio, got, tc.want)
			}
		})
	}
}

// TestGarbageAccounting: overwrites and trims count as garbage unless a
// snapshot taken in between still sees the old data; the figures survive a
// restart, a move to a new host and a rollback, and a scrub takes back
// what it reclaims.
func TestGarbageAccounting(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer func() { d.Close() }()
	const MiB = 1 << 20
	if _, err := d.Create(ctx, "a", 16*MiB, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	fill := func(b byte, off, n int64) {
		t.Helper()
		p := make([]byte, n)
		for i := range p {
			p[i] = b
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
	}
	want := func(what string, stored, garbage int64) {
		t.Helper()
		info := v.info()
		if info.StoredBytes != stored || info.GarbageBytes != garbage {
			t.Fatalf("%s: stored %d garbage %d, want %d and %d", what, info.StoredBytes, info.GarbageBytes, stored, garbage)
		}
	}
	fill(1, 0, 8*MiB)
	want("first write", 8*MiB, 0)
	fill(2, 0, 4*MiB)
	want("overwrite", 12*MiB, 4*MiB)
	if _, err := v.CreateSnapshot(ctx, "s1", ""); err != nil {
		t.Fatal(err)
	}
	fill(3, 0, 2*MiB) // s1 sees what this overwrites
	want("overwrite under a snapshot", 14*MiB, 4*MiB)
	fill(4, 0, 1*MiB) // written after s1: garbage
	want("second overwrite after the snapshot", 15*MiB, 5*MiB)
	if err := v.Trim(ctx, 1*MiB, 1*MiB); err != nil { // written after s1
		t.Fatal(err)
	}
	if err := v.Trim(ctx, 6*MiB, 1*MiB); err != nil { // seen by s1
		t.Fatal(err)
	}
	want("trims", 15*MiB, 6*MiB)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	// A clean restart, a crash, a new host: the same figures.
	d.Close()
	d = e.open()
	v, _ = d.Volume("a")
	want("after a restart", 15*MiB, 6*MiB)
	fill(5, 12*MiB, 1*MiB) // unflushed at the crash
	want("before the crash", 16*MiB, 6*MiB)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	crash(d)
	d = e.open()
	v, _ = d.Volume("a")
	want("after a crash", 16*MiB, 6*MiB)
	d.Close()
	if err := os.RemoveAll(e.dir); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	v, _ = d.Volume("a")
	want("on a new host", 16*MiB, 6*MiB)

	// A scrub takes back the unprotected garbage (what s1 sees stays).
	if _, err := d.Scrub(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	info := v.info()
	if info.GarbageBytes != 0 || info.StoredBytes != 10*MiB {
		t.Fatalf("after a scrub: stored %d garbage %d, want 10 MiB and 0", info.StoredBytes, info.GarbageBytes)
	}
	// A rollback recounts from the TLogs it keeps.
	if err := v.Rollback(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	info = v.info()
	if info.StoredBytes != 8*MiB || info.GarbageBytes != 0 {
		t.Fatalf("after rollback to s1: stored %d garbage %d, want 8 MiB and 0", info.StoredBytes, info.GarbageBytes)
	}
}

// TestGarbageTriggersScrub: random overwrites of many times a vdisk's size
// with no scrub interval: the garbage trigger keeps the backend's SCO bytes
// within 1.5x of the live data.
func TestGarbageTriggersScrub(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.ScrubInterval = -1
	e.opts.ScrubGarbageRatio = DefaultScrubGarbageRatio
	e.opts.GarbageGrace = 10 * time.Millisecond
	var logs bytes.Buffer
	var logMu sync.Mutex
	e.opts.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil))
	d := e.open()
	defer d.Close()
	const size = 16 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	full := make([]byte, size)
	for i := range full {
		full[i] = 7
	}
	if err := v.WriteAt(ctx, full, 0, false); err != nil {
		t.Fatal(err)
	}
	m.write(full, 0)
	rng := rand.New(rand.NewPCG(80, 81))
	// 6x the size in 64 KiB random overwrites, synced now and then.
	var peak float64
	for round := 0; round < 6; round++ {
		for i := 0; i < size/(64<<10); i++ {
			p := make([]byte, 64<<10)
			for j := range p {
				p[j] = byte(rng.IntN(256))
			}
			off := rng.Int64N(size/(64<<10)) * (64 << 10)
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatal(err)
			}
			m.write(p, off)
		}
		if err := v.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		got, _ := v.backendSCOBytes(ctx)
		peak = max(peak, float64(got)/size)
	}
	var got int64
	deadline := time.Now().Add(time.Minute)
	for {
		var err error
		if got, err = v.backendSCOBytes(ctx); err != nil {
			t.Fatal(err)
		}
		if float64(got) <= 1.5*size {
			break
		}
		if time.Now().After(deadline) {
			info := v.info()
			logMu.Lock()
			t.Logf("log:\n%s", logs.String())
			logMu.Unlock()
			t.Fatalf("backend holds %d bytes of SCOs for %d live (%.2fx) after a minute; stored %d garbage %d",
				got, size, float64(got)/size, info.StoredBytes, info.GarbageBytes)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("backend %.2fx of live at the end, %.2fx at the worst sync; garbage %d", float64(got)/size, peak, v.info().GarbageBytes)
	check(t, v, m)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestBoundedScrubTakesWorstFirst: a garbage-triggered scrub rewrites the
// least live SCOs first and stops once it reclaimed its goal; a full scrub
// rewrites every SCO under 80% live.
func TestBoundedScrubTakesWorstFirst(t *testing.T) {
	ctx := context.Background()
	const MiB = 1 << 20
	for _, tc := range []struct {
		name      string
		bounded   bool
		rewritten int
	}{
		{"bounded", true, 2},
		{"full", false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			d := e.open()
			defer d.Close()
			if _, err := d.Create(ctx, "a", 16*MiB, CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			v, _ := d.Volume("a")
			// SCOs 1-4 hold [0, 16 MiB); then 90%, 50% and 30% of SCOs
			// 1, 2 and 3 are overwritten (into fresh SCOs).
			if err := v.WriteAt(ctx, make([]byte, 16*MiB), 0, false); err != nil {
				t.Fatal(err)
			}
			for i, frac := range []float64{0.9, 0.5, 0.3} {
				n := int64(frac*4*MiB) &^ 4095
				if err := v.WriteAt(ctx, make([]byte, n), int64(i)*4*MiB, false); err != nil {
					t.Fatal(err)
				}
			}
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			res, err := d.scrub(ctx, "a", tc.bounded)
			if err != nil {
				t.Fatal(err)
			}
			if res.SCOsRewritten != tc.rewritten {
				t.Fatalf("rewrote %d SCOs, want %d (%+v)", res.SCOsRewritten, tc.rewritten, res)
			}
			objs, err := e.backend.List(ctx, v.ns, "")
			if err != nil {
				t.Fatal(err)
			}
			has := map[string]bool{}
			for _, o := range objs {
				has[o.Name] = true
			}
			// The two least live go first, whatever the bound.
			if !has["00_00000001_01"] || !has["00_00000002_01"] {
				t.Fatalf("the least live SCOs were not rewritten: %v", has)
			}
			if got := has["00_00000003_01"]; got != !tc.bounded {
				t.Fatalf("SCO 3 (70%% live) rewritten: %v, want %v", got, !tc.bounded)
			}
		})
	}
}
