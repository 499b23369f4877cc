package remote

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	const size = 40 << 20
	tg := newMemTarget()
	d := newMemDev(size)
	tg.add("vd1", d)
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{})
	ctx := ctxTimeout(t)

	pattern := func(n int, seed byte) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = seed + byte(i*7)
		}
		return p
	}
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"size", func(t *testing.T) {
			got, err := c.Size(ctx, "vd1")
			if err != nil || got != size {
				t.Fatalf("Size = %d, %v; want %d", got, err, size)
			}
			in, err := c.Stat(ctx, "vd1")
			if err != nil || in != (Info{Size: size, FastZero: true}) {
				t.Fatalf("Stat = %+v, %v", in, err)
			}
		}},
		{"write read", func(t *testing.T) {
			p := pattern(8192, 1)
			if err := c.WriteAt(ctx, "vd1", p, 4096, false); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 8192+512)
			if err := c.ReadAt(ctx, "vd1", got, 4096-512); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[512:], p) || !bytes.Equal(got[:512], make([]byte, 512)) {
				t.Fatal("read back other data")
			}
		}},
		{"write fua", func(t *testing.T) {
			before := d.fuaWrites.Load()
			if err := c.WriteAt(ctx, "vd1", pattern(4096, 2), 0, true); err != nil {
				t.Fatal(err)
			}
			if d.fuaWrites.Load() != before+1 {
				t.Fatal("FUA not passed on")
			}
		}},
		{"empty read and write", func(t *testing.T) {
			if err := c.ReadAt(ctx, "vd1", nil, 0); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteAt(ctx, "vd1", nil, size, false); err != nil {
				t.Fatal(err)
			}
		}},
		{"larger than MaxData", func(t *testing.T) {
			p := pattern(MaxData+8192, 3)
			if err := c.WriteAt(ctx, "vd1", p, 1<<20, false); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(p))
			if err := c.ReadAt(ctx, "vd1", got, 1<<20); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p) {
				t.Fatal("read back other data")
			}
		}},
		{"flush", func(t *testing.T) {
			before := d.flushes.Load()
			if err := c.Flush(ctx, "vd1"); err != nil {
				t.Fatal(err)
			}
			if d.flushes.Load() != before+1 {
				t.Fatal("flush not passed on")
			}
		}},
		{"trim", func(t *testing.T) {
			if err := c.WriteAt(ctx, "vd1", pattern(3*4096, 4), 64<<10, false); err != nil {
				t.Fatal(err)
			}
			if err := c.Trim(ctx, "vd1", 64<<10, 3*4096); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 3*4096)
			if err := c.ReadAt(ctx, "vd1", got, 64<<10); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
				t.Fatalf("after trim: %v, zeros=%v", err, bytes.Equal(got, make([]byte, len(got))))
			}
		}},
		{"write zeroes", func(t *testing.T) {
			if err := c.WriteAt(ctx, "vd1", pattern(2*4096, 5), 128<<10, false); err != nil {
				t.Fatal(err)
			}
			nh, fua := d.noHoleZeroes.Load(), d.fuaWrites.Load()
			if err := c.WriteZeroes(ctx, "vd1", 128<<10, 4096, true, true); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteZeroes(ctx, "vd1", 132<<10, 4096, false, false); err != nil {
				t.Fatal(err)
			}
			if d.noHoleZeroes.Load() != nh+1 || d.fuaWrites.Load() != fua+1 {
				t.Fatal("no-hole or FUA not passed on")
			}
			exts, err := c.BlockStatus(ctx, "vd1", 128<<10, 2*4096)
			want := []Extent{{Length: 4096}, {Length: 4096, Hole: true, Zero: true}}
			if err != nil || !slices.Equal(exts, want) {
				t.Fatalf("BlockStatus = %+v, %v; want %+v", exts, err, want)
			}
		}},
		{"block status", func(t *testing.T) {
			if err := c.WriteAt(ctx, "vd1", pattern(4096, 6), 1<<30-4096, false); err == nil {
				t.Fatal("write beyond the end accepted")
			}
			off := int64(size - 4*4096)
			if err := c.WriteAt(ctx, "vd1", pattern(4096, 6), off+4096, false); err != nil {
				t.Fatal(err)
			}
			exts, err := c.BlockStatus(ctx, "vd1", off, 4*4096)
			want := []Extent{{Length: 4096, Hole: true, Zero: true}, {Length: 4096}, {Length: 2 * 4096, Hole: true, Zero: true}}
			if err != nil || !slices.Equal(exts, want) {
				t.Fatalf("BlockStatus = %+v, %v; want %+v", exts, err, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}

func TestErrors(t *testing.T) {
	tg := newMemTarget()
	tg.add("vd", newMemDev(1<<20))
	failing := newMemDev(1 << 20)
	failing.hook = func(ctx context.Context, op string, off int64) error {
		switch op {
		case "read":
			return errors.New("disk on fire")
		case "flush":
			return fmt.Errorf("upload: %w", syscall.ENOSPC)
		}
		return nil
	}
	tg.add("failing", failing)
	ro := newMemDev(1 << 20)
	ro.readOnly = true
	tg.add("template", ro)
	tg.add("elsewhere", newMemDev(1<<20))
	tg.setOwned("elsewhere", false)
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{})
	ctx := ctxTimeout(t)
	buf := make([]byte, 4096)

	tests := []struct {
		name    string
		call    func() error
		want    error
		status  Status
		msgPart string
	}{
		{"not found", func() error { return c.ReadAt(ctx, "nope", buf, 0) }, ErrNotFound, StatusNotFound, ""},
		{"not owner", func() error { return c.WriteAt(ctx, "elsewhere", buf, 0, false) }, ErrNotOwner, StatusNotOwner, "lives elsewhere"},
		{"I/O error with message", func() error { return c.ReadAt(ctx, "failing", buf, 0) }, ErrIO, StatusIO, "disk on fire"},
		{"classified", func() error { return c.Flush(ctx, "failing") }, ErrNoSpace, StatusNoSpace, "upload"},
		{"read beyond the end", func() error { return c.ReadAt(ctx, "vd", buf, 1<<20-100) }, ErrInvalid, StatusInvalid, "beyond the end"},
		{"write beyond the end", func() error { return c.WriteAt(ctx, "vd", buf, 1<<20, false) }, ErrNoSpace, StatusNoSpace, "beyond the end"},
		{"read-only", func() error { return c.Trim(ctx, "template", 0, 4096) }, ErrReadOnly, StatusReadOnly, ""},
		{"name too long (client)", func() error { return c.Flush(ctx, strings.Repeat("x", MaxNameLen+1)) }, ErrInvalid, StatusInvalid, "name"},
		{"negative offset (client)", func() error { return c.ReadAt(ctx, "vd", buf, -1) }, ErrInvalid, StatusInvalid, ""},
		{"trim too long (client)", func() error { return c.Trim(ctx, "vd", 0, 1<<32) }, ErrInvalid, StatusInvalid, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v; want %v", err, tt.want)
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Status != tt.status || !strings.Contains(se.Msg, tt.msgPart) {
				t.Fatalf("err = %#v; want status %v with message containing %q", err, tt.status, tt.msgPart)
			}
			if errors.Is(err, ErrUnavailable) {
				t.Fatal("a status error matches ErrUnavailable")
			}
		})
	}
	// The connection survived every error.
	if err := c.ReadAt(ctx, "vd", buf, 0); err != nil {
		t.Fatal(err)
	}
	if n := len(l.accepted()); n > DefaultConns {
		t.Fatalf("%d connections accepted; errors should not break connections", n)
	}
}

// TestClassify: the caller's Classify maps device errors the package does
// not know.
func TestClassify(t *testing.T) {
	errBusy := errors.New("busy")
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	d.hook = func(ctx context.Context, op string, off int64) error { return errBusy }
	tg.add("vd", d)
	_, l := testServer(t, tg, ServerOptions{Classify: func(err error) Status {
		if errors.Is(err, errBusy) {
			return StatusInvalid
		}
		return StatusIO
	}})
	c := testClient(t, l.Addr().String(), ClientOptions{})
	if err := c.Flush(ctxTimeout(t), "vd"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v; want ErrInvalid", err)
	}
}

// TestNotOwnerDropsDevice: a cached device that reports ErrNotOwner is
// released and the name opened again; if the target no longer serves it,
// the client gets ErrNotOwner, and once it is back requests work again.
func TestNotOwnerDropsDevice(t *testing.T) {
	tg := newMemTarget()
	old := newMemDev(1 << 20)
	var moved atomic.Bool
	old.hook = func(ctx context.Context, op string, off int64) error {
		if moved.Load() {
			return fmt.Errorf("fenced: %w", ErrNotOwner)
		}
		return nil
	}
	tg.add("vd", old)
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	ctx := ctxTimeout(t)
	buf := make([]byte, 4096)
	for range 3 {
		if err := c.ReadAt(ctx, "vd", buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := tg.openCount("vd"); n != 1 {
		t.Fatalf("opened %d times for 3 requests on one connection; want 1 (cached)", n)
	}

	// The vdisk leaves: the device fences, the target says not owner.
	moved.Store(true)
	tg.setOwned("vd", false)
	if err := c.ReadAt(ctx, "vd", buf, 0); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("err = %v; want ErrNotOwner", err)
	}
	// The release comes when the last request using the stale device
	// is done: an earlier read's worker may still hold it for a moment
	// after its reply (the reply goes out before the worker lets go).
	for deadline := time.Now().Add(10 * time.Second); tg.releases.Load() != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("%d releases; want the stale device released", tg.releases.Load())
		}
		time.Sleep(time.Millisecond)
	}

	// It comes back as a new device.
	back := newMemDev(1 << 20)
	back.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 0, false)
	tg.add("vd", back)
	tg.setOwned("vd", true)
	if err := c.ReadAt(ctx, "vd", buf, 0); err != nil || buf[0] != 9 {
		t.Fatalf("after the move back: %v, data %d", err, buf[0])
	}

	// A stale cached device whose vdisk is served again here (reopened)
	// is replaced within the same request.
	back.hook = old.hook
	again := newMemDev(1 << 20)
	tg.add("vd", again)
	if err := c.ReadAt(ctx, "vd", buf, 0); err != nil || buf[0] != 0 {
		t.Fatalf("after a reopen: %v, data %d", err, buf[0])
	}
	if n := tg.openCount("vd"); n != 3 {
		t.Fatalf("opened %d times; want 3", n)
	}
}

// TestPipelining: many requests on one connection run concurrently and are
// answered out of order: the first request blocks until all the others
// have been answered.
func TestPipelining(t *testing.T) {
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	const n = 48
	var done atomic.Int64
	allDone := make(chan struct{})
	d.hook = func(ctx context.Context, op string, off int64) error {
		if op == "read" && off == 0 {
			select {
			case <-allDone:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	tg.add("vd", d)
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	ctx := ctxTimeout(t)

	first := make(chan error, 1)
	go func() { first <- c.ReadAt(ctx, "vd", make([]byte, 4096), 0) }()
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() {
			p := bytes.Repeat([]byte{byte(i)}, 4096)
			if err := c.WriteAt(ctx, "vd", p, int64(i)*4096, false); err != nil {
				t.Error(err)
			}
			got := make([]byte, 4096)
			if err := c.ReadAt(ctx, "vd", got, int64(i)*4096); err != nil || !bytes.Equal(got, p) {
				t.Errorf("request %d: %v", i, err)
			}
			if done.Add(1) == n-1 {
				close(allDone)
			}
		})
	}
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := len(l.accepted()); n != 1 {
		t.Fatalf("%d connections; want 1", n)
	}
}

// TestShutdownInFlight: Shutdown lets the requests in flight finish and
// answers them, then the connections close and new requests fail with
// ErrUnavailable.
func TestShutdownInFlight(t *testing.T) {
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	release := make(chan struct{})
	var entered atomic.Int64
	d.hook = func(ctx context.Context, op string, off int64) error {
		if op == "write" {
			entered.Add(1)
			<-release
		}
		return nil
	}
	tg.add("vd", d)
	srv, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{})
	ctx := ctxTimeout(t)

	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- c.WriteAt(ctx, "vd", make([]byte, 4096), int64(i)*4096, true) }()
	}
	waitFor(t, "writes in the device", func() bool { return entered.Load() == n })
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with requests in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("request in flight during Shutdown: %v", err)
		}
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := tg.releases.Load(); got != int64(len(l.accepted())) {
		t.Fatalf("%d devices released for %d connections", got, len(l.accepted()))
	}
	if err := c.Flush(ctx, "vd"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after Shutdown: %v; want ErrUnavailable", err)
	}
}

// TestShutdownDeadline: a request that does not finish is torn down when
// Shutdown's context ends; its caller gets ErrUnavailable.
func TestShutdownDeadline(t *testing.T) {
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	var entered atomic.Bool
	d.hook = func(ctx context.Context, op string, off int64) error {
		entered.Store(true)
		<-ctx.Done()
		return ctx.Err()
	}
	tg.add("vd", d)
	srv, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{})
	errc := make(chan error, 1)
	go func() { errc <- c.Flush(ctxTimeout(t), "vd") }()
	waitFor(t, "flush in the device", entered.Load)
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v; want deadline exceeded", err)
	}
	if err := <-errc; !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrIO) {
		t.Fatalf("torn-down request: %v; want ErrUnavailable or ErrIO", err)
	}
}

// TestConnectionKilled: a request in flight when the connection breaks
// fails with ErrUnavailable; the next call dials again.
func TestConnectionKilled(t *testing.T) {
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	block := make(chan struct{})
	var blocking atomic.Bool
	blocking.Store(true)
	var entered atomic.Bool
	d.hook = func(ctx context.Context, op string, off int64) error {
		if op == "read" && blocking.Load() {
			entered.Store(true)
			select {
			case <-block:
			case <-ctx.Done():
			}
		}
		return nil
	}
	tg.add("vd", d)
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	ctx := ctxTimeout(t)
	errc := make(chan error, 1)
	go func() { errc <- c.ReadAt(ctx, "vd", make([]byte, 4096), 0) }()
	waitFor(t, "read in the device", entered.Load)
	for _, nc := range l.accepted() {
		nc.Close()
	}
	err := <-errc
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v; want ErrUnavailable", err)
	}
	blocking.Store(false)
	close(block)
	if err := c.ReadAt(ctx, "vd", make([]byte, 4096), 0); err != nil {
		t.Fatalf("next call: %v", err)
	}
	if n := len(l.accepted()); n != 2 {
		t.Fatalf("%d connections; want 2 (redialled)", n)
	}
}

// TestNodeDown: a node that is not there fails fast with ErrUnavailable.
func TestNodeDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := testClient(t, addr, ClientOptions{})
	if _, err := c.Size(ctxTimeout(t), "vd"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v; want ErrUnavailable", err)
	}
}

// TestCancel: a caller whose context ends stops waiting; the reply, when
// it comes, is dropped and the connection goes on.
func TestCancel(t *testing.T) {
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	release := make(chan struct{})
	var entered atomic.Bool
	d.hook = func(ctx context.Context, op string, off int64) error {
		if op == "read" && off == 0 {
			entered.Store(true)
			<-release
		}
		return nil
	}
	tg.add("vd", d)
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	ctx, cancel := context.WithCancel(ctxTimeout(t))
	errc := make(chan error, 1)
	buf := make([]byte, 4096)
	go func() { errc <- c.ReadAt(ctx, "vd", buf, 0) }()
	waitFor(t, "read in the device", entered.Load)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v; want context.Canceled", err)
	}
	clear(buf)
	close(release)
	got := make([]byte, 4096)
	for range 10 {
		if err := c.ReadAt(ctxTimeout(t), "vd", got, 4096); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatal("the abandoned reply was written into the caller's buffer")
	}
	if n := len(l.accepted()); n != 1 {
		t.Fatalf("%d connections; want 1", n)
	}
}

func TestMaxConns(t *testing.T) {
	tg := newMemTarget()
	tg.add("vd", newMemDev(1<<20))
	_, l := testServer(t, tg, ServerOptions{MaxConns: 1})
	ctx := ctxTimeout(t)
	c1 := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	if _, err := c1.Size(ctx, "vd"); err != nil {
		t.Fatal(err)
	}
	c2 := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	_, err := c2.Size(ctx, "vd")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "connection limit") {
		t.Fatalf("err = %v; want ErrUnavailable about the connection limit", err)
	}
}

// rawDial connects to addr and exchanges hellos with the given version.
func rawDial(t *testing.T, addr string, version uint16) (net.Conn, hello) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := nc.Write(appendHello(nil, hello{version: version})); err != nil {
		t.Fatal(err)
	}
	var b [helloSize]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		t.Fatal(err)
	}
	h, err := decodeHello(b[:])
	if err != nil {
		t.Fatal(err)
	}
	return nc, h
}

func TestVersionMismatch(t *testing.T) {
	t.Run("server refuses a newer client", func(t *testing.T) {
		tg := newMemTarget()
		_, l := testServer(t, tg, ServerOptions{})
		nc, h := rawDial(t, l.Addr().String(), Version+1)
		if h.version != Version || h.status != helloBadVersion {
			t.Fatalf("hello = %+v; want version %d, status bad version", h, Version)
		}
		if _, err := nc.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after the refusal: %v; want EOF", err)
		}
	})
	t.Run("client refuses a newer server", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			defer nc.Close()
			io.ReadFull(nc, make([]byte, helloSize))
			nc.Write(appendHello(nil, hello{version: 7, status: helloBadVersion}))
		}()
		c := testClient(t, l.Addr().String(), ClientOptions{})
		_, err = c.Size(ctxTimeout(t), "vd")
		if !errors.Is(err, ErrVersion) || !errors.Is(err, ErrUnavailable) ||
			!strings.Contains(err.Error(), "version 7") {
			t.Fatalf("err = %v; want ErrVersion naming version 7", err)
		}
	})
	t.Run("client refuses a non-OVS peer", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			defer nc.Close()
			nc.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		}()
		c := testClient(t, l.Addr().String(), ClientOptions{})
		_, err = c.Size(ctxTimeout(t), "vd")
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not an OVS forwarding peer") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestOversizeFrame: requests whose lengths exceed the limits close the
// connection without the server allocating what they claim; the server
// goes on serving others.
func TestOversizeFrame(t *testing.T) {
	tg := newMemTarget()
	tg.add("vd", newMemDev(1<<20))
	_, l := testServer(t, tg, ServerOptions{})
	tests := []struct {
		name string
		hdr  []byte
	}{
		{"write of 4 GiB", appendReqHdr(nil, reqHdr{op: opWrite, nameLen: 2, length: 0xFFFFFFF0, handle: 1})},
		{"write just over MaxData", appendReqHdr(nil, reqHdr{op: opWrite, nameLen: 2, length: MaxData + 1, handle: 1})},
		{"read of 4 GiB", appendReqHdr(nil, reqHdr{op: opRead, nameLen: 2, length: 0xFFFFFFF0, handle: 1})},
		{"name of 255 bytes", appendReqHdr(nil, reqHdr{op: opFlush, nameLen: 255, handle: 1})},
		{"unknown op", appendReqHdr(nil, reqHdr{op: 99, nameLen: 2, handle: 1})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, h := rawDial(t, l.Addr().String(), Version)
			if h.status != helloOK {
				t.Fatalf("hello %+v", h)
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			nc.Write(append(tt.hdr, "vd"...))
			// The server closes the connection without a reply.
			if n, err := io.Copy(io.Discard, nc); err != nil || n != 0 {
				t.Fatalf("read %d bytes, %v; want EOF at once", n, err)
			}
			runtime.ReadMemStats(&after)
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
				t.Fatalf("the server allocated %d bytes for a refused frame", grew)
			}
		})
	}
	c := testClient(t, l.Addr().String(), ClientOptions{})
	if _, err := c.Size(ctxTimeout(t), "vd"); err != nil {
		t.Fatalf("server after bad frames: %v", err)
	}
}

// selfSigned returns a CA-less self-signed certificate for 127.0.0.1 usable
// by both ends, and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ovs-node"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	tg := newMemTarget()
	tg.add("vd", newMemDev(1<<20))
	_, l := testServer(t, tg, ServerOptions{TLS: &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}})
	ctx := ctxTimeout(t)
	c := testClient(t, l.Addr().String(), ClientOptions{TLS: &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}})
	p := bytes.Repeat([]byte("tls!"), 1024)
	if err := c.WriteAt(ctx, "vd", p, 4096, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := c.ReadAt(ctx, "vd", got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v", err)
	}

	// A client without a certificate is refused.
	anon := testClient(t, l.Addr().String(), ClientOptions{TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}})
	if _, err := anon.Size(ctx, "vd"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("client without a certificate: %v; want ErrUnavailable", err)
	}
	// A plain TCP client is refused.
	plain := testClient(t, l.Addr().String(), ClientOptions{DialTimeout: 2 * time.Second})
	if _, err := plain.Size(ctx, "vd"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("plain client: %v; want ErrUnavailable", err)
	}
}

// TestStalledPeer: a node that accepts but stops reading and answering (a
// frozen process) cannot hold callers beyond their context, neither in the
// send nor waiting for the reply.
func TestStalledPeer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				io.ReadFull(nc, make([]byte, helloSize))
				nc.Write(appendHello(nil, hello{version: Version}))
				<-stop // read nothing more, answer nothing
			}()
		}
	}()
	c := testClient(t, l.Addr().String(), ClientOptions{Conns: 1})
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"reply never comes", func(ctx context.Context) error { return c.Flush(ctx, "vd") }},
		{"send blocks", func(ctx context.Context) error {
			return c.WriteAt(ctx, "vd", make([]byte, MaxData), 0, false)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			err := tt.call(ctx)
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v; want the deadline or ErrUnavailable", err)
			}
		})
	}
}
