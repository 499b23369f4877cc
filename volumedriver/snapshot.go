package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Metadata  string    `json:"metadata,omitempty"`
	// WrittenBytes written between the previous snapshot and this one.
	WrittenBytes int64 `json:"written_bytes"`
	// Synced: every TLog the snapshot covers is on the backend.
	Synced bool `json:"synced"`
}

// MaxSnapshotMetadata bounds the user metadata of a snapshot.
const MaxSnapshotMetadata = 4096

// ErrSnapshotNotFound: no snapshot by that name. It also matches
// ErrNotFound.
var ErrSnapshotNotFound = snapshotNotFound{}

type snapshotNotFound struct{}

func (snapshotNotFound) Error() string        { return "snapshot not found" }
func (snapshotNotFound) Is(target error) bool { return target == ErrNotFound }

// CreateSnapshot takes a snapshot named name (generated from the time if
// empty). It seals the open TLog and records a cut: the cost is a flush
// and a small metadata write, the same for a 1 GiB and a 1 TiB vdisk.
func (v *Volume) CreateSnapshot(ctx context.Context, name, metadata string) (SnapshotInfo, error) {
	if name == "" {
		name = time.Now().UTC().Format("snap-20060102-150405.000")
	}
	if !validName(name) {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot name %q (use 1-64 of A-Z a-z 0-9 . _ -)", ErrInvalidArgument, name)
	}
	if len(metadata) > MaxSnapshotMetadata {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot metadata is %d bytes, the limit is %d", ErrInvalidArgument, len(metadata), MaxSnapshotMetadata)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.writableLocked(); err != nil {
		return SnapshotInfo{}, err
	}
	if err := v.gate.err(); err != nil {
		return SnapshotInfo{}, err // being released
	}
	if v.findSnapshotLocked(name) >= 0 {
		return SnapshotInfo{}, fmt.Errorf("%w: snapshot %s of %s", ErrExists, name, v.name())
	}
	if err := v.sealTLogLocked(); err != nil {
		return SnapshotInfo{}, v.ioErrLocked(err)
	}
	var before int64
	for _, sn := range v.state.Snapshots {
		before += sn.WrittenBytes
	}
	sn := snapshotRecord{
		Name:         name,
		UUID:         newUUID(),
		CreatedAt:    time.Now().UTC(),
		Metadata:     metadata,
		TLogCount:    len(v.state.Sealed),
		NextSCO:      v.nextSCO,
		WrittenBytes: max(0, v.written-before),
	}
	v.state.Snapshots = append(v.state.Snapshots, sn)
	v.state.WrittenBytes = v.written
	if err := writeLocalState(v.dir, &v.state); err != nil {
		v.state.Snapshots = v.state.Snapshots[:len(v.state.Snapshots)-1]
		return SnapshotInfo{}, v.ioErrLocked(err)
	}
	v.resetGarbageCutLocked()
	// With nothing to seal, no upload carries the new snapshot: publish
	// snapshots.json all the same.
	v.snapshotsDirty = true
	v.kickUploader()
	return v.snapshotInfoLocked(sn), nil
}

func (v *Volume) kickUploader() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

func (v *Volume) findSnapshotLocked(name string) int {
	for i, sn := range v.state.Snapshots {
		if sn.Name == name {
			return i
		}
	}
	return -1
}

func (v *Volume) snapshotInfoLocked(sn snapshotRecord) SnapshotInfo {
	return SnapshotInfo{
		Name:         sn.Name,
		CreatedAt:    sn.CreatedAt,
		Metadata:     sn.Metadata,
		WrittenBytes: sn.WrittenBytes,
		Synced:       sn.TLogCount <= v.publishedCount,
	}
}

// Snapshots lists the snapshots, oldest first.
func (v *Volume) Snapshots() []SnapshotInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]SnapshotInfo, 0, len(v.state.Snapshots))
	for _, sn := range v.state.Snapshots {
		out = append(out, v.snapshotInfoLocked(sn))
	}
	return out
}

// DeleteSnapshot removes a snapshot. Its TLogs stay: what it held merges
// into the next snapshot (or the current state); scrubbing gives back the
// space of what no one can see any more.
func (v *Volume) DeleteSnapshot(ctx context.Context, name string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("%s: %w", v.name(), ErrClosed)
	}
	i := v.findSnapshotLocked(name)
	if i < 0 {
		return fmt.Errorf("%w: %s@%s", ErrSnapshotNotFound, v.name(), name)
	}
	old := v.state.Snapshots
	snaps := append(append([]snapshotRecord{}, old[:i]...), old[i+1:]...)
	if i < len(snaps) {
		snaps[i].WrittenBytes += old[i].WrittenBytes
	}
	v.state.Snapshots = snaps
	if err := writeLocalState(v.dir, &v.state); err != nil {
		v.state.Snapshots = old
		return v.ioErrLocked(err)
	}
	v.resetGarbageCutLocked()
	v.snapshotsDirty = true
	v.kickUploader()
	return nil
}

// Rollback returns the vdisk to snapshot name: later snapshots and every
// write after it are discarded. The metadata store is rebuilt by replaying
// the snapshot's TLogs, so the time grows with metadata, not data; the
// discarded SCOs and TLogs are deleted from the backend in the background.
//
// Crash safety: state.json is switched first (with the checkpoint reset,
// so that a restart rebuilds the metadata from the kept TLogs); everything
// after that can be redone.
func (v *Volume) Rollback(ctx context.Context, name string) error {
	v.mu.Lock()
	var doomed []string
	defer func() {
		v.mu.Unlock()
		// Unlinking the discarded files takes time in proportion to the
		// data; it happens in the background.
		if len(doomed) == 0 {
			return
		}
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			for _, p := range doomed {
				if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					v.log.Warn("remove discarded file", "vdisk", v.name(), "path", p, "err", err)
				}
			}
		}()
	}()
	if err := v.writableLocked(); err != nil {
		return err
	}
	i := v.findSnapshotLocked(name)
	if i < 0 {
		return fmt.Errorf("%w: %s@%s", ErrSnapshotNotFound, v.name(), name)
	}
	// A batch being written goes to files about to be discarded; let it
	// land before they are closed.
	for v.pending != nil && v.pending.writing {
		v.committed.Wait()
	}
	sn := v.state.Snapshots[i]
	// An upload in flight of a TLog about to be discarded is cut short
	// rather than waited for (the uploader notices and cleans up). One of
	// a TLog the snapshot keeps goes on: canceling it would only redo it.
	if v.uploadCancel != nil && v.uploadingIdx >= sn.TLogCount {
		v.uploadCancel()
	}
	start := time.Now()

	// Everything after the cut goes: sealed TLogs, the open TLog, and
	// the SCOs written since the snapshot.
	v.abandonPendingLocked()
	if v.cur != nil {
		v.cur.buf = nil
		v.cur.sealed = true
		v.cur = nil
	}
	discarded := &garbage{SCOFrom: sn.NextSCO, SCOTo: v.nextSCO}
	var pendingDropped int64
	for _, t := range v.state.Sealed[sn.TLogCount:] {
		discarded.TLogs = append(discarded.TLogs, t.Name)
		pendingDropped += t.PendingBytes
	}
	openName := v.tlog.name
	v.tlog.f.Close()

	v.state.Sealed = v.state.Sealed[:sn.TLogCount]
	v.state.Snapshots = v.state.Snapshots[:i+1]
	v.state.Checkpoint = 0
	v.state.Garbage = append(v.state.Garbage, *discarded)
	next := v.state
	// The DTL's groups are all of the discarded past (the open TLog's
	// is the newest): they go, and the new TLog starts the DTL afresh.
	// The kept TLogs not on the backend yet are in no DTL now: the
	// state is catching up until they are.
	if s := v.dtl.sess; s != nil {
		s.Drop(openName)
	}
	if err := v.startTLogLocked(&next); err != nil { // writes state.json: the switch
		return v.failLocked(err)
	}
	v.dtl.barrier = len(v.state.Sealed)
	v.drv.failpoint("rollback-after-switch")
	doomed = append(doomed, v.tlogPath(openName))
	v.uploadedCount = min(v.uploadedCount, sn.TLogCount)
	v.publishedCount = min(v.publishedCount, sn.TLogCount)
	v.snapshotsDirty = true
	v.pendingUpload = max(0, v.pendingUpload-pendingDropped)
	v.unsynced = v.unsynced[:0]
	for num, s := range v.scos {
		if num >= sn.NextSCO {
			v.dropSCOFileLocked(s)
			doomed = append(doomed, v.scoPath(num))
			v.writeBuffer -= int64(s.clusters) * int64(v.clusterSize)
			delete(v.scos, num)
		}
	}
	for _, t := range discarded.TLogs {
		doomed = append(doomed, v.tlogPath(t))
	}

	// Restored from the backend later, the discarded SCOs' numbers may
	// name other data: what the disk read cache holds of them goes now.
	v.drv.invalidateReadCache(v.ns)

	// Rebuild the metadata from the kept TLogs.
	if err := v.md.reset(); err != nil {
		return v.failLocked(err)
	}
	if err := v.replayAncestors(ctx); err != nil {
		return v.failLocked(err)
	}
	v.written = 0
	v.storedBytes, v.garbageBytes, v.scrubFloor = 0, 0, 0
	for j, t := range v.state.Sealed {
		recs, err := v.readTLog(ctx, t.Name)
		if err != nil {
			return v.failLocked(fmt.Errorf("rollback: %w", err))
		}
		v.garbageCut = v.cutAt(j)
		n, err := v.applyRecords(recs, 0)
		if err != nil {
			return v.failLocked(fmt.Errorf("rollback: replay %s: %w", t.Name, err))
		}
		v.written += n
	}
	v.resetGarbageCutLocked()
	if err := v.checkpointLocked(); err != nil {
		return v.failLocked(err)
	}
	v.kickUploader()
	v.log.Info("rolled back", "vdisk", v.name(), "snapshot", name, "tlogs_replayed", len(v.state.Sealed),
		"tlogs_discarded", len(discarded.TLogs), "took", time.Since(start).Round(time.Microsecond))
	return nil
}
