package volumedriver

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ovs-storage/ovs/scos"
)

// maxBackendRun bounds one ranged backend read of a run of clusters.
//
// Why 1 MiB: it is the largest request a VM commonly sends, the EC
// backend's read-ahead window, and small enough that a run crossing a bad
// cluster costs little to read again cluster by cluster.
const maxBackendRun = 1 << 20

func (v *Volume) maxRunClusters() int { return max(1, maxBackendRun/v.clusterSize) }

// backendRunLen is how many lookups of ls, from the first (mapped, not in
// the write buffer), one ranged backend read serves: those that follow it
// in the same object (same clone id, SCO number and version, next offset)
// and are neither in the write buffer nor already copied.
func backendRunLen(ls []lookup) int {
	j := 1
	for j < len(ls) && !ls[j].done && ls[j].sco == nil &&
		ls[j].e.loc == ls[j-1].e.loc+1 && ls[j].e.loc>>16 == ls[0].e.loc>>16 {
		j++
	}
	return j
}

// readRun reads clusters that are contiguous in one SCO and verifies each
// against its CRC. The order is: memory read cache, local SCO, disk read
// cache, backend.
func (v *Volume) readRun(ctx context.Context, ls []lookup, out []byte) error {
	if len(ls) == 1 && v.cacheReads {
		if data, ok := v.drv.cacheGet(v, ls[0].e.loc); ok && crc32c(data) == ls[0].e.crc {
			copy(out, data)
			v.io.cacheHits.Add(1)
			return nil
		}
		v.io.cacheMisses.Add(1)
	}
	if ls[0].sco != nil && v.readRunLocal(ls, out) {
		return nil
	}
	return v.readRunBackend(ctx, ls, out, len(ls) > 1)
}

// readRunLocal reads a run from its SCO in the write buffer and reports
// whether every cluster passed its CRC (else the caller reads the backend
// copy).
func (v *Volume) readRunLocal(ls []lookup, out []byte) bool {
	cs := v.clusterSize
	first := scos.UnpackLocation(ls[0].e.loc)
	if err := v.readLocalSCO(ls[0].sco, out, int64(first.Offset)*int64(cs)); err != nil {
		v.log.Warn("read from the write buffer failed; reading the backend copy",
			"vdisk", v.name(), "sco", first.SCO.String(), "err", err)
		return false
	}
	for i, l := range ls {
		if crc32c(out[i*cs:(i+1)*cs]) != l.e.crc {
			v.log.Error("checksum mismatch in the write buffer (bit rot); reading the backend copy",
				"vdisk", v.name(), "sco", first.SCO.String(), "offset", int(first.Offset)+i)
			return false
		}
	}
	return true
}

// objectOf is the namespace and object name that hold the cluster at
// packed location loc: a cluster a clone inherited lives in an ancestor's
// namespace, under that ancestor's own (clone id 0) name.
func (v *Volume) objectOf(loc scos.ClusterLocation) (string, scos.SCOName, error) {
	ns, obj := v.ns, loc.SCO
	if c := int(loc.SCO.CloneID); c > 0 {
		anc := *v.ancestors.Load()
		if c > len(anc) {
			return "", obj, fmt.Errorf("%s: cluster %s refers to ancestor %d of %d: %w", v.name(), loc, c, len(anc), scos.ErrCorrupt)
		}
		ns, obj.CloneID = anc[c-1], 0
	}
	return ns, obj, nil
}

// readRunBackend serves a run from the caches where they hold it and
// reads the rest, from the first cluster they miss to the last, with one
// ranged backend read. memCache: consult the memory read cache per
// cluster (readRun already did for a run of one).
func (v *Volume) readRunBackend(ctx context.Context, ls []lookup, out []byte, memCache bool) error {
	cs := v.clusterSize
	first := scos.UnpackLocation(ls[0].e.loc)
	ns, obj, err := v.objectOf(first)
	if err != nil {
		return err
	}
	served := make([]bool, len(ls))
	// The memory cache holds lone clusters (random reads): a long run is
	// a bulk read, whose lookups there cost 5% of the CPU of a cold
	// sequential read and counted a scan in its admission policy.
	if memCache && v.cacheReads && len(ls)*cs <= missWindow {
		for i, l := range ls {
			if data, ok := v.drv.cacheGet(v, l.e.loc); ok && crc32c(data) == l.e.crc {
				copy(out[i*cs:(i+1)*cs], data)
				v.io.cacheHits.Add(1)
				served[i] = true
				continue
			}
			v.io.cacheMisses.Add(1)
		}
	}
	if slices.Contains(served, false) {
		v.diskCacheGetRun(ns, obj, first.Offset, ls, out, served)
	}
	lo, hi := len(ls), -1
	for i := range ls {
		if !served[i] {
			lo, hi = min(lo, i), i
		}
	}
	if hi < 0 {
		return nil
	}
	if len(ls) == 1 && v.readMissWindow(ctx, ns, obj, ls[0], out) {
		return nil
	}
	return v.readBackend(ctx, ns, obj, ls[lo:hi+1], out[lo*cs:(hi+1)*cs])
}

// missWindow is what a lone cluster that every cache missed is read from
// the backend with: the aligned window of its SCO around it, all of which
// goes to the disk read cache.
//
// Why: on the erasure-coded backend a 4 KiB read costs an ASD request
// whatever its size (pprof: syscalls, framing and the lookups dominate;
// the bytes are a few µs), and reads of a VM's disk come back near the
// ones before them (file system blocks, database pages and their
// neighbours). Open vStorage fetched whole SCOs into its SCO cache, and
// its backend proxy whole fragments; 64 KiB keeps the extra bytes per
// miss small (16 clusters) while the cache warms 16 times faster.
const missWindow = 64 << 10

// windowReader is a backend that reads a range clipped to the object's
// end (the last SCO of a vdisk may end inside a window).
type windowReader interface {
	ReadAtMost(ctx context.Context, ns, name string, p []byte, off int64) (int, error)
}

var windowBufs = sync.Pool{New: func() any { b := make([]byte, missWindow); return &b }}

// readMissWindow serves the lone cluster l of object obj by reading its
// window (missWindow) and queueing the window to the disk read cache. It
// reports false, having served nothing, when there is no disk cache, the
// backend cannot read windows, or the window's read fails or does not
// hold the cluster with its CRC: the caller then reads the cluster alone,
// with the errors and the checks of that path.
func (v *Volume) readMissWindow(ctx context.Context, ns string, obj scos.SCOName, l lookup, out []byte) bool {
	wr, ok := v.drv.backend.(windowReader) // reads need no fence (fencingBackend)
	cs := v.clusterSize
	per := missWindow / cs
	if !ok || v.drv.rc == nil || per < 2 {
		return false
	}
	loc := scos.UnpackLocation(l.e.loc)
	first := int(loc.Offset) / per * per
	bp := windowBufs.Get().(*[]byte)
	defer windowBufs.Put(bp)
	win := (*bp)[:per*cs]
	n, err := wr.ReadAtMost(ctx, ns, obj.String(), win, int64(first)*int64(cs))
	i := int(loc.Offset) - first
	if err != nil || n < (i+1)*cs {
		return false
	}
	p := win[i*cs : (i+1)*cs]
	if crc32c(p) != l.e.crc {
		return false
	}
	copy(out, p)
	if v.cacheReads {
		v.drv.cacheSet(v, l.e.loc, p)
	}
	// The other clusters' CRCs are not known here (the metadata maps
	// addresses to clusters, not the other way): the cache computes its
	// own, and every hit is checked against the metadata's CRC anyway.
	v.drv.rc.AddRun(diskCacheKey(ns, obj, uint16(first)), cs, win[:n/cs*cs], nil)
	return true
}

// readBackend reads a run of clusters of object obj in namespace ns with
// one ranged read and verifies each against the metadata's CRC. A cluster
// that fails is read again on its own (a range may cross a fragment that
// went bad where a single cluster read takes another path); one that
// fails on its own is an error, never served.
func (v *Volume) readBackend(ctx context.Context, ns string, obj scos.SCOName, ls []lookup, out []byte) error {
	cs := v.clusterSize
	first := scos.UnpackLocation(ls[0].e.loc)
	if err := v.backend.ReadAt(ctx, ns, obj.String(), out, int64(first.Offset)*int64(cs)); err != nil {
		if first.SCO.CloneID == 0 && v.lost[first.SCO.Number] {
			return fmt.Errorf("%s: cluster %s: %w (SCO %s was damaged or lost in the write buffer before it reached the backend: %v)",
				v.name(), first, ErrDataLost, first.SCO, err)
		}
		return fmt.Errorf("%s: read cluster %s from the backend: %w", v.name(), first, err)
	}
	// The run goes to the disk cache as one fill, with the metadata CRCs
	// each cluster has just passed (so the cache does not compute them
	// again); a cluster that had to be read again on its own goes alone.
	crcs := make([]uint32, 0, len(ls))
	runStart := 0
	// A long run is a scan: it goes to the disk cache only if it was read
	// before (readcache.Cache.Seen). Measured: filling every cold 1 MiB
	// sequential read cost a third of the read's throughput (810 against
	// 1210 MiB/s), and doubled the disk's writes.
	fill := len(ls)*cs <= missWindow || v.diskCacheSeen(diskCacheKey(ns, obj, first.Offset))
	flush := func(end int) {
		if fill && end > runStart {
			v.diskCacheAddRun(diskCacheKey(ns, obj, first.Offset+uint16(runStart)), out[runStart*cs:end*cs], crcs)
		}
		crcs = crcs[:0]
		runStart = end + 1
	}
	for i, l := range ls {
		p := out[i*cs : (i+1)*cs]
		if crc32c(p) != l.e.crc {
			loc := scos.UnpackLocation(l.e.loc)
			if len(ls) == 1 {
				v.log.Error("checksum mismatch on the backend copy (bit rot)", "vdisk", v.name(), "cluster", loc.String())
				return fmt.Errorf("%s: cluster %s: %w: checksum mismatch", v.name(), loc, scos.ErrCorrupt)
			}
			v.log.Warn("checksum mismatch in a ranged backend read; reading the cluster on its own",
				"vdisk", v.name(), "cluster", loc.String())
			flush(i)
			if err := v.readBackend(ctx, ns, obj, ls[i:i+1], p); err != nil {
				return err
			}
			continue
		}
		// Only a lone cluster goes to the memory cache: runs are bulk
		// (sequential) reads that would wash the small hot set out of
		// it, and copying them there cost 14% of the CPU of a cold 1 MiB
		// sequential read (pprof); the disk cache keeps them.
		if v.cacheReads && len(ls) == 1 {
			v.drv.cacheSet(v, l.e.loc, p)
		}
		crcs = append(crcs, l.e.crc)
	}
	flush(len(ls))
	return nil
}
