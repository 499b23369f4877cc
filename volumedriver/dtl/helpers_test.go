package dtl

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

const testCluster = 4096

// testServer is a Server on 127.0.0.1 in a directory of the test.
type testServer struct {
	t    testing.TB
	dir  string
	srv  *Server
	addr string
	done chan error
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("DTL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startServer(t testing.TB, dir string) *testServer {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	srv, err := NewServer(ServerConfig{Dir: dir, Log: testLogger(t)})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, dir: dir, srv: srv, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(ts.stop)
	return ts
}

// stop closes the server and its connections (idempotent).
func (ts *testServer) stop() {
	if ts.srv == nil {
		return
	}
	ts.srv.Close()
	<-ts.done
	ts.srv = nil
}

// restart stops the server and starts a new one on the same directory.
func (ts *testServer) restart() *testServer {
	ts.stop()
	return startServer(ts.t, ts.dir)
}

func (ts *testServer) shipper(vdisk string, epoch uint64) *Shipper {
	s := NewShipper(ShipperConfig{Addr: ts.addr, VDisk: vdisk, Epoch: epoch, Log: testLogger(ts.t)})
	ts.t.Cleanup(s.Close)
	return s
}

// writeEntry makes a Write entry of n clusters at addr whose data is
// derived from seed.
func writeEntry(addr uint64, n int, seed byte) Entry {
	e := Entry{Kind: Write, Addr: addr, Count: uint32(n), Data: make([]byte, n*testCluster)}
	for i := range e.Data {
		e.Data[i] = seed + byte(i/testCluster) + byte(i*7)
	}
	for i := 0; i < n; i++ {
		e.CRCs = append(e.CRCs, crc32.Checksum(e.Data[i*testCluster:(i+1)*testCluster], castagnoli))
	}
	return e
}

func trimEntry(addr uint64, n int) Entry { return Entry{Kind: Trim, Addr: addr, Count: uint32(n)} }

// shipped is an entry with its group, as Read returns it.
type shipped struct {
	group string
	e     Entry
}

func readAll(t testing.TB, addr, vdisk string, epoch uint64, from string) ([]shipped, error) {
	t.Helper()
	var out []shipped
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Read(ctx, addr, nil, vdisk, epoch, from, func(g string, e Entry) error {
		out = append(out, shipped{g, e})
		return nil
	})
	return out, err
}

func equalEntry(a, b Entry) error {
	if a.Kind != b.Kind || a.Addr != b.Addr || a.Count != b.Count {
		return fmt.Errorf("got %s %d+%d, want %s %d+%d", a.Kind, a.Addr, a.Count, b.Kind, b.Addr, b.Count)
	}
	if string(a.Data) != string(b.Data) {
		return errors.New("data differs")
	}
	if fmt.Sprint(a.CRCs) != fmt.Sprint(b.CRCs) {
		return errors.New("CRCs differ")
	}
	return nil
}

func checkShipped(t testing.TB, got, want []shipped) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].group != want[i].group {
			t.Fatalf("entry %d in group %q, want %q", i, got[i].group, want[i].group)
		}
		if err := equalEntry(got[i].e, want[i].e); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
}

func waitDurable(t testing.TB, s *Shipper, pos uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitDurable(ctx, pos); err != nil {
		t.Fatalf("WaitDurable(%d): %v", pos, err)
	}
}

// waitDone waits for the shipper to end (Broken or Fenced).
func waitDone(t testing.TB, s *Shipper) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("shipper still %s", s.State())
	}
}

func ctx30(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
