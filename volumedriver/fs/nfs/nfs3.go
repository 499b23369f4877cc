package nfs

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	ovsfs "github.com/ovs-storage/ovs/volumedriver/fs"
)

// NFSv3 procedure numbers (RFC 1813).
const (
	procNull        = 0
	procGetattr     = 1
	procSetattr     = 2
	procLookup      = 3
	procAccess      = 4
	procReadlink    = 5
	procRead        = 6
	procWrite       = 7
	procCreate      = 8
	procMkdir       = 9
	procSymlink     = 10
	procMknod       = 11
	procRemove      = 12
	procRmdir       = 13
	procRename      = 14
	procLink        = 15
	procReaddir     = 16
	procReaddirplus = 17
	procFsstat      = 18
	procFsinfo      = 19
	procPathconf    = 20
	procCommit      = 21
)

// failWords is how many XDR words of "absent" attributes follow the status
// in each procedure's failure reply: a post_op_attr is one (FALSE), a
// wcc_data two.
var failWords = [...]int{
	procGetattr: 0, procSetattr: 2, procLookup: 1, procAccess: 1,
	procReadlink: 1, procRead: 1, procWrite: 2, procCreate: 2, procMkdir: 2,
	procSymlink: 2, procMknod: 2, procRemove: 2, procRmdir: 2, procRename: 4,
	procLink: 3, procReaddir: 1, procReaddirplus: 1, procFsstat: 1,
	procFsinfo: 1, procPathconf: 1, procCommit: 2,
}

type nfsHandler func(s *Server, ctx context.Context, r *xdrReader, w *xdrWriter) uint32

var nfsHandlers = [...]nfsHandler{
	procGetattr:     (*Server).getattr,
	procSetattr:     (*Server).setattr,
	procLookup:      (*Server).lookup,
	procAccess:      (*Server).access,
	procRead:        (*Server).read,
	procWrite:       (*Server).write,
	procCreate:      (*Server).create,
	procMkdir:       (*Server).mkdir,
	procRemove:      (*Server).remove,
	procRmdir:       (*Server).rmdir,
	procRename:      (*Server).rename,
	procReaddir:     (*Server).readdir,
	procReaddirplus: (*Server).readdirplus,
	procFsstat:      (*Server).fsstat,
	procFsinfo:      (*Server).fsinfo,
	procPathconf:    (*Server).pathconf,
	procCommit:      (*Server).commit,
}

// nfsProc runs one NFSv3 procedure and returns its reply body.
func (s *Server) nfsProc(ctx context.Context, c *call) ([]byte, uint32) {
	if c.proc == procNull {
		return nil, acceptSuccess
	}
	if int(c.proc) >= len(failWords) {
		return nil, acceptProcUnavail
	}
	res := &xdrWriter{}
	st := uint32(nfsErrNotSupp) // READLINK, SYMLINK, MKNOD, LINK
	if h := nfsHandlers[c.proc]; h != nil {
		st = h(s, ctx, c.args, res)
		if c.args.err != nil {
			return nil, acceptGarbageArgs
		}
	}
	out := &xdrWriter{b: make([]byte, 0, 4+len(res.b))}
	out.u32(st)
	if st == nfsOK {
		out.b = append(out.b, res.b...)
	} else {
		for range failWords[c.proc] {
			out.u32(0)
		}
		if st == nfsErrIO || st == nfsErrServerFault {
			s.log.Warn("nfs: request failed", "proc", c.proc, "status", st)
		}
	}
	return out.b, acceptSuccess
}

// File types and modes reported in fattr3.
const (
	nf3Reg = 1
	nf3Dir = 2

	fsid = 0x4f5653 // "OVS": one filesystem per export
)

// putAttr writes an fattr3. Permissions are nominal (the Tree has no
// owners): everyone may read, and write unless the entry is read-only.
func putAttr(w *xdrWriter, a ovsfs.Attr) {
	typ, mode, nlink := uint32(nf3Reg), uint32(0o666), uint32(1)
	if a.IsDir() {
		typ, mode, nlink = nf3Dir, 0o777, 2
	}
	if a.ReadOnly {
		mode &^= 0o222
	}
	w.u32(typ)
	w.u32(mode)
	w.u32(nlink)
	w.u32(0) // uid
	w.u32(0) // gid
	size := uint64(max(a.Size, 0))
	w.u64(size)
	w.u64(size) // used: thin vdisks do not say how much is mapped
	w.u32(0)    // rdev
	w.u32(0)
	w.u64(fsid)
	w.u64(a.Ino)
	for range 3 { // atime, mtime, ctime
		putTime(w, a.ModTime)
	}
}

func putTime(w *xdrWriter, t time.Time) {
	if t.IsZero() || t.Unix() < 0 {
		w.u32(0)
		w.u32(0)
		return
	}
	w.u32(uint32(t.Unix()))
	w.u32(uint32(t.Nanosecond()))
}

func putPostAttr(w *xdrWriter, a ovsfs.Attr, ok bool) {
	w.bool(ok)
	if ok {
		putAttr(w, a)
	}
}

// sattr3 is the settable attributes of SETATTR, CREATE and MKDIR. Only the
// size means anything to the Tree; mode, owner and times are accepted and
// ignored (cp -p and qemu set them).
type sattr3 struct {
	sizeSet bool
	size    uint64
}

func readSattr(r *xdrReader) sattr3 {
	var sa sattr3
	for range 3 { // mode, uid, gid
		if r.bool() {
			r.u32()
		}
	}
	if sa.sizeSet = r.bool(); sa.sizeSet {
		sa.size = r.u64()
	}
	for range 2 { // atime, mtime
		switch how := r.u32(); how {
		case 0, 1: // DONT_CHANGE, SET_TO_SERVER_TIME
		case 2: // SET_TO_CLIENT_TIME
			r.u32()
			r.u32()
		default:
			r.fail()
		}
	}
	return sa
}

// checkName validates a name a client wants to create or remove.
func checkName(name string) uint32 {
	switch {
	case len(name) > 255:
		return nfsErrNameTooLong
	case name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return nfsErrInval
	}
	return nfsOK
}

func (s *Server) getattr(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	if r.err != nil {
		return 0
	}
	_, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	putAttr(w, s.withOpenSize(a))
	return nfsOK
}

// withOpenSize reports the size of an open file as the file sees it: a
// write past the end just grew it.
func (s *Server) withOpenSize(a ovsfs.Attr) ovsfs.Attr {
	s.files.mu.Lock()
	of, ok := s.files.files[a.Ino]
	s.files.mu.Unlock()
	if ok && !a.IsDir() {
		a.Size = of.f.Size()
	}
	return a
}

func (s *Server) setattr(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	sa := readSattr(r)
	guard := r.bool()
	var gsec, gnsec uint32
	if guard {
		gsec, gnsec = r.u32(), r.u32()
	}
	if r.err != nil {
		return 0
	}
	p, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	if guard && (uint32(a.ModTime.Unix()) != gsec || uint32(a.ModTime.Nanosecond()) != gnsec) {
		return nfsErrNotSync
	}
	if sa.sizeSet {
		switch {
		case a.IsDir():
			return nfsErrIsDir
		case a.ReadOnly:
			return nfsErrROFS
		case sa.size > 1<<62:
			return nfsErrFBig
		}
		// The open file is synced and closed first, so that nothing
		// it caches outlives the new size.
		s.files.drop(ctx, a.Ino)
		if err := s.tree.Truncate(ctx, p, int64(sa.size)); err != nil {
			return status(err)
		}
	}
	w.u32(0) // pre_op_attr absent
	a2, err := s.tree.Stat(ctx, p)
	putPostAttr(w, a2, err == nil)
	return nfsOK
}

// lookupPath resolves a name in a directory, with "." and "..".
func (s *Server) lookupPath(ctx context.Context, dirh []byte, name string) (dir, p string, da ovsfs.Attr, st uint32) {
	dir, da, err := s.resolve(ctx, dirh)
	if err != nil {
		return "", "", da, status(err)
	}
	if !da.IsDir() {
		return "", "", da, nfsErrNotDir
	}
	switch {
	case name == ".":
		return dir, dir, da, nfsOK
	case name == "..":
		return dir, clean(path.Dir("/" + dir)), da, nfsOK
	case len(name) > 255:
		return "", "", da, nfsErrNameTooLong
	case name == "" || strings.ContainsAny(name, "/\x00"):
		return "", "", da, nfsErrNoEnt
	}
	return dir, join(dir, name), da, nfsOK
}

// entryPath is the path of name in directory dirh for a call that
// creates or removes it: the name is checked first, then the directory.
func (s *Server) entryPath(ctx context.Context, dirh []byte, name string) (string, uint32) {
	if st := checkName(name); st != nfsOK {
		return "", st
	}
	_, p, _, st := s.lookupPath(ctx, dirh, name)
	return p, st
}

func (s *Server) lookup(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	name := r.string(1024)
	if r.err != nil {
		return 0
	}
	_, p, da, st := s.lookupPath(ctx, h, name)
	if st != nfsOK {
		return st
	}
	a, err := s.tree.Stat(ctx, p)
	if err != nil {
		return status(err)
	}
	s.handles.put(a.Ino, p)
	w.opaque(makeHandle(a.Ino))
	putPostAttr(w, s.withOpenSize(a), true)
	putPostAttr(w, da, true)
	return nfsOK
}

// ACCESS bits.
const (
	accessRead    = 0x01
	accessLookup  = 0x02
	accessModify  = 0x04
	accessExtend  = 0x08
	accessDelete  = 0x10
	accessExecute = 0x20
)

func (s *Server) access(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	want := r.u32()
	if r.err != nil {
		return 0
	}
	_, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	allowed := want & (accessRead | accessLookup | accessModify | accessExtend | accessDelete | accessExecute)
	if a.ReadOnly {
		allowed &^= accessModify | accessExtend | accessDelete
	}
	putPostAttr(w, a, true)
	w.u32(allowed)
	return nfsOK
}

func (s *Server) read(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	off := r.u64()
	count := r.u32()
	if r.err != nil {
		return 0
	}
	if off > 1<<62 {
		return nfsErrInval
	}
	of, st := s.openHandle(ctx, h, false)
	if st != nfsOK {
		return st
	}
	a := of.attr
	defer s.files.put(a.Ino, of)
	buf := make([]byte, min(count, maxIO))
	n, err := of.f.ReadAt(ctx, buf, int64(off))
	eof := errors.Is(err, io.EOF)
	if err != nil && !eof {
		return status(err)
	}
	a.Size = of.f.Size()
	if int64(off)+int64(n) >= a.Size {
		eof = true
	}
	putPostAttr(w, a, true)
	w.u32(uint32(n))
	w.bool(eof)
	w.opaque(buf[:n])
	return nfsOK
}

// openHandle returns the open file a READ or WRITE handle names: the
// cached one without asking the Tree (the hot path), or else resolved and
// opened.
func (s *Server) openHandle(ctx context.Context, h []byte, writable bool) (*openFile, uint32) {
	ino, err := parseHandle(h)
	if err != nil {
		return nil, status(err)
	}
	if of, ok := s.files.cached(ino, writable); ok {
		return of, nfsOK
	}
	p, a, err := s.resolve(ctx, h)
	if err != nil {
		return nil, status(err)
	}
	switch {
	case a.IsDir():
		return nil, nfsErrIsDir
	case writable && a.ReadOnly:
		return nil, nfsErrROFS
	}
	of, err := s.files.get(ctx, a, p, writable)
	if err != nil {
		return nil, status(err)
	}
	return of, nfsOK
}

// stable_how values of WRITE.
const (
	unstable = 0
	fileSync = 2
)

func (s *Server) write(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	off := r.u64()
	count := r.u32()
	how := r.u32()
	data := r.opaque(maxIO)
	if r.err != nil {
		return 0
	}
	if how > fileSync {
		r.fail()
		return 0
	}
	if off > 1<<62 {
		return nfsErrFBig
	}
	if int(count) < len(data) {
		data = data[:count]
	}
	of, st := s.openHandle(ctx, h, true)
	if st != nfsOK {
		return st
	}
	a := of.attr
	defer s.files.put(a.Ino, of)
	n, err := of.f.WriteAt(ctx, data, int64(off))
	if err != nil {
		return status(err)
	}
	committed := uint32(unstable)
	if how == unstable {
		s.files.markDirty(of)
	} else {
		// DATA_SYNC and FILE_SYNC: durable before the reply, and the
		// reply says FILE_SYNC (Sync covers the metadata too).
		if err := of.f.Sync(ctx); err != nil {
			s.files.markDirty(of)
			return status(err)
		}
		committed = fileSync
	}
	a.Size = of.f.Size()
	w.u32(0) // pre_op_attr absent
	putPostAttr(w, a, true)
	w.u32(uint32(n))
	w.u32(committed)
	w.fixed(s.verf[:])
	return nfsOK
}

// CREATE modes.
const (
	createUnchecked = 0
	createGuarded   = 1
	createExclusive = 2
)

func (s *Server) create(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	dirh := r.opaque(maxHandle)
	name := r.string(1024)
	how := r.u32()
	var sa sattr3
	var verf [8]byte
	switch how {
	case createUnchecked, createGuarded:
		sa = readSattr(r)
	case createExclusive:
		copy(verf[:], r.fixed(8))
	default:
		r.fail()
	}
	if r.err != nil {
		return 0
	}
	p, st := s.entryPath(ctx, dirh, name)
	if st != nfsOK {
		return st
	}
	a, err := s.tree.Create(ctx, p)
	switch {
	case err == nil:
		if how == createExclusive {
			s.excl.put(p, verf)
		}
	case errors.Is(err, fs.ErrExist) && how == createUnchecked,
		errors.Is(err, fs.ErrExist) && how == createExclusive && s.excl.matches(p, verf):
		// UNCHECKED opens what is there; an EXCLUSIVE retransmission
		// (same verifier) gets the file it made.
		if a, err = s.tree.Stat(ctx, p); err != nil {
			return status(err)
		}
		if a.IsDir() {
			return nfsErrIsDir
		}
	default:
		return status(err)
	}
	if sa.sizeSet && uint64(a.Size) != sa.size {
		s.files.drop(ctx, a.Ino)
		if err := s.tree.Truncate(ctx, p, int64(sa.size)); err != nil {
			return status(err)
		}
		if a, err = s.tree.Stat(ctx, p); err != nil {
			return status(err)
		}
	}
	s.handles.put(a.Ino, p)
	w.bool(true)
	w.opaque(makeHandle(a.Ino))
	putPostAttr(w, a, true)
	w.u32(0) // dir wcc: pre and post absent
	w.u32(0)
	return nfsOK
}

func (s *Server) mkdir(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	dirh := r.opaque(maxHandle)
	name := r.string(1024)
	readSattr(r)
	if r.err != nil {
		return 0
	}
	p, st := s.entryPath(ctx, dirh, name)
	if st != nfsOK {
		return st
	}
	a, err := s.tree.Mkdir(ctx, p)
	if err != nil {
		return status(err)
	}
	s.handles.put(a.Ino, p)
	w.bool(true)
	w.opaque(makeHandle(a.Ino))
	putPostAttr(w, a, true)
	w.u32(0)
	w.u32(0)
	return nfsOK
}

func (s *Server) remove(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	return s.removeEntry(ctx, r, w, false)
}

func (s *Server) rmdir(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	return s.removeEntry(ctx, r, w, true)
}

func (s *Server) removeEntry(ctx context.Context, r *xdrReader, w *xdrWriter, dir bool) uint32 {
	dirh := r.opaque(maxHandle)
	name := r.string(1024)
	if r.err != nil {
		return 0
	}
	p, st := s.entryPath(ctx, dirh, name)
	if st != nfsOK {
		return st
	}
	a, err := s.tree.Stat(ctx, p)
	if err != nil {
		return status(err)
	}
	switch {
	case dir && !a.IsDir():
		return nfsErrNotDir
	case !dir && a.IsDir():
		return nfsErrIsDir
	}
	s.files.drop(ctx, a.Ino)
	if err := s.tree.Remove(ctx, p); err != nil {
		return status(err)
	}
	s.handles.forget(a.Ino)
	w.u32(0)
	w.u32(0)
	return nfsOK
}

func (s *Server) rename(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	fromh := r.opaque(maxHandle)
	fromName := r.string(1024)
	toh := r.opaque(maxHandle)
	toName := r.string(1024)
	if r.err != nil {
		return 0
	}
	if st := checkName(fromName); st != nfsOK {
		return st
	}
	if st := checkName(toName); st != nfsOK {
		return st
	}
	_, from, _, st := s.lookupPath(ctx, fromh, fromName)
	if st != nfsOK {
		return st
	}
	_, to, _, st := s.lookupPath(ctx, toh, toName)
	if st != nfsOK {
		return st
	}
	a, err := s.tree.Stat(ctx, from)
	if err != nil {
		return status(err)
	}
	s.files.drop(ctx, a.Ino)
	if old, err := s.tree.Stat(ctx, to); err == nil {
		s.files.drop(ctx, old.Ino)
		defer s.handles.forget(old.Ino)
	}
	if err := s.tree.Rename(ctx, from, to); err != nil {
		return status(err)
	}
	s.handles.put(a.Ino, to)
	for range 4 { // fromdir and todir wcc_data, absent
		w.u32(0)
	}
	return nfsOK
}

// Directory cookies are the inode number of the last entry returned, so a
// listing resumes after that entry even if others were added or removed
// meanwhile; the cookie verifier is unused (all zeros), as RFC 1813
// allows.
func (s *Server) readdir(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	cookie := r.u64()
	r.fixed(8)
	count := r.u32()
	if r.err != nil {
		return 0
	}
	return s.listDir(ctx, h, cookie, count, count, false, w)
}

func (s *Server) readdirplus(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	cookie := r.u64()
	r.fixed(8)
	dircount := r.u32()
	maxcount := r.u32()
	if r.err != nil {
		return 0
	}
	return s.listDir(ctx, h, cookie, dircount, maxcount, true, w)
}

const (
	fattrSize = 84
	// reply overhead: status, post_op_attr, verifier, end of list, eof.
	dirReplyOverhead = 4 + 4 + fattrSize + 8 + 4 + 4
)

func (s *Server) listDir(ctx context.Context, h []byte, cookie uint64, dircount, maxcount uint32, plus bool, w *xdrWriter) uint32 {
	p, da, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	if !da.IsDir() {
		return nfsErrNotDir
	}
	entries, err := s.tree.ReadDir(ctx, p)
	if err != nil {
		return status(err)
	}
	start := 0
	if cookie != 0 {
		start = -1
		for i, e := range entries {
			if e.Ino == cookie {
				start = i + 1
				break
			}
		}
		if start < 0 {
			return nfsErrBadCookie
		}
	}
	putPostAttr(w, da, true)
	w.fixed(make([]byte, 8)) // cookie verifier
	size, dsize := dirReplyOverhead, 0
	n := 0
	i := start
	for ; i < len(entries); i++ {
		e := entries[i]
		nameLen := (len(e.Name) + 3) &^ 3
		entry := 4 + 8 + 4 + nameLen + 8
		dentry := 8 + 4 + nameLen + 8
		if plus {
			entry += 4 + fattrSize + 4 + 4 + handleLen
		}
		if size+entry > int(maxcount) || (plus && dsize+dentry > int(dircount)) {
			break
		}
		size += entry
		dsize += dentry
		n++
		ep := join(p, e.Name)
		s.handles.put(e.Ino, ep)
		w.bool(true)
		w.u64(e.Ino)
		w.string(e.Name)
		w.u64(e.Ino) // cookie
		if plus {
			putPostAttr(w, s.withOpenSize(e), true)
			w.bool(true)
			w.opaque(makeHandle(e.Ino))
		}
	}
	if n == 0 && i < len(entries) {
		return nfsErrTooSmall
	}
	w.bool(false)
	w.bool(i >= len(entries))
	return nfsOK
}

// statFSer is what a Tree may also implement to report capacity in FSSTAT.
type statFSer interface {
	StatFS(ctx context.Context) (total, free int64, err error)
}

func (s *Server) fsstat(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	if r.err != nil {
		return 0
	}
	_, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	// Without StatFS, say 1 PiB free: vdisks are thin and the backend's
	// capacity is not this host's to know.
	total, free := int64(1<<50), int64(1<<50)
	if sf, ok := s.tree.(statFSer); ok {
		if t, f, err := sf.StatFS(ctx); err == nil {
			total, free = t, f
		}
	}
	putPostAttr(w, a, true)
	w.u64(uint64(total))
	w.u64(uint64(free))
	w.u64(uint64(free))
	w.u64(1 << 32) // files: no limit of their own
	w.u64(1 << 32)
	w.u64(1 << 32)
	w.u32(0) // invarsec
	return nfsOK
}

func (s *Server) fsinfo(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	if r.err != nil {
		return 0
	}
	_, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	putPostAttr(w, a, true)
	w.u32(maxIO)    // rtmax
	w.u32(maxIO)    // rtpref
	w.u32(4096)     // rtmult
	w.u32(maxIO)    // wtmax
	w.u32(maxIO)    // wtpref
	w.u32(4096)     // wtmult
	w.u32(64 << 10) // dtpref
	w.u64(1 << 62)  // maxfilesize
	w.u32(0)        // time_delta: 1 ns
	w.u32(1)
	w.u32(0x08) // FSF3_HOMOGENEOUS; no links, no symlinks, times not settable
	return nfsOK
}

func (s *Server) pathconf(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	if r.err != nil {
		return 0
	}
	_, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	putPostAttr(w, a, true)
	w.u32(1)      // linkmax
	w.u32(255)    // name_max
	w.bool(true)  // no_trunc
	w.bool(true)  // chown_restricted
	w.bool(false) // case_insensitive
	w.bool(true)  // case_preserving
	return nfsOK
}

func (s *Server) commit(ctx context.Context, r *xdrReader, w *xdrWriter) uint32 {
	h := r.opaque(maxHandle)
	r.u64() // offset and count: Sync covers the whole file
	r.u32()
	if r.err != nil {
		return 0
	}
	_, a, err := s.resolve(ctx, h)
	if err != nil {
		return status(err)
	}
	if a.IsDir() {
		return nfsErrIsDir
	}
	if err := s.files.sync(ctx, a.Ino); err != nil {
		return status(err)
	}
	w.u32(0) // pre_op_attr absent
	putPostAttr(w, s.withOpenSize(a), true)
	w.fixed(s.verf[:])
	return nfsOK
}
