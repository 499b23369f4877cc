package volumedriver

import (
	"fmt"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver/internal/readcache"
)

// The disk read cache (internal/readcache): clusters read from the
// backend, kept under DIR/readcache for every vdisk of the driver, behind
// the memory read cache. Reads consult it after the write buffer and
// before the backend; what the backend returns is queued to it (off the
// read's path).

// readCacheDir is the disk read cache's directory under the driver's dir.
const readCacheDir = "readcache"

// Bounds of DefaultReadCacheDiskBytes.
const (
	readCacheDiskMin = 256 << 20
	readCacheDiskMax = 8 << 30
)

// DefaultReadCacheDiskBytes is the disk read cache size for a driver
// directory dir when none is configured: 10% of the free space of its
// file system, at most 8 GiB, at least 256 MiB (0 if even that is more
// than a quarter of the free space: a full disk is worse than a cold
// cache).
//
// Why: 10% leaves the write buffer, the metadata and everything else on
// DATA room to grow; 8 GiB bounds the index in RAM (about 40 bytes per
// cached 4 KiB cluster, some 80 MiB when full) and covers the working set
// of a handful of busy VMs; below 256 MiB it would hold little more than
// the memory cache in front of it.
func DefaultReadCacheDiskBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free/4 < readCacheDiskMin {
		return 0
	}
	return min(max(free/10, readCacheDiskMin), readCacheDiskMax)
}

// openReadCache opens the disk read cache if the options ask for one and
// the backend's reads are not already local; a cache that cannot open is
// logged and left out (the driver serves from the backend).
func (d *Driver) openReadCache(backend scos.Backend) {
	if d.opts.ReadCacheDiskBytes <= 0 {
		return
	}
	if cheap, ok := backend.(scos.CheapReader); ok && cheap.CheapReads() {
		return
	}
	rc, err := readcache.Open(readcache.Options{
		Dir:    filepath.Join(d.dir, readCacheDir),
		Size:   max(d.opts.ReadCacheDiskBytes, readcache.MinSize),
		Logger: d.log.With("component", "readcache"),
	})
	if err != nil {
		d.log.Error("the disk read cache could not open; reads beyond the write buffer go to the backend", "err", err)
		return
	}
	d.rc = rc
}

// ReadCacheStats are the disk read cache's counters (Enabled false: there
// is none).
type ReadCacheStats struct {
	Enabled   bool   `json:"enabled"`
	Hits      uint64 `json:"hits"`      // reads served from it, CRC verified
	Misses    uint64 `json:"misses"`    // lookups it could not serve
	Corrupt   uint64 `json:"corrupt"`   // entries that failed a CRC and were dropped
	Evictions uint64 `json:"evictions"` // entries evicted to make room
	Fills     uint64 `json:"fills"`     // entries written
	Rejected  uint64 `json:"rejected"`  // fills refused by admission (TinyLFU)
	Dropped   uint64 `json:"dropped"`   // fills dropped, the fill queue being full
	Bytes     int64  `json:"bytes"`     // data bytes cached
	Capacity  int64  `json:"capacity"`  // bytes of its files
}

// ReadCacheStats returns the disk read cache's counters.
func (d *Driver) ReadCacheStats() ReadCacheStats {
	if d.rc == nil {
		return ReadCacheStats{}
	}
	s := d.rc.Stats()
	return ReadCacheStats{Enabled: true, Hits: s.Hits, Misses: s.Misses, Corrupt: s.Corrupt,
		Evictions: s.Evictions, Fills: s.Fills, Rejected: s.Rejected, Dropped: s.Dropped,
		Bytes: s.Bytes, Capacity: s.Capacity}
}

// invalidateReadCache forgets what the disk read cache holds of namespace
// ns: its SCO names may be used again for other data (the vdisk was
// deleted, rolled back, or restored from the backend by this host).
func (d *Driver) invalidateReadCache(ns string) {
	if d.rc != nil {
		d.rc.Invalidate(ns)
	}
}

// diskCacheKey: clusters are cached under the namespace that holds their
// SCO and the SCO's own name there, so that a clone and its parent share
// the entries of the SCOs they share.
func diskCacheKey(ns string, obj scos.SCOName, offset uint16) readcache.Key {
	return readcache.Key{NS: ns, Loc: scos.ClusterLocation{SCO: obj, Offset: offset}.Pack()}
}

// diskCacheGetRun fills the clusters of the run ls (at offset first of
// object obj of ns) that the disk read cache holds with their metadata
// CRCs, into out, and marks them in served. Clusters served already (by
// the memory cache) are skipped, and the others then looked up one by
// one. The one check is the metadata's CRC (GetCRC): it is the cluster's
// end-to-end checksum, so data that passes it is the cluster whatever
// happened to the cache file, and an entry that fails it (a flipped byte,
// or another cluster's data) is dropped, never served.
func (v *Volume) diskCacheGetRun(ns string, obj scos.SCOName, first uint16, ls []lookup, out []byte, served []bool) {
	rc := v.drv.rc
	if rc == nil {
		return
	}
	cs := v.clusterSize
	if slices.Contains(served, true) {
		for i, l := range ls {
			if !served[i] {
				served[i] = rc.GetCRC(diskCacheKey(ns, obj, first+uint16(i)), out[i*cs:(i+1)*cs], l.e.crc)
			}
		}
		return
	}
	want := make([]uint32, len(ls))
	for i, l := range ls {
		want[i] = l.e.crc
	}
	rc.GetRunCRC(diskCacheKey(ns, obj, first), cs, out[:len(ls)*cs], want, served)
}

// diskCacheAddRun queues clusters that follow each other in one SCO, read
// from the backend and verified against crcs (their metadata CRCs), from
// key on.
func (v *Volume) diskCacheAddRun(key readcache.Key, p []byte, crcs []uint32) {
	if rc := v.drv.rc; rc != nil {
		rc.AddRun(key, v.clusterSize, p, crcs)
	}
}

// diskCacheSeen reports whether the disk read cache has seen key asked
// for before (the admission of scans).
func (v *Volume) diskCacheSeen(key readcache.Key) bool {
	rc := v.drv.rc
	return rc != nil && rc.Seen(key)
}

func (d *Driver) closeReadCache() error {
	if d.rc == nil {
		return nil
	}
	if err := d.rc.Close(); err != nil {
		return fmt.Errorf("close the disk read cache: %w", err)
	}
	return nil
}
