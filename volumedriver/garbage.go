package volumedriver

import (
	"context"
	"errors"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// Garbage accounting: every overwrite or trim of a cluster leaves its old
// copy in an SCO. That copy is garbage (backend space only a scrub gives
// back) unless a snapshot taken after it was written still sees it. The
// volume counts, from the metadata store's changes:
//
//   - storedBytes: cluster data the volume's own SCOs hold (on the backend
//     or on the way there), scrubbed-away clusters excluded;
//   - garbageBytes: the part of it that nothing can read any more.
//
// A copy is protected exactly when a snapshot was taken between its write
// and its overwrite; since a snapshot seals the open SCO, that is when its
// SCO number is below the newest snapshot's NextSCO (garbageCut). Both
// counters are persisted with the metadata checkpoint and with each sealed
// TLog, and rebuilt by any full replay (new host, rollback). Where the
// figure errs, it errs low: deleting a snapshot does not add what it alone
// protected, and after a crash the open TLog's overwrites are not counted;
// the hourly scrub takes that space back all the same.
//
// When garbage passes ScrubGarbageRatio of the live data (stored minus
// garbage), the volume asks the driver's scrubber for a scrub (after an
// upload, and on a periodic check), so that backend bytes come back within
// (1+ratio)x of live data plus snapshots (plus what a scrub leaves: it
// rewrites SCOs under 80% live) instead of growing until the next scrub
// interval. While writes go on, the backend also holds the TLogs not yet
// scrubbed and the objects a scrub replaced until GarbageGrace passes.

// DefaultScrubGarbageRatio: scrub when garbage exceeds a quarter of the
// live data, so that with what a scrub leaves the backend stays under 1.5x.
const DefaultScrubGarbageRatio = 0.25

// mdChanged is the metadata store's hook; v.mu is held.
func (v *Volume) mdChanged(old, e mdEntry) {
	if !v.countChanges || old.loc == e.loc {
		return
	}
	cs := int64(v.clusterSize)
	if e.loc != 0 && scos.UnpackLocation(e.loc).SCO.CloneID == 0 {
		v.storedBytes += cs
	}
	if old.loc == 0 {
		return
	}
	// A cluster inherited from a clone's parent lives in the parent's
	// namespace: not this volume's garbage.
	if l := scos.UnpackLocation(old.loc); l.SCO.CloneID == 0 && l.SCO.Number >= v.garbageCut {
		v.garbageBytes += cs
	}
}

// cutAt is garbageCut while TLog j is replayed: NextSCO of the newest
// snapshot taken before it (0 if none).
func (v *Volume) cutAt(j int) uint32 {
	var cut uint32
	for _, sn := range v.state.Snapshots {
		if sn.TLogCount <= j {
			cut = sn.NextSCO
		}
	}
	return cut
}

// resetGarbageCutLocked points garbageCut at the newest snapshot, for the
// changes that come next.
func (v *Volume) resetGarbageCutLocked() { v.garbageCut = v.cutAt(len(v.state.Sealed)) }

// scrubDue says whether garbage calls for a scrub now. floor is the
// garbage the last scrub chose to leave where it looked (in SCOs mostly
// live, or that clones are built on): garbage must have grown past it by
// 0.4 x ratio x live, and by an SCO at least, so that a scrub that cannot
// help is not repeated at every upload.
func scrubDue(stored, garbage, floor, minGarbage int64, ratio float64) bool {
	if ratio <= 0 || garbage < minGarbage {
		return false
	}
	live := max(stored-garbage, 0)
	if garbage-floor < max(minGarbage, int64(0.4*ratio*float64(live))) {
		return false
	}
	return float64(garbage) > ratio*float64(live)
}

// requestScrubIfDueLocked asks the scrubber for a scrub of this volume
// when its garbage calls for one.
func (v *Volume) requestScrubIfDueLocked() {
	sco := int64(v.clusterSize) * int64(v.scoClusters)
	if v.state.Config.Template || !scrubDue(v.storedBytes, v.garbageBytes, v.scrubFloor, sco, v.drv.opts.ScrubGarbageRatio) {
		return
	}
	v.drv.requestScrub(v.name())
}

// garbageCheckInterval: how often the scrubber looks at every volume's
// garbage besides what uploads report.
const garbageCheckInterval = 5 * time.Second

func (d *Driver) checkGarbage() {
	if d.opts.ScrubGarbageRatio <= 0 {
		return
	}
	d.mu.Lock()
	vols := make([]*Volume, 0, len(d.vols))
	for _, v := range d.vols {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	for _, v := range vols {
		v.mu.Lock()
		if !v.closed {
			v.requestScrubIfDueLocked()
		}
		v.mu.Unlock()
	}
}

// requestScrub queues a garbage-triggered scrub of a vdisk. It may be
// called with a volume's mu held: it takes only scrubReqMu.
func (d *Driver) requestScrub(name string) {
	d.scrubReqMu.Lock()
	if d.scrubReqs == nil {
		d.scrubReqs = map[string]bool{}
	}
	d.scrubReqs[name] = true
	d.scrubReqMu.Unlock()
	select {
	case d.scrubKick <- struct{}{}:
	default:
	}
}

func (d *Driver) takeScrubRequests() []string {
	d.scrubReqMu.Lock()
	defer d.scrubReqMu.Unlock()
	out := make([]string, 0, len(d.scrubReqs))
	for n := range d.scrubReqs {
		out = append(out, n)
	}
	d.scrubReqs = nil
	return out
}

// scrubOne runs one background scrub, canceled if the driver stops.
func (d *Driver) scrubOne(name, why string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-d.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := d.scrub(ctx, name, why == "garbage")
	if err != nil {
		if !errors.Is(err, context.Canceled) && !errors.Is(err, ErrReadOnly) && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrClosed) &&
			!errors.Is(err, ErrReleased) && !errors.Is(err, ErrFenced) {
			d.log.Warn("background scrub", "vdisk", name, "trigger", why, "err", err)
		}
		return
	}
	if res.SCOsRewritten+res.SCOsDeleted > 0 {
		d.log.Info("background scrub", "vdisk", name, "trigger", why, "rewritten", res.SCOsRewritten,
			"deleted", res.SCOsDeleted, "backend_bytes_after", res.BackendBytesAfter)
	}
}
