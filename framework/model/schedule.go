package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// keyScrubbed + vdisk id: when the scheduler last scrubbed it (or first
// saw it), so that a daily scrub stays daily across restarts and moves of
// the vdisk.
const keyScrubbed = "ovs/scrubbed/"

// Schedule is when automatic snapshots and scrubs of vdisks happen, as
// the operator set it; package schedule reads and checks it. An empty
// field is not set: in the vpool's schedule it means the default, in a
// vdisk's that the vpool's applies.
type Schedule struct {
	// Snapshots: "hourly", "daily", a duration ("30m", "7d") or "off".
	Snapshots string `json:"snapshots,omitempty"`
	// Retention: "default" or EVERY:FOR pairs ("1h:24h,24h:7d,168h:28d").
	Retention string `json:"retention,omitempty"`
	// Scrub: how often ("24h") or "off".
	Scrub string `json:"scrub,omitempty"`
}

// IsZero: nothing set.
func (s Schedule) IsZero() bool { return s == Schedule{} }

// SetVPoolSchedule replaces the vpool's schedule.
func (s *Store) SetVPoolSchedule(ctx context.Context, sch Schedule) error {
	for {
		c, raw, err := getJSON[Cluster](ctx, s.kv, keyCluster)
		if errors.Is(err, ErrNotFound) {
			return ErrNotBootstrap
		}
		if err != nil {
			return err
		}
		c.VPool.Schedule = sch
		out, _ := json.Marshal(c)
		err = s.kv.Apply(ctx, assert(keyCluster, raw), set(keyCluster, out))
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("set the vpool schedule: %w", err)
		}
		return nil
	}
}

// SetVDiskSchedule replaces vdisk name's override of the vpool's schedule
// (zero: none).
func (s *Store) SetVDiskSchedule(ctx context.Context, name string, sch Schedule) error {
	return s.updateVDisk(ctx, name, "set the schedule of", func(v *VDisk) { v.Schedule = sch })
}

// Scrubbed returns when the scheduler last scrubbed the vdisk with
// namespace id (zero: never).
func (s *Store) Scrubbed(ctx context.Context, id string) (time.Time, error) {
	t, _, err := getJSON[time.Time](ctx, s.kv, keyScrubbed+id)
	if errors.Is(err, ErrNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("last scrub of %s: %w", id, err)
	}
	return t, nil
}

// SetScrubbed records that the vdisk with namespace id was scrubbed at t
// by its owner whose record is exactly owner (as read): it fails with
// ErrConflict if the owner changed since (or the vdisk is gone, which
// leaves no record behind).
func (s *Store) SetScrubbed(ctx context.Context, id string, owner []byte, t time.Time) error {
	raw, _ := json.Marshal(t.UTC())
	if err := s.kv.Apply(ctx, assert(OwnerKey(id), owner), set(keyScrubbed+id, raw)); err != nil {
		return fmt.Errorf("record the scrub of %s: %w", id, err)
	}
	return nil
}

// ScrubbedAll returns the last scheduled scrub of every vdisk that had
// one, by namespace id.
func (s *Store) ScrubbedAll(ctx context.Context) (map[string]time.Time, error) {
	ents, err := s.kv.Range(ctx, keyScrubbed)
	if err != nil {
		return nil, fmt.Errorf("last scrubs: %w", err)
	}
	out := make(map[string]time.Time, len(ents))
	for _, e := range ents {
		var t time.Time
		if json.Unmarshal(e.Value, &t) == nil {
			out[strings.TrimPrefix(e.Key, keyScrubbed)] = t
		}
	}
	return out, nil
}
