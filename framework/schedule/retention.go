// Package schedule takes a node's automatic snapshots of the vdisks it
// owns, prunes them by a retention rule, and runs their scrubs on a
// schedule.
//
// The retention rule is data (Retention, a list of tiers "one snapshot
// per Every for the last For") and Prune is a pure function of the
// automatic snapshots and the time, so that it is tested over weeks of
// snapshots without waiting for them. The Scheduler applies both per
// vdisk on an injected Clock.
package schedule

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Tier keeps one snapshot per Every for the last For.
type Tier struct {
	Every time.Duration
	For   time.Duration
}

// Retention is a list of tiers. A snapshot is kept when some tier keeps
// it; the newest automatic snapshot is always kept.
type Retention []Tier

// DefaultRetention is Open vStorage's: one snapshot per hour for the last
// day, one per day for a week, one per week for four weeks.
func DefaultRetention() Retention {
	return Retention{
		{Every: time.Hour, For: 24 * time.Hour},
		{Every: 24 * time.Hour, For: 7 * 24 * time.Hour},
		{Every: 7 * 24 * time.Hour, For: 28 * 24 * time.Hour},
	}
}

// maxTiers bounds a rule: more says a typo, not a policy.
const maxTiers = 16

// ParseRetention reads "DEFAULT" (any case) or comma-separated
// EVERY:FOR pairs such as "1h:24h,24h:7d,168h:28d". Durations are Go
// durations, or a whole number of days ("7d") or weeks ("4w").
func ParseRetention(s string) (Retention, error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "default") {
		return DefaultRetention(), nil
	}
	if s == "" {
		return nil, errors.New("retention: empty (want DEFAULT or EVERY:FOR,... such as 1h:24h,24h:7d,168h:28d)")
	}
	var r Retention
	for _, part := range strings.Split(s, ",") {
		every, keep, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			return nil, fmt.Errorf("retention %q: %q is not EVERY:FOR (such as 24h:7d)", s, part)
		}
		e, err := ParseDuration(every)
		if err != nil {
			return nil, fmt.Errorf("retention %q: %w", s, err)
		}
		f, err := ParseDuration(keep)
		if err != nil {
			return nil, fmt.Errorf("retention %q: %w", s, err)
		}
		r = append(r, Tier{Every: e, For: f})
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("retention %q: %w", s, err)
	}
	return r, nil
}

// Validate checks that every tier is a positive period of at least a
// minute (the resolution of automatic snapshot names).
func (r Retention) Validate() error {
	if len(r) == 0 {
		return errors.New("no tiers")
	}
	if len(r) > maxTiers {
		return fmt.Errorf("%d tiers; at most %d", len(r), maxTiers)
	}
	for _, t := range r {
		if t.Every < time.Minute || t.For < time.Minute {
			return fmt.Errorf("tier %s:%s: both must be at least 1m", FormatDuration(t.Every), FormatDuration(t.For))
		}
	}
	return nil
}

// String is the rule in ParseRetention's syntax.
func (r Retention) String() string {
	parts := make([]string, len(r))
	for i, t := range r {
		parts[i] = FormatDuration(t.Every) + ":" + FormatDuration(t.For)
	}
	return strings.Join(parts, ",")
}

// ParseDuration reads a Go duration, or whole days ("7d") or weeks ("4w"),
// which time.ParseDuration does not know.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.Atoi(n)
			if err != nil || v < 0 || v > 100*52 {
				return 0, fmt.Errorf("duration %q: want a whole number of %s", s, map[string]string{"d": "days", "w": "weeks"}[suffix])
			}
			return time.Duration(v) * unit, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. 90m, 24h, 7d or 4w", s)
	}
	return d, nil
}

// FormatDuration writes d the way an operator writes it: "28d", "24h",
// "90m".
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d <= 0:
		return d.String()
	case d%day == 0 && d > day:
		return strconv.FormatInt(int64(d/day), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

// Snap is an automatic snapshot as the pruner sees it: its name and the
// time it was taken (by the scheduler's clock).
type Snap struct {
	Name string
	Time time.Time
}

// origin is where the periods of every tier and schedule start: a Monday
// 00:00 UTC, so that hours, days and weeks fall on the calendar's (the
// Unix epoch was a Thursday).
var origin = time.Date(1970, 1, 5, 0, 0, 0, 0, time.UTC)

// slot numbers the period of length every that t falls in, counted from
// origin; a fixed grid, so a snapshot stays in its slot forever.
func slot(t time.Time, every time.Duration) int64 {
	d := t.Sub(origin)
	n := int64(d / every)
	if d < 0 && d%every != 0 {
		n-- // floor, not truncation, before the origin
	}
	return n
}

// Prune returns the names of the snapshots of snaps that rule r does not
// keep at now, oldest first. For each tier, the periods of Every form a
// fixed grid (hours, UTC days, weeks from Monday 00:00 UTC); the oldest
// snapshot of each period is that period's keeper, and it is kept while
// it is younger than For. The other snapshots of a period are kept by no
// tier of that Every. Since the grid is fixed and the keeper is the
// oldest, deleting what Prune returns never changes a keeper: pruning
// every hour and pruning once give the same result, and the hourly
// snapshots of a day make way for the day's first one, not for whichever
// happens to be oldest when the window moves.
//
// Whatever the rule, the newest snapshot is kept (a rule must never leave
// a vdisk without its latest automatic snapshot), and so is every
// snapshot from the future: after the clock jumped back, the snapshots
// taken before the jump are the newest data there is, and they age out
// once the clock has caught up with them. After a jump forward the rule
// applies at the new time, as after a node that was down that long.
func Prune(r Retention, snaps []Snap, now time.Time) []string {
	if len(snaps) == 0 {
		return nil
	}
	sorted := append([]Snap(nil), snaps...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Time.Before(sorted[j].Time) })
	keep := make([]bool, len(sorted))
	keep[len(sorted)-1] = true
	for i, s := range sorted {
		if s.Time.After(now) {
			keep[i] = true
		}
	}
	for _, t := range r {
		if t.Every <= 0 {
			continue
		}
		seen := map[int64]bool{}
		for i, s := range sorted { // oldest first: the first of a slot is its keeper
			k := slot(s.Time, t.Every)
			if seen[k] {
				continue
			}
			seen[k] = true
			if age := now.Sub(s.Time); age >= 0 && age < t.For {
				keep[i] = true
			}
		}
	}
	var out []string
	for i, s := range sorted {
		if !keep[i] {
			out = append(out, s.Name)
		}
	}
	return out
}
