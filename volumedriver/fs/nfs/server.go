// Package nfs exports an fs.Tree over NFS version 3 (RFC 1813) with its
// MOUNT version 3 protocol, both on one TCP port, and answers portmapper
// GETPORT/GETADDR queries on that same port so that clients which insist on
// asking the portmapper (qemu's nfs:// driver) find it when the server
// listens on port 111.
//
// It is a small server of its own rather than a Go NFS library because the
// library measured here (go-nfs v0.0.4) cannot be fixed from outside: its
// procedure handlers take an unexported response type, so MOUNT EXPORT and a
// COMMIT that syncs cannot be added, and it opens, seeks and closes the file
// for every WRITE.
//
// File handles are built from the entry's inode number (stable across
// restarts and nodes by the fs.Tree contract) and resolved with
// Tree.Resolve when the server has not seen them, so a client's handles
// survive a server restart.
package nfs

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	ovsfs "github.com/ovs-storage/ovs/volumedriver/fs"
)

// ExportPath is the one export: the whole tree. "/vpool" is accepted by
// MNT as an alias, for clients configured with a named datastore path.
const ExportPath = "/"

const exportAlias = "/vpool"

// Transfer sizes offered in FSINFO. A record may carry a whole WRITE of
// maxIO bytes plus its header, so records are bounded a little above it.
const (
	maxIO        = 1 << 20
	maxRecord    = maxIO + 64<<10
	maxInFlight  = 32 // requests served concurrently per connection
	maxOpenFiles = 256
)

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// Allow lists the client networks served; a connection from any
	// other address is closed at accept, before it can send a request.
	// NFSv3 with AUTH_SYS trusts whatever uid a client claims, so the
	// network a client sits on is the only thing that tells one apart.
	// Empty serves every client: the caller (the node) chooses the
	// default.
	Allow []netip.Prefix
	// MaxConns caps the open connections (default DefaultMaxConns): each
	// may hold maxInFlight requests of up to a MiB in memory.
	MaxConns int
}

// DefaultMaxConns is the connection cap when Options.MaxConns is 0.
const DefaultMaxConns = 128

// Server serves one fs.Tree over NFSv3 + MOUNTv3 on any number of
// listeners.
type Server struct {
	tree ovsfs.Tree
	log  *slog.Logger
	// verf is the write verifier: new for every Server, so a client that
	// sent UNSTABLE writes to an earlier server resends what it has not
	// seen committed.
	verf [8]byte

	allow    []netip.Prefix
	maxConns int

	handles *handleCache
	files   *fileCache
	excl    *exclusiveCreates

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	// refusedLog: when a refused address was last logged, so that a
	// client retrying in a loop does not flood the log.
	refusedLog map[netip.Addr]time.Time
}

// NewServer returns a server over tree; it serves once Serve is called.
func NewServer(tree ovsfs.Tree, opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		tree:       tree,
		log:        log.With("frontend", "nfs"),
		allow:      append([]netip.Prefix(nil), opts.Allow...),
		maxConns:   cmp.Or(opts.MaxConns, DefaultMaxConns),
		refusedLog: map[netip.Addr]time.Time{},
		handles:    newHandleCache(),
		excl:       newExclusiveCreates(),
		listeners:  map[net.Listener]struct{}{},
		conns:      map[net.Conn]struct{}{},
	}
	s.files = newFileCache(tree, maxOpenFiles, s.log)
	if _, err := rand.Read(s.verf[:]); err != nil {
		// crypto/rand does not fail on Linux; a fixed verifier would only
		// weaken restart detection, so keep going.
		s.log.Warn("nfs: no random write verifier", "err", err)
	}
	return s
}

// Serve accepts connections on ln until ctx is done or Close is called. It
// returns nil after Close or cancellation, and the accept error otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("nfs: server closed")
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.log.Info("nfs: serving", "addr", ln.Addr().String(), "export", ExportPath)
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.listeners, ln)
			s.mu.Unlock()
			if closed || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nfs: accept: %w", err)
		}
		if !s.allowed(c.RemoteAddr()) {
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		if len(s.conns) >= s.maxConns {
			s.mu.Unlock()
			c.Close()
			s.log.Warn("nfs: connection refused: at the connection cap", "remote", c.RemoteAddr().String(), "max_conns", s.maxConns)
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// allowed says whether a client at addr may connect, logging a refusal
// (once a minute per address).
func (s *Server) allowed(addr net.Addr) bool {
	if len(s.allow) == 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		s.log.Warn("nfs: connection refused: unreadable client address", "remote", addr.String(), "err", err)
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range s.allow {
		if p.Contains(ip) {
			return true
		}
	}
	now := time.Now()
	s.mu.Lock()
	last, seen := s.refusedLog[ip]
	if !seen || now.Sub(last) >= time.Minute {
		if len(s.refusedLog) >= 1024 {
			clear(s.refusedLog)
		}
		s.refusedLog[ip] = now
	}
	s.mu.Unlock()
	if !seen || now.Sub(last) >= time.Minute {
		s.log.Warn("nfs: connection refused: client not in the allowed networks (nfs_allow)", "remote", ip.String())
	}
	return false
}

// Close stops every listener and connection, waits for requests in flight,
// then syncs the files that took UNSTABLE writes and closes them.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return s.files.closeAll(context.Background())
}

// serveConn reads RPC records and answers each in its own goroutine (up to
// maxInFlight), so one slow request does not hold back the others on the
// connection (qemu keeps many in flight).
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.Close()
	local := 0
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		local = a.Port
	}
	rd := bufio.NewReaderSize(c, 64<<10)
	var wmu sync.Mutex
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		rec, err := readRecord(rd, maxRecord)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				s.log.Debug("nfs: connection dropped", "remote", c.RemoteAddr().String(), "err", err)
			}
			return
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			reply := s.handleRecord(ctx, rec, local)
			if reply == nil {
				return
			}
			wmu.Lock()
			defer wmu.Unlock()
			if err := writeRecord(c, reply); err != nil {
				s.log.Debug("nfs: write reply", "err", err)
				cancel()
				c.Close()
			}
		}()
	}
}

// readRecord reads one RPC record (RFC 5531 record marking): fragments of
// up to 2^31-1 bytes, the last one flagged by the top bit.
func readRecord(r io.Reader, max int) ([]byte, error) {
	var rec []byte
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:])
		n := int(h & 0x7fffffff)
		if len(rec)+n > max {
			return nil, fmt.Errorf("nfs: record of more than %d bytes", max)
		}
		start := len(rec)
		rec = append(rec, make([]byte, n)...)
		if _, err := io.ReadFull(r, rec[start:]); err != nil {
			return nil, fmt.Errorf("nfs: short fragment: %w", err)
		}
		if h&0x80000000 != 0 {
			return rec, nil
		}
	}
}

// writeRecord sends reply as one last fragment; reply starts with 4 bytes
// reserved for the fragment header.
func writeRecord(w io.Writer, reply []byte) error {
	binary.BigEndian.PutUint32(reply, uint32(len(reply)-4)|0x80000000)
	_, err := w.Write(reply)
	return err
}
