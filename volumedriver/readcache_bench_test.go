package volumedriver

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/ovs-storage/ovs/scos"
)

// BenchmarkReadBeyondWriteBuffer: 4 KiB random reads of clusters that
// left the write buffer, served by the disk read cache (after one warm
// pass), against the same reads from the local-directory backend (a plain
// file read: the floor of what a cache can cost).
func BenchmarkReadBeyondWriteBuffer(b *testing.B) {
	for _, tc := range []struct {
		name string
		disk bool
	}{{"diskcache", true}, {"localbackend", false}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			be, err := scos.NewLocalDir(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), WriteBufferBytes: 1, ReadCacheBytes: -1, ScrubGarbageRatio: -1, ScrubInterval: -1}
			var d *Driver
			if tc.disk {
				opts.ReadCacheDiskBytes = 256 << 20
				d, err = Open(ctx, b.TempDir(), &countingBackend{Backend: be}, opts)
			} else {
				d, err = Open(ctx, b.TempDir(), be, opts)
			}
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			const size = 64 << 20
			d.Create(ctx, "a", size, CreateOptions{})
			v, _ := d.Volume("a")
			buf := make([]byte, 1<<20)
			for off := int64(0); off < size; off += int64(len(buf)) {
				rand.NewChaCha8([32]byte{byte(off >> 20)}).Read(buf)
				if err := v.WriteAt(ctx, buf, off, false); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Sync(ctx); err != nil {
				b.Fatal(err)
			}
			for v.info().WriteBufferBytes > 4<<20 {
				v.Sync(ctx)
			}
			for off := int64(0); off < size; off += int64(len(buf)) {
				if err := v.ReadAt(ctx, buf, off); err != nil {
					b.Fatal(err)
				}
			}
			if d.rc != nil {
				d.rc.Flush(ctx)
			}
			b.SetBytes(4096)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				p := make([]byte, 4096)
				rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
				for pb.Next() {
					if err := v.ReadAt(ctx, p, rng.Int64N(size/4096)*4096); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if d.rc != nil {
				st := d.ReadCacheStats()
				b.ReportMetric(float64(st.Hits)/float64(st.Hits+st.Misses)*100, "disk-hit-%")
			}
		})
	}
}
