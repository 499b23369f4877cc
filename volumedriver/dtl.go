package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// The DTL (distributed transaction log).
//
// The owner of a vdisk ships every change it records in its open TLog (a
// run of written clusters with their CRCs, or a trim) to a DTL on another
// node, in TLog order, grouped by TLog: a new TLog begins a new group named
// after it. Once a TLog is on the backend (snapshots.json names it) the DTL
// drops its group and every group before it. So the backend plus the DTL
// hold every change, and a node that takes the vdisk over after its owner
// died restores the backend's state and replays the DTL's groups that the
// backend does not name (ReplayDTL).
//
// Modes: in sync mode a flush is acknowledged once the DTL has made every
// change before it durable too; in async mode the changes are shipped in
// the background and a flush does not wait; none ships nothing.
//
// A session that breaks (the DTL host died, is unreachable, or too slow to
// keep up) leaves the vdisk degraded: it serves on, standalone, while a
// keeper places a new DTL. A new session starts with a fresh TLog (the
// open one is sealed), so the new DTL holds every change from the TLog on;
// the TLogs before it reach the backend in the background, and until they
// have, the state is catching up.

// DTLMode is a vdisk's DTL mode.
type DTLMode string

// DTL modes.
const (
	DTLSync  DTLMode = "sync"
	DTLAsync DTLMode = "async"
	DTLNone  DTLMode = "none"
)

// ParseDTLMode checks a mode given by a user ("a_sync" is Open vStorage's
// spelling of async).
func ParseDTLMode(s string) (DTLMode, error) {
	switch s {
	case "sync":
		return DTLSync, nil
	case "async", "a_sync":
		return DTLAsync, nil
	case "none", "no_sync":
		return DTLNone, nil
	}
	return "", fmt.Errorf("%w: DTL mode %q (use sync, async or none)", ErrInvalidArgument, s)
}

// DTL states, as vdisk info shows them.
const (
	// DTLStateOK: the DTL holds every change the backend does not.
	DTLStateOK = "ok"
	// DTLStateCatchingUp: a new DTL session holds every change from some
	// TLog on; older TLogs are not on the backend yet.
	DTLStateCatchingUp = "catching_up"
	// DTLStateDegraded: no DTL session (its host was lost or is slow); a
	// new one is being placed.
	DTLStateDegraded = "degraded"
	// DTLStateStandalone: no other node can hold the DTL.
	DTLStateStandalone = "standalone"
	// DTLStateDisabled: mode none.
	DTLStateDisabled = "disabled"
)

// DTLSession is one shipping session to a DTL server (the control plane
// adapts volumedriver/dtl's Shipper). Begin, AppendWrite, AppendTrim,
// Sync and Drop are called under the volume's write lock: they only queue,
// never block. They return the position of what they queued, or 0 once the
// session is broken.
type DTLSession interface {
	Begin(tlog, prev string) uint64
	AppendWrite(addr uint64, crcs []uint32, data []byte) uint64
	AppendTrim(addr uint64, count uint32) uint64
	// WaitReceived returns once the DTL has everything up to pos (in
	// its host's kernel: it survives the owner's host), or an error as
	// WaitDurable.
	WaitReceived(ctx context.Context, pos uint64) error
	// Sync asks the DTL to make everything up to pos durable.
	Sync(pos uint64)
	// WaitDurable returns once everything up to pos is durable on the
	// DTL, or an error: one satisfying errors.Is(err, ErrFenced) if the
	// DTL refused this owner's epoch (another node took the vdisk over).
	WaitDurable(ctx context.Context, pos uint64) error
	// Drop: the group named tlog and every one before it are on the
	// backend.
	Drop(tlog string)
	// Done is closed once the session broke; Err tells why.
	Done() <-chan struct{}
	Err() error
	Close()
}

// DTLPlacer is the control plane's DTL placement: it opens a session for
// vdisk id under owner epoch epoch on a node other than this one (in
// another failure domain where there is one), avoiding the nodes in avoid
// where it can, and returns the node it chose. ErrNoDTLNode: no other node
// can hold it.
//
// RecordDTL tells the cluster whether the DTL on node holds every change
// of the vdisk the backend does not (complete), for the node that takes
// the vdisk over should this one die: an incomplete DTL means its clients
// must be told that acknowledged writes may be gone. PlaceDTL records its
// node as not complete yet.
type DTLPlacer interface {
	PlaceDTL(ctx context.Context, id string, epoch uint64, avoid []string) (DTLSession, string, error)
	RecordDTL(ctx context.Context, id string, epoch uint64, node string, complete bool) error
}

// ErrNoDTLNode is returned by a DTLPlacer when no other node can hold a DTL.
var ErrNoDTLNode = errors.New("no other node can hold the DTL")

// dtlSyncTimeout: a sync-mode flush waits this long for the DTL before the
// session is given up as too slow.
const dtlSyncTimeout = 5 * time.Second

// dtlLink is a volume's side of its DTL. Guarded by the volume's mu.
type dtlLink struct {
	mode DTLMode
	sess DTLSession
	node string
	// pos is the position of the newest change queued in sess; missed:
	// sess refused a change (it broke), so it lacks something.
	pos    uint64
	missed bool
	// barrier: sess holds every change after Sealed[:barrier]; the state
	// is ok once the backend has those (publishedCount >= barrier).
	barrier int
	// lastErr: why there is no session (placement failed or it broke).
	lastErr error
	since   time.Time
	// kick wakes the keeper (the mode changed, or the session was
	// dropped).
	kick chan struct{}
	// recorded is what the cluster was told of this tenure's DTL (see
	// DTLPlacer.RecordDTL); recCh is closed and replaced when it changes.
	recorded dtlRecord
	recCh    chan struct{}
}

// dtlRecord is what the cluster knows of a vdisk's DTL.
type dtlRecord int

const (
	recordUnknown    dtlRecord = iota // not told since the last change: not safe
	recordIncomplete                  // told: the DTL does not have everything
	recordComplete                    // told: the DTL has everything
)

func (v *Volume) setRecordedLocked(r dtlRecord) {
	if v.dtl.recorded != r {
		v.dtl.recorded = r
		close(v.dtl.recCh)
		v.dtl.recCh = make(chan struct{})
	}
}

func (v *Volume) kickDTLLocked() {
	close(v.dtl.kick)
	v.dtl.kick = make(chan struct{})
}

func (v *Volume) dtlStateLocked() string {
	switch {
	case v.dtl.mode == DTLNone || v.state.Config.Template:
		return DTLStateDisabled
	case v.drv.opts.DTL == nil || (v.dtl.sess == nil && errors.Is(v.dtl.lastErr, ErrNoDTLNode)):
		return DTLStateStandalone
	case v.dtl.sess == nil:
		return DTLStateDegraded
	case v.publishedCount < v.dtl.barrier || v.snapshotsDirty:
		// snapshotsDirty: snapshots.json on the backend may still name
		// TLogs a rollback discarded.
		return DTLStateCatchingUp
	}
	return DTLStateOK
}

// dtlWriteLocked ships clusters just recorded in the open TLog.
func (v *Volume) dtlWriteLocked(addr uint64, crcs []uint32, data []byte) {
	if s := v.dtl.sess; s != nil {
		v.dtl.queuedLocked(s.AppendWrite(addr, crcs, data))
	}
}

// queuedLocked records the position of what was just queued; 0 means the
// session broke and did not take it.
func (l *dtlLink) queuedLocked(pos uint64) {
	if pos == 0 {
		l.missed = true
		return
	}
	l.pos = pos
}

// dtlTrimLocked ships a trim just recorded in the open TLog.
func (v *Volume) dtlTrimLocked(addr, count uint64) {
	s := v.dtl.sess
	if s == nil {
		return
	}
	for count > 0 {
		n := min(count, math.MaxUint32)
		v.dtl.queuedLocked(s.AppendTrim(addr, uint32(n)))
		addr, count = addr+n, count-n
	}
}

// dtlBeginLocked starts the DTL group of the TLog just opened.
func (v *Volume) dtlBeginLocked() {
	if s := v.dtl.sess; s != nil {
		v.dtl.queuedLocked(s.Begin(v.tlog.name, v.prevTLogLocked()))
	}
}

// prevTLogLocked names the TLog before the open one.
func (v *Volume) prevTLogLocked() string {
	if n := len(v.state.Sealed); n > 0 {
		return v.state.Sealed[n-1].Name
	}
	return ""
}

// dtlPublishedLocked: the backend now names the TLog called name and
// every one before it.
func (v *Volume) dtlPublishedLocked(name string) {
	if s := v.dtl.sess; s != nil {
		s.Drop(name)
	}
}

// dtlReceived is the DTL's part of acknowledging a write in sync mode: the
// DTL has received it, so the owner's host may die without losing it. A
// write no DTL has is acknowledged only once the cluster knows this
// tenure's DTL is incomplete (a node taking the vdisk over then tells
// its clients that acknowledged writes may be gone).
func (v *Volume) dtlReceived(ctx context.Context, s DTLSession, pos uint64, missed bool, mode DTLMode) error {
	if v.drv.opts.DTL == nil || mode != DTLSync {
		return nil
	}
	if (s == nil || missed) && v.replaying.Load() {
		// A DTL replay's writes are no client's: nothing was
		// acknowledged for them yet.
		return nil
	}
	if s != nil && !missed {
		held, err := v.dtlWait(ctx, s, "take a write", func(ctx context.Context) error { return s.WaitReceived(ctx, pos) })
		if held || err != nil {
			return err
		}
	}
	return v.waitRecordedIncomplete(ctx)
}

// dtlWait waits (wait) for session s to hold a change: held says it
// does; err is a failure of the operation (the vdisk was fenced, ctx
// ended). Neither: the session broke and the caller goes on without it. A
// DTL that does not answer within dtlSyncTimeout (its host is cut off, or
// too slow) must not hold the vdisk's I/O: it is dropped, and the keeper
// places another.
func (v *Volume) dtlWait(ctx context.Context, s DTLSession, what string, wait func(context.Context) error) (held bool, err error) {
	wctx, cancel := context.WithTimeout(ctx, dtlSyncTimeout)
	err = wait(wctx)
	cancel()
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrFenced):
		v.fence(err)
		return false, v.fencedErr()
	case ctx.Err() != nil:
		return false, fmt.Errorf("%s: waiting for the DTL to %s: %w", v.name(), what, ctx.Err())
	case wctx.Err() != nil:
		v.log.Warn("the DTL did not answer in time; dropping it", "vdisk", v.name(), "to", what, "timeout", dtlSyncTimeout)
		v.detachDTL(s, fmt.Errorf("waited %s for the DTL to %s", dtlSyncTimeout, what))
	}
	return false, nil
}

// waitRecordedIncomplete returns once the cluster knows that this
// tenure's DTL is incomplete (the keeper tells it).
func (v *Volume) waitRecordedIncomplete(ctx context.Context) error {
	timeout := time.NewTimer(dtlRecordTimeout)
	defer timeout.Stop()
	for {
		v.mu.Lock()
		rec, ch := v.dtl.recorded, v.dtl.recCh
		if rec != recordIncomplete && v.dtl.sess == nil {
			v.kickDTLLocked()
		}
		v.mu.Unlock()
		if rec == recordIncomplete {
			return nil
		}
		if v.fenced.Load() {
			return v.fencedErr()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-timeout.C:
			return fmt.Errorf("%s: no DTL holds the write and the cluster could not be told so within %s", v.name(), dtlRecordTimeout)
		}
	}
}

// dtlRecordTimeout bounds how long a write waits for the cluster to learn
// that the vdisk's DTL is incomplete.
const dtlRecordTimeout = 30 * time.Second

// dtlFlush is the DTL's part of a flush whose local part is done: in sync
// mode it waits until the DTL has everything up to the flush durable.
// Without a DTL session in sync mode the flush is acknowledged only while
// this node's lease (Options.Lease) says no other node can have taken the
// vdisk over: a partitioned owner must not acknowledge a write the new
// owner will not have.
func (v *Volume) dtlFlush(ctx context.Context, s DTLSession, pos uint64, missed bool, mode DTLMode) error {
	if v.drv.opts.DTL == nil || mode == DTLNone {
		return nil
	}
	if missed {
		s = nil // it broke: it does not hold everything
	}
	if s != nil && mode == DTLAsync {
		s.Sync(pos)
		return nil
	}
	if s != nil && mode == DTLSync {
		held, err := v.dtlWait(ctx, s, "make a flush durable", func(ctx context.Context) error { return s.WaitDurable(ctx, pos) })
		if held || err != nil {
			return err
		}
		// The session broke; the keeper places a new one. This flush is
		// durable here only.
	}
	if mode == DTLSync && v.drv.opts.Lease != nil {
		if err := v.drv.opts.Lease(ctx); err != nil {
			return fmt.Errorf("%s: flush: no DTL holds the data and this node's lease is not current: %w", v.name(), err)
		}
	}
	return nil
}

// dtlKeeper keeps the volume's DTL session: it places one when there is
// none, replaces one that broke (avoiding the node that failed), closes it
// when the mode becomes none or the volume stops, and tells the cluster
// whether the DTL is complete (see DTLPlacer.RecordDTL).
func (v *Volume) dtlKeeper() {
	defer v.wg.Done()
	placer := v.drv.opts.DTL
	if placer == nil || v.state.Config.Template {
		return
	}
	var avoid []string
	retry := time.Second
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		v.mu.Lock()
		mode, sess, kick, node, rec := v.dtl.mode, v.dtl.sess, v.dtl.kick, v.dtl.node, v.dtl.recorded
		ok := sess != nil && v.dtlStateLocked() == DTLStateOK
		v.mu.Unlock()
		switch {
		case mode == DTLNone && sess != nil:
			v.detachDTL(sess, nil)
			continue
		case mode == DTLNone:
			select {
			case <-kick:
			case <-v.stop:
				return
			}
			continue
		case sess == nil:
			// Writes without a DTL wait until the cluster knows.
			if rec != recordIncomplete && !v.recordDTL(placer, nil, node, false) {
				if v.fenced.Load() {
					return
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			go func() {
				select {
				case <-v.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			err := v.placeDTL(ctx, avoid)
			cancel()
			if err != nil {
				if errors.Is(err, ErrFenced) {
					v.fence(err)
					return
				}
				select {
				case <-time.After(retry):
				case <-kick:
				case <-v.stop:
					return
				}
				retry = min(2*retry, 10*time.Second)
				avoid = nil // the avoided node may be the only one left
				continue
			}
			retry = time.Second
			continue
		case ok && rec != recordComplete:
			v.recordDTL(placer, sess, node, true)
		}
		select {
		case <-sess.Done():
			err := sess.Err()
			if errors.Is(err, ErrFenced) {
				v.detachDTL(sess, err)
				v.fence(err)
				return
			}
			v.log.Warn("the vdisk's DTL session broke; it is degraded until a new DTL is placed",
				"vdisk", v.name(), "dtl_node", node, "err", err)
			v.detachDTL(sess, err)
			avoid = []string{node}
		case <-kick:
		case <-tick.C:
		case <-v.stop:
			v.detachDTL(sess, nil)
			return
		}
	}
}

// recordDTL tells the cluster whether the DTL (session sess, on node) is
// complete, and notes it if sess is still the volume's session.
func (v *Volume) recordDTL(placer DTLPlacer, sess DTLSession, node string, complete bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := placer.RecordDTL(ctx, v.id, v.epoch, node, complete)
	if errors.Is(err, ErrFenced) {
		v.fence(err)
		return false
	}
	if err != nil {
		v.log.Warn("could not record the DTL's state in the cluster", "vdisk", v.name(), "complete", complete, "err", err)
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.dtl.sess != sess {
		return false
	}
	if complete {
		v.setRecordedLocked(recordComplete)
	} else {
		v.setRecordedLocked(recordIncomplete)
	}
	return true
}

// attachDTL makes s the volume's DTL session. Everything in the open TLog
// so far is not in s, so the open TLog is sealed first (unless empty): s
// starts with a group of its own and holds every change from there on.
func (v *Volume) attachDTL(s DTLSession, node string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.writableLocked(); err != nil {
		return err
	}
	if v.dtl.mode == DTLNone {
		return errors.New("DTL mode changed to none")
	}
	v.dtl.sess, v.dtl.missed = s, false
	// The new session gets a copy of what the backend does not have yet
	// from the write buffer, so it holds everything at once. When that is
	// too much to copy (or cannot be read), it starts at a fresh TLog
	// instead and catches up as the TLogs before it reach the backend.
	copied, err := v.copyUnpublishedLocked(s)
	switch {
	case err != nil:
		v.log.Warn("could not copy what the backend lacks to the new DTL; it catches up through the backend", "vdisk", v.name(), "err", err)
	}
	if copied {
		v.dtl.barrier = v.publishedCount
	} else {
		// A batch being written outside mu may hold records not
		// shipped to s; sealing waits for it (settle).
		if v.tlog.records > 0 || len(v.tlog.scos) > 0 {
			if err := v.sealTLogLocked(); err != nil {
				v.dtl.sess = nil
				return fmt.Errorf("seal the open TLog for a new DTL session: %w", v.ioErrLocked(err))
			}
		} else {
			v.dtlBeginLocked()
		}
		v.dtl.barrier = len(v.state.Sealed)
	}
	v.dtl.node = node
	v.setRecordedLocked(recordIncomplete) // PlaceDTL recorded it so
	v.dtl.lastErr = nil
	v.dtl.since = time.Now()
	v.log.Info("DTL session started", "vdisk", v.name(), "dtl_node", node, "mode", v.dtl.mode,
		"copied", copied, "catching_up_tlogs", max(0, v.dtl.barrier-v.publishedCount))
	return nil
}

// dtlCopyMax bounds what a new DTL session gets copied from the write
// buffer (the shipper queues it all at once, and writes wait meanwhile).
const dtlCopyMax = 32 << 20

// copyUnpublishedLocked ships to s, the new session (already the volume's),
// the changes the backend does not have yet: those of the sealed TLogs
// snapshots.json does not name and of the open TLog, read back from the
// write buffer, each TLog as its group. It does nothing (false) when there is more than
// dtlCopyMax of it; an error leaves part of it shipped, harmless: the
// caller then starts the session at a fresh TLog.
func (v *Volume) copyUnpublishedLocked(s DTLSession) (bool, error) {
	if v.pendingUpload+int64(len(v.tlog.buf)) > dtlCopyMax {
		return false, nil
	}
	// Everything recorded so far into the files: the pending batch, the
	// open SCO's gathered clusters, the buffered TLog records.
	if err := v.writeTLogBufLocked(); err != nil {
		return false, err
	}
	names := make([]string, 0, len(v.state.Sealed)-v.publishedCount+1)
	for _, t := range v.state.Sealed[v.publishedCount:] {
		names = append(names, t.Name)
	}
	names = append(names, v.tlog.name)
	files := map[uint32]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	cs := v.clusterSize
	prev := ""
	if v.publishedCount > 0 {
		prev = v.state.Sealed[v.publishedCount-1].Name
	}
	for _, name := range names {
		b, err := os.ReadFile(v.tlogPath(name))
		if err != nil {
			return false, fmt.Errorf("read TLog %s: %w", name, err)
		}
		recs, _, err := decodeTLog(b)
		if err != nil {
			return false, fmt.Errorf("TLog %s: %w", name, err)
		}
		v.dtl.queuedLocked(s.Begin(name, prev))
		prev = name
		for _, r := range recs {
			switch r.Type {
			case recWrite:
				loc := scos.UnpackLocation(r.Loc)
				if loc.SCO.CloneID != 0 || loc.SCO.Version != 0 {
					return false, fmt.Errorf("TLog %s: a write to %s, not an SCO of the write buffer", name, loc)
				}
				f := files[loc.SCO.Number]
				if f == nil {
					if f, err = os.Open(v.scoPath(loc.SCO.Number)); err != nil {
						return false, fmt.Errorf("TLog %s: %w", name, err)
					}
					files[loc.SCO.Number] = f
				}
				data := make([]byte, cs)
				if _, err := f.ReadAt(data, int64(loc.Offset)*int64(cs)); err != nil {
					return false, fmt.Errorf("TLog %s: read %s: %w", name, loc, err)
				}
				if crc32c(data) != r.DataCRC {
					return false, fmt.Errorf("TLog %s: %s does not match its CRC", name, loc)
				}
				v.dtlWriteLocked(r.Addr, []uint32{r.DataCRC}, data)
			case recTrim:
				v.dtlTrimLocked(r.Addr, r.Count)
			}
		}
	}
	if v.dtl.missed {
		return false, errors.New("the session broke while the copy was queued")
	}
	return true, nil
}

// placeDTLNow places a DTL session at once (the keeper, not running yet,
// retries if it fails).
func (v *Volume) placeDTLNow(ctx context.Context) {
	v.mu.Lock()
	mode := v.dtl.mode
	v.mu.Unlock()
	if v.drv.opts.DTL == nil || mode == DTLNone || v.state.Config.Template {
		return
	}
	v.placeDTL(ctx, nil)
}

// placeDTL has the control plane place a DTL session and attaches it; on
// failure the vdisk goes on without one, and the error is noted (and
// logged when it is a new one).
func (v *Volume) placeDTL(ctx context.Context, avoid []string) error {
	s, node, err := v.drv.opts.DTL.PlaceDTL(ctx, v.id, v.epoch, avoid)
	if err == nil {
		if err = v.attachDTL(s, node); err != nil {
			s.Close()
		}
	}
	if err != nil {
		v.mu.Lock()
		if v.dtl.lastErr == nil || v.dtl.lastErr.Error() != err.Error() {
			v.log.Warn("no DTL for the vdisk; it serves standalone meanwhile", "vdisk", v.name(), "err", err)
		}
		v.dtl.lastErr = err
		v.mu.Unlock()
	}
	return err
}

// detachDTL ends session s if it is still the volume's.
func (v *Volume) detachDTL(s DTLSession, cause error) {
	v.mu.Lock()
	if v.dtl.sess == s {
		v.dtl.sess = nil
		v.dtl.lastErr = cause
		v.dtl.pos = 0
		v.dtl.since = time.Now()
		// The cluster may believe the DTL complete: until the keeper
		// tells it otherwise, no write goes without one.
		v.setRecordedLocked(recordUnknown)
		v.kickDTLLocked()
	}
	v.mu.Unlock()
	s.Close()
}

// SetDTLMode changes vdisk name's DTL mode.
func (d *Driver) SetDTLMode(name string, mode DTLMode) error {
	if _, err := ParseDTLMode(string(mode)); err != nil {
		return err
	}
	v, err := d.Volume(name)
	if err != nil {
		return err
	}
	v.mu.Lock()
	changed := v.dtl.mode != mode
	v.dtl.mode = mode
	if changed {
		v.kickDTLLocked()
	}
	v.mu.Unlock()
	if changed {
		v.log.Info("DTL mode changed", "vdisk", name, "mode", mode)
	}
	return nil
}

// DTLGroup describes one group of changes a DTL holds: the changes the
// owner recorded in TLog TLog, whose predecessor was Prev.
type DTLGroup struct {
	TLog, Prev string
	Entries    int
	Bytes      int64
}

// DTLEntry is one change read back from a DTL: Count clusters written at
// Addr (Data, with one CRC per cluster), or trimmed.
type DTLEntry struct {
	Trim  bool
	Addr  uint64
	Count uint32
	CRCs  []uint32
	Data  []byte
}

// DTLSource reads back what a DTL holds for one vdisk.
type DTLSource interface {
	Groups(ctx context.Context) ([]DTLGroup, error)
	// Read calls fn for every entry of the groups from group from on, in
	// the order they were shipped.
	Read(ctx context.Context, from string, fn func(group string, e DTLEntry) error) error
}

// errReplayEnd stops reading a DTL at the first group not listed before.
var errReplayEnd = errors.New("end of the listed groups")

// ReplayResult reports a DTL replay.
type ReplayResult struct {
	// Groups, Entries and Bytes replayed; From is the first group.
	Groups  int    `json:"groups"`
	Entries int    `json:"entries"`
	Bytes   int64  `json:"bytes"`
	From    string `json:"from,omitempty"`
	// Gap: the DTL's groups do not join up with what the backend holds
	// by name (the DTL was catching up, or was lost: changes in between
	// are lost; or a scrub renamed the backend's TLog the first group
	// follows, which loses nothing: the check cannot tell).
	Gap  bool          `json:"gap,omitempty"`
	Took time.Duration `json:"took_ns"`
}

// replayDTL applies to the volume, just restored from the backend, the
// changes a DTL holds that the backend does not: the groups after the
// last one whose TLog the backend names, in order, as new writes. It runs
// before the volume serves I/O (Options.Recover): the changes must come
// before any new write.
func (v *Volume) replayDTL(ctx context.Context, src DTLSource) (ReplayResult, error) {
	start := time.Now()
	var res ReplayResult
	groups, err := src.Groups(ctx)
	if err != nil {
		return res, fmt.Errorf("%s: list the DTL's groups: %w", v.name(), err)
	}
	v.mu.Lock()
	known := make(map[string]bool, len(v.state.Sealed))
	for _, t := range v.state.Sealed {
		known[t.Name] = true
	}
	last := v.prevTLogLocked()
	if v.tlog.records > 0 {
		last = v.tlog.name
		known[last] = true
	}
	v.mu.Unlock()
	first := -1
	for i := len(groups) - 1; i >= 0; i-- {
		if known[groups[i].TLog] {
			first = i + 1
			break
		}
	}
	if first < 0 {
		first = 0
		res.Gap = len(groups) > 0 && groups[0].Prev != last && !known[groups[0].Prev]
	}
	todo := groups[first:]
	if len(todo) > 0 {
		// The replayed changes go to the vdisk's new DTL as they are
		// applied, so that it holds them before the vdisk serves. The
		// groups were listed first: if the new DTL is on the same node,
		// its own groups come after them.
		v.placeDTLNow(ctx)
	}
	for i := 1; i < len(todo); i++ {
		if todo[i].Prev != todo[i-1].TLog {
			res.Gap = true
		}
	}
	if len(todo) == 0 {
		res.Took = time.Since(start)
		return res, nil
	}
	res.From = todo[0].TLog
	v.replaying.Store(true)
	defer v.replaying.Store(false)
	// Only the groups listed now: the new owner's own session may be
	// shipping to the same DTL behind them.
	listed := make(map[string]bool, len(todo))
	for _, g := range todo {
		listed[g.TLog] = true
	}
	seen := ""
	cs := uint64(v.clusterSize)
	sizeClusters := uint64(v.Size()) / cs
	err = src.Read(ctx, res.From, func(group string, e DTLEntry) error {
		if group != seen {
			if !listed[group] {
				return errReplayEnd
			}
			seen = group
			res.Groups++
		}
		if e.Addr > sizeClusters || uint64(e.Count) > sizeClusters-e.Addr {
			return fmt.Errorf("DTL entry at cluster %d (+%d) beyond the vdisk's %d clusters", e.Addr, e.Count, sizeClusters)
		}
		if e.Trim {
			if err := v.zero(ctx, int64(e.Addr*cs), int64(uint64(e.Count)*cs), false); err != nil {
				return err
			}
		} else {
			if len(e.Data) != int(e.Count)*int(cs) || len(e.CRCs) != int(e.Count) {
				return fmt.Errorf("DTL entry at cluster %d: %d bytes and %d CRCs for %d clusters", e.Addr, len(e.Data), len(e.CRCs), e.Count)
			}
			for i, c := range e.CRCs {
				if crc32c(e.Data[i*int(cs):(i+1)*int(cs)]) != c {
					return fmt.Errorf("DTL entry at cluster %d: CRC mismatch", e.Addr+uint64(i))
				}
			}
			if err := v.writeClusters(ctx, e.Addr, e.Data); err != nil {
				return err
			}
		}
		res.Entries++
		res.Bytes += int64(len(e.Data))
		return nil
	})
	if err != nil && !errors.Is(err, errReplayEnd) {
		return res, fmt.Errorf("%s: replay the DTL from %s: %w", v.name(), res.From, err)
	}
	if err := v.flush(ctx); err != nil {
		return res, fmt.Errorf("%s: replay the DTL: %w", v.name(), err)
	}
	res.Took = time.Since(start)
	v.log.Info("replayed the DTL", "vdisk", v.name(), "groups", res.Groups, "entries", res.Entries,
		"bytes", res.Bytes, "gap", res.Gap, "took", res.Took.Round(time.Millisecond))
	if res.Gap {
		names := make([]string, len(groups))
		for i, g := range groups {
			names[i] = g.TLog
		}
		v.log.Error("the DTL's changes do not join up with the backend's by name: changes between them are lost, unless a scrub renamed the TLog the DTL follows",
			"vdisk", v.name(), "backend_last_tlog", last, "dtl_groups", names)
	}
	return res, nil
}
