package volumedriver

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// Locking of control-plane operations.
//
// d.mu guards only the driver's maps (vols, broken, pending) and is never
// held across backend I/O or a wait on a volume: with the backend stalled
// (ASDs stopped), an operation on one vdisk must not hold up list, info,
// create or new NBD connections of the others.
//
// Operations that change a vdisk's configuration or depend on its set of
// clones (resize, delete, rollback, snapshot delete, set-template, flatten,
// and a clone taken from it) are serialised per vdisk by its control lock,
// which may be held across backend I/O because nothing else shares it.
// Lock order: control lock, scrubMu, uploadMu, v.mu; d.mu is taken alone
// or innermost, for map lookups only.

// lockCtl takes v's control lock, giving up when ctx ends.
func (v *Volume) lockCtl(ctx context.Context) (unlock func(), err error) {
	select {
	case v.ctl <- struct{}{}:
		return func() { <-v.ctl }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: waiting for another operation on it: %w", v.name(), ctx.Err())
	}
}

// lockVolume looks up vdisk name and takes its control lock. It fails with
// ErrNotFound if the vdisk is gone by the time the lock is held.
func (d *Driver) lockVolume(ctx context.Context, name string) (*Volume, func(), error) {
	v, err := d.Volume(name)
	if err != nil {
		return nil, nil, err
	}
	unlock, err := v.lockCtl(ctx)
	if err != nil {
		return nil, nil, err
	}
	// A Release (which holds the lock) or a fence may have come first.
	if err := v.gate.err(); err != nil {
		unlock()
		return nil, nil, err
	}
	d.mu.Lock()
	same := d.vols[name] == v
	d.mu.Unlock()
	if !same {
		unlock()
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return v, unlock, nil
}

// reserveName takes name for a vdisk being created, so that a second
// create or clone of the same name fails at once while the first one does
// its backend I/O without d.mu. release gives the name back if the
// create fails; registerVolume turns the reservation into the vdisk.
func (d *Driver) reserveName(name string) (release func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	_, inVols := d.vols[name]
	_, inBroken := d.broken[name]
	_, inPending := d.pending[name]
	if inVols || inBroken || inPending {
		return nil, fmt.Errorf("%w: %s", ErrExists, name)
	}
	d.pending[name] = struct{}{}
	return func() {
		d.mu.Lock()
		delete(d.pending, name)
		d.mu.Unlock()
	}, nil
}

// registerVolume adds a volume created under a reservation of its name.
// If the driver was closed meanwhile, the volume is closed (it is on the
// backend and comes back at the next start) and ErrClosed returned.
func (d *Driver) registerVolume(v *Volume) error {
	name := v.state.Config.Name
	d.mu.Lock()
	delete(d.pending, name)
	if d.closed {
		d.mu.Unlock()
		if err := v.close(); err != nil {
			d.log.Error("close a vdisk created during shutdown", "vdisk", name, "err", err)
		}
		return fmt.Errorf("create %s: %w", name, ErrClosed)
	}
	d.vols[name] = v
	d.mu.Unlock()
	return nil
}

// clonesOf names the vdisks whose clone chain includes the vdisk with id
// (and, if snapshot is not empty, that were cloned from that snapshot of
// it, directly or through their own parents). It reads each volume's chain
// without its lock, so a volume busy on the backend does not hold it up.
//
// The answer cannot go stale under a caller holding the control lock of
// the vdisk with id: a new clone of it needs that lock, and a clone of one
// of its clones is only possible while that clone exists, which the
// answer already shows.
func (d *Driver) clonesOf(id, snapshot string) []string {
	var out []string
	consider := func(name string, chain []ancestor) {
		for _, a := range chain {
			if a.ID == id && (snapshot == "" || a.Snapshot == snapshot) {
				out = append(out, name)
				return
			}
		}
	}
	d.mu.Lock()
	for name, v := range d.vols {
		if c := v.chain.Load(); c != nil {
			consider(name, *c)
		}
	}
	for name, b := range d.broken {
		consider(name, b.cfg.Ancestors)
	}
	d.mu.Unlock()
	sort.Strings(out)
	return out
}

// describeClones lists clones for an error message.
func describeClones(clones []string) string { return strings.Join(clones, ", ") }
