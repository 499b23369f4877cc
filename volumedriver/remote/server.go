package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

// Device is one vdisk as the owner serves it: the same type as
// volumedriver/nbd.Device, so that one implementation serves both.
type Device = blockdev.Device

// CompareAndWriter is optionally implemented by devices that compare and
// write as one step (blockdev.CompareAndWriter); the server answers
// CompareAndWrite on others with StatusInvalid.
type CompareAndWriter = blockdev.CompareAndWriter

// ReadOnlyDevice is optionally implemented by devices that refuse writes;
// the server then answers writes with StatusReadOnly and Size reports it.
type ReadOnlyDevice interface{ ReadOnly() bool }

// FastZeroDevice is optionally implemented by devices whose WriteZeroes is
// much cheaper than writing zeros; Size reports it so that a forwarding
// NBD export can advertise fast zeroing.
type FastZeroDevice interface{ FastZero() bool }

// Target resolves vdisk names to the devices this node serves.
type Target interface {
	// OpenDevice returns the vdisk's device and a release func the server
	// calls once when it no longer needs it. It returns an error wrapping
	// ErrNotOwner when this node does not serve the vdisk now, ErrNotFound
	// when there is no such vdisk. A Device returns ErrNotOwner once the
	// vdisk has left this node: the server then drops it and opens the
	// name again.
	OpenDevice(ctx context.Context, name string) (Device, func(), error)
}

// Defaults for ServerOptions.
const (
	DefaultMaxConns         = 256
	DefaultMaxInFlight      = 64
	DefaultMaxInFlightBytes = 64 << 20
	DefaultHelloTimeout     = 10 * time.Second
)

// ServerOptions configure a Server. The zero value is usable.
type ServerOptions struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// TLS, when set, wraps every accepted connection in TLS (for mutual
	// TLS set ClientAuth and ClientCAs).
	TLS *tls.Config
	// MaxConns caps the open connections; one over the cap is told so in
	// the hello and closed. Default DefaultMaxConns; negative: no cap.
	MaxConns int
	// Classify maps a Device error other than ErrNotOwner and ErrNotFound
	// to a status. Default DefaultClassify.
	Classify func(error) Status
	// MaxInFlight bounds the requests of one connection served at once;
	// the server stops reading the connection at the limit. Default 64.
	MaxInFlight int
	// MaxInFlightBytes bounds the Read/Write payload bytes of one
	// connection in flight (one larger request passes alone). Default
	// 64 MiB.
	MaxInFlightBytes int64
	// HelloTimeout bounds the TLS handshake and hello of a new connection.
	// Default 10 s.
	HelloTimeout time.Duration
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.Classify == nil {
		o.Classify = DefaultClassify
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxInFlightBytes <= 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if o.HelloTimeout <= 0 {
		o.HelloTimeout = DefaultHelloTimeout
	}
	return o
}

// DefaultClassify maps errno-carrying errors (which errors.Is matches) the
// way the NBD frontend does: ENOSPC, EDQUOT, EFBIG to StatusNoSpace; EINVAL
// to StatusInvalid; EPERM, EROFS, EACCES to StatusReadOnly; the rest to
// StatusIO.
func DefaultClassify(err error) Status {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return StatusNoSpace
	case errors.Is(err, syscall.EINVAL):
		return StatusInvalid
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES):
		return StatusReadOnly
	}
	return StatusIO
}

// ErrServerClosed is returned by Serve on a server that is shutting down.
var ErrServerClosed = errors.New("remote: server closed")

// Server serves the devices of a Target to forwarding peers.
type Server struct {
	target Target
	opts   ServerOptions
	log    *slog.Logger
	pool   iopool.BufPool
	conns  *connsrv.Server
}

// NewServer returns a server for t.
func NewServer(t Target, opts ServerOptions) *Server {
	opts = opts.withDefaults()
	s := &Server{
		target: t,
		opts:   opts,
		log:    opts.Logger,
	}
	s.conns = connsrv.New(connsrv.Options{
		Name:                   "remote",
		Logger:                 opts.Logger,
		MaxConns:               opts.MaxConns,
		KeepOverCap:            true, // the hello tells the peer
		ServeReturnsOnShutdown: true,
		ErrClosed:              ErrServerClosed,
	}, func(ctx context.Context, nc net.Conn, overCap bool) connsrv.Conn {
		if opts.TLS != nil {
			nc = tls.Server(nc, opts.TLS)
		}
		c := newSconn(s, ctx, nc)
		c.overCap = overCap
		return c
	})
	return s
}

// Serve accepts connections on l until ctx ends, Shutdown is called or l
// fails, and closes l then. It returns nil when ctx or Shutdown stopped it.
// When ctx ends or l fails, Serve tears down the connections it accepted
// and returns once they have ended; after Shutdown it returns at once and
// Shutdown waits for them.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.conns.Serve(ctx, l)
}

// Shutdown stops accepting connections and tells every open one to go
// away: the peer sends nothing new on it, the requests already sent are
// served and answered, and the peer closes it. Shutdown returns when every
// connection has ended, or tears the rest down when ctx ends first (and
// returns ctx's error).
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.conns.Shutdown(ctx); err != nil {
		return fmt.Errorf("remote: shutdown: %w", err)
	}
	return nil
}

// Close tears every connection down at once; requests in flight fail.
func (s *Server) Close() error {
	// Close reports nil, as it always has: a listener that fails to close
	// changes nothing for the callers once every connection is down.
	_ = s.conns.Close()
	return nil
}
