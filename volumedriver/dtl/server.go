package dtl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
)

// Server defaults and limits.
const (
	DefaultMaxConns = 256
	helloTimeout    = 10 * time.Second
	writeTimeout    = 30 * time.Second
	connReadBuf     = 256 << 10
	connWriteBuf    = 64 << 10
	groupWriteBuf   = 256 << 10
)

// ErrServerClosed is returned by Serve on a server that is closing.
var ErrServerClosed = errors.New("dtl: server closed")

// ServerConfig configures a Server.
type ServerConfig struct {
	Dir string       // where the vdisks' groups and fences live; created if missing
	Log *slog.Logger // nil discards
	// MaxConns caps the open connections; one over the cap is told so in
	// the hello and closed. 0: DefaultMaxConns; negative: no cap.
	MaxConns int
}

// Server stores the changes that owners ship, one directory per vdisk.
type Server struct {
	dir   string
	log   *slog.Logger
	max   int
	conns *connsrv.Server

	mu     sync.Mutex
	vdisks map[string]*vdisk
}

// vdisk is the state of one vdisk's directory. Everything in it, and the
// group files' writers, is guarded by mu: the session's appends, the
// admin calls and the fence all take it, so that a fence orders strictly
// against the entries.
type vdisk struct {
	name, dir string

	mu       sync.Mutex
	fence    uint64
	changed  time.Time // the last change by a session
	groups   []*group  // in ship order
	nextSeq  uint64
	dirDirty bool     // files created or removed since the directory was last fsynced
	session  *session // the shipping session, nil if none
	broken   error    // the directory could not be loaded safely: refuse all but Forget
	removed  bool     // forgotten: this struct is dead, look the name up again
}

// group is one group file.
type group struct {
	seq        uint64
	tlog, prev string
	epoch      uint64
	path       string
	hdrLen     int
	size       int64 // valid bytes, header included
	entries    int
	// Set while a session has the file open for appending.
	f     *os.File
	w     *bufio.Writer // nil once the session moved on to the next group
	dirty bool          // written since the session last handed it to its syncer
}

func (g *group) info() GroupInfo {
	return GroupInfo{TLog: g.tlog, Prev: g.prev, Entries: g.entries, Bytes: g.size, Epoch: g.epoch}
}

// NewServer loads cfg.Dir (creating it) and verifies what it holds: a torn
// tail of a group file is cut off, a corrupt record ends that group's valid
// part; both are logged. A vdisk whose fence cannot be read, or that holds
// a file of an unknown format version, is refused (every call on it fails
// with the reason) until it is forgotten.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("dtl: server needs a directory")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("dtl: create %s: %w", cfg.Dir, err)
	}
	s := &Server{dir: cfg.Dir, log: cfg.Log, max: cfg.MaxConns, vdisks: make(map[string]*vdisk)}
	ents, err := os.ReadDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("dtl: read %s: %w", cfg.Dir, err)
	}
	for _, de := range ents {
		if !de.IsDir() {
			continue
		}
		if validVDisk(de.Name()) != nil {
			s.log.Warn("dtl: ignoring a directory that is no vdisk", "dir", filepath.Join(cfg.Dir, de.Name()))
			continue
		}
		vd, err := s.loadVDisk(de.Name())
		if err != nil {
			return nil, err
		}
		s.vdisks[vd.name] = vd
	}
	s.conns = connsrv.New(connsrv.Options{
		Name:        "dtl",
		Logger:      s.log,
		MaxConns:    cfg.MaxConns,
		KeepOverCap: true, // the hello tells the peer
		ErrClosed:   ErrServerClosed,
	}, func(ctx context.Context, nc net.Conn, overCap bool) connsrv.Conn {
		return newConn(s, ctx, nc, overCap)
	})
	return s, nil
}

// loadVDisk loads one vdisk directory. Only I/O errors that make the whole
// directory unreadable fail it; damage is logged and handled.
func (s *Server) loadVDisk(name string) (*vdisk, error) {
	vd := &vdisk{name: name, dir: filepath.Join(s.dir, name), nextSeq: 1, changed: time.Now()}
	log := s.log.With("vdisk", name)
	fence, err := readFence(vd.dir)
	if err != nil {
		vd.broken = fmt.Errorf("vdisk %s refused: %w", name, err)
		log.Error("dtl: cannot read the fence; refusing the vdisk until it is forgotten", "err", err)
	}
	vd.fence = fence
	ents, err := os.ReadDir(vd.dir)
	if err != nil {
		return nil, fmt.Errorf("dtl: read %s: %w", vd.dir, err)
	}
	byName := make(map[string]*group)
	for _, de := range ents {
		if de.Name() == fenceTmpName {
			// A fence write that did not reach its rename: the old
			// fence holds.
			os.Remove(filepath.Join(vd.dir, fenceTmpName))
			continue
		}
		seq, tlog, ok := parseGroupFileName(de.Name())
		if !ok || !de.Type().IsRegular() {
			continue
		}
		vd.nextSeq = max(vd.nextSeq, seq+1)
		path := filepath.Join(vd.dir, de.Name())
		sc, err := scanGroupFile(path)
		switch {
		case errors.Is(err, ErrVersion):
			vd.broken = fmt.Errorf("vdisk %s refused: %s: %w", name, path, err)
			log.Error("dtl: a group file of an unknown format; refusing the vdisk until it is forgotten", "file", path, "err", err)
			continue
		case errors.Is(err, errBadHeader):
			// Its header never reached the disk whole, so nothing in
			// it was acknowledged durable. Keep it aside for a look.
			log.Warn("dtl: group file with a bad header set aside", "file", path, "err", err)
			if rerr := os.Rename(path, path+corruptExt); rerr != nil {
				return nil, fmt.Errorf("dtl: set aside %s: %w", path, rerr)
			}
			continue
		case err != nil:
			return nil, fmt.Errorf("dtl: load %s: %w", path, err)
		}
		if sc.tlog != tlog {
			log.Warn("dtl: group file whose header names another group set aside", "file", path, "header", sc.tlog)
			if rerr := os.Rename(path, path+corruptExt); rerr != nil {
				return nil, fmt.Errorf("dtl: set aside %s: %w", path, rerr)
			}
			continue
		}
		if sc.cut {
			log.Warn("dtl: cut the torn tail of a group file (a crash during a write)", "file", path, "valid_bytes", sc.size, "entries", sc.entries)
		}
		if sc.corruptAt >= 0 {
			log.Error("dtl: corrupt record in a group file: its valid part ends there", "file", path, "offset", sc.corruptAt, "entries", sc.entries, "err", sc.corruptErr)
		}
		g := &group{seq: seq, tlog: tlog, prev: sc.prev, epoch: sc.epoch, path: path, hdrLen: sc.hdrLen, size: sc.size, entries: sc.entries}
		if old := byName[tlog]; old != nil {
			// A Begin that replaced a group and crashed between
			// creating the new file and removing the old one: the
			// later file wins.
			older, newer := old, g
			if older.seq > newer.seq {
				older, newer = newer, older
			}
			log.Warn("dtl: two files for one group; keeping the later", "kept", newer.path, "removed", older.path)
			os.Remove(older.path)
			g = newer
		}
		byName[tlog] = g
	}
	for _, g := range byName {
		vd.groups = append(vd.groups, g)
	}
	sort.Slice(vd.groups, func(i, j int) bool { return vd.groups[i].seq < vd.groups[j].seq })
	return vd, nil
}

// Serve accepts connections on ln until ctx ends, Close is called or ln
// fails, and closes ln then. The caller wraps ln in TLS if it wants.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.conns.Serve(ctx, ln)
}

// Close tears every connection down and waits for them; what was written
// stays on disk for the next NewServer.
func (s *Server) Close() error {
	if err := s.conns.Close(); err != nil {
		return fmt.Errorf("dtl: close: %w", err)
	}
	return nil
}

// VDisks lists the vdisks the server holds, sorted by id.
func (s *Server) VDisks() []VDiskInfo {
	s.mu.Lock()
	vds := make([]*vdisk, 0, len(s.vdisks))
	for _, vd := range s.vdisks {
		vds = append(vds, vd)
	}
	s.mu.Unlock()
	out := make([]VDiskInfo, 0, len(vds))
	for _, vd := range vds {
		vd.mu.Lock()
		if !vd.removed {
			in := VDiskInfo{VDisk: vd.name, Epoch: vd.fence, Groups: len(vd.groups), Session: vd.session != nil, Changed: vd.changed}
			for _, g := range vd.groups {
				in.Bytes += g.size
			}
			out = append(out, in)
		}
		vd.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VDisk < out[j].VDisk })
	return out
}

// lookup returns the vdisk, locked, or nil when the server has none of
// that name and create is false. A new vdisk gets its directory, made
// durable.
func (s *Server) lookup(name string, create bool) (*vdisk, error) {
	for {
		s.mu.Lock()
		vd := s.vdisks[name]
		if vd == nil {
			if !create {
				s.mu.Unlock()
				return nil, nil
			}
			vd = &vdisk{name: name, dir: filepath.Join(s.dir, name), nextSeq: 1, changed: time.Now()}
			err := os.MkdirAll(vd.dir, 0o755)
			if err == nil {
				err = syncDir(s.dir)
			}
			if err != nil {
				s.mu.Unlock()
				return nil, fmt.Errorf("create the directory of vdisk %s: %w", name, err)
			}
			s.vdisks[name] = vd
		}
		s.mu.Unlock()
		vd.mu.Lock()
		if !vd.removed {
			return vd, nil
		}
		vd.mu.Unlock() // forgotten meanwhile: look again
	}
}

func (vd *vdisk) find(tlog string) int {
	return slices.IndexFunc(vd.groups, func(g *group) bool { return g.tlog == tlog })
}

// check refuses an epoch below the fence and a broken vdisk. vd.mu held.
func (vd *vdisk) check(epoch uint64) (status, error) {
	if vd.broken != nil {
		return statusIO, vd.broken
	}
	if epoch < vd.fence {
		return statusFenced, fmt.Errorf("vdisk %s: epoch %d is below the fence %d", vd.name, epoch, vd.fence)
	}
	return statusOK, nil
}

// raiseFence makes epoch the fence if it is above it, durably, and ends
// a session of an older epoch. vd.mu held.
func (vd *vdisk) raiseFence(epoch uint64) error {
	if epoch <= vd.fence {
		return nil
	}
	if err := writeFence(vd.dir, epoch); err != nil {
		return err
	}
	vd.fence = epoch
	if s := vd.session; s != nil && s.epoch < epoch {
		s.end(statusFenced, fmt.Sprintf("vdisk %s fenced by epoch %d (this session has %d)", vd.name, epoch, s.epoch))
	}
	return nil
}

// flushWriters pushes every buffered append of the vdisk to its file, so
// that a reader of the files sees every entry accepted so far. vd.mu held.
func (vd *vdisk) flushWriters() error {
	for _, g := range vd.groups {
		if g.w != nil {
			if err := g.w.Flush(); err != nil {
				return fmt.Errorf("write %s: %w", g.path, err)
			}
		}
	}
	return nil
}

// removeGroups deletes the files of groups[:n]. vd.mu held.
func (vd *vdisk) removeGroups(n int, log *slog.Logger) {
	for _, g := range vd.groups[:n] {
		g.close()
		if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Warn("dtl: remove a dropped group", "file", g.path, "err", err)
		}
		if s := vd.session; s != nil && s.cur == g {
			s.cur = nil
		}
	}
	vd.groups = slices.Delete(vd.groups, 0, n)
	vd.dirDirty = true
}

// close closes the group's file; buffered appends are lost (a dropped or
// replaced group). Its session's syncer may still hold the *os.File: its
// fdatasync then fails with ErrClosed, which it ignores.
func (g *group) close() {
	if g.f != nil {
		g.f.Close()
	}
	g.f, g.w, g.dirty = nil, nil, false
}

// conn is one accepted connection.
type conn struct {
	srv     *Server
	nc      net.Conn
	ctx     context.Context
	cancel  context.CancelFunc
	log     *slog.Logger
	br      *bufio.Reader
	overCap bool
	buf     []byte // frame bodies, reused

	wmu sync.Mutex // guards bw: the reader, a syncer and enders write
	bw  *bufio.Writer
}

func newConn(s *Server, ctx context.Context, nc net.Conn, overCap bool) *conn {
	cctx, cancel := context.WithCancel(ctx)
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	return &conn{
		srv:     s,
		nc:      nc,
		ctx:     cctx,
		cancel:  cancel,
		log:     s.log.With("peer", remote),
		br:      bufio.NewReaderSize(nc, connReadBuf),
		bw:      bufio.NewWriterSize(nc, connWriteBuf),
		overCap: overCap,
	}
}

func (c *conn) Drain() { c.cancel() }
func (c *conn) Close() { c.cancel(); c.nc.Close() }

// Serve runs the connection: the hello, then either one shipping session
// or admin requests until the peer closes.
func (c *conn) Serve() {
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer func() {
		stop()
		c.cancel()
		c.nc.Close()
	}()
	if err := c.hello(); err != nil {
		c.log.Debug("dtl: connection refused in hello", "err", err)
		return
	}
	for first := true; ; first = false {
		h, body, err := c.readFrame()
		if err != nil {
			c.endOnReadError(err)
			return
		}
		switch {
		case h.typ == ftShip && first:
			c.ship(body)
			return
		case h.typ == ftFence || h.typ == ftGroups || h.typ == ftRead || h.typ == ftForget:
			if !c.admin(h.typ, body) {
				return
			}
		default:
			c.protocolError(fmt.Errorf("%w: unexpected %s frame", errProtocol, h.typ))
			return
		}
	}
}

func (c *conn) hello() error {
	c.nc.SetDeadline(time.Now().Add(helloTimeout))
	defer c.nc.SetDeadline(time.Time{})
	var b [helloSize]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return err
	}
	v, _, err := decodeHello(b[:])
	if err != nil {
		return err
	}
	st := uint8(helloOK)
	switch {
	case v != Version:
		st = helloBadVersion
		err = fmt.Errorf("%w: peer speaks protocol version %d, this server speaks %d", ErrVersion, v, Version)
	case c.overCap:
		st = helloTooManyConn
		err = fmt.Errorf("at the connection limit of %d", c.srv.max)
		c.log.Warn("dtl: connection refused: at the connection limit", "limit", c.srv.max)
	}
	if werr := c.write(appendHello(b[:0], Version, st), true); werr != nil && err == nil {
		err = werr
	}
	return err
}

// readFrame reads one client frame; the body is valid until the next call.
func (c *conn) readFrame() (frameHdr, []byte, error) {
	var hb [frameHdrSize]byte
	if _, err := io.ReadFull(c.br, hb[:]); err != nil {
		return frameHdr{}, nil, err
	}
	h, err := decodeFrameHdr(hb[:], clientFrame)
	if err != nil {
		return h, nil, err
	}
	if cap(c.buf) < h.length {
		c.buf = make([]byte, h.length)
	}
	body := c.buf[:h.length]
	if _, err := io.ReadFull(c.br, body); err != nil {
		return h, nil, err
	}
	return h, body, nil
}

// write writes b whole under the write lock, flushing when asked.
func (c *conn) write(b []byte, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.bw.Write(b); err != nil {
		return fmt.Errorf("dtl: write to %s: %w", c.nc.RemoteAddr(), err)
	}
	if flush {
		if err := c.bw.Flush(); err != nil {
			return fmt.Errorf("dtl: write to %s: %w", c.nc.RemoteAddr(), err)
		}
	}
	return nil
}

func (c *conn) result(st status, msg string) error {
	return c.write(appendResult(nil, st, msg), true)
}

func (c *conn) endOnReadError(err error) {
	if errors.Is(err, errProtocol) {
		c.protocolError(err)
		return
	}
	if c.ctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.log.Debug("dtl: connection read failed", "err", err)
	}
}

// protocolError tells the peer why its connection is closed, best effort.
func (c *conn) protocolError(err error) {
	c.log.Warn("dtl: closing connection on a protocol error", "err", err)
	c.result(statusInvalid, err.Error())
}

// admin serves one admin request; false ends the connection.
func (c *conn) admin(t frameType, body []byte) bool {
	req, err := decodeVDiskReq(t, body)
	if err != nil {
		c.protocolError(err)
		return false
	}
	log := c.log.With("vdisk", req.vdisk, "epoch", req.epoch)
	var st status
	switch t {
	case ftFence:
		st, err = c.srv.fence(req)
	case ftGroups:
		st, err = c.srv.groups(c, req)
	case ftRead:
		st, err = c.srv.read(c, req)
	case ftForget:
		st, err = c.srv.forget(req)
	}
	if st == statusOK && err != nil {
		// The reply stream broke.
		log.Debug("dtl: admin reply failed", "op", t.String(), "err", err)
		return false
	}
	msg := ""
	if err != nil {
		msg = err.Error()
		level := slog.LevelInfo
		if st == statusIO {
			level = slog.LevelError
		}
		log.Log(context.Background(), level, "dtl: admin request refused", "op", t.String(), "err", err)
	} else {
		log.Debug("dtl: admin request done", "op", t.String())
	}
	return c.result(st, msg) == nil && err == nil
}

// fence raises the vdisk's fence to req.epoch durably; a lower epoch is
// refused.
func (s *Server) fence(req vdiskReq) (status, error) {
	vd, err := s.lookup(req.vdisk, true)
	if err != nil {
		return statusIO, err
	}
	defer vd.mu.Unlock()
	if st, err := vd.check(req.epoch); err != nil {
		return st, err
	}
	if err := vd.raiseFence(req.epoch); err != nil {
		return statusIO, err
	}
	s.log.Info("dtl: vdisk fenced", "vdisk", vd.name, "epoch", vd.fence)
	return statusOK, nil
}

// groups streams a Group frame per group; the caller sends the result.
func (s *Server) groups(c *conn, req vdiskReq) (status, error) {
	vd, err := s.lookup(req.vdisk, false)
	if err != nil || vd == nil {
		return statusOK, err
	}
	var b []byte
	st, err := vd.check(req.epoch)
	if err == nil {
		for _, g := range vd.groups {
			b = appendGroupInfo(b, g.info())
		}
	}
	vd.mu.Unlock()
	if err != nil {
		return st, err
	}
	return statusOK, c.write(b, false)
}

// readSnap is a group as Read streams it: an open file and how much of it
// to send, fixed when the read starts.
type readSnap struct {
	info   GroupInfo
	f      *os.File
	hdrLen int
	size   int64
}

// read streams the groups from req.from on: a Group frame, then its
// entries, verified again on the way out.
func (s *Server) read(c *conn, req vdiskReq) (status, error) {
	vd, err := s.lookup(req.vdisk, false)
	if err != nil {
		return statusIO, err
	}
	if vd == nil {
		if req.from != "" {
			return statusNotFound, fmt.Errorf("vdisk %s has no group %s", req.vdisk, req.from)
		}
		return statusOK, nil
	}
	snaps, st, err := vd.snapshot(req)
	vd.mu.Unlock()
	defer func() {
		for _, sn := range snaps {
			sn.f.Close()
		}
	}()
	if err != nil {
		return st, err
	}
	var buf []byte
	var out []byte
	for _, sn := range snaps {
		if err := c.write(appendGroupInfo(out[:0], sn.info), false); err != nil {
			return statusOK, err
		}
		r := bufio.NewReaderSize(io.NewSectionReader(sn.f, int64(sn.hdrLen), sn.size-int64(sn.hdrLen)), 256<<10)
		for n := 0; n < sn.info.Entries; n++ {
			k, body, err := readRecord(r, &buf)
			if err != nil {
				return statusIO, fmt.Errorf("vdisk %s group %s entry %d: %w", vd.name, sn.info.TLog, n+1, err)
			}
			out = appendFrameHdr(out[:0], k.frame(), len(body))
			if err := c.write(out, false); err != nil {
				return statusOK, err
			}
			if err := c.write(body, false); err != nil {
				return statusOK, err
			}
		}
	}
	return statusOK, nil
}

// snapshot opens the files of the groups from req.from on. vd.mu held.
func (vd *vdisk) snapshot(req vdiskReq) ([]readSnap, status, error) {
	if st, err := vd.check(req.epoch); err != nil {
		return nil, st, err
	}
	from := 0
	if req.from != "" {
		if from = vd.find(req.from); from < 0 {
			return nil, statusNotFound, fmt.Errorf("vdisk %s has no group %s", vd.name, req.from)
		}
	}
	if err := vd.flushWriters(); err != nil {
		return nil, statusIO, err
	}
	var snaps []readSnap
	for _, g := range vd.groups[from:] {
		f, err := os.Open(g.path)
		if err != nil {
			for _, sn := range snaps {
				sn.f.Close()
			}
			return nil, statusIO, fmt.Errorf("open %s: %w", g.path, err)
		}
		snaps = append(snaps, readSnap{info: g.info(), f: f, hdrLen: g.hdrLen, size: g.size})
	}
	return snaps, statusOK, nil
}

// forget removes everything of the vdisk, fence included, and ends its
// session. A broken vdisk can be forgotten whatever the epoch: that is
// how an operator clears it.
func (s *Server) forget(req vdiskReq) (status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vd := s.vdisks[req.vdisk]
	if vd == nil {
		return statusOK, nil
	}
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if vd.broken == nil {
		if st, err := vd.check(req.epoch); err != nil {
			return st, err
		}
	}
	if sess := vd.session; sess != nil {
		sess.end(statusGone, fmt.Sprintf("vdisk %s forgotten", vd.name))
	}
	for _, g := range vd.groups {
		g.close()
	}
	if err := os.RemoveAll(vd.dir); err != nil {
		return statusIO, fmt.Errorf("forget vdisk %s: %w", vd.name, err)
	}
	vd.removed = true
	delete(s.vdisks, vd.name)
	if err := syncDir(s.dir); err != nil {
		return statusIO, err
	}
	s.log.Info("dtl: vdisk forgotten", "vdisk", vd.name, "epoch", req.epoch)
	return statusOK, nil
}
