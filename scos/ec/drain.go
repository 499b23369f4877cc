package ec

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// drainStuckPasses: WaitDrained gives up after this many repair passes in
// a row that moved nothing (no ASD can take the fragments, say).
const drainStuckPasses = 3

// drainPause is the wait between two passes of WaitDrained: the background
// maintenance may be the one doing the work.
const drainPause = time.Second

// Drainer is an Admin that can wait for a decommissioning ASD to drain.
// The admin handler serves it as POST /v1/asds/{id}/decommission?wait=true.
type Drainer interface {
	WaitDrained(ctx context.Context, id string) (MaintenanceReport, error)
}

var _ Drainer = (*Backend)(nil)

// WaitDrained runs repair passes until ASD id, which must be
// decommissioning (or already decommissioned), holds nothing and is
// marked decommissioned, and returns what the passes did together. Each
// pass reports its progress (objects swept, then repaired) to the
// caller's tracker. It fails when drainStuckPasses passes in a row move
// nothing.
func (b *Backend) WaitDrained(ctx context.Context, id string) (MaintenanceReport, error) {
	var sum MaintenanceReport
	stuck := 0
	for {
		r, _, err := b.record(ctx, id)
		if err != nil {
			return sum, fmt.Errorf("drain %s: %w", id, err)
		}
		switch r.State {
		case ASDDecommissioned:
			if !slices.Contains(sum.Drained, id) {
				sum.Drained = append(sum.Drained, id)
			}
			return sum, nil
		case ASDDecommissioning:
		default:
			return sum, fmt.Errorf("drain %s: %w: the ASD is %s, not decommissioning", id, errBadRequest, r.State)
		}
		rep, err := b.Repair(ctx)
		sum.add(rep)
		if err != nil {
			return sum, fmt.Errorf("drain %s: %w", id, err)
		}
		if slices.Contains(rep.Drained, id) {
			continue // the state check above returns
		}
		if rep.Repaired == 0 && rep.FragmentsMoved == 0 {
			stuck++
		} else {
			stuck = 0
		}
		if stuck >= drainStuckPasses {
			return sum, fmt.Errorf("drain %s: %d repair passes in a row moved nothing; %d objects still degraded (see ovs backend status)",
				id, stuck, rep.Remaining)
		}
		select {
		case <-ctx.Done():
			return sum, ctx.Err()
		case <-time.After(drainPause):
		}
	}
}

// add sums o into r: the report of several passes.
func (r *MaintenanceReport) add(o MaintenanceReport) {
	r.Objects += o.Objects
	r.Flagged += o.Flagged
	r.Repaired += o.Repaired
	r.FragmentsRebuilt += o.FragmentsRebuilt
	r.FragmentsMoved += o.FragmentsMoved
	r.Upgraded += o.Upgraded
	r.Remaining = o.Remaining // what the last pass left
	r.Failed += o.Failed
	r.Scrubbed += o.Scrubbed
	r.Corrupt += o.Corrupt
	r.Missing += o.Missing
	r.Orphans += o.Orphans
	for _, d := range o.Drained {
		if !slices.Contains(r.Drained, d) {
			r.Drained = append(r.Drained, d)
		}
	}
	for _, e := range o.Errors {
		if len(r.Errors) < 10 {
			r.Errors = append(r.Errors, e)
		}
	}
}
