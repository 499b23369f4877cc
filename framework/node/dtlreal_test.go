package node

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/dtl"
)

// realPlacer places every DTL on one real DTL server (plain TCP).
type realPlacer struct{ addr string }

func (p realPlacer) PlaceDTL(ctx context.Context, id string, epoch uint64, avoid []string) (volumedriver.DTLSession, string, error) {
	return shipperSession{dtl.NewShipper(dtl.ShipperConfig{Addr: p.addr, VDisk: id, Epoch: epoch})}, "peer", nil
}

func (p realPlacer) RecordDTL(ctx context.Context, id string, epoch uint64, node string, complete bool) error {
	return nil
}

// cutOff is a backend that refuses every change once off: the host that
// used it died.
type cutOff struct {
	scos.Backend
	off atomic.Bool
}

func (c *cutOff) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	if c.off.Load() {
		return errors.New("this host is dead")
	}
	return c.Backend.Put(ctx, ns, name, data, overwrite)
}

func (c *cutOff) Delete(ctx context.Context, ns, name string) error {
	if c.off.Load() {
		return errors.New("this host is dead")
	}
	return c.Backend.Delete(ctx, ns, name)
}

// startDTLServer runs a DTL server on loopback (plain TCP) in dir/dtl
// until the test ends and returns its address.
func startDTLServer(t testing.TB, dir string) string {
	t.Helper()
	srv, err := dtl.NewServer(dtl.ServerConfig{Dir: filepath.Join(dir, "dtl")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	go srv.Serve(ctx, ln)
	t.Cleanup(func() {
		stop()
		srv.Close()
	})
	return ln.Addr().String()
}

// TestDTLShipAndReplayReal: a volume ships to a real DTL server while
// concurrent writers write and flush; the owner then vanishes without a
// word (its backend cut off, its process state abandoned) and another
// driver adopts the vdisk under a new epoch, fences the DTL and replays
// it: every write completed before a completed flush is there.
func TestDTLShipAndReplayReal(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	addr := startDTLServer(t, root)

	backend, err := scos.NewLocalDir(filepath.Join(root, "backend"))
	if err != nil {
		t.Fatal(err)
	}
	owned := func(string) (uint64, bool) { return 1, true }
	cut := &cutOff{Backend: backend}
	d1, err := volumedriver.Open(ctx, filepath.Join(root, "a"), cut, volumedriver.Options{
		Owned: owned, DTL: realPlacer{addr}, AutoSyncInterval: time.Hour, ScrubInterval: -1, CloseTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if _, err := d1.Create(ctx, "a", size, volumedriver.CreateOptions{ID: "ida", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	for {
		in, _ := d1.Info(ctx, "a")
		if in.DTLState == volumedriver.DTLStateOK {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	v, _ := d1.Volume("a")

	// 16 writers; a flush after every 32 writes of each; "covered" is
	// the content of each block as of the last completed flush.
	const blocks = 4096
	var mu sync.Mutex
	acked := map[int][]byte{}   // block -> last acknowledged content
	covered := map[int][]byte{} // block -> content a completed flush covers
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Second)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for i := 0; time.Now().Before(deadline); i++ {
				b := w*(blocks/16) + rng.IntN(blocks/16) // each writer its own blocks
				p := make([]byte, 4096)
				for j := range p {
					p[j] = byte(rng.IntN(255) + 1)
				}
				if err := v.WriteAt(ctx, p, int64(b)*4096, false); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked[b] = p
				mu.Unlock()
				if i%32 == 31 {
					mu.Lock()
					snap := map[int][]byte{}
					for k, x := range acked {
						if k/(blocks/16) == w {
							snap[k] = x
						}
					}
					mu.Unlock()
					if err := v.Flush(ctx); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for k, x := range snap {
						covered[k] = x
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	// The owner is gone: nothing more of it reaches the backend (its
	// goroutines run on, refused, until the test ends).
	cut.off.Store(true)
	defer d1.Close()
	backend2, err := scos.NewLocalDir(filepath.Join(root, "backend"))
	if err != nil {
		t.Fatal(err)
	}
	groups, err := dtl.Groups(ctx, addr, nil, "ida", 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the DTL holds %+v; %d blocks covered by a flush", groups, len(covered))
	var res volumedriver.ReplayResult
	recover := func(ctx context.Context, name, id string, epoch uint64, restored bool, replay func(volumedriver.DTLSource) (volumedriver.ReplayResult, error)) error {
		if err := dtl.Fence(ctx, addr, nil, id, epoch); err != nil {
			return err
		}
		var err error
		res, err = replay(dtlSource{addr: addr, vdisk: id, epoch: epoch})
		return err
	}
	d2, err := volumedriver.Open(ctx, filepath.Join(root, "b"), backend2, volumedriver.Options{
		Owned: func(string) (uint64, bool) { return 0, false }, Recover: recover})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := d2.Adopt(ctx, "ida", 2); err != nil {
		t.Fatal(err)
	}
	t.Logf("replayed %+v", res)
	v2, _ := d2.Volume("a")
	got := make([]byte, 4096)
	bad := 0
	for b, want := range covered {
		if err := v2.ReadAt(ctx, got, int64(b)*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			// A later acknowledged write may be there instead.
			if a := acked[b]; a != nil && bytes.Equal(got, a) {
				continue
			}
			bad++
			if bad < 5 {
				t.Errorf("block %d lost its flushed content (zeros: %v)", b, bytes.Equal(got, make([]byte, 4096)))
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d flushed blocks lost", bad, len(covered))
	}
}
