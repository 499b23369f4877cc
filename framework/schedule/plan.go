package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ovs-storage/ovs/framework/model"
)

// Plan is what the scheduler does for one vdisk: the schedule of the
// vpool with the vdisk's overrides, read and checked.
type Plan struct {
	// SnapshotEvery: an automatic snapshot per period of this length
	// (hours, UTC days: see Prune's grid); 0: none.
	SnapshotEvery time.Duration
	// Retention prunes the automatic snapshots; it applies even with
	// SnapshotEvery 0, so the snapshots taken before a schedule was
	// turned off still age out (all but the newest).
	Retention Retention
	// ScrubEvery: a scrub this long after the last one; 0: none on
	// schedule (the driver still scrubs a vdisk whose garbage grows past
	// its ratio).
	ScrubEvery time.Duration
}

// Words for the periods of snapshots and scrubs.
const (
	Off    = "off"
	Hourly = "hourly"
	Daily  = "daily"
	Weekly = "weekly"
	// DefaultRetentionName is the retention field's name of DefaultRetention.
	DefaultRetentionName = "default"
)

// ParseEvery reads a period: "hourly", "daily", "weekly", "off" (0) or a
// duration of at least a minute ("30m", "24h", "7d").
func ParseEvery(s string) (time.Duration, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case Off:
		return 0, nil
	case Hourly:
		return time.Hour, nil
	case Daily:
		return 24 * time.Hour, nil
	case Weekly:
		return 7 * 24 * time.Hour, nil
	}
	d, err := ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w, hourly, daily, weekly or off", err)
	}
	if d < time.Minute {
		return 0, fmt.Errorf("period %q: at least 1m (or off)", s)
	}
	return d, nil
}

// FormatEvery is the inverse of ParseEvery, with the words where they fit.
func FormatEvery(d time.Duration) string {
	switch d {
	case 0:
		return Off
	case time.Hour:
		return Hourly
	case 24 * time.Hour:
		return Daily
	case 7 * 24 * time.Hour:
		return Weekly
	}
	return FormatDuration(d)
}

// Check reports what is wrong with the fields of s that are set.
func Check(s model.Schedule) error {
	var errs []error
	if s.Snapshots != "" {
		if _, err := ParseEvery(s.Snapshots); err != nil {
			errs = append(errs, fmt.Errorf("snapshots: %w", err))
		}
	}
	if s.Retention != "" {
		if _, err := ParseRetention(s.Retention); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Scrub != "" {
		if _, err := ParseEvery(s.Scrub); err != nil {
			errs = append(errs, fmt.Errorf("scrub: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Resolve is the plan of a vdisk whose override is vdisk, in a vpool
// whose schedule is vpool. What neither sets takes the defaults: no
// automatic snapshots, DefaultRetention, and a scrub every defaultScrub
// (the node's scrub_interval; 0: none).
//
// Automatic snapshots are off by default: each one pins, for as long as
// the rule keeps it (up to four weeks by default), every cluster
// overwritten after it, so a busy vdisk's backend use grows by its
// rewrite rate times the retention. An operator turns that on knowingly,
// per vpool or per vdisk; the scrub, which only gives space back, is on.
func Resolve(vpool, vdisk model.Schedule, defaultScrub time.Duration) (Plan, error) {
	pick := func(a, b, def string) string {
		if a != "" {
			return a
		}
		if b != "" {
			return b
		}
		return def
	}
	var p Plan
	var err error
	if p.SnapshotEvery, err = ParseEvery(pick(vdisk.Snapshots, vpool.Snapshots, Off)); err != nil {
		return Plan{}, fmt.Errorf("snapshots: %w", err)
	}
	if p.Retention, err = ParseRetention(pick(vdisk.Retention, vpool.Retention, DefaultRetentionName)); err != nil {
		return Plan{}, err
	}
	if scrub := pick(vdisk.Scrub, vpool.Scrub, ""); scrub != "" {
		if p.ScrubEvery, err = ParseEvery(scrub); err != nil {
			return Plan{}, fmt.Errorf("scrub: %w", err)
		}
	} else {
		p.ScrubEvery = max(defaultScrub, 0)
	}
	return p, nil
}

// Schedule writes p back as the model's fields, every one set: what
// `ovs schedule show` prints as the effective schedule.
func (p Plan) Schedule() model.Schedule {
	return model.Schedule{Snapshots: FormatEvery(p.SnapshotEvery), Retention: p.Retention.String(), Scrub: FormatEvery(p.ScrubEvery)}
}
