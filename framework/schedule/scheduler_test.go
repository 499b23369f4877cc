package schedule

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
)

// recorder is the real driver with a record of what the scheduler did,
// by the fake clock.
type recorder struct {
	*volumedriver.Driver
	clock *FakeClock

	mu      sync.Mutex
	created map[string][]Snap // vdisk -> automatic snapshots taken
	scrubs  map[string][]time.Time
	results map[string][]volumedriver.ScrubResult
}

func (r *recorder) CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (volumedriver.SnapshotInfo, error) {
	in, err := r.Driver.CreateSnapshot(ctx, vdisk, snapshot, metadata)
	if err == nil {
		r.mu.Lock()
		r.created[vdisk] = append(r.created[vdisk], Snap{Name: snapshot, Time: r.clock.Now().UTC()})
		r.mu.Unlock()
	}
	return in, err
}

func (r *recorder) Scrub(ctx context.Context, name string) (volumedriver.ScrubResult, error) {
	res, err := r.Driver.Scrub(ctx, name)
	if err == nil {
		r.mu.Lock()
		r.scrubs[name] = append(r.scrubs[name], r.clock.Now().UTC())
		r.results[name] = append(r.results[name], res)
		r.mu.Unlock()
	}
	return res, err
}

// memSource is a Source over plans fixed by the test.
type memSource struct {
	mu       sync.Mutex
	plans    map[string]Plan
	scrubbed map[string]time.Time
}

func (m *memSource) Owned(ctx context.Context) ([]Target, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Target
	for name, p := range m.plans {
		out = append(out, Target{Name: name, Plan: p, Scrubbed: m.scrubbed[name]})
	}
	return out, nil
}

func (m *memSource) SetScrubbed(ctx context.Context, t Target, at time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.scrubbed[t.Name] = at
	return nil
}

func autoNames(t *testing.T, d *volumedriver.Driver, vdisk string) (auto []string, user []string) {
	t.Helper()
	list, err := d.ListSnapshots(context.Background(), vdisk)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range list {
		if _, ok := ParseAuto(sn); ok {
			auto = append(auto, sn.Name)
		} else {
			user = append(user, sn.Name)
		}
	}
	return auto, user
}

// TestSchedulerOverDriver runs the scheduler over a real volume driver
// on a fake clock through five weeks, and checks after every pass that the automatic snapshots present are exactly what
// the retention rule keeps of all those taken, that users' snapshots
// (even one named auto-...) and one a clone is built on stay, that a
// template is skipped, and that the scrubs ran on their schedule and
// gave space back. Then the clock jumps back and forward.
func TestSchedulerOverDriver(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := t.TempDir()
	backend, err := scos.NewLocalDir(filepath.Join(root, "backend"))
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The driver's own interval scrubber is off: the schedule decides.
	drv, err := volumedriver.Open(ctx, filepath.Join(root, "volumes"), backend, volumedriver.Options{
		Logger: quiet, ScrubInterval: -1, ScrubGarbageRatio: -1, GarbageGrace: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	for _, n := range []string{"a", "b", "tmpl"} {
		if _, err := drv.Create(ctx, n, 64<<20, volumedriver.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Users' snapshots of a: the scheduler must never delete them.
	if _, err := drv.CreateSnapshot(ctx, "a", "mine", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := drv.CreateSnapshot(ctx, "a", "auto-manual", `{"note":"taken by hand"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := drv.CreateSnapshot(ctx, "tmpl", "base", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := drv.SetTemplate(ctx, "tmpl"); err != nil {
		t.Fatal(err)
	}

	start := time.Date(2026, 11, 4, 5, 0, 30, 0, time.UTC) // a Wednesday
	clock := NewFakeClock(start)
	rec := &recorder{Driver: drv, clock: clock, created: map[string][]Snap{}, scrubs: map[string][]time.Time{},
		results: map[string][]volumedriver.ScrubResult{}}
	hourlyDaily := Plan{SnapshotEvery: time.Hour, Retention: DefaultRetention(), ScrubEvery: 24 * time.Hour}
	src := &memSource{scrubbed: map[string]time.Time{}, plans: map[string]Plan{
		"a":    hourlyDaily,
		"b":    {Retention: DefaultRetention(), ScrubEvery: 24 * time.Hour}, // scrubs only
		"tmpl": {SnapshotEvery: time.Hour, Retention: DefaultRetention()},
	}}
	passed := make(chan time.Time, 1)
	s := New(rec, src, Options{Clock: clock, Logger: quiet, Passed: func(now time.Time) { passed <- now }})
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait := func() time.Time {
		t.Helper()
		select {
		case now := <-passed:
			return now
		case <-time.After(2 * time.Minute): // a guard against a hang, not a timing assertion
			t.Fatal("the scheduler made no pass")
			return time.Time{}
		}
	}
	step := func(d time.Duration) time.Time {
		clock.Advance(d)
		return wait()
	}
	write := func(vdisk string, off int64, b byte, n int, sync bool) {
		t.Helper()
		v, err := drv.Volume(vdisk)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{b}, n), off, false); err != nil {
			t.Fatal(err)
		}
		if !sync {
			return
		}
		if err := v.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}

	now := wait() // the first pass, at start
	// b: 2 MiB written twice; only the second copy is live, and no
	// snapshot protects the first: the next scheduled scrub reclaims it.
	write("b", 0, 1, 2<<20, true)
	write("b", 0, 2, 2<<20, true)

	var cloned string
	end := start.Add(5 * 7 * 24 * time.Hour)
	for i := 0; ; i++ {
		write("a", int64(i%1000)*4096, byte(i), 4096, false)
		created := slices.Clone(rec.created["a"])
		want := names(without(created, Prune(DefaultRetention(), created, now)))
		if cloned != "" && !slices.Contains(want, cloned) {
			want = append(want, cloned) // kept past its retention: a clone is built on it
			slices.SortFunc(want, func(x, y string) int { return compareSnapTime(created, x, y) })
		}
		auto, user := autoNames(t, drv, "a")
		if !reflect.DeepEqual(auto, want) {
			t.Fatalf("at %s: automatic snapshots of a are %v\nwant %v", now, auto, want)
		}
		if !reflect.DeepEqual(user, []string{"mine", "auto-manual"}) {
			t.Fatalf("at %s: the users' snapshots of a are %v", now, user)
		}
		// Every hour has its snapshot.
		if last := created[len(created)-1]; slot(last.Time, time.Hour) != slot(now, time.Hour) {
			t.Fatalf("at %s: the last automatic snapshot is %s", now, last.Name)
		}
		if i == 30 {
			// A clone of an hourly snapshot that the rule drops after a day.
			cloned = created[len(created)-5].Name
			if _, err := drv.Clone(ctx, "clone", "a", cloned); err != nil {
				t.Fatal(err)
			}
		}
		if !now.Before(end) {
			break
		}
		// Every hour for the first three days and the last one; in
		// between every six hours, which keeps a snapshot in every day
		// and week and the test short (each pass writes state files).
		d := time.Hour
		if now.Sub(start) >= 3*24*time.Hour && end.Sub(now) > 30*time.Hour {
			d = 6 * time.Hour
		}
		now = step(d)
	}
	// Five weeks, pruned by the rule: 24 hourly + 6 more daily + 3 more
	// weekly (the current week's Monday is a daily one), and the clone's.
	if auto, _ := autoNames(t, drv, "a"); len(auto) != 24+6+3+1 {
		t.Fatalf("a has %d automatic snapshots after five weeks: %v", len(auto), auto)
	}
	if got := len(rec.created["tmpl"]); got != 0 {
		t.Fatalf("the template got %d automatic snapshots", got)
	}
	var wantScrubs []time.Time
	for at := start.Add(24 * time.Hour); !at.After(now); at = at.Add(24 * time.Hour) {
		wantScrubs = append(wantScrubs, at)
	}
	for _, n := range []string{"a", "b"} {
		if !reflect.DeepEqual(rec.scrubs[n], wantScrubs) {
			t.Fatalf("%s was scrubbed at %v\nwant %v", n, rec.scrubs[n], wantScrubs)
		}
	}
	if r := rec.results["b"][0]; r.BackendBytesAfter >= r.BackendBytesBefore || r.SCOsRewritten+r.SCOsDeleted == 0 {
		t.Fatalf("b's scheduled scrub after the overwrite gave nothing back: %+v", r)
	}
	if len(rec.scrubs["tmpl"]) != 0 {
		t.Fatalf("tmpl has no scrub schedule but was scrubbed at %v", rec.scrubs["tmpl"])
	}

	// The clock jumps back three hours: nothing is deleted (the newest
	// snapshots are in the future now) and no snapshot is due (that
	// hour has one).
	before, _ := autoNames(t, drv, "a")
	clock.Set(now.Add(-3 * time.Hour))
	clock.Advance(time.Minute) // the ticker waits a period after a jump back
	wait()
	if after, _ := autoNames(t, drv, "a"); !reflect.DeepEqual(after, before) {
		t.Fatalf("after the clock jumped back: %v\nbefore: %v", after, before)
	}
	// It jumps forward ten days: one new snapshot, and of the old ones
	// only the weekly keepers younger than four weeks (and the clone's).
	now = step(10*24*time.Hour + 3*time.Hour)
	created := rec.created["a"]
	var want []string
	weeks := map[int64]bool{}
	for i, sn := range created {
		week := slot(sn.Time, 7*24*time.Hour)
		first := !weeks[week] // the first snapshot of its week (from Monday 00:00 UTC)
		weeks[week] = true
		newest := i == len(created)-1
		if sn.Name == cloned || newest || first && now.Sub(sn.Time) < 28*24*time.Hour {
			want = append(want, sn.Name)
		}
	}
	if want[len(want)-1] != SnapshotName(now) {
		t.Fatalf("no snapshot was taken after the jump forward: %v", want)
	}
	if auto, _ := autoNames(t, drv, "a"); !reflect.DeepEqual(auto, want) {
		t.Fatalf("after the clock jumped forward to %s: %v\nwant %v", now, auto, want)
	}
}

func compareSnapTime(snaps []Snap, x, y string) int {
	idx := func(n string) int {
		return slices.IndexFunc(snaps, func(s Snap) bool { return s.Name == n })
	}
	return idx(x) - idx(y)
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name         string
		vpool, vdisk model.Schedule
		defScrub     time.Duration
		want         Plan
		wantErr      bool
	}{
		{name: "nothing set: snapshots off, default retention, the node's scrub",
			defScrub: time.Hour, want: Plan{Retention: DefaultRetention(), ScrubEvery: time.Hour}},
		{name: "vpool hourly", vpool: model.Schedule{Snapshots: "hourly", Scrub: "daily"},
			want: Plan{SnapshotEvery: time.Hour, Retention: DefaultRetention(), ScrubEvery: 24 * time.Hour}},
		{name: "vdisk overrides field by field",
			vpool: model.Schedule{Snapshots: "hourly", Retention: "1h:24h", Scrub: "24h"},
			vdisk: model.Schedule{Snapshots: "off", Scrub: "12h"},
			want:  Plan{Retention: Retention{{time.Hour, 24 * time.Hour}}, ScrubEvery: 12 * time.Hour}},
		{name: "scrub off", vpool: model.Schedule{Scrub: "off"}, defScrub: time.Hour,
			want: Plan{Retention: DefaultRetention()}},
		{name: "the node's scrub off", defScrub: -1, want: Plan{Retention: DefaultRetention()}},
		{name: "bad period", vpool: model.Schedule{Snapshots: "sometimes"}, wantErr: true},
		{name: "too short", vdisk: model.Schedule{Scrub: "10s"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.vpool, tc.vdisk, tc.defScrub)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if err == nil && Check(tc.vpool) != nil {
				t.Fatalf("Check refuses what Resolve takes: %v", Check(tc.vpool))
			}
			if err != nil && errors.Join(Check(tc.vpool), Check(tc.vdisk)) == nil {
				t.Fatal("Check takes what Resolve refuses")
			}
		})
	}
}
