package nfs

import (
	"context"
	"encoding/binary"
	"errors"
	"io/fs"
	"log/slog"
	"path"
	"sync"

	ovsfs "github.com/ovs-storage/ovs/volumedriver/fs"
)

// A file handle is 16 bytes: a magic that names the format and its version,
// then the inode number. Nothing in it depends on this process, so a
// handle a client got before a restart still resolves (Tree.Resolve).
const (
	handleMagic = 0x4f565331 // "OVS1"
	handleLen   = 16
	maxHandle   = 64 // NFS3_FHSIZE
)

var (
	errBadHandle = errors.New("nfs: not a handle of this server")
	errStale     = errors.New("nfs: stale handle")
)

func makeHandle(ino uint64) []byte {
	h := make([]byte, handleLen)
	binary.BigEndian.PutUint32(h, handleMagic)
	binary.BigEndian.PutUint64(h[8:], ino)
	return h
}

func parseHandle(h []byte) (uint64, error) {
	if len(h) != handleLen || binary.BigEndian.Uint32(h) != handleMagic ||
		binary.BigEndian.Uint32(h[4:]) != 0 {
		return 0, errBadHandle
	}
	ino := binary.BigEndian.Uint64(h[8:])
	if ino == 0 {
		return 0, errBadHandle
	}
	return ino, nil
}

// handleCache remembers the path of inodes this server has handed out.
// It is only a shortcut: every hit is checked with Stat (a rename or a
// removal through another frontend makes it wrong), and a miss or a wrong
// entry falls back to Tree.Resolve, so forgetting costs a lookup, never a
// stale handle.
type handleCache struct {
	mu    sync.Mutex
	paths map[uint64]string
}

const maxCachedPaths = 1 << 16

func newHandleCache() *handleCache { return &handleCache{paths: map[uint64]string{}} }

func (c *handleCache) put(ino uint64, p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.paths) >= maxCachedPaths {
		// Dropping all is simpler than an LRU and costs a Resolve each.
		c.paths = map[uint64]string{}
	}
	c.paths[ino] = p
}

func (c *handleCache) get(ino uint64) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.paths[ino]
	return p, ok
}

func (c *handleCache) forget(ino uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.paths, ino)
}

// resolve finds the path and attributes of the entry a handle names.
func (s *Server) resolve(ctx context.Context, h []byte) (string, ovsfs.Attr, error) {
	ino, err := parseHandle(h)
	if err != nil {
		return "", ovsfs.Attr{}, err
	}
	if p, ok := s.handles.get(ino); ok {
		a, err := s.tree.Stat(ctx, p)
		if err == nil && a.Ino == ino {
			return p, a, nil
		}
		s.handles.forget(ino)
	}
	p, err := s.tree.Resolve(ctx, ino)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", ovsfs.Attr{}, errStale
		}
		return "", ovsfs.Attr{}, err
	}
	p = clean(p)
	a, err := s.tree.Stat(ctx, p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", ovsfs.Attr{}, errStale
		}
		return "", ovsfs.Attr{}, err
	}
	if a.Ino != ino {
		return "", ovsfs.Attr{}, errStale
	}
	s.handles.put(ino, p)
	return p, a, nil
}

// clean makes a Tree path canonical: no leading slash, "" for the root.
func clean(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return ""
	}
	return p[1:]
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// openFile is a Tree file kept open across requests: opening a vdisk per
// READ or WRITE would cost a cluster round trip each.
type openFile struct {
	f        ovsfs.File
	attr     ovsfs.Attr // as of the open; Size comes from f
	writable bool
	dirty    bool // took UNSTABLE writes not yet synced; guarded by fileCache.mu
	refs     int
	used     uint64
}

// fileCache holds open files by inode, about max of them. A file with
// UNSTABLE writes not yet synced is only closed after a successful Sync,
// so a COMMIT that finds no open file has nothing left to sync, and a
// failed Sync stays visible to the next COMMIT.
type fileCache struct {
	tree  ovsfs.Tree
	log   *slog.Logger
	max   int
	mu    sync.Mutex
	files map[uint64]*openFile
	clock uint64
}

func newFileCache(tree ovsfs.Tree, max int, log *slog.Logger) *fileCache {
	return &fileCache{tree: tree, max: max, log: log, files: map[uint64]*openFile{}}
}

// get returns the open file for ino (opening p if needed); release it with
// put.
func (c *fileCache) get(ctx context.Context, attr ovsfs.Attr, p string, writable bool) (*openFile, error) {
	ino := attr.Ino
	c.mu.Lock()
	c.clock++
	if of, ok := c.files[ino]; ok && (of.writable || !writable) {
		of.refs++
		of.used = c.clock
		c.mu.Unlock()
		return of, nil
	}
	c.mu.Unlock()

	f, err := c.tree.Open(ctx, p, writable)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if of, ok := c.files[ino]; ok && (of.writable || !writable) {
		// Another request opened it meanwhile.
		of.refs++
		of.used = c.clock
		c.mu.Unlock()
		c.closeQuiet(f)
		return of, nil
	}
	var replaced *openFile
	if old, ok := c.files[ino]; ok && old.refs == 0 && !old.dirty {
		// A read-only open superseded by a writable one.
		delete(c.files, ino)
		replaced = old
	}
	of := &openFile{f: f, attr: attr, writable: writable, refs: 1, used: c.clock}
	if _, taken := c.files[ino]; !taken {
		c.files[ino] = of
	}
	victim, victimIno := c.victimLocked()
	c.mu.Unlock()
	if replaced != nil {
		c.closeQuiet(replaced.f)
	}
	if victim != nil {
		c.retire(ctx, victimIno, victim)
	}
	return of, nil
}

// cached returns ino's open file if there is one that fits (writable if
// asked), with a reference for put. READ and WRITE use it to skip
// resolving the handle: an open file stays usable whatever happens to its
// name.
func (c *fileCache) cached(ino uint64, writable bool) (*openFile, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	of, ok := c.files[ino]
	if !ok || (writable && !of.writable) {
		return nil, false
	}
	c.clock++
	of.refs++
	of.used = c.clock
	return of, true
}

// put releases a file from get. A file that never made it into the cache
// (its slot was busy) is closed by its last user.
func (c *fileCache) put(ino uint64, of *openFile) {
	c.mu.Lock()
	of.refs--
	orphan := of.refs == 0 && c.files[ino] != of
	c.mu.Unlock()
	if orphan {
		c.retire(context.Background(), ino, of)
	}
}

// victimLocked picks, when the cache is over its size, the least recently
// used idle file and takes a reference on it for retire.
func (c *fileCache) victimLocked() (*openFile, uint64) {
	if len(c.files) <= c.max {
		return nil, 0
	}
	var v *openFile
	var vino uint64
	for ino, of := range c.files {
		if of.refs == 0 && (v == nil || of.used < v.used) {
			v, vino = of, ino
		}
	}
	if v != nil {
		v.refs++
	}
	return v, vino
}

// retire syncs of if dirty, then closes it and drops it from the cache if
// nobody took it meanwhile. A failed Sync keeps it, dirty, for COMMIT to
// report.
func (c *fileCache) retire(ctx context.Context, ino uint64, of *openFile) {
	c.mu.Lock()
	dirty := of.dirty
	of.dirty = false
	c.mu.Unlock()
	if dirty {
		if err := of.f.Sync(ctx); err != nil {
			c.log.Warn("nfs: sync before close", "ino", ino, "err", err)
			c.mu.Lock()
			of.dirty = true
			cached := c.files[ino] == of
			if cached {
				of.refs--
			}
			c.mu.Unlock()
			if cached {
				return
			}
			// Not cached any more (superseded): nobody could COMMIT it
			// again, so close it; the warning above is all that is left.
		}
	}
	c.mu.Lock()
	if c.files[ino] == of {
		of.refs--
		if of.refs > 0 || of.dirty {
			c.mu.Unlock()
			return
		}
		delete(c.files, ino)
	}
	c.mu.Unlock()
	c.closeQuiet(of.f)
}

func (c *fileCache) closeQuiet(f ovsfs.File) {
	if err := f.Close(); err != nil {
		c.log.Warn("nfs: close", "err", err)
	}
}

// markDirty records an UNSTABLE write.
func (c *fileCache) markDirty(of *openFile) {
	c.mu.Lock()
	of.dirty = true
	c.mu.Unlock()
}

// sync makes ino's writes durable: it syncs its open file. With no open
// file there is nothing unsynced (retire syncs before it closes).
func (c *fileCache) sync(ctx context.Context, ino uint64) error {
	c.mu.Lock()
	of, ok := c.files[ino]
	if ok {
		of.refs++
		of.dirty = false
	}
	c.mu.Unlock()
	if !ok {
		return nil
	}
	defer c.put(ino, of)
	if err := of.f.Sync(ctx); err != nil {
		c.markDirty(of)
		return err
	}
	return nil
}

// drop takes ino's open file out of the cache before a remove, rename or
// truncate, so no later READ or WRITE finds it by inode; it is synced if
// dirty and closed now, or by its last user (put).
func (c *fileCache) drop(ctx context.Context, ino uint64) {
	c.mu.Lock()
	of, ok := c.files[ino]
	if ok {
		delete(c.files, ino)
		of.refs++
	}
	c.mu.Unlock()
	if ok {
		c.put(ino, of)
	}
}

// closeAll syncs and closes every file (server shutdown).
func (c *fileCache) closeAll(ctx context.Context) error {
	c.mu.Lock()
	files := c.files
	c.files = map[uint64]*openFile{}
	c.mu.Unlock()
	var first error
	for ino, of := range files {
		var err error
		if of.dirty {
			err = of.f.Sync(ctx)
		}
		if cerr := of.f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			c.log.Warn("nfs: closing file", "ino", ino, "err", err)
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// exclusiveCreates remembers the verifier of each EXCLUSIVE CREATE so that
// a retransmitted CREATE succeeds while another client's fails with EXIST.
// The Tree has no attribute to keep it in, so it lives here and is lost on
// restart: a retransmission that spans a restart gets EXIST.
type exclusiveCreates struct {
	mu sync.Mutex
	m  map[string][8]byte
}

func newExclusiveCreates() *exclusiveCreates {
	return &exclusiveCreates{m: map[string][8]byte{}}
}

func (e *exclusiveCreates) put(p string, v [8]byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.m) > 4096 {
		e.m = map[string][8]byte{}
	}
	e.m[p] = v
}

func (e *exclusiveCreates) matches(p string, v [8]byte) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	old, ok := e.m[p]
	return ok && old == v
}
