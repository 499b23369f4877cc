// Package connsrv is the server lifecycle that the volume driver's wire
// servers (NBD and node-to-node forwarding) share: the registry of their
// listeners and connections, the accept loop with its connection cap,
// graceful Shutdown and Close. The protocols live in the connections.
package connsrv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Conn is one accepted connection as a Server drives it.
type Conn interface {
	// Serve runs the connection to its end.
	Serve()
	// Drain asks the connection to end gracefully (Shutdown): it takes no
	// new requests, answers those in flight and ends.
	Drain()
	// Close tears the connection down at once. It may come before Serve
	// or instead of it.
	Close()
}

// Options configure a Server.
type Options struct {
	// Name prefixes the logs and errors ("nbd", "remote").
	Name string
	// Logger receives the logs; nil discards them.
	Logger *slog.Logger
	// MaxConns caps the open connections; negative means no cap.
	MaxConns int
	// KeepOverCap serves a connection accepted at the cap, with NewConn
	// told so, for the protocol to tell its peer. Otherwise the
	// connection is closed at once and the refusal logged (at most every
	// 10 s, with a count), so that idle connections cannot use up the
	// file descriptors.
	KeepOverCap bool
	// ServeReturnsOnShutdown makes Serve return as soon as Shutdown stops
	// it, leaving its connections for Shutdown to wait for. Otherwise
	// Serve returns only once they have ended.
	ServeReturnsOnShutdown bool
	// ErrClosed is what Serve returns on a server already stopping.
	ErrClosed error
}

// NewConnFunc makes the connection for nc, under ctx (cancelled to tear
// it down). overCap is true when the server is at its cap (KeepOverCap
// only). It must not start anything: the server calls Serve or Close.
type NewConnFunc func(ctx context.Context, nc net.Conn, overCap bool) Conn

// Server tracks listeners and connections for a wire server.
type Server struct {
	opts    Options
	log     *slog.Logger
	newConn NewConnFunc

	base       context.Context // cancelled by Close, and by Shutdown at its end
	cancelBase context.CancelFunc

	mu        sync.Mutex
	stopping  bool // Shutdown or Close called: accept nothing new
	listeners map[net.Listener]struct{}
	conns     map[Conn]struct{}
	wg        sync.WaitGroup // Serve calls and connections

	refused     int // connections refused since lastRefusal was logged
	lastRefusal time.Time
}

// New returns a server that makes its connections with newConn.
func New(opts Options, newConn NewConnFunc) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	base, cancel := context.WithCancel(context.Background())
	return &Server{
		opts:       opts,
		log:        opts.Logger,
		newConn:    newConn,
		base:       base,
		cancelBase: cancel,
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[Conn]struct{}),
	}
}

// Serve accepts connections on l and serves each in its own goroutine
// until ctx ends, the server stops or l fails; it closes l then. The
// connections live until ctx ends or Close (or Shutdown's deadline) tears
// them down, or until they end of themselves. Serve returns nil when ctx,
// Close or Shutdown stopped it, Options.ErrClosed on a stopping server
// and the accept error otherwise.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		l.Close()
		return s.opts.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	// Connections live under sctx: ctx ending or Close tears them down,
	// while Shutdown lets them finish and cancels s.base at its end.
	sctx, scancel := context.WithCancel(ctx)
	stopBase := context.AfterFunc(s.base, scancel)
	stopListener := context.AfterFunc(sctx, func() { l.Close() })
	defer stopListener()

	var conns sync.WaitGroup
	var result error
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if sctx.Err() != nil || s.Stopping() {
				break
			}
			if isTemporaryAcceptError(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn(s.opts.Name+": accept failed; retrying", "addr", l.Addr().String(), "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-sctx.Done():
				}
				continue
			}
			result = fmt.Errorf("%s: accept on %s: %w", s.opts.Name, l.Addr(), err)
			break
		}
		delay = 0
		overCap := s.atCap(nc)
		if overCap && !s.opts.KeepOverCap {
			nc.Close()
			continue
		}
		c := s.newConn(sctx, nc, overCap)
		if !s.track(c) {
			c.Close()
			break
		}
		conns.Add(1)
		go func() {
			defer s.wg.Done()
			defer conns.Done()
			defer s.untrack(c)
			c.Serve()
		}()
	}
	l.Close()
	s.mu.Lock()
	delete(s.listeners, l)
	graceful := s.stopping && s.base.Err() == nil
	s.mu.Unlock()
	if graceful && s.opts.ServeReturnsOnShutdown {
		// Shutdown waits for the connections and cancels s.base, and
		// sctx with it, at its end.
		return result
	}
	if !graceful {
		scancel()
	}
	conns.Wait()
	stopBase()
	scancel()
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

// Stopping reports whether Shutdown or Close has been called.
func (s *Server) Stopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// atCap reports whether the server is at its connection cap. Without
// KeepOverCap nc is then refused: atCap logs that, at most every 10 s
// with a count.
func (s *Server) atCap(nc net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.MaxConns < 0 || len(s.conns) < s.opts.MaxConns {
		return false
	}
	if s.opts.KeepOverCap {
		return true
	}
	s.refused++
	if time.Since(s.lastRefusal) >= 10*time.Second {
		s.log.Warn(s.opts.Name+": connection refused: at the connection limit", "limit", s.opts.MaxConns,
			"refused", s.refused, "remote", nc.RemoteAddr().String())
		s.lastRefusal, s.refused = time.Now(), 0
	}
	return true
}

func (s *Server) track(c Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// stop marks the server stopping and returns its listeners and
// connections.
func (s *Server) stop() ([]net.Listener, []Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopping = true
	ls := make([]net.Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	cs := make([]Conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	return ls, cs
}

// Close closes the listeners and tears every connection down at once, and
// waits for all the server's goroutines, running Serve calls included, to
// end. It returns the first error of closing a listener.
func (s *Server) Close() error {
	ls, cs := s.stop()
	s.cancelBase()
	var first error
	for _, l := range ls {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) && first == nil {
			first = fmt.Errorf("%s: close listener %s: %w", s.opts.Name, l.Addr(), err)
		}
	}
	for _, c := range cs {
		c.Close()
	}
	s.wg.Wait()
	return first
}

// Shutdown closes the listeners, drains every connection and waits for
// them to end. If ctx ends first, it falls back to Close and returns
// ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	ls, cs := s.stop()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range cs {
		c.Drain()
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

// HandshakeEndLevel is the level at which a server logs a connection that
// ended before its handshake (login, hello) completed: Debug when the
// peer just went away or the server is stopping (ctx ended), Info for a
// refusal worth an operator's eye.
func HandshakeEndLevel(ctx context.Context, err error) slog.Level {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
