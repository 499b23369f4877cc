package remote

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
)

// memDev is an in-memory sparse Device test double: pages never written (or
// trimmed) are holes.
type memDev struct {
	*memdev.Pages
	readOnly bool

	// hook, when set, runs first in every operation; it may block or fail.
	hook func(ctx context.Context, op string, off int64) error

	writes, fuaWrites, flushes, trims, zeroes, noHoleZeroes, caws atomic.Int64
}

func newMemDev(size int64) *memDev {
	return &memDev{Pages: memdev.New(size)}
}

func (d *memDev) run(ctx context.Context, op string, off int64) error {
	if d.hook != nil {
		return d.hook(ctx, op, off)
	}
	return nil
}

func (d *memDev) check(off, n int64) error {
	if err := d.Check(off, n); err != nil {
		return fmt.Errorf("memDev: %w", err)
	}
	return nil
}

func (d *memDev) ReadOnly() bool { return d.readOnly }
func (d *memDev) FastZero() bool { return true }

func (d *memDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.run(ctx, "read", off); err != nil {
		return err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.Read(p, off)
	return nil
}

func (d *memDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.run(ctx, "write", off); err != nil {
		return err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.writes.Add(1)
	if fua {
		d.fuaWrites.Add(1)
	}
	d.Write(p, off)
	return nil
}

func (d *memDev) CompareAndWrite(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error) {
	if err := d.run(ctx, "caw", off); err != nil {
		return 0, err
	}
	d.caws.Add(1)
	if fua {
		d.fuaWrites.Add(1)
	}
	m, err := d.Pages.CompareAndWrite(ctx, off, cmp, data, fua)
	if err != nil {
		return 0, fmt.Errorf("memDev: %w", err)
	}
	return m, nil
}

func (d *memDev) Flush(ctx context.Context) error {
	if err := d.run(ctx, "flush", 0); err != nil {
		return err
	}
	d.flushes.Add(1)
	return nil
}

func (d *memDev) Trim(ctx context.Context, off, length int64) error {
	if err := d.run(ctx, "trim", off); err != nil {
		return err
	}
	if err := d.check(off, length); err != nil {
		return err
	}
	d.trims.Add(1)
	d.Zero(off, length, false)
	return nil
}

func (d *memDev) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	if err := d.run(ctx, "zero", off); err != nil {
		return err
	}
	if err := d.check(off, length); err != nil {
		return err
	}
	d.zeroes.Add(1)
	if noHole {
		d.noHoleZeroes.Add(1)
	}
	if fua {
		d.fuaWrites.Add(1)
	}
	d.Zero(off, length, noHole)
	return nil
}

func (d *memDev) BlockStatus(ctx context.Context, off, length int64) ([]Extent, error) {
	if err := d.run(ctx, "status", off); err != nil {
		return nil, err
	}
	if err := d.check(off, length); err != nil {
		return nil, err
	}
	return d.Extents(off, length, false), nil
}

// memTarget serves memDevs by name. A name in notOwned answers
// ErrNotOwner.
type memTarget struct {
	mu       sync.Mutex
	devs     map[string]*memDev
	notOwned map[string]bool
	noCAW    map[string]bool // served as a Device without CompareAndWrite
	opens    map[string]int
	releases atomic.Int64
}

func newMemTarget() *memTarget {
	return &memTarget{devs: map[string]*memDev{}, notOwned: map[string]bool{}, noCAW: map[string]bool{}, opens: map[string]int{}}
}

func (t *memTarget) add(name string, d *memDev) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.devs[name] = d
}

func (t *memTarget) setOwned(name string, owned bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.notOwned[name] = !owned
}

func (t *memTarget) openCount(name string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.opens[name]
}

func (t *memTarget) OpenDevice(ctx context.Context, name string) (Device, func(), error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.notOwned[name] {
		return nil, nil, fmt.Errorf("vdisk %s lives elsewhere: %w", name, ErrNotOwner)
	}
	d, ok := t.devs[name]
	if !ok {
		return nil, nil, ErrNotFound
	}
	t.opens[name]++
	var dev Device = d
	if t.noCAW[name] {
		dev = struct{ Device }{d}
	}
	return dev, func() { t.releases.Add(1) }, nil
}

// trackingListener records the connections it accepts.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) accepted() []net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]net.Conn(nil), l.conns...)
}

// testServer runs a server for t on 127.0.0.1 and returns it with its
// listener; it is closed when the test ends.
func testServer(tb testing.TB, t Target, opts ServerOptions) (*Server, *trackingListener) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tl := &trackingListener{Listener: l}
	srv := NewServer(t, opts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(context.Background(), tl)
	}()
	tb.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv, tl
}

func testClient(tb testing.TB, addr string, opts ClientOptions) *Client {
	tb.Helper()
	c := NewClient(addr, opts)
	tb.Cleanup(func() { c.Close() })
	return c
}

// ctxTimeout bounds a test against hangs; it is no timing: a whole table
// of 32 MiB transfers under -race on a loaded machine takes a while.
func ctxTimeout(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the test times out.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
