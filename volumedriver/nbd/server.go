package nbd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
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
	conns   *connsrv.Server
}

// NewServer returns a server for exports.
func NewServer(exports Exports, opts Options) *Server {
	opts = opts.withDefaults()
	s := &Server{
		exports: exports,
		opts:    opts,
		log:     opts.Logger,
	}
	s.conns = connsrv.New(connsrv.Options{
		Name:      "nbd",
		Logger:    opts.Logger,
		MaxConns:  opts.MaxConns,
		ErrClosed: ErrServerClosed,
	}, func(ctx context.Context, nc net.Conn, _ bool) connsrv.Conn {
		return newConn(s, ctx, nc)
	})
	return s
}

// Serve accepts connections on l and serves each in its own goroutines. It
// returns when ctx is cancelled, when the server is closed or shut down, or
// when l fails; l is closed then. Serve returns only after the connections
// it accepted have ended: it closes them at once, except during Shutdown,
// which lets them finish their requests. The result is nil when ctx, Close
// or Shutdown stopped it, and the accept error otherwise.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.conns.Serve(ctx, l)
}

// Close closes the listeners and every connection at once (in-flight
// requests see their context cancelled) and waits for all the server's
// goroutines, including running Serve calls, to end.
func (s *Server) Close() error {
	return s.conns.Close()
}

// Shutdown stops the server gracefully: it closes the listeners, ends
// connections still negotiating, stops reading new requests and lets the
// requests in flight complete and be answered before closing each
// connection. If ctx ends first, Shutdown falls back to Close and returns
// ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.conns.Shutdown(ctx)
}
