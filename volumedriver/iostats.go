package volumedriver

import (
	"sync/atomic"
	"time"
)

// I/O statistics of a vdisk: what the frontends (NBD, iSCSI, I/O forwarded
// from other nodes) asked of it, counted at the Volume's public methods.
// Every counter is an atomic add on the I/O's own path, so the hot path
// takes no lock and allocates nothing; a snapshot reads them one by one
// and may be a few operations out of step between fields, which is what
// Prometheus counters tolerate.

// IOOp is a kind of I/O a frontend asks of a vdisk.
type IOOp int

// The I/O kinds. Trim also counts write-zeroes (both make a range read as
// zeros); compare-and-write counts as a write.
const (
	OpRead IOOp = iota
	OpWrite
	OpFlush
	OpTrim
	numIOOps
)

// String is the op label of the metrics and stats ("read", "write",
// "flush", "trim").
func (o IOOp) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpTrim:
		return "trim"
	}
	return "unknown"
}

// IOOps lists the I/O kinds in order.
func IOOps() []IOOp { return []IOOp{OpRead, OpWrite, OpFlush, OpTrim} }

// latencyBoundsNanos are the upper bounds of the latency histogram
// buckets, from 50µs (a read from the read cache) to 10s (a flush that
// waited for a slow DTL or a throttled write); slower ones fall in +Inf.
var latencyBoundsNanos = [...]int64{
	50e3, 100e3, 250e3, 500e3,
	1e6, 2.5e6, 5e6, 10e6, 25e6, 50e6, 100e6, 250e6, 500e6,
	1e9, 2.5e9, 5e9, 10e9,
}

// NumLatencyBuckets is the number of finite latency buckets.
const NumLatencyBuckets = len(latencyBoundsNanos)

// LatencyBounds returns the upper bounds (seconds) of the latency
// histogram's finite buckets, ascending: OpStats.Buckets[i] counts the
// operations that took at most LatencyBounds()[i].
func LatencyBounds() []float64 {
	out := make([]float64, NumLatencyBuckets)
	for i, n := range latencyBoundsNanos {
		out[i] = float64(n) / 1e9
	}
	return out
}

// opCounters are the counters of one I/O kind. The number of operations
// is the sum of the buckets (each completed operation lands in exactly
// one), so a snapshot's count always matches its buckets.
type opCounters struct {
	bytes    atomic.Uint64
	errors   atomic.Uint64
	sumNanos atomic.Uint64
	// buckets[i] counts operations with latency <= latencyBoundsNanos[i]
	// and > the bound before; the last one is +Inf.
	buckets [NumLatencyBuckets + 1]atomic.Uint64
}

// ioCounters are a Volume's I/O statistics since it was brought up.
type ioCounters struct {
	ops         [numIOOps]opCounters
	cacheHits   atomic.Uint64
	cacheMisses atomic.Uint64
}

// done records one operation of kind op that started at start and moved n
// bytes. A failed operation counts only as an error: its latency says
// nothing about the vdisk's service time.
func (c *ioCounters) done(op IOOp, n int64, start time.Time, err error) {
	oc := &c.ops[op]
	if err != nil {
		oc.errors.Add(1)
		return
	}
	d := time.Since(start).Nanoseconds()
	if d < 0 {
		d = 0
	}
	// A linear scan: 17 compares of int64s beat a binary search's
	// branches at this size, and most I/O lands in the first few.
	i := 0
	for i < NumLatencyBuckets && d > latencyBoundsNanos[i] {
		i++
	}
	oc.buckets[i].Add(1)
	oc.bytes.Add(uint64(n))
	oc.sumNanos.Add(uint64(d))
}

// OpStats are the cumulative statistics of one I/O kind.
type OpStats struct {
	// Ops counts completed operations, Bytes the bytes they moved
	// (the range length for trims; 0 for flushes).
	Ops   uint64 `json:"ops"`
	Bytes uint64 `json:"bytes"`
	// Errors counts operations that failed (not in Ops).
	Errors uint64 `json:"errors"`
	// LatencySum is the total time of the operations in Ops.
	LatencySum time.Duration `json:"latency_sum_ns"`
	// Buckets[i] is the cumulative count of operations that took at most
	// LatencyBounds()[i]; Ops is the +Inf bucket.
	Buckets [NumLatencyBuckets]uint64 `json:"buckets"`
}

// IOStats are a vdisk's cumulative I/O statistics since this host brought
// it up (they restart from zero when the vdisk is brought up again, as
// Prometheus counters may).
type IOStats struct {
	Read  OpStats `json:"read"`
	Write OpStats `json:"write"`
	Flush OpStats `json:"flush"`
	Trim  OpStats `json:"trim"`
	// CacheHits and CacheMisses count lookups in the read cache:
	// clusters served from it and clusters that had to be read from the
	// backend.
	CacheHits   uint64 `json:"cache_hits"`
	CacheMisses uint64 `json:"cache_misses"`
}

// Op returns the statistics of one I/O kind.
func (s *IOStats) Op(op IOOp) *OpStats {
	switch op {
	case OpRead:
		return &s.Read
	case OpWrite:
		return &s.Write
	case OpFlush:
		return &s.Flush
	default:
		return &s.Trim
	}
}

func (c *ioCounters) snapshot() IOStats {
	var s IOStats
	for _, op := range IOOps() {
		oc, out := &c.ops[op], s.Op(op)
		var cum uint64
		for i := range oc.buckets {
			cum += oc.buckets[i].Load()
			if i < NumLatencyBuckets {
				out.Buckets[i] = cum
			}
		}
		out.Ops = cum
		out.Bytes = oc.bytes.Load()
		out.Errors = oc.errors.Load()
		out.LatencySum = time.Duration(oc.sumNanos.Load())
	}
	s.CacheHits = c.cacheHits.Load()
	s.CacheMisses = c.cacheMisses.Load()
	return s
}

// IOStats returns the vdisk's I/O statistics.
func (v *Volume) IOStats() IOStats { return v.io.snapshot() }

// IOStats returns the I/O statistics of every vdisk this host serves, by
// name.
func (d *Driver) IOStats() map[string]IOStats {
	d.mu.Lock()
	vols := make([]*Volume, 0, len(d.vols))
	for _, v := range d.vols {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	out := make(map[string]IOStats, len(vols))
	for _, v := range vols {
		out[v.name()] = v.io.snapshot()
	}
	return out
}
