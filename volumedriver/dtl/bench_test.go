package dtl

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkShip measures a QD32 4 KiB write stream through a Shipper to a
// server over loopback, with a temp directory on the test machine's disk
// (real fdatasync). Two shapes:
//
//   - sync-1ms: 32 writers append as fast as they can; a flusher waits for
//     everything so far to be durable every millisecond (a guest flushing
//     often);
//   - flush-each: 32 writers each wait for their own write to be durable
//     (QD32 write+FUA; group commit at work).
//
// It reports entries/s and the sync latency percentiles. rate paces the
// writers (entries/s in all; 0: as fast as the DTL takes them, the writers
// waiting for durability once they are a window ahead, as a volume whose
// queue limit would otherwise break the shipper).
func BenchmarkShip(b *testing.B) {
	b.Run("max-sync-1ms", func(b *testing.B) { benchShip(b, false, 0) })
	b.Run("30k-sync-1ms", func(b *testing.B) { benchShip(b, false, 30000) })
	b.Run("flush-each", func(b *testing.B) { benchShip(b, true, 0) })
}

// window bounds how far the unpaced writers run ahead of durability.
const window = 8192

func benchShip(b *testing.B, flushEach bool, rate float64) {
	ts := startServer(b, "")
	s := NewShipper(ShipperConfig{Addr: ts.addr, VDisk: "bench", Epoch: 1})
	defer s.Close()
	s.Begin("tlog_bench", "")
	entries := make([]Entry, 64)
	for i := range entries {
		entries[i] = writeEntry(uint64(i), 1, byte(i))
	}

	var mu sync.Mutex // the volume's write lock
	var latMu sync.Mutex
	var lats []time.Duration
	record := func(d time.Duration) {
		latMu.Lock()
		lats = append(lats, d)
		latMu.Unlock()
	}
	var next atomic.Int64
	var last atomic.Uint64
	stop := make(chan struct{})
	var flusher sync.WaitGroup
	if !flushEach {
		flusher.Add(1)
		go func() {
			defer flusher.Done()
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				start := time.Now()
				if err := s.WaitDurable(context.Background(), last.Load()); err != nil {
					b.Error(err)
					return
				}
				record(time.Since(start))
			}
		}()
	}

	b.SetBytes(testCluster)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if rate > 0 {
					if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
						time.Sleep(d)
					}
				} else if !flushEach && i > window {
					if err := s.WaitDurable(context.Background(), uint64(i-window)); err != nil {
						b.Error(err)
						return
					}
				}
				e := entries[i%int64(len(entries))]
				e.Addr = uint64(i)
				mu.Lock()
				pos := s.Append(e)
				mu.Unlock()
				if pos == 0 {
					b.Error(s.Err())
					return
				}
				for {
					l := last.Load()
					if pos <= l || last.CompareAndSwap(l, pos) {
						break
					}
				}
				if flushEach {
					t0 := time.Now()
					if err := s.WaitDurable(context.Background(), pos); err != nil {
						b.Error(err)
						return
					}
					record(time.Since(t0))
				}
			}
		}()
	}
	wg.Wait()
	if err := s.WaitDurable(context.Background(), last.Load()); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	flusher.Wait()

	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
	if len(lats) > 0 {
		slices.Sort(lats)
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "sync-p50-µs")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "sync-p99-µs")
		b.ReportMetric(float64(len(lats)), "syncs")
	}
}
