package progress

import (
	"context"
	"sync"
	"testing"
)

func TestTracker(t *testing.T) {
	tests := []struct {
		name string
		run  func(*Tracker)
		want Snapshot
	}{
		{"fresh", func(*Tracker) {}, Snapshot{}},
		{"stage", func(tr *Tracker) { tr.Start("rewrite", "bytes", 100); tr.Add(30); tr.Add(10) },
			Snapshot{Stage: "rewrite", Unit: "bytes", Done: 40, Total: 100}},
		{"new stage resets done", func(tr *Tracker) {
			tr.Start("read", "tlogs", 3)
			tr.Add(3)
			tr.Start("rewrite", "bytes", 0)
			tr.Add(5)
		}, Snapshot{Stage: "rewrite", Unit: "bytes", Done: 5}},
		{"rename keeps counters", func(tr *Tracker) { tr.Start("sync", "steps", 3); tr.Add(1); tr.SetStage("release") },
			Snapshot{Stage: "release", Unit: "steps", Done: 1, Total: 3}},
		{"done capped at total", func(tr *Tracker) { tr.Start("copy", "bytes", 10); tr.Add(25) },
			Snapshot{Stage: "copy", Unit: "bytes", Done: 10, Total: 10}},
		{"total set later", func(tr *Tracker) { tr.Start("copy", "bytes", 0); tr.SetDone(7); tr.SetTotal(70) },
			Snapshot{Stage: "copy", Unit: "bytes", Done: 7, Total: 70}},
		{"negative total is unknown", func(tr *Tracker) { tr.Start("x", "", -5) }, Snapshot{Stage: "x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := New()
			tc.run(tr)
			got := tr.Snapshot()
			if got.Started.IsZero() || got.StageStarted.Before(got.Started) {
				t.Errorf("times: started %v, stage started %v", got.Started, got.StageStarted)
			}
			got.Started, got.StageStarted = tc.want.Started, tc.want.StageStarted
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestNilTrackerIsNoOp(t *testing.T) {
	tr := From(context.Background())
	if tr != nil {
		t.Fatalf("From of a bare context = %v, want nil", tr)
	}
	// None of these may panic.
	tr.Start("s", "u", 1)
	tr.SetStage("s2")
	tr.SetTotal(2)
	tr.Add(1)
	tr.SetDone(1)
	if s := tr.Snapshot(); s != (Snapshot{}) {
		t.Errorf("nil snapshot = %+v", s)
	}
}

func TestWithFrom(t *testing.T) {
	tr := New()
	ctx := With(context.Background(), tr)
	if From(ctx) != tr {
		t.Fatal("From does not return the tracker With put in")
	}
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	if From(child) != tr {
		t.Fatal("a derived context lost the tracker")
	}
}

func TestTrackerConcurrentAdd(t *testing.T) {
	tr := New()
	tr.Start("scrub", "objects", 0)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				tr.Add(1)
				_ = tr.Snapshot()
			}
		}()
	}
	wg.Wait()
	if got := tr.Snapshot().Done; got != 8000 {
		t.Errorf("done = %d, want 8000", got)
	}
}
