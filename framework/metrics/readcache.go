package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ovs-storage/ovs/volumedriver"
)

// The node's disk read cache (volumedriver's ReadCacheStats): one cache
// per node, shared by its vdisks, so the series carry no vdisk label.

// ReadCacheSource is the volume driver's disk read cache as the collector
// reads it; a VDisks source that also implements it
// (*volumedriver.Driver) gets the ovs_read_cache_disk_* series.
type ReadCacheSource interface {
	ReadCacheStats() volumedriver.ReadCacheStats
}

var (
	descRCDiskHits = desc("ovs_read_cache_disk_hits_total",
		"Clusters served from the node's disk read cache (CRC verified).")
	descRCDiskMisses = desc("ovs_read_cache_disk_misses_total",
		"Disk read cache lookups that missed and went to the backend.")
	descRCDiskCorrupt = desc("ovs_read_cache_disk_corrupt_total",
		"Disk read cache entries that failed verification: dropped and read from the backend, never served.")
	descRCDiskEvictions = desc("ovs_read_cache_disk_evictions_total",
		"Disk read cache entries evicted to make room.")
	descRCDiskFills = desc("ovs_read_cache_disk_fills_total",
		"Clusters written to the disk read cache.")
	descRCDiskRejected = desc("ovs_read_cache_disk_rejected_total",
		"Fills the disk read cache's admission (TinyLFU) refused: read less often than what they would evict.")
	descRCDiskDropped = desc("ovs_read_cache_disk_dropped_total",
		"Fills dropped because the disk read cache's fill queue was full.")
	descRCDiskBytes = desc("ovs_read_cache_disk_bytes",
		"Data bytes in the disk read cache.")
	descRCDiskCapacity = desc("ovs_read_cache_disk_capacity_bytes",
		"Size of the disk read cache's files.")
)

var readCacheDescs = []*prometheus.Desc{descRCDiskHits, descRCDiskMisses, descRCDiskCorrupt, descRCDiskEvictions,
	descRCDiskFills, descRCDiskRejected, descRCDiskDropped, descRCDiskBytes, descRCDiskCapacity}

// collectReadCache emits the disk read cache's series if src has one.
func collectReadCache(src VDisks, e *emitter) {
	rs, ok := src.(ReadCacheSource)
	if !ok {
		return
	}
	s := rs.ReadCacheStats()
	if !s.Enabled {
		return
	}
	for _, c := range []struct {
		d *prometheus.Desc
		v uint64
	}{
		{descRCDiskHits, s.Hits}, {descRCDiskMisses, s.Misses}, {descRCDiskCorrupt, s.Corrupt},
		{descRCDiskEvictions, s.Evictions}, {descRCDiskFills, s.Fills}, {descRCDiskRejected, s.Rejected},
		{descRCDiskDropped, s.Dropped},
	} {
		e.counter(c.d, float64(c.v))
	}
	e.gauge(descRCDiskBytes, float64(s.Bytes))
	e.gauge(descRCDiskCapacity, float64(s.Capacity))
}
