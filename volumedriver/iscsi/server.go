package iscsi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// Targets is what the server serves: a target per vdisk.
type Targets interface {
	// ListTargets names the vdisks (discovery).
	ListTargets(ctx context.Context) ([]string, error)
	// OpenLU opens vdisk name as a logical unit; release ends its use.
	OpenLU(ctx context.Context, name string) (lu *scsi.LU, release func(), err error)
	// CHAP returns the secrets a login to target must prove; target ""
	// is the discovery session. The zero CHAP asks no authentication.
	CHAP(ctx context.Context, target string) (CHAP, error)
}

// CHAP is the CHAP configuration of a target (RFC 7143 12.1.3, RFC 1994
// with MD5). User/Secret: the initiator must authenticate with them;
// AuthMethod None is then refused. MutualUser/MutualSecret: what the
// target answers an initiator that asks it to authenticate too (mutual
// CHAP); an initiator asking that of a target without them is refused.
// RFC 7143 wants secrets of at least 12 bytes (96 bits); shorter ones are
// taken with a warning. The secrets of the two directions must differ.
type CHAP struct {
	User, Secret             string
	MutualUser, MutualSecret string
}

// Defaults for Options.
const (
	DefaultBaseIQN      = "iqn.2026-11.io.ovs"
	DefaultLoginTimeout = 15 * time.Second
	DefaultMaxConns     = 1024
)

// Options tune a Server. The zero value is usable.
type Options struct {
	// BaseIQN prefixes every target name: BaseIQN:vdisk. Default
	// DefaultBaseIQN.
	BaseIQN string
	// Logger receives the logs; nil: slog.Default().
	Logger *slog.Logger
	// Portal is the TargetAddress SendTargets gives for every target,
	// "host:port,tpgt" (e.g. "10.0.0.5:3260,1"): the address initiators
	// reach this node at. Empty: the address the discovery connection
	// came in on, with portal group tag 1.
	Portal string
	// LoginTimeout bounds a connection's login phase, from accept to full
	// feature phase: a client that connects and stalls is closed after
	// it. Default DefaultLoginTimeout; negative disables it.
	LoginTimeout time.Duration
	// MaxConns caps the open connections (each one session:
	// MaxConnections is 1); one over the cap is closed at once and
	// logged. Default DefaultMaxConns; negative: no cap.
	MaxConns int
}

func (o Options) withDefaults() Options {
	if o.BaseIQN == "" {
		o.BaseIQN = DefaultBaseIQN
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LoginTimeout == 0 {
		o.LoginTimeout = DefaultLoginTimeout
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	return o
}

// ErrServerClosed is what Serve returns on a server closed or shut down
// before the call.
var ErrServerClosed = errors.New("iscsi: server closed")

// Server is an iSCSI target serving every vdisk as target BaseIQN:name,
// LUN 0. Each connection is a session of its own (MaxConnections=1,
// ErrorRecoveryLevel=0); any number of sessions may use a target at once.
type Server struct {
	targets Targets
	opts    Options
	log     *slog.Logger
	conns   *connsrv.Server

	mu       sync.Mutex
	tsih     uint16
	sessions map[sessionKey]*conn
}

// sessionKey identifies a session (RFC 7143 4.4.3): the initiator name
// and ISID with the target (one portal group).
type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string
	discovery bool
}

// NewServer returns a server of targets.
func NewServer(targets Targets, opts Options) *Server {
	opts = opts.withDefaults()
	s := &Server{targets: targets, opts: opts, log: opts.Logger, sessions: map[sessionKey]*conn{}}
	s.conns = connsrv.New(connsrv.Options{
		Name:      "iscsi",
		Logger:    opts.Logger,
		MaxConns:  opts.MaxConns,
		ErrClosed: ErrServerClosed,
	}, func(ctx context.Context, nc net.Conn, _ bool) connsrv.Conn {
		return newConn(ctx, s, nc)
	})
	return s
}

// IQN is the target name of vdisk name.
func (s *Server) IQN(name string) string { return s.opts.BaseIQN + ":" + name }

// Serve accepts connections on ln and serves each until ctx ends, the
// server is closed or shut down, or ln fails; it closes ln then and
// returns once the connections it accepted have ended. The result is nil
// when ctx, Close or Shutdown stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.conns.Serve(ctx, ln)
}

// Close closes the listeners and every connection at once (commands in
// flight see their context cancelled) and waits for the server's
// goroutines to end.
func (s *Server) Close() error { return s.conns.Close() }

// Shutdown stops the server gracefully: it closes the listeners and
// connections still logging in, and asks every logged-in initiator to log
// out (an Async Message, RFC 7143 11.9) within a few seconds, answering
// the commands in flight. If ctx ends first it falls back to Close and
// returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error { return s.conns.Shutdown(ctx) }

// nextTSIH returns a fresh target session identifying handle (never 0).
func (s *Server) nextTSIH() uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tsih++
	if s.tsih == 0 {
		s.tsih = 1
	}
	return s.tsih
}

// register makes c the session of its key and returns the session it
// reinstates (RFC 7143 6.3.5: the same initiator and ISID logging in
// again with TSIH 0 ends the old session), if any.
func (s *Server) register(c *conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.sessions[c.key]
	s.sessions[c.key] = c
	return old
}

// unregister drops c from the sessions, unless another has taken its key.
func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[c.key] == c {
		delete(s.sessions, c.key)
	}
}

// sessionsOf returns the sessions of target (not discovery sessions).
func (s *Server) sessionsOf(target string) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*conn
	for k, c := range s.sessions {
		if !k.discovery && k.target == target {
			out = append(out, c)
		}
	}
	return out
}

// DropSessions ends every session (not discovery) whose target and LU
// gone reports, and returns how many: the node drops the sessions of a
// vdisk deleted, or deleted and made again under the same name, so that
// an initiator's old session never writes to another vdisk.
func (s *Server) DropSessions(gone func(target string, lu *scsi.LU) bool) int {
	var drop []*conn
	s.mu.Lock()
	for k, c := range s.sessions {
		if !k.discovery && c.lu != nil && gone(k.target, c.lu) {
			drop = append(drop, c)
		}
	}
	s.mu.Unlock()
	for _, c := range drop {
		c.log.Info("iscsi: session ended: its vdisk is gone", "target", c.target)
		c.Close()
	}
	return len(drop)
}

// hasSession reports whether a session has TSIH tsih.
func (s *Server) hasSession(tsih uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.sessions {
		if c.tsih == tsih {
			return true
		}
	}
	return false
}
