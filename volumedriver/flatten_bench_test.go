package volumedriver

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/ovs-storage/ovs/scos"
)

// BenchmarkFlatten: flatten a clone of a 64 MiB parent whose data left
// the write buffer (read from the local-directory backend, seen as a
// remote one: no CheapReads), in bytes copied per second.
func BenchmarkFlatten(b *testing.B) {
	ctx := context.Background()
	be, err := scos.NewLocalDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), WriteBufferBytes: 1, ReadCacheBytes: -1, ScrubGarbageRatio: -1, ScrubInterval: -1}
	d, err := Open(ctx, b.TempDir(), &countingBackend{Backend: be}, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	const size = 64 << 20
	d.Create(ctx, "p", size, CreateOptions{})
	p, _ := d.Volume("p")
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		buf[0], buf[4096] = byte(off>>20), 1
		if err := p.WriteAt(ctx, buf, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	d.CreateSnapshot(ctx, "p", "s", "")
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if _, err := d.Clone(ctx, "c", "p", "s"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := d.Flatten(ctx, "c"); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.Delete(ctx, "c", true); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
