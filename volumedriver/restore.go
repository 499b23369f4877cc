package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// applyRecords replays TLog records into the metadata store and returns
// the bytes of cluster data they wrote. tag is the clone id the records'
// locations get: 0 for the volume's own TLogs, k for those of its k-th
// ancestor (whose records all name its own SCOs, clone id 0).
func (v *Volume) applyRecords(recs []tlogRecord, tag uint8) (int64, error) {
	var written int64
	for _, r := range recs {
		switch r.Type {
		case recWrite:
			addr := r.Addr
			if addr >= v.md.allocated.len()*pageEntries {
				// An ancestor may have grown after the snapshot; what
				// lies past this volume's end is not visible.
				if tag > 0 {
					continue
				}
				return written, fmt.Errorf("%w: write to cluster %d beyond the volume", ErrCorruptTLog, addr)
			}
			loc := r.Loc
			if tag > 0 {
				if scos.UnpackLocation(loc).SCO.CloneID != 0 {
					return written, fmt.Errorf("%w: ancestor TLog names a foreign SCO", ErrCorruptTLog)
				}
				loc |= uint64(tag) << 56
			}
			v.seq++
			v.flushedSeq = v.seq // replayed changes are durable in their TLogs
			if err := v.md.set(addr, mdEntry{loc: loc, crc: r.DataCRC}, v.seq); err != nil {
				return written, err
			}
			written += int64(v.clusterSize)
		case recTrim:
			if tag > 0 && r.Addr >= v.md.allocated.len()*pageEntries {
				continue
			}
			v.seq++
			v.flushedSeq = v.seq
			if err := v.md.trim(r.Addr, r.Count, v.seq); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// numPages is how many metadata pages a volume of size bytes needs.
func numPages(size int64, clusterSize int) uint64 {
	clusters := (uint64(size) + uint64(clusterSize) - 1) / uint64(clusterSize)
	return (clusters + pageEntries - 1) / pageEntries
}

func (v *Volume) makeDirs() error {
	for _, d := range []string{v.dir, filepath.Join(v.dir, "sco"), filepath.Join(v.dir, "tlog")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

// openMetadata opens the metadata store file; restoring verifies it or
// resets it.
func (v *Volume) openMetadata() error {
	md, err := openMetadataStore(filepath.Join(v.dir, "md"), v.drv.opts.MetadataCacheBytes, numPages(v.Size(), v.clusterSize))
	if err != nil {
		return err
	}
	md.beforeWriteBack = v.beforeWriteBack
	md.beforeModify = v.metadataBeforeModify
	md.changed = v.mdChanged
	v.md = md
	return nil
}

// metadataBeforeModify: the metadata store file is about to change, so
// state.json stops vouching for it (durably, before the change).
func (v *Volume) metadataBeforeModify() error {
	if v.state.MD == nil {
		return nil
	}
	v.state.MD = nil
	return writeLocalState(v.dir, &v.state)
}

// rebuildMetadataLocked is the metadata store's answer to a page that
// fails verification while the volume runs: the whole store is rebuilt by
// replaying the vdisk's history (ancestors, sealed TLogs from the local
// copy or the backend, and the open TLog, written and buffered), as a
// restart would.
func (v *Volume) rebuildMetadataLocked(cause error) error {
	start := time.Now()
	v.log.Error("metadata page failed verification; rebuilding the vdisk's metadata from its TLogs",
		"vdisk", v.name(), "err", cause)
	if v.tlog == nil {
		return fmt.Errorf("no open TLog to rebuild from")
	}
	// The open TLog file is read up to v.tlog.size: a batch of records
	// reserved there but still being written must be in it first.
	if err := v.settleLocked(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	seq, flushed := v.seq, v.flushedSeq
	if err := v.md.reset(); err != nil {
		return err
	}
	if err := v.replayAncestors(ctx); err != nil {
		return err
	}
	for _, t := range v.state.Sealed {
		recs, err := v.readTLog(ctx, t.Name)
		if err != nil {
			return err
		}
		if _, err := v.applyRecords(recs, 0); err != nil {
			return fmt.Errorf("replay %s: %w", t.Name, err)
		}
	}
	f, err := os.Open(v.tlogPath(v.tlog.name))
	if err != nil {
		return fmt.Errorf("read open TLog: %w", err)
	}
	data := make([]byte, v.tlog.size)
	_, err = f.ReadAt(data, 0)
	f.Close()
	if err != nil {
		return fmt.Errorf("read open TLog: %w", err)
	}
	data = append(data, v.tlog.buf...)
	recs, _, err := decodeTLog(data)
	if err != nil {
		return fmt.Errorf("open TLog %s: %w", v.tlog.name, err)
	}
	if _, err := v.applyRecords(recs, 0); err != nil {
		return fmt.Errorf("replay open %s: %w", v.tlog.name, err)
	}
	// applyRecords counts replayed changes as durable; those of the open
	// TLog that were not flushed are not, so no page goes to disk before
	// the next flush.
	if flushed < seq {
		v.flushedSeq = flushed
	}
	v.log.Warn("vdisk metadata rebuilt from its TLogs", "vdisk", v.name(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// quarantine moves a local file or directory that may hold data the
// backend does not have out of the way instead of deleting it: only an
// operator decides that it can go.
func quarantine(log *slog.Logger, root, path, why string) {
	dir := filepath.Join(root, quarantineDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Error("cannot make the quarantine directory; leaving the file in place", "path", path, "err", err)
		return
	}
	dst := filepath.Join(dir, time.Now().UTC().Format("20060102T150405.000000000")+"-"+filepath.Base(path))
	if err := os.Rename(path, dst); err != nil {
		log.Error("cannot move to quarantine; leaving the file in place", "path", path, "err", err)
		return
	}
	log.Warn("moved local data aside (not deleted; remove it once you know it is not needed)", "path", path, "to", dst, "why", why)
}

// quarantineDir holds what a restart set aside, under a volume's directory
// and under the volume driver's.
const quarantineDir = "quarantine"

// restoreFromBackend brings the volume up on a host that has no local state
// for it: the metadata store is rebuilt by replaying every TLog that the
// backend's snapshots.json lists. Whatever was not uploaded is not there
// (restoreWithoutState calls it only when the directory holds no TLog).
func (v *Volume) restoreFromBackend(ctx context.Context) error {
	// Names this host cached may since have been reused (a rollback
	// elsewhere, or before a lost state.json).
	v.drv.invalidateReadCache(v.ns)
	ents, err := os.ReadDir(v.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear %s: %w", v.dir, err)
	}
	for _, e := range ents {
		if e.Name() == quarantineDir {
			continue
		}
		if err := os.RemoveAll(filepath.Join(v.dir, e.Name())); err != nil {
			return fmt.Errorf("clear %s: %w", v.dir, err)
		}
	}
	if err := v.makeDirs(); err != nil {
		return err
	}
	b, err := v.backend.Get(ctx, v.ns, snapshotsObject)
	if err != nil {
		return fmt.Errorf("read snapshots.json: %w", err)
	}
	snaps, err := decodeSnapshotsFile(b)
	if err != nil {
		return err
	}
	if err := v.openMetadata(); err != nil {
		return err
	}
	if err := v.replayAncestors(ctx); err != nil {
		return err
	}
	// The snapshots first: the garbage count of each TLog's replay
	// depends on the snapshots taken before it.
	v.state.Snapshots = snaps.Snapshots
	maxSCO := uint32(0)
	for j, name := range snaps.TLogs {
		data, err := v.backend.Get(ctx, v.ns, name)
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		recs, _, err := decodeTLog(data)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		v.garbageCut = v.cutAt(j)
		n, err := v.applyRecords(recs, 0)
		if err != nil {
			return fmt.Errorf("replay %s: %w", name, err)
		}
		v.written += n
		v.state.Sealed = append(v.state.Sealed, sealedTLog{Name: name, Uploaded: true})
	}
	// SCO numbers must never be reused, including those of SCOs that were
	// uploaded after the last TLog made it: their names exist.
	objs, err := v.backend.List(ctx, v.ns, "")
	if err != nil {
		return fmt.Errorf("list backend objects: %w", err)
	}
	for _, o := range objs {
		if n, err := scos.ParseSCOName(o.Name); err == nil && n.Number > maxSCO {
			maxSCO = n.Number
		}
	}
	v.nextSCO = maxSCO + 1
	v.uploadedCount = len(v.state.Sealed)
	v.publishedCount = v.uploadedCount
	v.mu.Lock()
	v.resetGarbageCutLocked()
	defer v.mu.Unlock()
	next := v.state
	if err := v.startTLogLocked(&next); err != nil {
		return err
	}
	v.state.Checkpoint = len(v.state.Sealed)
	return v.checkpointLocked()
}

// restoreLocal restarts the volume from its local state after a clean stop
// or a crash: replay the TLogs after the metadata checkpoint, recover the
// TLog that was open (keeping its valid records whose data is intact), and
// pick the write buffer up again.
func (v *Volume) restoreLocal(ctx context.Context, st localState) error {
	cfg := v.state.Config
	v.state = st
	v.state.Config = cfg // the backend's volume.json is authoritative
	v.state.Epoch = v.epoch
	if err := v.makeDirs(); err != nil {
		return err
	}
	if err := v.openMetadata(); err != nil {
		return err
	}
	// The metadata store file is used only if it is exactly what the
	// last checkpoint wrote; otherwise it is rebuilt from every TLog.
	rebuild := true
	switch {
	case st.Checkpoint == 0:
		// Nothing checkpointed (a new volume, a rollback or scrub cut
		// short, or no state.json).
	case st.MD == nil:
		v.log.Warn("metadata store changed after its last checkpoint (the vdisk did not stop cleanly); rebuilding it from the TLogs",
			"vdisk", v.name())
	default:
		if err := v.md.verify(*st.MD); err != nil {
			v.log.Error("metadata store is damaged; rebuilding it from the TLogs", "vdisk", v.name(), "err", err)
		} else {
			rebuild = false
		}
	}
	// The stored and garbage figures are those of the checkpoint, or of
	// the last TLog sealed after it; the replay is not counted again
	// (the metadata file may hold part of it already: replay is
	// idempotent, counting is not). Rebuilt from scratch, everything is
	// counted.
	v.storedBytes, v.garbageBytes = st.StoredBytes, st.GarbageBytes
	if n := len(st.Sealed); n > st.Checkpoint {
		v.storedBytes, v.garbageBytes = st.Sealed[n-1].StoredBytes, st.Sealed[n-1].GarbageBytes
	}
	v.countChanges = rebuild
	from := st.Checkpoint
	if rebuild {
		from = 0
		v.state.MD = nil
		v.storedBytes, v.garbageBytes = 0, 0
		if err := v.md.reset(); err != nil {
			return err
		}
		if err := v.replayAncestors(ctx); err != nil {
			return err
		}
	}
	for v.uploadedCount < len(st.Sealed) && st.Sealed[v.uploadedCount].Uploaded {
		v.uploadedCount++
	}
	// The backend's snapshots.json may be behind the local state (a crash
	// between the two); rewrite it once the uploader runs.
	v.snapshotsDirty = true
	pendingSCOs := map[uint32]bool{}
	maxSCO := uint32(0)
	var replayed int64
	for i, t := range st.Sealed {
		for _, n := range t.SCOs {
			pendingSCOs[n] = !t.Uploaded
			maxSCO = max(maxSCO, n)
		}
		v.pendingUpload += t.PendingBytes // zero once uploaded
		if i < from {
			continue
		}
		recs, err := v.readTLog(ctx, t.Name)
		if err != nil {
			return fmt.Errorf("sealed TLog: %w", err)
		}
		v.garbageCut = v.cutAt(i)
		n, err := v.applyRecords(recs, 0)
		if err != nil {
			return fmt.Errorf("replay %s: %w", t.Name, err)
		}
		replayed += n
	}
	v.written = st.WrittenBytes
	if rebuild {
		v.written = replayed
	}
	if err := v.findLostSCOs(ctx); err != nil {
		return err
	}

	v.garbageCut = v.cutAt(len(v.state.Sealed))
	openSCOs, err := v.recoverOpenTLog(st, !rebuild)
	if err != nil {
		return err
	}
	v.countChanges = true
	for _, n := range openSCOs {
		pendingSCOs[n] = true
		maxSCO = max(maxSCO, n)
	}

	// Pick up the SCOs in the write buffer.
	ents, err := os.ReadDir(filepath.Join(v.dir, "sco"))
	if err != nil {
		return fmt.Errorf("read write buffer: %w", err)
	}
	for _, e := range ents {
		name, err := scos.ParseSCOName(e.Name())
		if err != nil {
			continue
		}
		pending, known := pendingSCOs[name.Number]
		if !known && name.Number >= st.OpenFirstSCO {
			continue // removed as a crash leftover by recoverOpenTLog
		}
		f, err := os.OpenFile(v.scoPath(name.Number), os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open SCO %s: %w", name, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("stat SCO %s: %w", name, err)
		}
		// What is not on the backend yet may be in the page cache only
		// (the process died): make it durable before serving it.
		if pending {
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				f.Close()
				return fmt.Errorf("sync SCO %s: %w", name, err)
			}
		}
		f.Close() // sealed: reads go through the driver's file cache
		clusters := int(fi.Size() / int64(v.clusterSize))
		s := &scoFile{num: name.Number, clusters: clusters, fileClusters: clusters, sealed: true, uploaded: !pending}
		v.scos[s.num] = s
		v.writeBuffer += fi.Size()
		maxSCO = max(maxSCO, name.Number)
	}
	v.nextSCO = max(v.nextSCO, st.OpenFirstSCO, maxSCO+1, 1)
	v.mu.Lock()
	defer v.mu.Unlock()
	next := v.state
	return v.startTLogLocked(&next)
}

// findLostSCOs checks that every SCO of a sealed TLog not yet uploaded is
// still in the write buffer (or already on the backend). One that is gone
// is lost: its clusters read as I/O errors (never as older data or zeros),
// the vdisk says which SCO it lost, and the TLog is uploaded without it so
// that everything else still reaches the backend.
func (v *Volume) findLostSCOs(ctx context.Context) error {
	v.lost = map[uint32]bool{}
	for _, n := range v.state.Lost {
		v.lost[n] = true
	}
	for i := range v.state.Sealed {
		t := &v.state.Sealed[i]
		if t.Uploaded {
			continue
		}
		kept := t.SCOs[:0]
		for _, n := range t.SCOs {
			missing, err := v.scoMissing(ctx, n)
			if err != nil {
				return err
			}
			if missing {
				v.markLost(n, t.Name)
				continue
			}
			kept = append(kept, n)
		}
		t.SCOs = kept
	}
	return nil
}

// scoMissing: SCO n is neither in the write buffer nor on the backend.
func (v *Volume) scoMissing(ctx context.Context, n uint32) (bool, error) {
	if _, err := os.Stat(v.scoPath(n)); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("SCO %s: %w", v.scoName(n), err)
	}
	_, err := v.backend.Stat(ctx, v.ns, v.scoName(n).String())
	if errors.Is(err, scos.ErrObjectNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("SCO %s is not in the write buffer and the backend cannot say if it has it: %w", v.scoName(n), err)
	}
	return false, nil
}

func (v *Volume) markLost(n uint32, tlog string) {
	if v.lost[n] {
		return
	}
	v.lost[n] = true
	v.state.Lost = append(v.state.Lost, n)
	v.log.Error("SCO lost from the write buffer before it reached the backend; its clusters will read as I/O errors",
		"vdisk", v.name(), "sco", v.scoName(n).String(), "tlog", tlog)
}

// recoverOpenTLog handles the TLog that was open when the volume stopped.
// Records up to its last sync record were made durable by a flush. Records
// after it were handed to the kernel but never synced: each is kept only
// if the SCO data it points to is there and matches its CRC, and the first
// that fails ends the TLog. The SCOs it used are cut to what its records
// describe, and SCO files it never described are set aside. If it holds
// anything, it is sealed and queued for upload.
//
// The last checkpoint may have covered part of the TLog (OpenTLogBytes).
// If fewer bytes than that are valid, flushed records were lost (the file
// was truncated, corrupted or deleted). When the metadata store was
// verified it holds their effect, and the records are made anew from it;
// otherwise what they did cannot be known and the vdisk fails to come up.
func (v *Volume) recoverOpenTLog(st localState, mdVerified bool) ([]uint32, error) {
	if st.OpenTLog == "" {
		return nil, nil
	}
	path := v.tlogPath(st.OpenTLog)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		data = nil
	} else if err != nil {
		return nil, fmt.Errorf("read open TLog: %w", err)
	}
	var recs []tlogRecord
	valid := 0
	if len(data) >= tlogHeaderSize || st.OpenTLogBytes > 0 {
		var derr error
		recs, valid, derr = decodeTLog(data)
		if derr != nil && len(recs) == 0 && !errors.Is(derr, ErrCorruptTLog) {
			return nil, fmt.Errorf("open TLog %s: %w", st.OpenTLog, derr)
		}
		if derr != nil && int64(valid) >= st.OpenTLogBytes {
			v.log.Warn("open TLog has a torn tail; keeping its valid records", "vdisk", v.name(), "tlog", st.OpenTLog, "records", len(recs), "err", derr)
		}
	}
	if int64(valid) < st.OpenTLogBytes {
		if !mdVerified {
			return nil, fmt.Errorf("open TLog %s is damaged: %d of the %d bytes the last checkpoint covered are valid, and the metadata store cannot vouch for the rest: flushed writes are lost; restore the file, or roll the vdisk back to a snapshot",
				st.OpenTLog, valid, st.OpenTLogBytes)
		}
		synth, err := v.recordsFromMetadata(st.OpenFirstSCO)
		if err != nil {
			return nil, fmt.Errorf("open TLog %s is damaged and cannot be rebuilt: %w", st.OpenTLog, err)
		}
		// What came after the checkpoint is intact in place.
		var tail []tlogRecord
		for off := st.OpenTLogBytes; off+tlogRecordSize <= int64(len(data)); off += tlogRecordSize {
			r, err := decodeRecord(data[off : off+tlogRecordSize])
			if err != nil {
				break
			}
			tail = append(tail, r)
		}
		v.log.Error("open TLog lost flushed records; made them anew from the metadata store",
			"vdisk", v.name(), "tlog", st.OpenTLog, "valid_bytes", valid, "checkpointed_bytes", st.OpenTLogBytes,
			"records_made", len(synth), "records_after_checkpoint", len(tail))
		recs = append(recs[:len(recs):len(recs)], synth...)
		recs = append(recs, tlogRecord{Type: recSync})
		recs = append(recs, tail...)
	}
	lastSync := -1
	for i, r := range recs {
		if r.Type == recSync {
			lastSync = i
		}
	}
	files := map[uint32]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	cs := v.clusterSize
	buf := make([]byte, cs)
	keep := len(recs)
	for i := lastSync + 1; i < len(recs); i++ {
		r := recs[i]
		if r.Type != recWrite {
			continue
		}
		loc := scos.UnpackLocation(r.Loc)
		f, ok := files[loc.SCO.Number]
		if !ok {
			f, err = os.Open(v.scoPath(loc.SCO.Number))
			if err != nil {
				keep = i
				break
			}
			files[loc.SCO.Number] = f
		}
		if _, err := f.ReadAt(buf, int64(loc.Offset)*int64(cs)); err != nil || crc32c(buf) != r.DataCRC {
			keep = i
			break
		}
	}
	if keep < len(recs) {
		v.log.Warn("dropping unflushed TLog records whose data did not reach the disk",
			"vdisk", v.name(), "tlog", st.OpenTLog, "dropped", len(recs)-keep)
		recs = recs[:keep]
	}
	n, err := v.applyRecords(recs, 0)
	if err != nil {
		return nil, fmt.Errorf("replay open %s: %w", st.OpenTLog, err)
	}
	v.written += n
	if !v.countChanges && len(st.Sealed) > st.Checkpoint {
		// Counted from the last sealed TLog: add the open one's data.
		// What it overwrote is not known here (the metadata may hold
		// part of it): that garbage goes uncounted until a scrub.
		v.storedBytes += n
	}

	// The SCOs this TLog used, in order, and how far its records reach.
	reach := map[uint32]int64{}
	var used []uint32
	for _, r := range recs {
		if r.Type != recWrite {
			continue
		}
		loc := scos.UnpackLocation(r.Loc)
		if _, ok := reach[loc.SCO.Number]; !ok {
			used = append(used, loc.SCO.Number)
		}
		reach[loc.SCO.Number] = max(reach[loc.SCO.Number], int64(loc.Offset+1)*int64(cs))
	}
	sort.Slice(used, func(i, j int) bool { return used[i] < used[j] })
	ents, err := os.ReadDir(filepath.Join(v.dir, "sco"))
	if err != nil {
		return nil, fmt.Errorf("read write buffer: %w", err)
	}
	var scoBytes int64
	for _, e := range ents {
		name, err := scos.ParseSCOName(e.Name())
		if err != nil || name.Number < st.OpenFirstSCO {
			continue
		}
		p := v.scoPath(name.Number)
		end, ok := reach[name.Number]
		if !ok {
			// No valid record names it: data that was never
			// acknowledged, or whose records are lost.
			if fi, err := os.Stat(p); err == nil && fi.Size() == 0 {
				os.Remove(p)
			} else {
				quarantine(v.log, v.dir, p, "SCO that no valid record of the open TLog names")
			}
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Size() > end {
			if err := os.Truncate(p, end); err != nil {
				return nil, fmt.Errorf("truncate SCO %s: %w", name, err)
			}
		}
		scoBytes += end
	}

	if len(recs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove empty TLog: %w", err)
		}
		return nil, nil
	}
	// Seal it: rewrite the valid prefix with a final sync record, durably.
	out := tlogHeader()
	for _, r := range recs {
		out = appendRecord(out, r)
	}
	out = appendRecord(out, tlogRecord{Type: recSync})
	if err := writeFileAtomic(path, out); err != nil {
		return nil, err
	}
	present := used[:0:0]
	for _, n := range used {
		f, err := os.OpenFile(v.scoPath(n), os.O_RDWR, 0)
		if errors.Is(err, fs.ErrNotExist) {
			// Flushed records name it, so it was written and is gone.
			v.markLost(n, st.OpenTLog)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sync SCO: %w", err)
		}
		fi, err := f.Stat()
		if err == nil && fi.Size() < reach[n] {
			// Cut short: the clusters past its end are gone.
			v.markLost(n, st.OpenTLog)
		}
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("sync SCO: %w", err)
		}
		present = append(present, n)
	}
	pending := scoBytes + int64(len(out)) - tlogHeaderSize
	v.state.Sealed = append(v.state.Sealed, sealedTLog{Name: st.OpenTLog, SCOs: present, PendingBytes: pending,
		StoredBytes: v.storedBytes, GarbageBytes: v.garbageBytes})
	v.pendingUpload += pending
	v.state.OpenTLog = ""
	return used, nil
}

// recordsFromMetadata makes TLog records that take the state of the sealed
// TLogs to what the metadata store holds, as far as an open TLog whose
// SCOs start at firstSCO can have changed it: a write for every cluster
// mapped into those SCOs, then a trim for every unmapped run (trims are
// the only other change a TLog makes).
func (v *Volume) recordsFromMetadata(firstSCO uint32) ([]tlogRecord, error) {
	var out []tlogRecord
	for no, ok := v.md.allocated.nextSet(0); ok; no, ok = v.md.allocated.nextSet(no + 1) {
		p, err := v.md.page(no)
		if err != nil {
			return nil, err
		}
		for i, e := range p.entries {
			if e.loc == 0 {
				continue
			}
			loc := scos.UnpackLocation(e.loc)
			if loc.SCO.CloneID != 0 || loc.SCO.Number < firstSCO {
				continue
			}
			out = append(out, tlogRecord{Type: recWrite, DataCRC: e.crc, Addr: no*pageEntries + uint64(i), Loc: e.loc})
		}
	}
	clusters := (uint64(v.Size()) + uint64(v.clusterSize) - 1) / uint64(v.clusterSize)
	runs, err := v.md.runs(0, clusters, int(^uint(0)>>1))
	if err != nil {
		return nil, err
	}
	var addr uint64
	for _, r := range runs {
		if !r.mapped {
			out = append(out, tlogRecord{Type: recTrim, Addr: addr, Count: r.count})
		}
		addr += r.count
	}
	return out, nil
}

// replayAncestors loads what a clone inherits: each ancestor's TLogs up to
// the snapshot the chain was cloned from, the farthest ancestor first.
func (v *Volume) replayAncestors(ctx context.Context) error {
	anc := v.state.Config.Ancestors
	for k := len(anc); k >= 1; k-- {
		a := anc[k-1]
		for _, name := range a.TLogs {
			data, err := v.backend.Get(ctx, a.Namespace, name)
			if err != nil {
				return fmt.Errorf("read %s of ancestor %s: %w", name, a.Name, err)
			}
			recs, _, err := decodeTLog(data)
			if err != nil {
				return fmt.Errorf("%s of ancestor %s: %w", name, a.Name, err)
			}
			if _, err := v.applyRecords(recs, uint8(k)); err != nil {
				return fmt.Errorf("replay %s of ancestor %s: %w", name, a.Name, err)
			}
		}
	}
	return nil
}

// readTLog decodes a sealed TLog: the local copy if the write buffer still
// has it, else the one on the backend.
func (v *Volume) readTLog(ctx context.Context, name string) ([]tlogRecord, error) {
	data, err := os.ReadFile(v.tlogPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		data, err = v.backend.Get(ctx, v.ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	recs, _, err := decodeTLog(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return recs, nil
}

// localTLog is a TLog file found in the write buffer without state.json.
type localTLog struct {
	name     string
	recs     []tlogRecord
	scos     []uint32 // SCOs its write records name, ascending
	size     int64
	mtime    time.Time
	complete bool // decodes to its end
}

// restoreWithoutState brings the volume up when state.json is missing or
// unreadable. The backend's snapshots.json names what was uploaded; TLogs
// in the write buffer that it does not name hold writes that never reached
// the backend, so they are replayed after it, in the order they were
// written, the last one as the TLog that was open (its unflushed tail is
// checked against the SCO data like after a crash). Nothing local that the
// backend lacks is deleted: what cannot be used is set aside in the
// volume's quarantine directory.
func (v *Volume) restoreWithoutState(ctx context.Context) error {
	tlogDir := filepath.Join(v.dir, "tlog")
	ents, err := os.ReadDir(tlogDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", tlogDir, err)
	}
	var names []string
	for _, e := range ents {
		if validTLogName(e.Name()) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		// No TLog, so no acknowledged write that is only here. SCO files
		// without a record are set aside all the same.
		if sents, _ := os.ReadDir(filepath.Join(v.dir, "sco")); len(sents) > 0 {
			for _, e := range sents {
				if fi, err := e.Info(); err == nil && fi.Size() > 0 {
					quarantine(v.log, v.dir, filepath.Join(v.dir, "sco", e.Name()), "SCO without state.json or TLog")
				}
			}
		}
		return v.restoreFromBackend(ctx)
	}

	b, err := v.backend.Get(ctx, v.ns, snapshotsObject)
	if err != nil {
		return fmt.Errorf("read snapshots.json: %w", err)
	}
	snaps, err := decodeSnapshotsFile(b)
	if err != nil {
		return err
	}
	objs, err := v.backend.List(ctx, v.ns, "")
	if err != nil {
		return fmt.Errorf("list backend objects: %w", err)
	}
	onBackend := map[string]bool{}
	var maxSCO uint32
	for _, o := range objs {
		onBackend[o.Name] = true
		if n, err := scos.ParseSCOName(o.Name); err == nil {
			maxSCO = max(maxSCO, n.Number)
		}
	}
	published := map[string]bool{}
	for _, t := range snaps.TLogs {
		published[t] = true
	}

	var local []localTLog
	for _, name := range names {
		if published[name] {
			continue // on the backend and named: replayed from there
		}
		p := filepath.Join(tlogDir, name)
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read TLog %s: %w", name, err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("stat TLog %s: %w", name, err)
		}
		recs, _, derr := decodeTLog(data)
		if derr != nil && len(recs) == 0 {
			if len(data) > tlogHeaderSize {
				quarantine(v.log, v.dir, p, "TLog without one valid record: "+derr.Error())
			} else {
				os.Remove(p)
			}
			continue
		}
		t := localTLog{name: name, recs: recs, size: fi.Size(), mtime: fi.ModTime(), complete: derr == nil}
		seen := map[uint32]bool{}
		for _, r := range recs {
			if r.Type == recWrite {
				if n := scos.UnpackLocation(r.Loc).SCO.Number; !seen[n] {
					seen[n] = true
					t.scos = append(t.scos, n)
				}
			}
		}
		sort.Slice(t.scos, func(i, j int) bool { return t.scos[i] < t.scos[j] })
		local = append(local, t)
	}
	// TLogs are written one after the other: a sealed one is never
	// written again, so modification times give their order.
	sort.SliceStable(local, func(i, j int) bool { return local[i].mtime.Before(local[j].mtime) })
	var prevMax uint32
	for _, t := range local {
		if len(t.scos) > 0 {
			if t.scos[0] < prevMax {
				return fmt.Errorf("state.json is missing and the local TLogs cannot be put in order (%s names SCO %s, before SCO %s of an earlier one); they are kept in %s",
					t.name, v.scoName(t.scos[0]), v.scoName(prevMax), tlogDir)
			}
			prevMax = t.scos[len(t.scos)-1]
		}
	}

	st := localState{
		Format:    formatVersion,
		Config:    v.state.Config,
		Snapshots: snaps.Snapshots,
	}
	for _, name := range snaps.TLogs {
		st.Sealed = append(st.Sealed, sealedTLog{Name: name, Uploaded: true})
	}
	referenced := map[uint32]bool{}
	for i, t := range local {
		for _, n := range t.scos {
			referenced[n] = true
		}
		if i == len(local)-1 {
			st.OpenTLog = t.name
			st.OpenFirstSCO = max(prevMax, maxSCO) + 1
			if len(t.scos) > 0 {
				st.OpenFirstSCO = t.scos[0]
			}
			break
		}
		if !t.complete {
			return fmt.Errorf("state.json is missing and TLog %s, which is not the last, is damaged: the writes it held cannot all be recovered; it is kept in %s",
				t.name, tlogDir)
		}
		pending := t.size - tlogHeaderSize
		for _, n := range t.scos {
			if fi, err := os.Stat(v.scoPath(n)); err == nil {
				pending += fi.Size()
			}
		}
		st.Sealed = append(st.Sealed, sealedTLog{Name: t.name, SCOs: t.scos, PendingBytes: pending})
	}
	// SCO files that no local TLog names: copies of uploaded SCOs are
	// kept as cache; the others are set aside.
	if sents, err := os.ReadDir(filepath.Join(v.dir, "sco")); err == nil {
		for _, e := range sents {
			n, err := scos.ParseSCOName(e.Name())
			if err != nil || referenced[n.Number] || onBackend[e.Name()] || n.Number >= st.OpenFirstSCO {
				continue
			}
			quarantine(v.log, v.dir, filepath.Join(v.dir, "sco", e.Name()), "SCO that neither the backend nor a local TLog has")
		}
	}
	v.nextSCO = max(maxSCO, prevMax) + 1
	v.log.Warn("state.json missing: recovering the vdisk from the backend and the TLogs in its write buffer",
		"vdisk", v.name(), "tlogs_on_backend", len(snaps.TLogs), "local_tlogs_not_on_backend", len(local),
		"open_tlog", st.OpenTLog)
	if err := v.restoreLocal(ctx, st); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	// Record the recovered state at once (restoreLocal started a new
	// TLog, which wrote state.json) and checkpoint the rebuilt metadata.
	return v.checkpointLocked()
}
