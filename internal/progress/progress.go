// Package progress lets a long operation (a scrub, a flatten, a backend
// repair, a vdisk move) report how far it is to whoever started it, without
// a new parameter: the caller puts a *Tracker in the context with With, the
// operation takes it out with From and reports into it. From a context
// without one it gets a nil *Tracker, whose methods do nothing, so the
// operation's code is the same whether anybody watches or not.
package progress

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Tracker is the progress of one operation: the stage it is in, and how
// much of the stage's total (in unit: "bytes", "objects", "tlogs", ...) is
// done. It is safe for concurrent use; the counters are atomic so that a
// hot loop can Add without taking a lock. A nil *Tracker is valid and
// ignores everything.
type Tracker struct {
	started time.Time

	mu           sync.Mutex // guards stage, unit and stageStarted
	stage        string
	unit         string
	stageStarted time.Time

	done  atomic.Int64
	total atomic.Int64
}

// Snapshot is a Tracker's state at one moment.
type Snapshot struct {
	Stage string `json:"stage"`
	Unit  string `json:"unit,omitempty"`
	Done  int64  `json:"done"`
	// Total is 0 when the size of the stage is not known.
	Total        int64     `json:"total"`
	Started      time.Time `json:"started"`
	StageStarted time.Time `json:"stage_started"`
}

// New returns a tracker started now, in no stage yet.
func New() *Tracker {
	now := time.Now()
	return &Tracker{started: now, stageStarted: now}
}

type ctxKey struct{}

// With returns ctx carrying t.
func With(ctx context.Context, t *Tracker) context.Context {
	return context.WithValue(ctx, ctxKey{}, t)
}

// From returns the tracker in ctx, or nil (a no-op tracker) if there is
// none.
func From(ctx context.Context) *Tracker {
	t, _ := ctx.Value(ctxKey{}).(*Tracker)
	return t
}

// Start begins a stage of total units (0: unknown); done starts at 0.
func (t *Tracker) Start(stage, unit string, total int64) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.stage, t.unit, t.stageStarted = stage, unit, time.Now()
	// Under mu so that a Snapshot never pairs the new stage with the old
	// counters.
	t.done.Store(0)
	t.total.Store(max(total, 0))
	t.mu.Unlock()
}

// SetStage renames the current stage and keeps its counters: for an
// operation whose steps are the units (a move: sync, release, adopt).
func (t *Tracker) SetStage(stage string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.stage = stage
	t.mu.Unlock()
}

// SetTotal changes the total of the current stage, once it is known.
func (t *Tracker) SetTotal(n int64) {
	if t == nil {
		return
	}
	t.total.Store(max(n, 0))
}

// Add records n more units done.
func (t *Tracker) Add(n int64) {
	if t == nil {
		return
	}
	t.done.Add(n)
}

// SetDone sets the units done, for an operation that knows its position
// rather than its steps.
func (t *Tracker) SetDone(n int64) {
	if t == nil {
		return
	}
	t.done.Store(n)
}

// Snapshot returns the current state. Done is capped at Total (when
// known): a total counted before the work began may be a little short.
func (t *Tracker) Snapshot() Snapshot {
	if t == nil {
		return Snapshot{}
	}
	t.mu.Lock()
	s := Snapshot{Stage: t.stage, Unit: t.unit, Done: t.done.Load(), Total: t.total.Load(),
		Started: t.started, StageStarted: t.stageStarted}
	t.mu.Unlock()
	if s.Total > 0 && s.Done > s.Total {
		s.Done = s.Total
	}
	return s
}
