package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/ovs-storage/ovs/volumedriver"
)

// Volumes is what the scheduler needs of the volume driver;
// *volumedriver.Driver implements it.
type Volumes interface {
	// Names lists the vdisks the driver serves here.
	Names() []string
	ListSnapshots(ctx context.Context, vdisk string) ([]volumedriver.SnapshotInfo, error)
	CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (volumedriver.SnapshotInfo, error)
	// DeleteSnapshot fails with ErrBusy for a snapshot clones are built on.
	DeleteSnapshot(ctx context.Context, vdisk, snapshot string) error
	Scrub(ctx context.Context, name string) (volumedriver.ScrubResult, error)
}

// Target is a vdisk this node owns, as the Source sees it.
type Target struct {
	Name string
	Plan Plan
	// Scrubbed is when it was last scrubbed on schedule, or when its
	// scrub schedule started (zero: not yet).
	Scrubbed time.Time
	// Ref is the Source's own, handed back to SetScrubbed (the node: the
	// owner record, so that only the owner records a scrub).
	Ref any
}

// Source says which vdisks this node owns and with which plans, and
// keeps their last scrub times where every node sees them (arakoon): a
// vdisk that moves is scrubbed by its new owner on the same schedule.
type Source interface {
	// Owned lists the vdisks this node owns. A vdisk whose schedule
	// cannot be read is left out (and logged by the Source).
	Owned(ctx context.Context) ([]Target, error)
	// SetScrubbed records that t.Name was scrubbed on schedule at at
	// (or that its scrub schedule starts at at).
	SetScrubbed(ctx context.Context, t Target, at time.Time) error
}

// Options tune a Scheduler.
type Options struct {
	// Clock defaults to SystemClock().
	Clock Clock
	// Tick: how often the scheduler looks at the vdisks (default 1m, the
	// resolution of automatic snapshot names).
	Tick time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Passed, if set, is called after each pass with the time the pass
	// ran at (tests wait on it).
	Passed func(now time.Time)
}

// Scheduler takes, prunes and scrubs on schedule for the vdisks this
// node owns. Only the owner acts on a vdisk, so each vdisk is handled by
// exactly one node, and a vdisk that moves is then handled by its new
// owner, which finds its automatic snapshots in the snapshot list and
// its last scrub in the model.
type Scheduler struct {
	vols  Volumes
	src   Source
	clock Clock
	tick  time.Duration
	log   *slog.Logger
	pass  func(time.Time)
	// logged is the last failure logged per key (vdisk, vdisk@snapshot,
	// vdisk/scrub): a failure that repeats every tick is logged once,
	// and again when it changes or after a success.
	logged map[string]string
}

// New returns a Scheduler; Run runs it.
func New(vols Volumes, src Source, opts Options) *Scheduler {
	s := &Scheduler{vols: vols, src: src, clock: opts.Clock, tick: opts.Tick, log: opts.Logger, pass: opts.Passed,
		logged: map[string]string{}}
	if s.clock == nil {
		s.clock = SystemClock()
	}
	if s.tick <= 0 {
		s.tick = time.Minute
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s
}

// Run makes a pass at once and then every tick until ctx is done. A
// failure is logged and the work tried again at the next tick; nothing
// stops the scheduler but ctx.
func (s *Scheduler) Run(ctx context.Context) {
	t := s.clock.NewTicker(s.tick)
	defer t.Stop()
	for {
		s.Pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// Pass does what is due now for every vdisk this node owns: an automatic
// snapshot, the pruning of the automatic snapshots, a scrub. The
// snapshots of all vdisks come before any scrub, so that a long scrub
// delays no snapshot of this pass.
func (s *Scheduler) Pass(ctx context.Context) {
	now := s.clock.Now().UTC()
	defer func() {
		if s.pass != nil {
			s.pass(now)
		}
	}()
	targets, err := s.src.Owned(ctx)
	if err != nil {
		s.fail("", "the vdisks this node owns could not be listed; trying again at the next tick", err)
		return
	}
	s.ok("")
	here := map[string]bool{}
	for _, n := range s.vols.Names() {
		here[n] = true
	}
	// A vdisk the model gives this node but the driver does not serve
	// (yet) is left to the next pass.
	var mine []Target
	for _, t := range targets {
		if here[t.Name] {
			mine = append(mine, t)
		}
	}
	for _, t := range mine {
		if ctx.Err() != nil {
			return
		}
		s.snapshots(ctx, t, now)
	}
	for _, t := range mine {
		if ctx.Err() != nil {
			return
		}
		s.scrub(ctx, t, now)
	}
	s.forget(mine)
}

// AutoPrefix starts the name of every automatic snapshot.
const AutoPrefix = "auto-"

// SnapshotName is the name of the automatic snapshot taken at t:
// "auto-20261201T0300Z" (UTC, to the minute).
func SnapshotName(t time.Time) string { return AutoPrefix + t.UTC().Format("20060102T1504Z") }

// autoMeta is the metadata of an automatic snapshot. The pruner deletes
// only snapshots whose name starts with AutoPrefix and whose metadata is
// this with Auto set: a snapshot a user took is never pruned, whatever
// its name.
type autoMeta struct {
	Auto bool      `json:"ovs_auto"`
	At   time.Time `json:"at"`
	// Every is the schedule the snapshot was taken on, for the operator.
	Every string `json:"every,omitempty"`
}

// AutoMetadata is the metadata of an automatic snapshot taken at t on a
// schedule of every.
func AutoMetadata(t time.Time, every time.Duration) string {
	b, _ := json.Marshal(autoMeta{Auto: true, At: t.UTC(), Every: FormatEvery(every)})
	return string(b)
}

// ParseAuto reports whether sn is an automatic snapshot, and when it was
// taken by the scheduler's clock (which the pruner goes by, not the
// driver's CreatedAt).
func ParseAuto(sn volumedriver.SnapshotInfo) (Snap, bool) {
	if !strings.HasPrefix(sn.Name, AutoPrefix) || !strings.HasPrefix(sn.Metadata, "{") {
		return Snap{}, false
	}
	var m autoMeta
	if json.Unmarshal([]byte(sn.Metadata), &m) != nil || !m.Auto || m.At.IsZero() {
		return Snap{}, false
	}
	return Snap{Name: sn.Name, Time: m.At}, true
}

// snapshots takes t's automatic snapshot if one is due and prunes.
func (s *Scheduler) snapshots(ctx context.Context, t Target, now time.Time) {
	list, err := s.vols.ListSnapshots(ctx, t.Name)
	if err != nil {
		s.fail(t.Name, "automatic snapshots: could not list the snapshots; trying again at the next tick", err)
		return
	}
	var autos []Snap
	for _, sn := range list {
		if a, ok := ParseAuto(sn); ok {
			autos = append(autos, a)
		}
	}
	if every := t.Plan.SnapshotEvery; every > 0 && !taken(autos, now, every) {
		name := SnapshotName(now)
		_, err := s.vols.CreateSnapshot(ctx, t.Name, name, AutoMetadata(now, every))
		switch {
		case err == nil:
			s.ok(t.Name)
			autos = append(autos, Snap{Name: name, Time: now})
			s.log.Info("automatic snapshot", "vdisk", t.Name, "snapshot", name)
		case errors.Is(err, volumedriver.ErrReadOnly):
			// A template never changes: there is nothing to snapshot.
			s.fail(t.Name, "automatic snapshot skipped: the vdisk is a template", nil)
		case errors.Is(err, volumedriver.ErrExists):
			// A user took a snapshot by that name this minute; the
			// next minute's name is free.
			s.fail(t.Name, "automatic snapshot: the name is taken; trying again at the next tick", err)
		default:
			s.fail(t.Name, "automatic snapshot failed; trying again at the next tick", err)
		}
	}
	for _, name := range Prune(t.Plan.Retention, autos, now) {
		key := t.Name + "@" + name
		err := s.vols.DeleteSnapshot(ctx, t.Name, name)
		switch {
		case err == nil:
			delete(s.logged, key)
			s.log.Info("automatic snapshot pruned", "vdisk", t.Name, "snapshot", name)
		case errors.Is(err, volumedriver.ErrNotFound):
			// Gone already (a user deleted it, or a rollback).
		case errors.Is(err, volumedriver.ErrBusy):
			s.fail(key, "automatic snapshot kept past its retention: clones are built on it", err)
		default:
			s.fail(key, "pruning an automatic snapshot failed; trying again at the next tick", err)
		}
	}
}

// taken: an automatic snapshot is in now's period of every.
func taken(autos []Snap, now time.Time, every time.Duration) bool {
	k := slot(now, every)
	for _, a := range autos {
		if slot(a.Time, every) == k {
			return true
		}
	}
	return false
}

// scrub scrubs t if its scrub is due: its period passed since the last
// one, or the last one is in the future (the clock jumped back: waiting
// for it to catch up could take long). A vdisk seen for the first time
// starts its first period now, as the driver's interval scrubber did: a
// new vdisk has nothing to scrub, and a node started after an upgrade
// does not scrub every vdisk at once.
func (s *Scheduler) scrub(ctx context.Context, t Target, now time.Time) {
	every := t.Plan.ScrubEvery
	if every <= 0 {
		return
	}
	key := t.Name + "/scrub"
	last := t.Scrubbed
	if last.IsZero() {
		if err := s.src.SetScrubbed(ctx, t, now); err != nil {
			s.fail(key, "could not start the scrub schedule", err)
		}
		return
	}
	if !last.After(now) && now.Sub(last) < every {
		return
	}
	res, err := s.vols.Scrub(ctx, t.Name)
	if err != nil {
		if ctx.Err() == nil {
			s.fail(key, "scheduled scrub failed; trying again at the next tick", err)
		}
		return
	}
	s.ok(key)
	s.log.Info("scheduled scrub", "vdisk", t.Name, "rewritten", res.SCOsRewritten, "deleted", res.SCOsDeleted,
		"backend_bytes_after", res.BackendBytesAfter, "took", res.Duration)
	if err := s.src.SetScrubbed(ctx, t, now); err != nil {
		// The scrub is done; without the record it is done again at
		// the next tick, which costs time, not data.
		s.fail(key, "could not record the scheduled scrub", err)
	}
}

// fail logs msg for key unless the same failure was the last logged.
func (s *Scheduler) fail(key, msg string, err error) {
	text := msg
	if err != nil {
		text += ": " + err.Error()
	}
	if s.logged[key] == text {
		return
	}
	s.logged[key] = text
	vdisk, _, _ := strings.Cut(strings.TrimSuffix(key, "/scrub"), "@")
	if err == nil {
		s.log.Info(msg, "vdisk", vdisk)
		return
	}
	s.log.Warn(msg, "vdisk", vdisk, "key", key, "err", err)
}

// ok clears key's failure, so that the next one is logged.
func (s *Scheduler) ok(key string) { delete(s.logged, key) }

// forget drops the failures of vdisks this node no longer handles.
func (s *Scheduler) forget(mine []Target) {
	have := map[string]bool{"": true}
	for _, t := range mine {
		have[t.Name] = true
	}
	for key := range s.logged {
		vdisk, _, _ := strings.Cut(strings.TrimSuffix(key, "/scrub"), "@")
		if !have[vdisk] {
			delete(s.logged, key)
		}
	}
}
