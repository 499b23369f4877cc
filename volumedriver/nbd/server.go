package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

// Defaults for Options.
const (
	DefaultMaxRequestSize   = 32 << 20
	DefaultMaxInFlight      = 128
	DefaultMaxInFlightBytes = 128 << 20
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxConns         = 1024
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// MaxRequestSize is the largest READ or WRITE payload accepted, and the
	// maximum payload advertised in NBD_INFO_BLOCK_SIZE. Default 32 MiB;
	// values are clamped to [4096, 1 GiB].
	MaxRequestSize int
	// MaxInFlight bounds the requests one connection may have in flight;
	// the server stops reading from the socket while at the limit.
	// Default 128.
	MaxInFlight int
	// MaxInFlightBytes bounds the READ/WRITE payload bytes one connection
	// may have in flight (a single larger request still passes alone).
	// Default 128 MiB.
	MaxInFlightBytes int64
	// DefaultExport is the export used when a client asks for the empty
	// name. When unset, the empty name selects the only export if
	// ListExports returns exactly one.
	DefaultExport string
	// HandshakeTimeout bounds the option negotiation of a connection,
	// from accept to the end of option haggling: a client that connects
	// and sends nothing is closed after it. Default 10 s; negative
	// disables it.
	HandshakeTimeout time.Duration
	// MaxConns caps the open connections; one over the cap is closed at
	// once (and logged), so that idle connections cannot use up the file
	// descriptors the vdisks need. Default DefaultMaxConns; negative
	// means no cap.
	MaxConns int
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxRequestSize <= 0 {
		o.MaxRequestSize = DefaultMaxRequestSize
	}
	o.MaxRequestSize = min(max(o.MaxRequestSize, 4096), 1<<30)
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxInFlightBytes <= 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	return o
}

// ErrServerClosed is returned by Serve on a server that was closed or shut
// down before the call.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves NBD exports on any number of listeners (TCP or unix).
type Server struct {
	exports Exports
	opts    Options
	log     *slog.Logger
	pool    iopool.BufPool

	base       context.Context // cancelled by Close
	cancelBase context.CancelFunc

	mu        sync.Mutex
	stopping  bool // Shutdown or Close called: accept nothing new
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // Serve calls and connections

	refused     int // connections refused since lastRefusal was logged
	lastRefusal time.Time
}

// NewServer returns a server for exports.
func NewServer(exports Exports, opts Options) *Server {
	opts = opts.withDefaults()
	base, cancel := context.WithCancel(context.Background())
	return &Server{
		exports:    exports,
		opts:       opts,
		log:        opts.Logger,
		base:       base,
		cancelBase: cancel,
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[*conn]struct{}),
	}
}

// Serve accepts connections on l and serves each in its own goroutines. It
// returns when ctx is cancelled, when the server is closed or shut down, or
// when l fails; l is closed then. Serve returns only after the connections
// it accepted have ended: it closes them at once, except during Shutdown,
// which lets them finish their requests. The result is nil when ctx, Close
// or Shutdown stopped it, and the accept error otherwise.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stopBase := context.AfterFunc(s.base, scancel)
	defer stopBase()
	stopListener := context.AfterFunc(sctx, func() { l.Close() })
	defer stopListener()

	var conns sync.WaitGroup
	var result error
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if sctx.Err() != nil || s.isStopping() {
				break
			}
			if isTemporaryAcceptError(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "addr", l.Addr().String(), "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-sctx.Done():
				}
				continue
			}
			result = fmt.Errorf("nbd: accept on %s: %w", l.Addr(), err)
			break
		}
		delay = 0
		if s.full(nc) {
			nc.Close()
			continue
		}
		c := newConn(s, sctx, nc)
		if !s.track(c) {
			nc.Close()
			c.cancel()
			break
		}
		conns.Add(1)
		go func() {
			defer s.wg.Done()
			defer conns.Done()
			defer s.untrack(c)
			c.serve()
		}()
	}
	l.Close()
	s.mu.Lock()
	delete(s.listeners, l)
	graceful := s.stopping && s.base.Err() == nil
	s.mu.Unlock()
	if !graceful {
		scancel()
	}
	conns.Wait()
	return result
}

func isTemporaryAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Server) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// full reports whether the server is at its connection cap, logging the
// refusal of nc (at most every 10 s, with a count).
func (s *Server) full(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.MaxConns < 0 || len(s.conns) < s.opts.MaxConns {
		return false
	}
	s.refused++
	if time.Since(s.lastRefusal) >= 10*time.Second {
		s.log.Warn("nbd: connection refused: at the connection limit", "limit", s.opts.MaxConns,
			"refused", s.refused, "remote", nc.RemoteAddr().String())
		s.lastRefusal, s.refused = time.Now(), 0
	}
	return true
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// snapshot marks the server stopping and returns its listeners and
// connections.
func (s *Server) snapshot() ([]net.Listener, []*conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopping = true
	ls := make([]net.Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	return ls, cs
}

// Close closes the listeners and every connection at once (in-flight
// requests see their context cancelled) and waits for all the server's
// goroutines, including running Serve calls, to end.
func (s *Server) Close() error {
	ls, cs := s.snapshot()
	s.cancelBase()
	var first error
	for _, l := range ls {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) && first == nil {
			first = fmt.Errorf("nbd: close listener %s: %w", l.Addr(), err)
		}
	}
	for _, c := range cs {
		c.nc.Close()
	}
	s.wg.Wait()
	return first
}

// Shutdown stops the server gracefully: it closes the listeners, ends
// connections still negotiating, stops reading new requests and lets the
// requests in flight complete and be answered before closing each
// connection. If ctx ends first, Shutdown falls back to Close and returns
// ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	ls, cs := s.snapshot()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range cs {
		c.beginShutdown()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancelBase()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}
