package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

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
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

func (v *Volume) openMetadata() error {
	md, err := openMetadataStore(filepath.Join(v.dir, "md"), v.drv.opts.MetadataCacheBytes, numPages(v.Size(), v.clusterSize))
	if err != nil {
		return err
	}
	md.beforeWriteBack = v.beforeWriteBack
	md.changed = v.mdChanged
	v.md = md
	return nil
}

// restoreFromBackend brings the volume up on a host that has no local state
// for it: the metadata store is rebuilt by replaying every TLog that the
// backend's snapshots.json lists. Whatever was not uploaded is not there.
func (v *Volume) restoreFromBackend(ctx context.Context) error {
	if err := os.RemoveAll(v.dir); err != nil {
		return fmt.Errorf("clear %s: %w", v.dir, err)
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
	if err := v.startTLogLocked(); err != nil {
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
	if err := v.makeDirs(); err != nil {
		return err
	}
	if err := v.openMetadata(); err != nil {
		return err
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
	v.countChanges = st.Checkpoint == 0
	if st.Checkpoint == 0 {
		v.storedBytes, v.garbageBytes = 0, 0
		// Nothing checkpointed (a new volume, or a rollback that was
		// cut short): rebuild from scratch.
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
	for i, t := range st.Sealed {
		for _, n := range t.SCOs {
			pendingSCOs[n] = !t.Uploaded
			maxSCO = max(maxSCO, n)
		}
		if i < st.Checkpoint {
			continue
		}
		recs, err := v.readTLog(ctx, t.Name)
		if err != nil {
			return fmt.Errorf("sealed TLog: %w", err)
		}
		v.garbageCut = v.cutAt(i)
		if _, err := v.applyRecords(recs, 0); err != nil {
			return fmt.Errorf("replay %s: %w", t.Name, err)
		}
		v.pendingUpload += t.PendingBytes
	}
	v.written = st.WrittenBytes

	v.garbageCut = v.cutAt(len(v.state.Sealed))
	openSCOs, err := v.recoverOpenTLog(st)
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
		clusters := int(fi.Size() / int64(v.clusterSize))
		s := &scoFile{num: name.Number, f: f, clusters: clusters, fileClusters: clusters, sealed: true, uploaded: !pending}
		v.scos[s.num] = s
		v.writeBuffer += fi.Size()
		maxSCO = max(maxSCO, name.Number)
	}
	v.nextSCO = max(st.OpenFirstSCO, maxSCO+1, 1)
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.startTLogLocked()
}

// recoverOpenTLog handles the TLog that was open when the volume stopped.
// Records up to its last sync record were made durable by a flush. Records
// after it were handed to the kernel but never synced: each is kept only
// if the SCO data it points to is there and matches its CRC, and the first
// that fails ends the TLog. The SCOs it used are cut to what its records
// describe, and SCO files it never described are removed. If it holds
// anything, it is sealed and queued for upload.
func (v *Volume) recoverOpenTLog(st localState) ([]uint32, error) {
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
	if len(data) >= tlogHeaderSize {
		var derr error
		recs, _, derr = decodeTLog(data)
		if derr != nil && len(recs) == 0 && !errors.Is(derr, ErrCorruptTLog) {
			return nil, fmt.Errorf("open TLog %s: %w", st.OpenTLog, derr)
		}
		if derr != nil {
			v.log.Warn("open TLog has a torn tail; keeping its valid records", "vdisk", v.name(), "tlog", st.OpenTLog, "records", len(recs), "err", derr)
		}
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
			if err := os.Remove(p); err != nil {
				return nil, fmt.Errorf("remove leftover SCO: %w", err)
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
	for _, n := range used {
		f, err := os.OpenFile(v.scoPath(n), os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("sync SCO: %w", err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("sync SCO: %w", err)
		}
	}
	pending := scoBytes + int64(len(out)) - tlogHeaderSize
	v.state.Sealed = append(v.state.Sealed, sealedTLog{Name: st.OpenTLog, SCOs: used, PendingBytes: pending,
		StoredBytes: v.storedBytes, GarbageBytes: v.garbageBytes})
	v.pendingUpload += pending
	v.state.OpenTLog = ""
	return used, nil
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
