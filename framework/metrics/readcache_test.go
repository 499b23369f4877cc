package metrics

import (
	"testing"

	"github.com/ovs-storage/ovs/volumedriver"
)

// rcVDisks is fakeVDisks with a disk read cache.
type rcVDisks struct {
	*fakeVDisks
	rc volumedriver.ReadCacheStats
}

func (r *rcVDisks) ReadCacheStats() volumedriver.ReadCacheStats { return r.rc }

func TestCollectorReadCacheDisk(t *testing.T) {
	vd, _, _ := fullSources()
	for _, tc := range []struct {
		name string
		src  VDisks
		want map[string]float64 // nil: no ovs_read_cache_disk_* series
	}{
		{"driver without a disk cache", &rcVDisks{fakeVDisks: vd}, nil},
		{"source without ReadCacheStats", vd, nil},
		{"enabled", &rcVDisks{fakeVDisks: vd, rc: volumedriver.ReadCacheStats{Enabled: true, Hits: 10, Misses: 4,
			Corrupt: 1, Evictions: 2, Fills: 5, Rejected: 3, Dropped: 6, Bytes: 8192, Capacity: 1 << 30}},
			map[string]float64{
				"ovs_read_cache_disk_hits_total": 10, "ovs_read_cache_disk_misses_total": 4,
				"ovs_read_cache_disk_corrupt_total": 1, "ovs_read_cache_disk_evictions_total": 2,
				"ovs_read_cache_disk_fills_total": 5, "ovs_read_cache_disk_rejected_total": 3,
				"ovs_read_cache_disk_dropped_total": 6, "ovs_read_cache_disk_bytes": 8192,
				"ovs_read_cache_disk_capacity_bytes": 1 << 30,
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := gather(t, New(Sources{VDisks: tc.src, Logger: quiet()}))
			if _, ok := got[`ovs_vdisk_ops_total{op="write",vdisk="a"}`]; !ok {
				t.Fatal("vdisk series missing")
			}
			for name, want := range tc.want {
				if got[name] != want {
					t.Errorf("%s = %v, want %v", name, got[name], want)
				}
			}
			if tc.want == nil {
				if _, ok := got["ovs_read_cache_disk_hits_total"]; ok {
					t.Error("disk cache series without a disk cache")
				}
			}
		})
	}
}
