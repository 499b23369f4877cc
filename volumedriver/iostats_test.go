package volumedriver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

func TestIOStatsBuckets(t *testing.T) {
	bounds := LatencyBounds()
	if len(bounds) != NumLatencyBuckets {
		t.Fatalf("%d bounds, want %d", len(bounds), NumLatencyBuckets)
	}
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			t.Fatalf("bounds not ascending at %d: %v", i, bounds)
		}
	}
	// Latencies well inside a bucket, so the few microseconds done takes
	// to read the clock cannot move them across a bound.
	for _, tc := range []struct {
		took   time.Duration
		bucket int // index of the first bound >= took; NumLatencyBuckets is +Inf
	}{
		{10 * time.Microsecond, 0},
		{700 * time.Microsecond, 4},  // <= 1ms
		{3 * time.Millisecond, 6},    // <= 5ms
		{400 * time.Millisecond, 12}, // <= 500ms
		{7 * time.Second, 16},        // <= 10s
		{time.Minute, NumLatencyBuckets},
	} {
		var c ioCounters
		c.done(OpRead, 4096, time.Now().Add(-tc.took), nil)
		s := c.snapshot()
		if s.Read.Ops != 1 || s.Read.Bytes != 4096 || s.Read.LatencySum < tc.took {
			t.Fatalf("%v: %+v", tc.took, s.Read)
		}
		for i, n := range s.Read.Buckets {
			want := uint64(0)
			if i >= tc.bucket {
				want = 1
			}
			if n != want {
				t.Fatalf("%v: bucket %d (<= %gs) = %d, want %d (buckets %v)", tc.took, i, bounds[i], n, want, s.Read.Buckets)
			}
		}
		if s.Write.Ops+s.Flush.Ops+s.Trim.Ops != 0 {
			t.Fatalf("%v: other ops counted: %+v", tc.took, s)
		}
	}

	// A failed operation is an error, not an op with a latency.
	var c ioCounters
	c.done(OpWrite, 4096, time.Now(), errors.New("boom"))
	if s := c.snapshot(); s.Write.Errors != 1 || s.Write.Ops != 0 || s.Write.Bytes != 0 || s.Write.Buckets[NumLatencyBuckets-1] != 0 {
		t.Fatalf("failed write: %+v", s.Write)
	}
}

// TestIOStatsCountsFrontendOps: every public I/O method of a Volume is
// counted under its kind, with its bytes; refused I/O counts as an error.
func TestIOStatsCountsFrontendOps(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	const size = 16 << 20
	if _, err := d.Create(ctx, "vd1", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("vd1")
	block := bytes.Repeat([]byte{7}, 8192)
	steps := []struct {
		name string
		do   func() error
	}{
		{"write", func() error { return v.WriteAt(ctx, block, 0, false) }},
		{"write fua", func() error { return v.WriteAt(ctx, block[:100], 5000, true) }},
		{"read", func() error { return v.ReadAt(ctx, make([]byte, 4096), 0) }},
		{"read unaligned", func() error { return v.ReadAt(ctx, make([]byte, 10), 3) }},
		{"flush", func() error { return v.Flush(ctx) }},
		{"trim", func() error { return v.Trim(ctx, 1<<20, 1<<20) }},
		{"write zeroes", func() error { return v.WriteZeroes(ctx, 4<<20, 4096, true, false) }},
		{"compare and write", func() error {
			_, err := v.CompareAndWrite(ctx, 0, block[:512], bytes.Repeat([]byte{8}, 512), false)
			return err
		}},
		{"miscompare", func() error {
			m, err := v.CompareAndWrite(ctx, 0, block[:512], block[:512], false)
			if err == nil && m < 0 {
				return errors.New("compared equal")
			}
			return err
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	if err := v.WriteAt(ctx, block, size-100, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past end: %v", err)
	}

	all := d.IOStats()
	got, ok := all["vd1"]
	if !ok || len(all) != 1 {
		t.Fatalf("IOStats: %v", all)
	}
	for _, tc := range []struct {
		op                 IOOp
		ops, bytes, errors uint64
	}{
		{OpRead, 2, 4096 + 10, 0},
		{OpWrite, 4, 8192 + 100 + 512, 1}, // a miscompare writes no bytes
		{OpFlush, 1, 0, 0},
		{OpTrim, 2, 1<<20 + 4096, 0},
	} {
		s := got.Op(tc.op)
		if s.Ops != tc.ops || s.Bytes != tc.bytes || s.Errors != tc.errors {
			t.Errorf("%s: ops %d bytes %d errors %d, want %d %d %d", tc.op, s.Ops, s.Bytes, s.Errors, tc.ops, tc.bytes, tc.errors)
		}
		for i := 1; i < NumLatencyBuckets; i++ {
			if s.Buckets[i] < s.Buckets[i-1] {
				t.Errorf("%s: buckets not cumulative: %v", tc.op, s.Buckets)
			}
		}
		if s.Buckets[NumLatencyBuckets-1] > s.Ops || (s.Ops > 0 && s.LatencySum <= 0) {
			t.Errorf("%s: buckets %v, ops %d, latency sum %v", tc.op, s.Buckets, s.Ops, s.LatencySum)
		}
	}
	if v.IOStats() != got {
		t.Errorf("Volume.IOStats differs from Driver.IOStats: %+v vs %+v", v.IOStats(), got)
	}
}

// TestIOStatsReadCache: reads served by the read cache count as hits,
// those that go to the backend as misses.
func TestIOStatsReadCache(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	cb := &countingBackend{Backend: e.backend}
	e.opts.WriteBufferBytes = 1 // evict everything uploaded
	d, err := Open(ctx, e.dir, cb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Create(ctx, "a", 16<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	if err := v.WriteAt(ctx, bytes.Repeat([]byte("x"), 4096), 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	waitFor(t, func() bool {
		before := cb.reads.Load()
		if err := v.ReadAt(ctx, got, 8192); err != nil {
			t.Fatalf("read: %v", err)
		}
		return cb.reads.Load() == before
	})
	s := v.IOStats()
	if s.CacheHits == 0 || s.CacheMisses == 0 {
		t.Fatalf("cache hits %d misses %d: want both > 0", s.CacheHits, s.CacheMisses)
	}
	if s.CacheMisses != uint64(cb.reads.Load()) {
		t.Fatalf("misses %d, backend reads %d", s.CacheMisses, cb.reads.Load())
	}
}

// TestIOStatsHotPathAllocatesNothing: counting an I/O must not allocate.
func TestIOStatsHotPathAllocatesNothing(t *testing.T) {
	var c ioCounters
	start := time.Now()
	if n := testing.AllocsPerRun(1000, func() { c.done(OpWrite, 4096, start, nil) }); n != 0 {
		t.Fatalf("done allocates %v times per call", n)
	}
}

// BenchmarkIOStatsDone is the cost of counting one I/O.
func BenchmarkIOStatsDone(b *testing.B) {
	var c ioCounters
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.done(OpWrite, 4096, time.Now(), nil)
		}
	})
}

// BenchmarkIO4K compares 4 KiB writes and reads with their statistics
// (WriteAt, ReadAt) and without (the gated calls they wrap), in one run.
// Reads come from the local write buffer: the cheapest I/O there is, so
// the one where counting would show most.
func BenchmarkIO4K(b *testing.B) {
	ctx := context.Background()
	for _, bc := range []struct {
		name  string
		write func(v *Volume, p []byte, off int64) error
	}{
		{"write/stats", func(v *Volume, p []byte, off int64) error { return v.WriteAt(ctx, p, off, false) }},
		{"write/nostats", func(v *Volume, p []byte, off int64) error { return v.gatedWriteAt(ctx, p, off, false) }},
		{"read/stats", func(v *Volume, p []byte, off int64) error { return v.ReadAt(ctx, p, off%(16<<20)) }},
		{"read/nostats", func(v *Volume, p []byte, off int64) error { return v.gatedReadAt(ctx, p, off%(16<<20)) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			root := b.TempDir()
			backend, err := scos.NewLocalDir(filepath.Join(root, "backend"))
			if err != nil {
				b.Fatal(err)
			}
			d, err := Open(ctx, filepath.Join(root, "volumes"), backend,
				Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ScrubInterval: -1, ScrubGarbageRatio: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			const size = 256 << 20
			if _, err := d.Create(ctx, "bench", size, CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			v, _ := d.Volume("bench")
			// 16 MiB of data for the reads.
			if err := v.WriteAt(ctx, bytes.Repeat([]byte{2}, 16<<20), 0, false); err != nil {
				b.Fatal(err)
			}
			p := bytes.Repeat([]byte{1}, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := bc.write(v, p, int64(i%(size/4096))*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
