package ec

import (
	"context"
	"fmt"
	"testing"

	"github.com/klauspost/reedsolomon"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
)

// Go benchmarks of the backends with in-process ASDs (HTTP over loopback);
// `ovs backend bench` measures the same with ASDs as processes.

func benchBackends(b *testing.B) map[string]scos.Backend {
	b.Helper()
	var specs []asdSpec
	for i := range 11 {
		specs = append(specs, asdSpec{fmt.Sprintf("n%d", i), "s"})
	}
	e := newECEnvB(b, specs, Config{Presets: []Preset{
		{Name: "p4-2", Policies: []Policy{{4, 2, 6, 1}}},
		{Name: "p8-3", Policies: []Policy{{8, 3, 11, 1}}},
	}, Preset: "p4-2"})
	ctx := context.Background()
	e.CreateNamespaceWithPreset(ctx, "p4-2", "p4-2")
	e.CreateNamespaceWithPreset(ctx, "p8-3", "p8-3")
	// The same preset with every commit guarded by an owner record, as a
	// cluster node's vdisk namespaces are.
	e.cfg.KV.Set(ctx, "ovs/owner/bench", []byte("n0/1"))
	e.SetFence("p4-2-fenced", &scos.Fence{Key: "ovs/owner/bench", Value: []byte("n0/1")})
	e.CreateNamespaceWithPreset(ctx, "p4-2-fenced", "p4-2")
	local, err := scos.NewLocalDir(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	local.CreateNamespace(ctx, "local")
	return map[string]scos.Backend{"local": local, "p4-2": e, "p4-2-fenced": e, "p8-3": e}
}

// newECEnvB is newECEnv for benchmarks.
func newECEnvB(b *testing.B, specs []asdSpec, cfg Config) *Backend {
	kv, err := OpenBoltKV(b.TempDir() + "/meta.db")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { kv.Close() })
	cfg.KV, cfg.MaintenanceInterval = kv, -1
	be, err := New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	for _, s := range specs {
		a := &fakeASD{dir: b.TempDir(), release: make(chan struct{})}
		if a.s, err = asd.Open(asd.Config{Dir: a.dir, Node: s.node, Site: s.site}); err != nil {
			b.Fatal(err)
		}
		a.handler = a.s.Handler()
		srv := serveFakeASD(b, a)
		b.Cleanup(srv.Close)
		if _, err := be.AddASD(context.Background(), srv.URL); err != nil {
			b.Fatal(err)
		}
	}
	return be
}

func BenchmarkBackends(b *testing.B) {
	backends := benchBackends(b)
	ctx := context.Background()
	data := randBytes(1, 4<<20)
	for _, ns := range []string{"local", "p4-2", "p4-2-fenced", "p8-3"} {
		be := backends[ns]
		for i := range 16 {
			if err := be.Put(ctx, ns, fmt.Sprintf("o%d", i), data, true); err != nil {
				b.Fatal(err)
			}
		}
		b.Run("put-4MiB/"+ns, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; b.Loop(); i++ {
				if err := be.Put(ctx, ns, fmt.Sprintf("o%d", i%16), data, true); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("get-4MiB/"+ns, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; b.Loop(); i++ {
				if _, err := be.Get(ctx, ns, fmt.Sprintf("o%d", i%16)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("readat-4KiB/"+ns, func(b *testing.B) {
			b.SetBytes(4096)
			p := make([]byte, 4096)
			for i := 0; b.Loop(); i++ {
				if err := be.ReadAt(ctx, ns, fmt.Sprintf("o%d", i%16), p, int64(i*4096*37)%(4<<20-4096)&^4095); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReedSolomon(b *testing.B) {
	data := randBytes(2, 4<<20)
	for _, km := range [][2]int{{4, 2}, {8, 3}} {
		enc, err := reedsolomon.New(km[0], km[1])
		if err != nil {
			b.Fatal(err)
		}
		shards, _ := enc.Split(data[:len(data):len(data)])
		b.Run(fmt.Sprintf("encode-%d+%d", km[0], km[1]), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := enc.Encode(shards); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
