package schedule

import (
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"
)

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func snapsAt(times ...string) []Snap {
	out := make([]Snap, len(times))
	for i, s := range times {
		out[i] = Snap{Name: s, Time: at(s)}
	}
	return out
}

// hourly returns a snapshot per hour from first to last, inclusive.
func hourly(first, last time.Time) []Snap {
	var out []Snap
	for t := first; !t.After(last); t = t.Add(time.Hour) {
		out = append(out, Snap{Name: SnapshotName(t), Time: t})
	}
	return out
}

func names(snaps []Snap) []string {
	out := make([]string, len(snaps))
	for i, s := range snaps {
		out[i] = s.Name
	}
	return out
}

// without returns snaps less the named ones.
func without(snaps []Snap, drop []string) []Snap {
	var out []Snap
	for _, s := range snaps {
		if !slices.Contains(drop, s.Name) {
			out = append(out, s)
		}
	}
	return out
}

func TestPruneTable(t *testing.T) {
	hourOnly := Retention{{Every: time.Hour, For: 24 * time.Hour}}
	tests := []struct {
		name  string
		rule  Retention
		snaps []Snap
		now   string
		want  []string // deleted
	}{
		{name: "none", rule: DefaultRetention(), now: "2026-12-01 00:00"},
		{name: "one old snapshot is the newest: kept", rule: hourOnly,
			snaps: snapsAt("2026-01-01 00:00"), now: "2026-12-01 00:00"},
		{name: "the newest is kept though no tier keeps it", rule: hourOnly,
			snaps: snapsAt("2026-11-01 00:00", "2026-11-02 00:00"), now: "2026-12-01 00:00",
			want: []string{"2026-11-01 00:00"}},
		{name: "two in one hour: the first is the hour's", rule: hourOnly,
			snaps: snapsAt("2026-12-01 10:05", "2026-12-01 10:40", "2026-12-01 11:02"), now: "2026-12-01 11:30",
			want: []string{"2026-12-01 10:40"}},
		{name: "the window is For from now, exclusive", rule: hourOnly,
			snaps: snapsAt("2026-11-30 10:00", "2026-11-30 11:00", "2026-12-01 10:00"), now: "2026-12-01 11:00",
			want: []string{"2026-11-30 10:00", "2026-11-30 11:00"}},
		{name: "irregular gaps: a day's first snapshot is its keeper, wherever it falls", rule: DefaultRetention(),
			snaps: snapsAt("2026-11-20 17:45", "2026-11-20 23:59", "2026-11-22 00:01", "2026-11-22 13:00",
				"2026-11-25 09:30", "2026-11-25 09:31", "2026-12-01 06:00"),
			now: "2026-12-01 06:00",
			// 11-20 and 11-22 are older than 7 days; Monday 11-16's
			// week keeps 11-20 17:45 (its first), 11-22 00:01 is
			// Sunday of the same week; Monday 11-23's week keeps
			// 11-25 09:30, which the daily tier keeps too.
			want: []string{"2026-11-20 23:59", "2026-11-22 00:01", "2026-11-22 13:00", "2026-11-25 09:31"}},
		{name: "clock jumped back: snapshots from the future are kept", rule: hourOnly,
			snaps: snapsAt("2026-11-01 00:00", "2026-12-01 08:00", "2026-12-01 09:00", "2026-12-01 09:30"),
			now:   "2026-12-01 03:00",
			want:  []string{"2026-11-01 00:00"}},
		{name: "clock jumped forward: the rule applies at the new time", rule: DefaultRetention(),
			snaps: snapsAt("2026-12-01 08:00", "2026-12-01 09:00", "2026-12-02 00:00", "2027-02-01 00:00"),
			now:   "2027-02-01 00:00",
			want:  []string{"2026-12-01 08:00", "2026-12-01 09:00", "2026-12-02 00:00"}},
		{name: "unordered input", rule: hourOnly,
			snaps: snapsAt("2026-12-01 10:40", "2026-12-01 11:02", "2026-12-01 10:05"), now: "2026-12-01 11:30",
			want: []string{"2026-12-01 10:40"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Prune(tc.rule, tc.snaps, at(tc.now))
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Prune deleted %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPruneWeeksOfHourly takes a snapshot every hour for six weeks,
// pruning after each, and checks the survivors at one point by hand and
// at every hour against a single prune of everything ever taken.
func TestPruneWeeksOfHourly(t *testing.T) {
	rule := DefaultRetention()
	start := at("2026-11-04 05:00") // a Wednesday: the first week is partial
	end := at("2026-12-16 23:00")
	var kept, all []Snap
	for now := start; !now.After(end); now = now.Add(time.Hour) {
		s := Snap{Name: SnapshotName(now), Time: now}
		kept = append(kept, s)
		all = append(all, s)
		kept = without(kept, Prune(rule, kept, now))

		once := without(all, Prune(rule, all, now))
		if !reflect.DeepEqual(names(kept), names(once)) {
			t.Fatalf("at %s: pruning every hour kept %v, pruning once %v", now, names(kept), names(once))
		}
		if again := Prune(rule, kept, now); len(again) != 0 {
			t.Fatalf("at %s: a second prune deletes %v", now, again)
		}
		if now.Equal(at("2026-12-14 12:00")) { // a Monday
			var want []Snap
			want = append(want, snapsAt("2026-11-23 00:00", "2026-11-30 00:00", "2026-12-07 00:00")...) // Mondays
			want = append(want, snapsAt("2026-12-08 00:00", "2026-12-09 00:00", "2026-12-10 00:00",
				"2026-12-11 00:00", "2026-12-12 00:00", "2026-12-13 00:00")...) // days
			want = append(want, hourly(at("2026-12-13 13:00"), now)...) // the last 24 hours
			for i := range want {
				want[i].Name = SnapshotName(want[i].Time)
			}
			sort.Slice(want, func(i, j int) bool { return want[i].Time.Before(want[j].Time) })
			if !reflect.DeepEqual(names(kept), names(want)) {
				t.Fatalf("at %s kept %v\nwant %v", now, names(kept), names(want))
			}
		}
	}
	// At the end: 24 hourly, 7 daily (today's is an hourly one), and
	// the Mondays of the last 4 weeks (this week's is a daily one).
	if len(kept) != 24+6+3 {
		t.Fatalf("kept %d snapshots at the end: %v", len(kept), names(kept))
	}
}

func TestParseRetention(t *testing.T) {
	tests := []struct {
		in      string
		want    Retention
		wantErr bool
	}{
		{in: "DEFAULT", want: DefaultRetention()},
		{in: "default", want: DefaultRetention()},
		{in: "1h:24h,24h:7d,168h:28d", want: DefaultRetention()},
		{in: "1h:1d, 1d:1w, 1w:4w", want: DefaultRetention()},
		{in: "30m:6h", want: Retention{{30 * time.Minute, 6 * time.Hour}}},
		{in: "", wantErr: true},
		{in: "1h", wantErr: true},
		{in: "1h:", wantErr: true},
		{in: "0s:24h", wantErr: true},
		{in: "1h:-24h", wantErr: true},
		{in: "1s:24h", wantErr: true},
		{in: "xd:1d", wantErr: true},
		{in: "1h:99999999w", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseRetention(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseRetention(%q) error %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseRetention(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if s := DefaultRetention().String(); s != "1h:24h,24h:7d,7d:28d" {
		t.Errorf("DefaultRetention().String() = %q", s)
	}
	r, err := ParseRetention(DefaultRetention().String())
	if err != nil || !reflect.DeepEqual(r, DefaultRetention()) {
		t.Errorf("String does not parse back: %v %v", r, err)
	}
}
