package dtl

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// session is the server side of one Shipper: it appends the entries it
// reads to the vdisk's group files (one buffered write each, no fsync),
// and hands sync requests to its syncer goroutine, so that reading goes
// on while an fdatasync runs and one fdatasync answers every sync request
// that came in meanwhile.
type session struct {
	c           *conn
	vd          *vdisk
	log         *slog.Logger
	epoch       uint64
	clusterSize int
	hdr         []byte // record header scratch

	// Guarded by vd.mu.
	cur   *group   // the group entries go to; nil before the first Begin
	open  []*group // groups whose files this session opened
	count uint64   // positions received: Begin, Write and Trim frames
	// recvAcked: the last position sent in a RecvAck (the read loop's).
	recvAcked uint64
	dead      bool // ended by a newer session, a fence or Forget

	syncReq uint64        // the highest position a sync asked for (vd.mu)
	endDone chan struct{} // closed once end told the peer why
	sWake   chan struct{}
}

// errSessionEnded: the session was ended by someone else, who tells the
// peer why.
var errSessionEnded = errors.New("session ended")

// ship runs a shipping session to its end.
func (c *conn) ship(body []byte) {
	req, err := decodeVDiskReq(ftShip, body)
	if err != nil {
		c.protocolError(err)
		return
	}
	s := &session{
		c:           c,
		log:         c.log.With("vdisk", req.vdisk, "epoch", req.epoch),
		epoch:       req.epoch,
		clusterSize: int(req.clusterSize),
		sWake:       make(chan struct{}, 1),
		endDone:     make(chan struct{}),
	}
	vd, err := c.srv.lookup(req.vdisk, true)
	if err != nil {
		s.log.Error("dtl: session refused", "err", err)
		c.result(statusIO, err.Error())
		return
	}
	st, err := vd.check(req.epoch)
	if err == nil {
		if err = vd.raiseFence(req.epoch); err != nil {
			st = statusIO
		}
	}
	if err != nil {
		vd.mu.Unlock()
		s.log.Info("dtl: session refused", "err", err)
		c.result(st, err.Error())
		return
	}
	if old := vd.session; old != nil {
		// An owner has one shipper per vdisk: an older session is a
		// leftover of a connection the owner gave up on.
		old.end(statusGone, "superseded by a newer session")
	}
	vd.session = s
	s.vd = vd
	vd.mu.Unlock()
	s.log.Info("dtl: session started", "cluster_size", s.clusterSize)

	syncerDone := make(chan struct{})
	go func() {
		defer close(syncerDone)
		s.syncer()
	}()
	defer func() {
		c.cancel()
		<-syncerDone
		s.close()
	}()
	if err := c.result(statusOK, ""); err != nil {
		return
	}
	for {
		h, body, err := c.readFrame()
		if err == nil {
			err = s.handle(h.typ, body)
		}
		if err == nil && c.br.Buffered() < frameHdrSize {
			// Nothing more to read at once: push the buffered
			// appends to the files before blocking, and say so.
			err = s.flush()
			if err == nil {
				err = s.ackReceived()
			}
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, errSessionEnded):
			// Let the result saying why go out before the connection
			// closes.
			<-s.endDone
		case errors.Is(err, errProtocol):
			c.protocolError(err)
		case errors.Is(err, ErrCorrupt):
			s.log.Warn("dtl: refused a corrupt entry", "err", err)
			c.result(statusInvalid, err.Error())
		case errors.Is(err, errStorage):
			s.log.Error("dtl: session failed", "err", err)
			c.result(statusIO, err.Error())
		default:
			c.endOnReadError(err)
		}
		return
	}
}

// errStorage marks errors of the server's own files.
var errStorage = errors.New("dtl storage")

func storageErr(err error) error { return fmt.Errorf("%w: %w", errStorage, err) }

func (s *session) handle(t frameType, body []byte) error {
	switch t {
	case ftWrite, ftTrim:
		k := Write
		if t == ftTrim {
			k = Trim
		}
		if _, err := verifyEntryBody(k, body, s.clusterSize); err != nil {
			return err
		}
		return s.appendEntry(k, body)
	case ftBegin:
		tlog, prev, err := decodeBegin(body)
		if err != nil {
			return err
		}
		return s.begin(tlog, prev)
	case ftSync:
		pos, err := decodeU64(body)
		if err != nil {
			return err
		}
		return s.sync(pos)
	case ftDrop:
		name, err := decodeDrop(body)
		if err != nil {
			return err
		}
		return s.drop(name)
	}
	return fmt.Errorf("%w: unexpected %s frame in a shipping session", errProtocol, t)
}

// live checks that the session may still write. vd.mu held.
func (s *session) live() error {
	if s.dead {
		return errSessionEnded
	}
	return nil
}

func (s *session) appendEntry(k Kind, body []byte) error {
	vd := s.vd
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if err := s.live(); err != nil {
		return err
	}
	g := s.cur
	if g == nil {
		return fmt.Errorf("%w: %s entry before any begin (or after its group was dropped)", errProtocol, k)
	}
	s.hdr = appendRecordHdr(s.hdr[:0], k, body)
	if _, err := g.w.Write(s.hdr); err != nil {
		return storageErr(fmt.Errorf("write %s: %w", g.path, err))
	}
	if _, err := g.w.Write(body); err != nil {
		return storageErr(fmt.Errorf("write %s: %w", g.path, err))
	}
	g.entries++
	g.size += int64(len(s.hdr) + len(body))
	g.dirty = true
	s.count++
	vd.changed = time.Now()
	return nil
}

// begin starts a group file; a group of the same name is replaced.
func (s *session) begin(tlog, prev string) error {
	vd := s.vd
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if err := s.live(); err != nil {
		return err
	}
	if g := s.cur; g != nil {
		if err := g.w.Flush(); err != nil {
			return storageErr(fmt.Errorf("write %s: %w", g.path, err))
		}
		g.w = nil // its file stays open for the syncer
	}
	if i := vd.find(tlog); i >= 0 {
		old := vd.groups[i]
		s.log.Warn("dtl: group begun again: replacing it", "group", tlog, "entries", old.entries)
		old.close()
		if err := os.Remove(old.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return storageErr(fmt.Errorf("replace group %s: %w", tlog, err))
		}
		vd.groups = append(vd.groups[:i], vd.groups[i+1:]...)
		if s.cur == old {
			s.cur = nil
		}
	}
	seq := vd.nextSeq
	vd.nextSeq++
	path := filepath.Join(vd.dir, groupFileName(seq, tlog))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return storageErr(fmt.Errorf("begin group %s: %w", tlog, err))
	}
	hdr := appendFileHeader(nil, s.epoch, tlog, prev)
	g := &group{seq: seq, tlog: tlog, prev: prev, epoch: s.epoch, path: path, hdrLen: len(hdr), size: int64(len(hdr)),
		f: f, w: bufio.NewWriterSize(f, groupWriteBuf), dirty: true}
	g.w.Write(hdr) // into the empty buffer: cannot fail
	vd.groups = append(vd.groups, g)
	vd.dirDirty = true
	s.cur = g
	s.open = append(s.open, g)
	s.count++
	vd.changed = time.Now()
	return nil
}

// ackReceived tells the owner how far its changes are in the files, if
// that grew since the last time.
func (s *session) ackReceived() error {
	s.vd.mu.Lock()
	pos, dead := s.count, s.dead
	s.vd.mu.Unlock()
	if dead || pos == s.recvAcked {
		return nil
	}
	s.recvAcked = pos
	return s.c.write(appendU64Frame(nil, ftRecvAck, pos), true)
}

// flush pushes the current group's buffered appends to its file.
func (s *session) flush() error {
	vd := s.vd
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if s.dead || s.cur == nil {
		return nil
	}
	if err := s.cur.w.Flush(); err != nil {
		return storageErr(fmt.Errorf("write %s: %w", s.cur.path, err))
	}
	return nil
}

// sync records that the peer wants everything up to pos durable and wakes
// the syncer. The syncer itself pushes the buffered appends to the files
// before its fdatasync, so that a burst of sync requests (QD32 flushes)
// costs one write and one fdatasync, not one of each per request.
func (s *session) sync(pos uint64) error {
	vd := s.vd
	vd.mu.Lock()
	if err := s.live(); err != nil {
		vd.mu.Unlock()
		return err
	}
	if pos != s.count {
		vd.mu.Unlock()
		return fmt.Errorf("%w: sync at position %d, the server has %d", errProtocol, pos, s.count)
	}
	s.syncReq = pos
	vd.mu.Unlock()
	select {
	case s.sWake <- struct{}{}:
	default:
	}
	return nil
}

// syncer makes the requested positions durable and acknowledges them,
// until the connection ends. One round answers every request that came in
// while the previous round ran (group commit).
func (s *session) syncer() {
	var acked uint64
	for {
		select {
		case <-s.sWake:
		case <-s.c.ctx.Done():
			return
		}
		target, files, dir, err := s.syncBatch(acked)
		if err == nil && target > acked {
			err = s.syncFiles(files, dir)
		}
		if errors.Is(err, errSessionEnded) {
			return
		}
		if err != nil {
			s.log.Error("dtl: sync failed", "err", err)
			s.vd.mu.Lock()
			s.end(statusIO, err.Error())
			s.vd.mu.Unlock()
			return
		}
		if target <= acked {
			continue
		}
		s.vd.mu.Lock()
		dead := s.dead
		s.vd.mu.Unlock()
		if dead {
			return
		}
		if err := s.c.write(appendU64Frame(nil, ftSyncAck, target), true); err != nil {
			s.c.cancel()
			return
		}
		acked = target
	}
}

// syncBatch pushes the buffered appends to the files and collects what
// the next fdatasync round must cover. Files stay open until their group
// is dropped or the session ends, so none closes before its fdatasync
// (a dropped one may: its fdatasync is then skipped).
func (s *session) syncBatch(acked uint64) (target uint64, files []*os.File, dir bool, err error) {
	vd := s.vd
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if s.dead {
		return 0, nil, false, errSessionEnded
	}
	if s.syncReq <= acked {
		return s.syncReq, nil, false, nil
	}
	if g := s.cur; g != nil {
		if err := g.w.Flush(); err != nil {
			return 0, nil, false, storageErr(fmt.Errorf("write %s: %w", g.path, err))
		}
	}
	for _, g := range s.open {
		if g.f != nil && g.dirty {
			files = append(files, g.f)
			g.dirty = false
		}
	}
	dir = vd.dirDirty
	vd.dirDirty = false
	return s.syncReq, files, dir, nil
}

func (s *session) syncFiles(files []*os.File, dir bool) error {
	seen := make(map[*os.File]bool, len(files))
	for _, f := range files {
		if seen[f] {
			continue
		}
		seen[f] = true
		if err := fdatasync(f); err != nil {
			if errors.Is(err, os.ErrClosed) {
				continue // dropped or replaced meanwhile: nothing to keep
			}
			return storageErr(fmt.Errorf("fdatasync %s: %w", f.Name(), err))
		}
	}
	if dir {
		if err := syncDir(s.vd.dir); err != nil {
			return storageErr(err)
		}
	}
	return nil
}

// fdatasync through the file's raw connection, which holds the file open
// against a concurrent Close.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// drop removes the group named name and every group before it; a name
// the server does not have drops nothing.
func (s *session) drop(name string) error {
	vd := s.vd
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if err := s.live(); err != nil {
		return err
	}
	i := vd.find(name)
	if i < 0 {
		s.log.Debug("dtl: drop of a group not here", "group", name)
		return nil
	}
	vd.removeGroups(i+1, s.log)
	s.open = slices.DeleteFunc(s.open, func(g *group) bool { return g.f == nil })
	s.log.Debug("dtl: groups dropped", "upto", name, "left", len(vd.groups))
	return nil
}

// end stops the session from writing and tells its peer why, then closes
// the connection. vd.mu held (it flushes the session's buffered appends,
// so that what it accepted is in the files for a reader).
func (s *session) end(st status, msg string) {
	if s.dead {
		return
	}
	s.dead = true
	if s.vd.session == s {
		s.vd.session = nil
	}
	for _, g := range s.open {
		if g.w != nil {
			if err := g.w.Flush(); err != nil {
				s.log.Error("dtl: flush of an ended session", "file", g.path, "err", err)
			}
		}
	}
	s.log.Info("dtl: session ended", "why", msg)
	go func() {
		defer close(s.endDone)
		s.c.result(st, msg)
		s.c.cancel()
	}()
}

// close releases the session's files once its reader and syncer are done.
func (s *session) close() {
	vd := s.vd
	vd.mu.Lock()
	defer vd.mu.Unlock()
	s.dead = true
	if vd.session == s {
		vd.session = nil
	}
	for _, g := range s.open {
		if g.w != nil {
			if err := g.w.Flush(); err != nil {
				s.log.Error("dtl: flush at session end", "file", g.path, "err", err)
			}
		}
		if g.f != nil {
			g.f.Close()
		}
		g.f, g.w, g.dirty = nil, nil, false
	}
	s.open = nil
	s.cur = nil
}
