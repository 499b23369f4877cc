package node

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/remote"
)

// ownerTarget serves the owner's routed devices to forwarding peers, as
// forwardTarget does once the model has been read.
type ownerTarget struct {
	r  *router
	rt *route
}

func (t ownerTarget) OpenDevice(ctx context.Context, name string) (remote.Device, func(), error) {
	if name != t.rt.name {
		return nil, nil, remote.ErrNotFound
	}
	return &routedDevice{r: t.r, name: name, rt: t.rt, size: t.rt.local.Size(), localOnly: true}, func() {}, nil
}

// TestCompareAndWriteAcrossNodes: initiators on the owner and on another
// node (forwarding to it) race COMPARE AND WRITE for one block with the
// same compare buffer; exactly one wins each round.
func TestCompareAndWriteAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := t.TempDir()
	backend, err := scos.NewLocalDir(filepath.Join(root, "backend"))
	if err != nil {
		t.Fatal(err)
	}
	drv, err := volumedriver.Open(ctx, filepath.Join(root, "a"), backend, volumedriver.Options{
		Logger: slog.New(slog.DiscardHandler), AutoSyncInterval: time.Hour, ScrubInterval: -1, CloseTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	const size = 1 << 20
	if _, err := drv.Create(ctx, "vd", size, volumedriver.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := drv.Volume("vd")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)

	// Node a owns the vdisk and serves it to node b.
	ra := newRouter(routerConfig{self: "a", log: log})
	rta := &route{name: "vd", local: v, owner: "a"}
	ra.routes["vd"] = rta
	srv := remote.NewServer(ownerTarget{ra, rta}, remote.ServerOptions{Classify: classifyForward})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(context.Background(), ln) }()
	defer func() { srv.Close(); <-served }()
	rb := newRouter(routerConfig{self: "b", log: log})
	rb.routes["vd"] = &route{name: "vd", owner: "a"}
	rb.clients["a"] = remote.NewClient(ln.Addr().String(), remote.ClientOptions{})
	defer rb.close()

	devs := []*routedDevice{
		{r: ra, name: "vd", rt: rta, size: size},             // an initiator on a
		{r: rb, name: "vd", rt: rb.routes["vd"], size: size}, // one on b, forwarded
	}
	const off, bs = 3*4096 + 512, 512
	cur := make([]byte, bs)
	wins := [2]int{}
	for round := range 30 {
		var winners atomic.Int32
		var wg sync.WaitGroup
		for g := range 8 {
			data := bytes.Repeat([]byte{byte(round*8 + g + 1)}, bs)
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Odd rounds are all forwarded: the owner's server runs
				// them concurrently.
				dev := devs[g%2]
				if round%2 == 1 {
					dev = devs[1]
				}
				m, err := dev.CompareAndWrite(ctx, off, cur, data, false)
				switch {
				case err != nil:
					t.Error(err)
				case m == -1:
					winners.Add(1)
				case m != 0:
					t.Errorf("miscompare at %d, want 0", m)
				}
			}()
		}
		wg.Wait()
		if n := winners.Load(); n != 1 {
			t.Fatalf("round %d: %d winners", round, n)
		}
		next := make([]byte, bs)
		if err := devs[1].ReadAt(ctx, next, off); err != nil {
			t.Fatal(err)
		}
		if round%2 == 0 {
			wins[(next[0]-1)%8%2]++
		}
		cur = next
	}
	t.Logf("mixed rounds won on the owner / forwarded: %d / %d", wins[0], wins[1])
}
