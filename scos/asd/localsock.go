package asd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
)

// The local socket: an ASD also serves its port's two protocols, the
// binary read protocol and the HTTP API, on a unix socket in its
// directory, for the volume driver of its own host.
//
// Why: on a hyperconverged host a third of the fragments the erasure-coded
// backend writes, and most of the ones it reads, go to the ASDs of that
// host, over loopback. TLS there cost the node 12-16% of its CPU on cold
// reads and 28% on sequential writes (pprof: AES-GCM on both sides, and
// the TCP stack), and it protects nothing that the host does not already
// expose to the same user: the socket lives in the ASD's directory
// (0700), its file is 0600, and every connection's peer credentials
// (SO_PEERCRED) must be the ASD's own user or root, who can read the
// cluster secret and write the fragment files anyway. Requests there are
// checked as on the TLS port (the ASD meant, the body's CRC-32C).

// LocalSocketName is the local socket's name in an ASD's directory.
const LocalSocketName = "wire.sock"

// maxSocketPath: a unix socket's path must fit sockaddr_un's sun_path (108
// bytes on Linux, with its NUL).
const maxSocketPath = 107

// LocalSocketPath is the local socket of the ASD in dir, or "" when the
// path is too long for a unix socket (the ASD then serves TLS only).
func LocalSocketPath(dir string) string {
	p := filepath.Join(dir, LocalSocketName)
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if len(p) > maxSocketPath {
		return ""
	}
	return p
}

// listenLocal listens on the unix socket path, replacing a stale socket
// file a previous run left (never any other kind of file).
func listenLocal(path string) (*net.UnixListener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("local socket %s: path longer than %d bytes", path, maxSocketPath)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("local socket %s: a file that is not a socket is in the way", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("local socket %s: remove the stale one: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("local socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("local socket %s: %w", path, err)
	}
	return l, nil
}

// peerAllowed: a peer of uid may use the local socket of an ASD running as
// euid if it is the same user, or root.
func peerAllowed(uid uint32, euid int) bool { return uid == 0 || int64(uid) == int64(euid) }

// peerUID returns the uid of the process at the other end of c.
func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}

// serveLocal accepts connections on the local socket until l fails and
// routes those of an allowed peer as the TLS port does.
func (s *Server) serveLocal(ctx context.Context, l *net.UnixListener, httpL *connListener, wc *wireConns) error {
	euid := os.Geteuid()
	var delay time.Duration
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("local socket: accept failed; retrying", "err", err, "in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return err
		}
		delay = 0
		uid, err := peerUID(c)
		if err != nil || !peerAllowed(uid, euid) {
			s.log.Warn("local socket: connection refused", "peer_uid", uid, "asd_uid", euid, "err", err)
			c.Close()
			continue
		}
		s.localConns.Add(1)
		c.SetDeadline(time.Now().Add(firstBytesTimeout))
		go s.route(ctx, c, httpL, wc)
	}
}

// localStats counts the local socket's connections (tests, listings).
type localStats struct{ localConns atomic.Int64 }

// LocalConns returns how many connections the local socket has served.
func (s *Server) LocalConns() int64 { return s.localConns.Load() }

// remoteOf names the peer of c for logs (a local socket's peer has no
// address).
func remoteOf(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return "local socket"
}

// --- the client side of HTTP over the local socket -------------------------------

// localBase is the base URL of requests over a local socket: the host is
// never resolved (the transport dials the socket), only sent.
const localBase = "http://asd.local"

// localHTTP is an HTTP client that dials an ASD's local socket, plain:
// the socket's permissions and the ASD's peer check stand for TLS.
type localHTTP struct {
	hc    *http.Client
	retry time.Duration
	// downUntil (unix nanoseconds): after the socket failed to connect, or
	// another ASD answered there, requests go over the address until then.
	downUntil atomic.Int64
}

func newLocalHTTP(socket string, retry time.Duration) *localHTTP {
	if socket == "" {
		return nil
	}
	t := NewTransport()
	t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		c, err := (&net.Dialer{Timeout: wireDialTimeout}).DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, err
		}
		return bulkConn{c}, nil
	}
	return &localHTTP{hc: &http.Client{Transport: t}, retry: retry}
}

// bulkConn writes a request body held in memory with one write. net/http
// copies a body of known length through io.LimitReader and a 32 KiB
// buffer: a 1 MiB fragment became 32 writes here and as many wake-ups of
// the ASD reading it, and on a VM, where a context switch is dear, that
// was a sizeable part of a fragment put.
type bulkConn struct{ net.Conn }

func (c bulkConn) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if br, ok := lr.R.(*bytes.Reader); ok && int64(br.Len()) <= lr.N {
			n, err := br.WriteTo(c.Conn)
			lr.N -= n
			return n, err
		}
	}
	return io.Copy(onlyWriter{c.Conn}, r)
}

// onlyWriter hides the ReaderFrom of bulkConn from io.Copy.
type onlyWriter struct{ io.Writer }

func (l *localHTTP) usable() bool {
	return l != nil && time.Now().UnixNano() >= l.downUntil.Load()
}

// fallBack reports whether a request that failed with err over the local
// socket should go over the address instead: it could not connect (no
// request was sent), or it reached another ASD (which refused it). The
// socket is then left alone for a while. Any other outcome is the ASD's
// answer.
func (l *localHTTP) fallBack(err error) bool {
	var oe *net.OpError
	var se *asdStatusError
	switch {
	case errors.As(err, &oe) && oe.Op == "dial":
	case errors.As(err, &se) && se.status == http.StatusConflict:
	default:
		return false
	}
	l.downUntil.Store(time.Now().Add(l.retry).UnixNano())
	return true
}

func (l *localHTTP) close() {
	if l != nil {
		l.hc.CloseIdleConnections()
	}
}
