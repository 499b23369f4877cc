package readcache

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkScan measures what admission buys against scans: a working
// set of half the cache is read at random while a one-pass scan of 8x the
// cache runs through it (every other read). It reports the hit rate of the
// working set's reads during the scan, with TinyLFU admission and with
// plain segment FIFO (every fill admitted). Run with -benchtime=1x.
func BenchmarkScan(b *testing.B) {
	for _, tc := range []struct {
		name    string
		noAdmit bool
	}{{"tinylfu", false}, {"fifo", true}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				hot, scan := scanHitRates(b, tc.noAdmit)
				b.ReportMetric(100*hot, "hot-hit-%")
				b.ReportMetric(100*scan, "scan-hit-%")
			}
		})
	}
}

func scanHitRates(b *testing.B, noAdmit bool) (hot, scan float64) {
	const size = 8 << 20
	c := openT(b, b.TempDir(), size, func(o *Options) {
		o.SegmentSize = 256 << 10
		o.NoAdmission = noAdmit
	})
	capEntries := uint64(size / cs)
	hotN := capEntries / 2
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, cs)
	read := func(loc uint64) bool {
		if c.Get(Key{"vd-a", loc}, buf) {
			return true
		}
		c.Add(Key{"vd-a", loc}, cluster("vd-a", loc))
		flush(b, c)
		return false
	}
	// Warm: the working set, read a few times over.
	for range 4 * hotN {
		read(rng.Uint64N(hotN))
	}
	var hotHits, hotReads, scanHits, scanReads int
	next := uint64(1 << 32)
	for range 8 * capEntries {
		if read(rng.Uint64N(hotN)) {
			hotHits++
		}
		hotReads++
		if read(next) {
			scanHits++
		}
		scanReads++
		next++
	}
	return float64(hotHits) / float64(hotReads), float64(scanHits) / float64(scanReads)
}

// BenchmarkGetHit: a verified 4 KiB hit (page-cache resident segments).
func BenchmarkGetHit(b *testing.B) {
	c := openT(b, b.TempDir(), 64<<20)
	const n = 4096
	fillKeys(b, c, "vd-a", 0, n)
	b.SetBytes(cs)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, cs)
		i := uint64(0)
		for pb.Next() {
			if !c.Get(Key{"vd-a", i % n}, buf) {
				b.Error("miss")
				return
			}
			i += 7
		}
	})
}
