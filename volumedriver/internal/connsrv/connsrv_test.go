package connsrv

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

var errClosed = errors.New("test: server closed")

// testConn holds its connection open until it is drained or closed; a
// drained one ends once release is closed (a request still in flight).
type testConn struct {
	nc      net.Conn
	ctx     context.Context
	overCap bool
	release chan struct{}
	started chan struct{} // closed by Serve: the server tracks the connection

	once    sync.Once
	drained chan struct{}
	closed  chan struct{}
	closeMu sync.Once
}

func (c *testConn) Serve() {
	close(c.started)
	select {
	case <-c.drained:
		select {
		case <-c.release:
		case <-c.closed:
		case <-c.ctx.Done():
		}
	case <-c.closed:
	case <-c.ctx.Done():
	}
	c.nc.Close()
}

func (c *testConn) Drain() { c.once.Do(func() { close(c.drained) }) }
func (c *testConn) Close() {
	c.closeMu.Do(func() { close(c.closed) })
	c.nc.Close()
}

type harness struct {
	srv     *Server
	addr    string
	release chan struct{}
	made    chan *testConn
	served  chan error
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	opts.ErrClosed = errClosed
	h := &harness{release: make(chan struct{}), made: make(chan *testConn, 16), served: make(chan error, 1)}
	h.srv = New(opts, func(ctx context.Context, nc net.Conn, overCap bool) Conn {
		c := &testConn{nc: nc, ctx: ctx, overCap: overCap, release: h.release,
			started: make(chan struct{}), drained: make(chan struct{}), closed: make(chan struct{})}
		h.made <- c
		return c
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = l.Addr().String()
	go func() { h.served <- h.srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { h.srv.Close() })
	return h
}

func (h *harness) dial(t *testing.T) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// conn returns the next connection made, once it is served.
func (h *harness) conn(t *testing.T) *testConn {
	t.Helper()
	select {
	case c := <-h.made:
		select {
		case <-c.started:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("connection not served")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection made")
	}
	return nil
}

// expectClosed waits for the server to close nc.
func expectClosed(t *testing.T, nc net.Conn) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connection not closed: %v", err)
	}
}

func TestConnectionCap(t *testing.T) {
	for _, tc := range []struct {
		name     string
		keep     bool
		wantMade bool // the connection over the cap reaches NewConn, told so
	}{
		{"refused", false, false},
		{"kept for the protocol", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{Name: "test", MaxConns: 1, KeepOverCap: tc.keep})
			h.dial(t)
			if c := h.conn(t); c.overCap {
				t.Fatal("first connection marked over the cap")
			}
			over := h.dial(t)
			if tc.wantMade {
				if c := h.conn(t); !c.overCap {
					t.Fatal("connection at the cap not marked so")
				}
				return
			}
			expectClosed(t, over)
			select {
			case <-h.made:
				t.Fatal("connection over the cap was made")
			default:
			}
		})
	}
}

func TestShutdownDrains(t *testing.T) {
	for _, tc := range []struct {
		name          string
		returnsAtOnce bool
	}{
		{"Serve waits for its connections", false},
		{"Serve returns at once", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Options{Name: "test", MaxConns: -1, ServeReturnsOnShutdown: tc.returnsAtOnce})
			nc := h.dial(t)
			c := h.conn(t)
			shut := make(chan error, 1)
			go func() { shut <- h.srv.Shutdown(context.Background()) }()
			<-c.drained
			if tc.returnsAtOnce {
				if err := <-h.served; err != nil {
					t.Fatalf("Serve: %v", err)
				}
			}
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned %v before the connection ended", err)
			default:
			}
			if c.ctx.Err() != nil {
				t.Fatal("a draining connection's context was cancelled")
			}
			close(h.release)
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			if !tc.returnsAtOnce {
				if err := <-h.served; err != nil {
					t.Fatalf("Serve: %v", err)
				}
			}
			expectClosed(t, nc)
			l, _ := net.Listen("tcp", "127.0.0.1:0")
			if err := h.srv.Serve(context.Background(), l); !errors.Is(err, errClosed) {
				t.Fatalf("Serve after Shutdown: %v", err)
			}
		})
	}
}

func TestShutdownDeadlineCloses(t *testing.T) {
	h := newHarness(t, Options{Name: "test", MaxConns: -1})
	h.dial(t)
	c := h.conn(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v; want context.Canceled", err)
	}
	select {
	case <-c.closed:
	default:
		t.Fatal("connection not closed after Shutdown gave up")
	}
}

func TestServeContextEndsConnections(t *testing.T) {
	srvCtx, cancel := context.WithCancel(context.Background())
	made := make(chan *testConn, 1)
	srv := New(Options{Name: "test", MaxConns: -1}, func(ctx context.Context, nc net.Conn, _ bool) Conn {
		c := &testConn{nc: nc, ctx: ctx, started: make(chan struct{}), drained: make(chan struct{}), closed: make(chan struct{})}
		made <- c
		return c
	})
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(srvCtx, l) }()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := <-made
	<-c.started
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if c.ctx.Err() == nil {
		t.Fatal("connection outlived Serve's context")
	}
	expectClosed(t, nc)
}
