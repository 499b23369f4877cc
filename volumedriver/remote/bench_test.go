package remote

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ramDev is a flat in-memory Device for benchmarks, with striped locks so
// that concurrent requests scale.
type ramDev struct {
	data  []byte
	locks [64]sync.RWMutex
}

func newRAMDev(size int64) *ramDev {
	d := &ramDev{data: make([]byte, size)}
	for i := 0; i < len(d.data); i += 4096 {
		d.data[i] = 1 // fault the pages in before the run
	}
	return d
}

func (d *ramDev) lock(off int64) *sync.RWMutex { return &d.locks[(off>>16)%int64(len(d.locks))] }

func (d *ramDev) Size() int64 { return int64(len(d.data)) }
func (d *ramDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	l := d.lock(off)
	l.RLock()
	copy(p, d.data[off:])
	l.RUnlock()
	return nil
}
func (d *ramDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	l := d.lock(off)
	l.Lock()
	copy(d.data[off:], p)
	l.Unlock()
	return nil
}
func (d *ramDev) Flush(ctx context.Context) error                   { return nil }
func (d *ramDev) Trim(ctx context.Context, off, length int64) error { return nil }
func (d *ramDev) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	return nil
}
func (d *ramDev) BlockStatus(ctx context.Context, off, length int64) ([]Extent, error) {
	return []Extent{{Length: length}}, nil
}

type ramTarget struct{ d *ramDev }

func (t ramTarget) OpenDevice(ctx context.Context, name string) (Device, func(), error) {
	return t.d, func() {}, nil
}

const (
	benchQD   = 32
	benchSize = 64 << 20
)

// runQD runs b.N 4 KiB operations with benchQD of them in flight and
// reports ops/s.
func runQD(b *testing.B, op func(ctx context.Context, buf []byte, off int64) error, ctx context.Context) {
	b.SetBytes(4096)
	b.ReportAllocs()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range benchQD {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				off := ((i*7919 + int64(w)) % (benchSize / 4096)) * 4096
				if err := op(ctx, buf, off); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

func benchRemote(b *testing.B, write bool, ctx context.Context) {
	_, l := testServer(b, ramTarget{newRAMDev(benchSize)}, ServerOptions{})
	c := testClient(b, l.Addr().String(), ClientOptions{})
	if _, err := c.Size(ctx, "vd"); err != nil { // dial before the clock starts
		b.Fatal(err)
	}
	if write {
		runQD(b, func(ctx context.Context, buf []byte, off int64) error { return c.WriteAt(ctx, "vd", buf, off, false) }, ctx)
	} else {
		runQD(b, func(ctx context.Context, buf []byte, off int64) error { return c.ReadAt(ctx, "vd", buf, off) }, ctx)
	}
}

func benchDirect(b *testing.B, write bool) {
	d := newRAMDev(benchSize)
	if write {
		runQD(b, func(ctx context.Context, buf []byte, off int64) error { return d.WriteAt(ctx, buf, off, false) }, context.Background())
	} else {
		runQD(b, d.ReadAt, context.Background())
	}
}

func cancellable(b *testing.B) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	return ctx
}

func BenchmarkRemoteRead4KQD32(b *testing.B)  { benchRemote(b, false, context.Background()) }
func BenchmarkRemoteWrite4KQD32(b *testing.B) { benchRemote(b, true, context.Background()) }

// The ...CancelCtx variants pass a cancellable context, as a forwarding
// NBD connection does: the client then watches it while it writes.
func BenchmarkRemoteRead4KQD32CancelCtx(b *testing.B)  { benchRemote(b, false, cancellable(b)) }
func BenchmarkRemoteWrite4KQD32CancelCtx(b *testing.B) { benchRemote(b, true, cancellable(b)) }
func BenchmarkDirectRead4KQD32(b *testing.B)           { benchDirect(b, false) }
func BenchmarkDirectWrite4KQD32(b *testing.B)          { benchDirect(b, true) }
