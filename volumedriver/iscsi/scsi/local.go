package scsi

import (
	"context"
	"slices"
	"sync"
)

// localState is what every LU of a vdisk on this node shares beyond the
// persistent reservations, and on this node only: the SPC-2 reservation
// and the extent locks that make COMPARE AND WRITE and ORWRITE atomic.
// It lives in the vdisk's Reservations (one per vdisk per node, shared
// by every session of the vdisk there). The zero value is ready.
//
// Node-local is a deliberate limit. SPC-2 reservations are legacy (SPC-3
// made them obsolete in favour of persistent reservations, which are
// cluster-wide here) and die with their I_T nexus anyway, so an
// initiator reaching the vdisk through two nodes at once must use
// persistent reservations. Likewise a COMPARE AND WRITE is atomic
// against writes arriving through this node; writes to the same blocks
// arriving through another node at the same instant are not ordered
// with it.
type localState struct {
	mu sync.Mutex
	// spc2 holds the I_T nexus of the SPC-2 reservation (RESERVE), if any.
	spc2 *Nexus

	extents extentLocks
}

// local returns the state the LU shares with the other LUs of its vdisk
// on this node: the Reservations', or without PR the LU's own.
func (lu *LU) local() *localState {
	if lu.PR != nil {
		return &lu.PR.local
	}
	return &lu.own
}

// NexusLost tells the LU that I_T nexus nx has ended: its session logged
// out, lost its connection or was reinstated. SPC-2 reservations are
// released on I_T nexus loss (SPC-2 5.5.1); persistent ones stay.
func (lu *LU) NexusLost(nx Nexus) {
	l := lu.local()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spc2 != nil && sameNexus(*l.spc2, nx) {
		l.spc2 = nil
	}
}

// Reset tells the LU of a LOGICAL UNIT RESET or a target reset: the
// SPC-2 reservation is released (SAM-5 6.3); persistent ones stay. The
// vdisk's reset count grows in the shared state, so that sessions on
// other nodes report the reset too (ResetCount); Reset returns the new
// count (0 without shared state, or when it could not be stored: the
// reset is then this node's alone).
func (lu *LU) Reset(ctx context.Context) uint64 {
	l := lu.local()
	l.mu.Lock()
	l.spc2 = nil
	l.mu.Unlock()
	if lu.PR == nil {
		return 0
	}
	var n uint64
	_, err := lu.PR.update(ctx, func(s *prState) (Result, bool) {
		s.Resets++
		n = s.Resets
		return Result{}, true
	})
	if err != nil {
		lu.PR.log.Warn("scsi: the reset could not be recorded for the other nodes", "err", err)
		return 0
	}
	return n
}

// ResetCount returns how many LUN and target resets the vdisk has had
// on any node: from the state cached for conflict checks (at most about a
// second old), or read from the store when fresh is set. The transport
// reads it fresh for TEST UNIT READY, the command multipath path checkers
// poll with, so that a reset through another node shows at once there.
func (lu *LU) ResetCount(ctx context.Context, fresh bool) (uint64, error) {
	if lu.PR == nil {
		return 0, nil
	}
	var (
		s   *prState
		err error
	)
	if fresh {
		s, err = lu.PR.current(ctx)
	} else {
		s, err = lu.PR.cached(ctx)
	}
	if err != nil {
		return 0, err
	}
	return s.Resets, nil
}

// sameNexus compares I_T nexuses by their port names (case-insensitive
// iSCSI names).
func sameNexus(a, b Nexus) bool {
	return samePort(a.InitiatorPort, b.InitiatorPort) && samePort(a.TargetPort, b.TargetPort)
}

// spc2Conflict reports whether command c from nx meets an SPC-2
// reservation: one of another I_T nexus, or for PERSISTENT RESERVE IN
// and OUT any one (SPC-2 5.5.1: they conflict "regardless of initiator
// or service action", which keeps the two kinds of reservation apart).
func (l *localState) spc2Conflict(nx Nexus, c *command) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.spc2 == nil:
		return false
	case c.op == opPersistentReserveIn || c.op == opPersistentReserveOut:
		return true
	}
	return !c.spc2Allowed && !sameNexus(*l.spc2, nx)
}

// extentLocks orders the commands that change blocks so that a
// read-modify-write (COMPARE AND WRITE, ORWRITE) is atomic: it locks its
// blocks exclusively, other writes lock theirs shared (they need no
// order among themselves). Requests queue in arrival order and each
// waits only for the earlier ones it overlaps, so an exclusive request
// is not starved by a stream of shared ones, and there is no deadlock
// (a request never waits for a later one). Reads take no lock.
type extentLocks struct {
	mu   sync.Mutex
	held []*extentLock // granted or waiting, in arrival order
}

type extentLock struct {
	lba, n    uint64
	exclusive bool
	done      chan struct{} // closed on unlock
}

func (a *extentLock) overlaps(b *extentLock) bool {
	return a.lba < b.lba+b.n && b.lba < a.lba+a.n
}

// lock locks [lba, lba+n) (the range is within the LU: no overflow)
// and returns its unlock; an error when ctx ends first.
func (l *extentLocks) lock(ctx context.Context, lba, n uint64, exclusive bool) (func(), error) {
	if n == 0 {
		return func() {}, nil
	}
	me := &extentLock{lba: lba, n: n, exclusive: exclusive, done: make(chan struct{})}
	l.mu.Lock()
	var before []chan struct{}
	for _, o := range l.held {
		if (exclusive || o.exclusive) && o.overlaps(me) {
			before = append(before, o.done)
		}
	}
	l.held = append(l.held, me)
	l.mu.Unlock()
	unlock := func() {
		l.mu.Lock()
		if i := slices.Index(l.held, me); i >= 0 {
			l.held = slices.Delete(l.held, i, i+1)
		}
		l.mu.Unlock()
		close(me.done)
	}
	for _, ch := range before {
		select {
		case <-ch:
		case <-ctx.Done():
			unlock()
			return nil, ctx.Err()
		}
	}
	return unlock, nil
}
