package volumedriver

import (
	"context"
	"fmt"

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
	lo, hi := len(ls), -1
	for i, l := range ls {
		p := out[i*cs : (i+1)*cs]
		if memCache && v.cacheReads {
			if data, ok := v.drv.cacheGet(v, l.e.loc); ok && crc32c(data) == l.e.crc {
				copy(p, data)
				v.io.cacheHits.Add(1)
				continue
			}
			v.io.cacheMisses.Add(1)
		}
		if v.diskCacheGet(diskCacheKey(ns, obj, first.Offset+uint16(i)), p, l.e.crc) {
			continue
		}
		lo, hi = min(lo, i), i
	}
	if hi < 0 {
		return nil
	}
	return v.readBackend(ctx, ns, obj, ls[lo:hi+1], out[lo*cs:(hi+1)*cs])
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
	flush := func(end int) {
		if end > runStart {
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
