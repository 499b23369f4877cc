package node

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
)

// BenchmarkDTLWrites: 4 KiB writes from 32 goroutines to a volume whose
// DTL is a real server on loopback, per DTL mode.
func BenchmarkDTLWrites(b *testing.B) {
	for _, mode := range []volumedriver.DTLMode{volumedriver.DTLNone, volumedriver.DTLAsync, volumedriver.DTLSync} {
		b.Run(string(mode), func(b *testing.B) {
			ctx := context.Background()
			root := b.TempDir()
			addr := startDTLServer(b, root)
			backend, err := scos.NewLocalDir(filepath.Join(root, "backend"))
			if err != nil {
				b.Fatal(err)
			}
			d, err := volumedriver.Open(ctx, filepath.Join(root, "a"), backend, volumedriver.Options{
				Owned: func(string) (uint64, bool) { return 1, true }, DTL: realPlacer{addr},
				DTLMode: func(string) volumedriver.DTLMode { return mode }, ScrubInterval: -1, ScrubGarbageRatio: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			if _, err := d.Create(ctx, "a", 1<<30, volumedriver.CreateOptions{ID: "ida", Epoch: 1}); err != nil {
				b.Fatal(err)
			}
			for mode != volumedriver.DTLNone {
				in, _ := d.Info(ctx, "a")
				if in.DTLState == volumedriver.DTLStateOK {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			v, _ := d.Volume("a")
			b.SetBytes(4096)
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N/32 + 1
			for w := range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := make([]byte, 4096)
					for i := range per {
						p[0] = byte(i)
						off := int64((w*per+i)%(1<<18)) * 4096
						if err := v.WriteAt(ctx, p, off, false); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
