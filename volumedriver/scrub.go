package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/scos"
)

// ScrubResult reports what a scrub did.
type ScrubResult struct {
	SCOsRewritten      int           `json:"scos_rewritten"`
	SCOsDeleted        int           `json:"scos_deleted"`
	BackendBytesBefore int64         `json:"backend_bytes_before"`
	BackendBytesAfter  int64         `json:"backend_bytes_after"`
	LiveBytes          int64         `json:"live_bytes"`
	Duration           time.Duration `json:"duration_ns"`
}

// scrubLiveThreshold: an SCO whose live fraction is below it is rewritten.
// With 0.8, what scrubbing leaves is at most 1.25x the live data.
const scrubLiveThreshold = 0.8

// scoUse is what the scrub learned about one SCO of the volume.
type scoUse struct {
	name    scos.SCOName
	tlog    int // index of the TLog that wrote it
	written int // clusters written to it
	live    map[uint16]bool
}

// Scrub rewrites the vdisk's SCOs on the backend so that what no snapshot
// and no current data can reach any more gives its space back:
//
//  1. replay the uploaded TLogs and find, for every cluster ever written,
//     whether some snapshot or the current state still sees it;
//  2. SCOs with nothing live are dropped, SCOs with less than 80% live
//     are rewritten as a new version holding only their live clusters;
//  3. the TLogs that name them are rewritten with the new locations;
//  4. one switch under the volume lock puts the new TLog names in place,
//     relocates the metadata, and queues the old objects for deletion.
//
// A crash before the switch leaves orphans that the next scrub removes;
// after it, the metadata is rebuilt from the new TLogs on restart.
// SCOs that clones are built on are left alone.
func (v *Volume) Scrub(ctx context.Context) (ScrubResult, error) { return v.scrub(ctx, false) }

// scrub is Scrub; bounded, it drops the dead SCOs and then rewrites, least
// live first, only as much as it takes to bring the garbage it sees down
// to half the trigger level (ScrubGarbageRatio/2 of the live data): under
// sustained overwrite the other SCOs die by themselves, and rewriting them
// would be wasted work.
func (v *Volume) scrub(ctx context.Context, bounded bool) (ScrubResult, error) {
	start := time.Now()
	var res ScrubResult
	// The scrub works on the TLogs that the backend's snapshots.json
	// names; after a restart (or a snapshot delete) it is rewritten in the
	// background, and a scrub that ran before that would see none.
	if err := v.putSnapshotsIfDirty(ctx); err != nil {
		return res, err
	}
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return res, fmt.Errorf("%s: %w", v.name(), ErrClosed)
	}
	u := v.publishedCount
	names := make([]string, u)
	for i, t := range v.state.Sealed[:u] {
		names[i] = t.Name
	}
	var cuts []int
	for _, sn := range v.state.Snapshots {
		cuts = append(cuts, sn.TLogCount)
	}
	protected := v.protectedTLogs
	v.mu.Unlock()

	before, err := v.backendSCOBytes(ctx)
	if err != nil {
		return res, err
	}
	res.BackendBytesBefore = before

	// 1. Liveness. A cluster written in TLog i and overwritten (or
	// trimmed) in TLog j is seen by a snapshot covering TLogs [0, n)
	// exactly when i < n <= j; what is mapped at the end is current.
	type mapping struct {
		loc  uint64
		tlog int
	}
	seenBy := func(i, j int) bool {
		for _, n := range cuts {
			if i < n && n <= j {
				return true
			}
		}
		return false
	}
	pt := progress.From(ctx)
	pt.Start("read tlogs", "tlogs", int64(len(names)))
	current := map[uint64]mapping{}
	uses := map[uint32]*scoUse{}
	tlogRecs := make([][]tlogRecord, u)
	markLive := func(loc uint64) {
		l := scos.UnpackLocation(loc)
		if use := uses[l.SCO.Number]; use != nil && use.name == l.SCO {
			use.live[l.Offset] = true
		}
	}
	for j, name := range names {
		recs, err := v.readTLog(ctx, name)
		if err != nil {
			return res, err
		}
		tlogRecs[j] = recs
		pt.Add(1)
		for _, r := range recs {
			switch r.Type {
			case recWrite:
				l := scos.UnpackLocation(r.Loc)
				use := uses[l.SCO.Number]
				if use == nil {
					use = &scoUse{name: l.SCO, tlog: j, live: map[uint16]bool{}}
					uses[l.SCO.Number] = use
				}
				use.written++
				if old, ok := current[r.Addr]; ok && seenBy(old.tlog, j) {
					markLive(old.loc)
				}
				current[r.Addr] = mapping{r.Loc, j}
			case recTrim:
				end := r.Addr + r.Count
				drop := func(a uint64, old mapping) {
					if seenBy(old.tlog, j) {
						markLive(old.loc)
					}
					delete(current, a)
				}
				if r.Count < uint64(len(current)) {
					for a := r.Addr; a < end; a++ {
						if old, ok := current[a]; ok {
							drop(a, old)
						}
					}
				} else {
					for a, old := range current {
						if a >= r.Addr && a < end {
							drop(a, old)
						}
					}
				}
			}
		}
	}
	for _, m := range current {
		markLive(m.loc)
	}

	// 2. Choose.
	cs := int64(v.clusterSize)
	reloc := map[uint64]uint64{} // old packed location -> new
	dropped := map[scos.SCOName]bool{}
	var rewrite []*scoUse
	// left: the garbage this scrub leaves where it looked (SCOs mostly
	// live, or that clones are built on). A garbage-triggered scrub waits
	// for garbage to grow past it (see scrubDue).
	var left, freed, deadTotal int64
	var cands []*scoUse
	for _, use := range uses {
		res.LiveBytes += int64(len(use.live)) * cs
		dead := int64(use.written-len(use.live)) * cs
		deadTotal += dead
		if use.tlog < protected || use.written == 0 {
			left += dead
			continue
		}
		switch {
		case len(use.live) == 0:
			dropped[use.name] = true // free: nothing to copy
			freed += dead
		case float64(len(use.live)) < scrubLiveThreshold*float64(use.written) && use.name.Version < 255:
			cands = append(cands, use)
		default:
			left += dead
		}
	}
	// The least live first, as far as the goal asks (0: all there is).
	var goal int64
	if bounded {
		ratio := v.drv.opts.ScrubGarbageRatio
		if ratio <= 0 {
			ratio = DefaultScrubGarbageRatio
		}
		goal = max(deadTotal-int64(ratio/2*float64(res.LiveBytes)), 1)
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		return len(a.live)*b.written < len(b.live)*a.written ||
			len(a.live)*b.written == len(b.live)*a.written && a.name.Number < b.name.Number
	})
	for _, use := range cands {
		dead := int64(use.written-len(use.live)) * cs
		if goal > 0 && freed >= goal {
			left += dead
			continue
		}
		rewrite = append(rewrite, use)
		freed += dead
	}
	sort.Slice(rewrite, func(i, j int) bool { return rewrite[i].name.Number < rewrite[j].name.Number })
	if len(rewrite) == 0 && len(dropped) == 0 {
		if err := v.removeOrphans(ctx, names, uses); err != nil {
			return res, err
		}
		v.mu.Lock()
		v.scrubFloor = left
		v.mu.Unlock()
		res.BackendBytesAfter = before
		res.Duration = time.Since(start)
		return res, nil
	}

	// Write the new SCO versions: only their live clusters, verified.
	var rewriteBytes int64
	for _, use := range rewrite {
		rewriteBytes += int64(len(use.live)) * cs
	}
	pt.Start("rewrite scos", "bytes", rewriteBytes)
	var newObjects []string
	abort := func(err error) (ScrubResult, error) {
		for _, o := range newObjects {
			v.backend.Delete(context.WithoutCancel(ctx), v.ns, o)
		}
		return res, err
	}
	for _, use := range rewrite {
		if err := ctx.Err(); err != nil {
			return abort(err)
		}
		offs := make([]int, 0, len(use.live))
		for o := range use.live {
			offs = append(offs, int(o))
		}
		sort.Ints(offs)
		old, err := v.backend.Get(ctx, v.ns, use.name.String())
		if err != nil {
			return abort(fmt.Errorf("scrub: read %s: %w", use.name, err))
		}
		newName := use.name
		newName.Version++
		out := make([]byte, 0, int64(len(offs))*cs)
		for i, o := range offs {
			if int64(o+1)*cs > int64(len(old)) {
				return abort(fmt.Errorf("scrub: %s is shorter than its TLog says: %w", use.name, scos.ErrCorrupt))
			}
			out = append(out, old[int64(o)*cs:int64(o+1)*cs]...)
			reloc[scos.ClusterLocation{SCO: use.name, Offset: uint16(o)}.Pack()] =
				scos.ClusterLocation{SCO: newName, Offset: uint16(i)}.Pack()
		}
		if err := v.backend.Put(ctx, v.ns, newName.String(), out, true); err != nil {
			return abort(fmt.Errorf("scrub: write %s: %w", newName, err))
		}
		newObjects = append(newObjects, newName.String())
		pt.Add(int64(len(out)))
	}

	// 3. Rewrite the TLogs that name a changed SCO. Records of dropped
	// clusters go: no replay at any snapshot or now ends on them.
	newNames := append([]string(nil), names...)
	var oldTLogs []string
	pt.Start("rewrite tlogs", "tlogs", int64(len(tlogRecs)))
	for j, recs := range tlogRecs {
		pt.Add(1)
		changed := false
		out := tlogHeader()
		for _, r := range recs {
			if r.Type == recWrite {
				l := scos.UnpackLocation(r.Loc)
				if dropped[l.SCO] {
					changed = true
					continue
				}
				if uses[l.SCO.Number] != nil && uses[l.SCO.Number].name == l.SCO && isRewritten(rewrite, l.SCO) {
					changed = true
					nl, ok := reloc[r.Loc]
					if !ok {
						continue // a dead cluster of a rewritten SCO
					}
					r.Loc = nl
				}
			}
			out = appendRecord(out, r)
		}
		if !changed {
			continue
		}
		n := newTLogName()
		if err := v.backend.Put(ctx, v.ns, n, out, false); err != nil {
			return abort(fmt.Errorf("scrub: write rewritten %s: %w", names[j], err))
		}
		newObjects = append(newObjects, n)
		newNames[j] = n
		oldTLogs = append(oldTLogs, names[j])
	}

	// 4. The switch.
	v.drv.failpoint("scrub-before-switch")
	pt.Start("switch", "", 0)
	v.uploadMu.Lock()
	v.mu.Lock()
	if v.closed || len(v.state.Sealed) < u || !sameNames(v.state.Sealed[:u], names) {
		v.mu.Unlock()
		v.uploadMu.Unlock()
		return abort(fmt.Errorf("scrub: %s changed (rollback or restart) while scrubbing; run it again", v.name()))
	}
	for j := range names {
		v.state.Sealed[j].Name = newNames[j]
	}
	var oldSCOs []string
	for _, use := range rewrite {
		oldSCOs = append(oldSCOs, use.name.String())
	}
	for n := range dropped {
		oldSCOs = append(oldSCOs, n.String())
	}
	v.state.Garbage = append(v.state.Garbage, garbage{
		TLogs: oldTLogs, Objects: oldSCOs, NotBefore: time.Now().Add(v.drv.opts.GarbageGrace),
	})
	// The dead clusters of the rewritten and dropped SCOs leave the
	// stored and garbage figures.
	var reclaimed int64
	for _, use := range rewrite {
		reclaimed += int64(use.written-len(use.live)) * cs
	}
	for n := range dropped {
		reclaimed += int64(uses[n.Number].written) * cs
	}
	v.storedBytes = max(0, v.storedBytes-reclaimed)
	v.garbageBytes = max(0, v.garbageBytes-reclaimed)
	v.scrubFloor = left
	v.state.Checkpoint = 0 // a crash from here on rebuilds from the new TLogs
	if err := writeLocalState(v.dir, &v.state); err != nil {
		err = v.failLocked(err)
		v.mu.Unlock()
		v.uploadMu.Unlock()
		return res, err
	}
	v.snapshotsDirty = true
	v.drv.failpoint("scrub-after-switch")
	// Relocate the metadata entries that still point at a moved cluster.
	for a, m := range current {
		nl, ok := reloc[m.loc]
		if !ok {
			continue
		}
		e, err := v.md.get(a)
		if err != nil {
			v.mu.Unlock()
			v.uploadMu.Unlock()
			return res, v.failLocked(err)
		}
		if e.loc == m.loc {
			v.seq++
			if err := v.md.relocate(a, mdEntry{loc: nl, crc: e.crc}, v.seq); err != nil {
				v.mu.Unlock()
				v.uploadMu.Unlock()
				return res, v.failLocked(err)
			}
		}
	}
	// The write buffer's copies of the old SCOs are stale names now.
	for _, use := range rewrite {
		v.retireLocalSCOLocked(use.name)
	}
	for n := range dropped {
		v.retireLocalSCOLocked(n)
	}
	for _, t := range oldTLogs {
		if err := os.Remove(v.tlogPath(t)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			v.log.Warn("remove scrubbed TLog", "vdisk", v.name(), "tlog", t, "err", err)
		}
	}
	err = v.checkpointLocked()
	if err != nil {
		err = v.failLocked(err)
	}
	v.mu.Unlock()
	v.uploadMu.Unlock()
	if err != nil {
		return res, err
	}
	v.kickUploader()

	res.SCOsRewritten = len(rewrite)
	res.SCOsDeleted = len(dropped)
	// What the backend will hold once the old objects are collected.
	after := before
	for _, use := range rewrite {
		after -= int64(use.written)*cs - int64(len(use.live))*cs
	}
	for n := range dropped {
		after -= int64(uses[n.Number].written) * cs
	}
	res.BackendBytesAfter = after
	res.Duration = time.Since(start)
	v.log.Info("scrubbed", "vdisk", v.name(), "rewritten", res.SCOsRewritten, "deleted", res.SCOsDeleted,
		"backend_bytes_before", res.BackendBytesBefore, "backend_bytes_after", res.BackendBytesAfter,
		"live_bytes", res.LiveBytes, "took", res.Duration.Round(time.Millisecond))
	return res, nil
}

func isRewritten(rewrite []*scoUse, n scos.SCOName) bool {
	i := sort.Search(len(rewrite), func(i int) bool { return rewrite[i].name.Number >= n.Number })
	return i < len(rewrite) && rewrite[i].name == n
}

func sameNames(ts []sealedTLog, names []string) bool {
	for i := range names {
		if ts[i].Name != names[i] {
			return false
		}
	}
	return true
}

// retireLocalSCOLocked drops the write buffer's copy of an SCO whose name
// a scrub replaced. A reader still holding it finishes on the open file.
func (v *Volume) retireLocalSCOLocked(n scos.SCOName) {
	s, ok := v.scos[n.Number]
	if !ok || s.version != n.Version || s == v.cur {
		return
	}
	delete(v.scos, n.Number)
	os.Remove(v.scoPath(n.Number))
	v.writeBuffer -= int64(s.clusters) * int64(v.clusterSize)
	v.dropSCOFileLocked(s) // a reader holding it finishes on the open file
}

// backendSCOBytes is what the vdisk's SCOs take on the backend.
func (v *Volume) backendSCOBytes(ctx context.Context) (int64, error) {
	objs, err := v.backend.List(ctx, v.ns, "")
	if err != nil {
		return 0, fmt.Errorf("list backend objects: %w", err)
	}
	var n int64
	for _, o := range objs {
		if _, err := scos.ParseSCOName(o.Name); err == nil {
			n += o.Size
		}
	}
	return n, nil
}

// removeOrphans deletes what an interrupted scrub left on the backend: TLogs
// nothing names and SCO versions no TLog refers to.
func (v *Volume) removeOrphans(ctx context.Context, names []string, uses map[uint32]*scoUse) error {
	objs, err := v.backend.List(ctx, v.ns, "")
	if err != nil {
		return fmt.Errorf("list backend objects: %w", err)
	}
	v.mu.Lock()
	known := map[string]bool{}
	for _, t := range v.state.Sealed {
		known[t.Name] = true
	}
	for _, g := range v.state.Garbage {
		for _, t := range g.TLogs {
			known[t] = true
		}
	}
	v.mu.Unlock()
	for _, o := range objs {
		orphan := false
		if strings.HasPrefix(o.Name, tlogPrefix) {
			orphan = !known[o.Name]
		} else if n, err := scos.ParseSCOName(o.Name); err == nil {
			use := uses[n.Number]
			orphan = use != nil && n.Version > use.name.Version
		}
		if orphan {
			v.log.Info("removing an orphan left by an interrupted scrub", "vdisk", v.name(), "object", o.Name)
			if err := v.backend.Delete(ctx, v.ns, o.Name); err != nil && !errors.Is(err, scos.ErrObjectNotFound) {
				return err
			}
		}
	}
	return nil
}

// Scrub scrubs one vdisk (see Volume.Scrub), leaving alone the SCOs that
// clones of it are built on.
func (d *Driver) Scrub(ctx context.Context, name string) (ScrubResult, error) {
	return d.scrub(ctx, name, false)
}

func (d *Driver) scrub(ctx context.Context, name string, bounded bool) (ScrubResult, error) {
	v, err := d.Volume(name)
	if err != nil {
		return ScrubResult{}, err
	}
	v.scrubMu.Lock()
	defer v.scrubMu.Unlock()
	v.mu.Lock()
	id := v.state.Config.ID
	snaps := append([]snapshotRecord(nil), v.state.Snapshots...)
	v.mu.Unlock()
	protected := 0
	for _, sn := range snaps {
		if len(d.clonesOf(id, sn.Name)) > 0 {
			protected = max(protected, sn.TLogCount)
		}
	}
	v.mu.Lock()
	v.protectedTLogs = protected
	v.mu.Unlock()
	return v.scrub(ctx, bounded)
}

// scrubber scrubs every vdisk every interval (if positive), and a vdisk
// whose garbage asks for it (requestScrub) in between, for the life of the
// driver. One scrub runs at a time.
func (d *Driver) scrubber(interval time.Duration) {
	defer d.wg.Done()
	check := time.NewTicker(garbageCheckInterval)
	defer check.Stop()
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		var names []string
		why := "interval"
		select {
		case <-d.stop:
			return
		case <-tick:
			names = d.Names()
		case <-d.scrubKick:
			names, why = d.takeScrubRequests(), "garbage"
		case <-check.C:
			// Uploads ask for scrubs as garbage grows; this catches
			// what they cannot: a failed scrub, a start with garbage.
			d.checkGarbage()
			continue
		}
		for _, name := range names {
			select {
			case <-d.stop:
				return
			default:
			}
			d.scrubOne(name, why)
		}
	}
}
