// Package fusefs mounts an fs.Tree (the vpool as files) with FUSE, so
// that a hypervisor, a loop device or qemu can use each vdisk as a file.
//
// Caching: vdisk and snapshot files are opened with FOPEN_DIRECT_IO, so the
// kernel keeps no page cache of them: every read and write goes to the
// volume driver (which has its own read cache), a write is in the driver
// when write(2) returns, fsync is a flush of the vdisk, and a write made
// through another node is seen by the next read here. That is also what
// qemu's cache=none and O_DIRECT openers want (O_DIRECT works). Small files
// use the page cache, dropped at every open (no FOPEN_KEEP_CACHE). Entries
// and the attributes of other files are cached for one second (a file
// created or removed through another node shows here within that); a
// vdisk file's attributes are not cached (see attrTimeout).
package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	vfs "github.com/ovs-storage/ovs/volumedriver/fs"
)

// CacheTimeout is how long the kernel trusts an entry or attribute.
const CacheTimeout = time.Second

// MaxWrite is the largest write the kernel sends at once.
const MaxWrite = 1 << 20

// Errno maps an error of the Tree onto the errno a FUSE reply carries.
func Errno(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, iofs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, iofs.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, iofs.ErrPermission):
		return syscall.EPERM
	case errors.Is(err, iofs.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	}
	return syscall.EIO
}

// Mount is a mounted tree.
type Mount struct {
	dir    string
	server *fuse.Server
	log    *slog.Logger
}

// Options tune a mount.
type Options struct {
	Logger *slog.Logger
	Debug  bool
}

// Start mounts tree at dir. A stale mount left at dir by a process that
// died (ENOTCONN) is lazily unmounted first.
func Start(dir string, tree vfs.Tree, opts Options) (*Mount, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	CleanStale(dir, log)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mount point %s: %w", dir, err)
	}
	timeout := CacheTimeout
	neg := time.Duration(0) // a name created elsewhere shows at once
	m := &Mount{dir: dir, log: log}
	root := &node{m: m, tree: tree}
	mo := fuse.MountOptions{
		FsName:        "ovs",
		Name:          "ovs",
		MaxWrite:      MaxWrite,
		MaxReadAhead:  MaxWrite,
		MaxBackground: 64,
		DisableXAttrs: true,
		// Reads are served from our buffers; splicing 1 MiB plus the header
		// does not fit a pipe and only logs.
		DisableSplice: true,
		// Root mounts for every user (qemu runs as its own user).
		AllowOther:        os.Geteuid() == 0,
		Debug:             opts.Debug,
		ExtraCapabilities: fuse.CAP_DIRECT_IO_ALLOW_MMAP,
	}
	srv, err := gofs.Mount(dir, root, &gofs.Options{
		MountOptions: mo,
		EntryTimeout: &timeout,
		// No AttrTimeout: go-fuse would put it in place of every 0 we
		// reply, and a vdisk file's 0 (see attrTimeout) must stay 0.
		// Every reply with attributes sets its own timeout.
		NegativeTimeout: &neg,
		UID:             uint32(os.Getuid()),
		GID:             uint32(os.Getgid()),
	})
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	m.server = srv
	log.Info("vpool mounted", "dir", dir)
	return m, nil
}

// Dir is where the tree is mounted.
func (m *Mount) Dir() string { return m.dir }

// Close unmounts; if the mount is busy, it is detached lazily (it goes
// once its last user does).
func (m *Mount) Close() error {
	var err error
	for range 5 {
		if err = m.server.Unmount(); err == nil {
			m.log.Info("vpool unmounted", "dir", m.dir)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.log.Warn("the mount is busy; detaching it lazily", "dir", m.dir, "err", err)
	if lerr := lazyUnmount(m.dir); lerr != nil {
		return fmt.Errorf("unmount %s: %w (lazy: %v)", m.dir, err, lerr)
	}
	return nil
}

// CleanStale lazily unmounts a dead FUSE mount at dir (the process that
// served it died: every access fails with ENOTCONN).
func CleanStale(dir string, log *slog.Logger) {
	_, err := os.Stat(dir)
	if err == nil || !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.EIO) {
		return
	}
	log.Warn("a stale mount is in the way (its server died); unmounting it", "dir", dir, "err", err)
	if err := lazyUnmount(dir); err != nil {
		log.Error("could not unmount the stale mount", "dir", dir, "err", err)
	}
}

func lazyUnmount(dir string) error {
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err == nil {
		return nil
	}
	out, err := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u -z %s: %w: %s", dir, err, out)
	}
	return nil
}

// uninterrupted: a signal to the calling process makes the kernel
// interrupt its FUSE request (go-fuse cancels the context). A create,
// rename or write cut short there would fail with EINTR, which qemu-img
// and most programs do not retry for open or write on a file, so requests
// run to the end like on a local disk.
func uninterrupted(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

// --- nodes

type node struct {
	gofs.Inode
	m    *Mount
	tree vfs.Tree
}

var (
	_ gofs.NodeLookuper  = (*node)(nil)
	_ gofs.NodeGetattrer = (*node)(nil)
	_ gofs.NodeSetattrer = (*node)(nil)
	_ gofs.NodeReaddirer = (*node)(nil)
	_ gofs.NodeMkdirer   = (*node)(nil)
	_ gofs.NodeCreater   = (*node)(nil)
	_ gofs.NodeOpener    = (*node)(nil)
	_ gofs.NodeUnlinker  = (*node)(nil)
	_ gofs.NodeRmdirer   = (*node)(nil)
	_ gofs.NodeRenamer   = (*node)(nil)
	_ gofs.NodeStatfser  = (*node)(nil)
)

func (n *node) path() string { return n.Path(nil) }

func (n *node) child(name string) string {
	if p := n.path(); p != "" {
		return p + "/" + name
	}
	return name
}

func mode(a vfs.Attr) uint32 {
	switch {
	case a.IsDir() && a.ReadOnly:
		return syscall.S_IFDIR | 0o555
	case a.IsDir():
		return syscall.S_IFDIR | 0o755
	case a.ReadOnly:
		return syscall.S_IFREG | 0o444
	}
	return syscall.S_IFREG | 0o644
}

func fill(a vfs.Attr, out *fuse.Attr) {
	out.Ino = a.Ino
	out.Mode = mode(a)
	out.Size = uint64(a.Size)
	out.Blocks = (uint64(a.Size) + 511) / 512
	out.Blksize = 4096
	out.Nlink = 1
	if a.IsDir() {
		out.Nlink = 2
	}
	t := a.ModTime
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	out.SetTimes(&t, &t, &t)
	out.Owner = fuse.Owner{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
}

// attrTimeout: a vdisk file's attributes are not cached, because the
// kernel does not move a direct-I/O file's cached size when a write
// grows it (stat after cp would say 0), and because it may grow through
// another node.
func attrTimeout(a vfs.Attr) time.Duration {
	if a.Kind == vfs.KindVDisk {
		return 0
	}
	return CacheTimeout
}

func (n *node) newChild(ctx context.Context, a vfs.Attr, out *fuse.EntryOut) *gofs.Inode {
	ctx = uninterrupted(ctx)
	fill(a, &out.Attr)
	out.SetAttrTimeout(attrTimeout(a))
	return n.NewInode(ctx, &node{m: n.m, tree: n.tree}, gofs.StableAttr{Mode: mode(a) & syscall.S_IFMT, Ino: a.Ino})
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ctx = uninterrupted(ctx)
	a, err := n.tree.Stat(ctx, n.child(name))
	if err != nil {
		return nil, Errno(err)
	}
	return n.newChild(ctx, a, out), 0
}

func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx = uninterrupted(ctx)
	a, err := n.tree.Stat(ctx, n.path())
	if err != nil {
		return Errno(err)
	}
	// go-fuse hands in some open handle even for a stat by path. A
	// vdisk's Stat already counts this node's open file (its unsynced
	// growth) and what other nodes recorded since, which the handle's
	// own size would hide.
	if h, ok := fh.(*handle); ok && a.Kind != vfs.KindVDisk {
		a.Size = h.f.Size()
	}
	fill(a, &out.Attr)
	out.SetTimeout(attrTimeout(a))
	return 0
}

// Setattr changes the size (truncate, ftruncate); modes, owners and times
// are not kept and their changes are accepted as no-ops, so that cp -p and
// qemu-img do not fail on them.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	ctx = uninterrupted(ctx)
	if size, ok := in.GetSize(); ok {
		if err := n.tree.Truncate(ctx, n.path(), int64(size)); err != nil {
			return Errno(err)
		}
	}
	return n.Getattr(ctx, fh, out)
}

func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ctx = uninterrupted(ctx)
	list, err := n.tree.ReadDir(ctx, n.path())
	if err != nil {
		return nil, Errno(err)
	}
	ents := make([]fuse.DirEntry, 0, len(list))
	for _, a := range list {
		ents = append(ents, fuse.DirEntry{Name: a.Name, Ino: a.Ino, Mode: mode(a)})
	}
	return gofs.NewListDirStream(ents), 0
}

func (n *node) Mkdir(ctx context.Context, name string, _ uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ctx = uninterrupted(ctx)
	a, err := n.tree.Mkdir(ctx, n.child(name))
	if err != nil {
		return nil, Errno(err)
	}
	return n.newChild(ctx, a, out), 0
}

func openFlags(a vfs.Attr) uint32 {
	if a.Kind == vfs.KindVDisk || a.Kind == vfs.KindSnapshot {
		return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, _ uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	ctx = uninterrupted(ctx)
	p := n.child(name)
	a, err := n.tree.Create(ctx, p)
	if err != nil {
		return nil, nil, 0, Errno(err)
	}
	f, err := n.tree.Open(ctx, p, true)
	if err != nil {
		return nil, nil, 0, Errno(err)
	}
	return n.newChild(ctx, a, out), &handle{f: f}, openFlags(a), 0
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	ctx = uninterrupted(ctx)
	p := n.path()
	writable := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	a, err := n.tree.Stat(ctx, p)
	if err != nil {
		return nil, 0, Errno(err)
	}
	if flags&syscall.O_TRUNC != 0 && writable && a.Size != 0 {
		if err := n.tree.Truncate(ctx, p, 0); err != nil {
			return nil, 0, Errno(err)
		}
	}
	f, err := n.tree.Open(ctx, p, writable)
	if err != nil {
		return nil, 0, Errno(err)
	}
	return &handle{f: f}, openFlags(a), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	ctx = uninterrupted(ctx)
	return Errno(n.tree.Remove(ctx, n.child(name)))
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	ctx = uninterrupted(ctx)
	a, err := n.tree.Stat(ctx, n.child(name))
	if err != nil {
		return Errno(err)
	}
	if !a.IsDir() {
		return syscall.ENOTDIR
	}
	return Errno(n.tree.Remove(ctx, n.child(name)))
}

const (
	renameNoReplace = 1 // RENAME_NOREPLACE
	renameExchange  = 2 // RENAME_EXCHANGE
)

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	ctx = uninterrupted(ctx)
	if flags&renameExchange != 0 {
		return syscall.EINVAL
	}
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	to := np.child(newName)
	if flags&renameNoReplace != 0 {
		if _, err := n.tree.Stat(ctx, to); err == nil {
			return syscall.EEXIST
		}
	}
	return Errno(n.tree.Rename(ctx, n.child(name), to))
}

// Statfs: the vpool is thin and as large as the backend lets it be; df
// shows a large, mostly free filesystem rather than nothing.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	ctx = uninterrupted(ctx)
	const blocks = 1 << 34 // 64 TiB in 4 KiB blocks
	out.Bsize, out.Frsize = 4096, 4096
	out.Blocks, out.Bfree, out.Bavail = blocks, blocks, blocks
	out.Files, out.Ffree = 1<<32, 1<<32
	out.NameLen = 255
	return 0
}

// --- open files

type handle struct{ f vfs.File }

var (
	_ gofs.FileReader    = (*handle)(nil)
	_ gofs.FileWriter    = (*handle)(nil)
	_ gofs.FileFsyncer   = (*handle)(nil)
	_ gofs.FileFlusher   = (*handle)(nil)
	_ gofs.FileAllocater = (*handle)(nil)
	_ gofs.FileReleaser  = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	ctx = uninterrupted(ctx)
	n, err := h.f.ReadAt(ctx, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, Errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	ctx = uninterrupted(ctx)
	n, err := h.f.WriteAt(ctx, data, off)
	if err != nil {
		return 0, Errno(err)
	}
	return uint32(n), 0
}

func (h *handle) Fsync(ctx context.Context, _ uint32) syscall.Errno { return Errno(h.f.Sync(ctx)) }

// Flush (at every close(2)) does not sync: a close is not a durability
// point; the size goes to the store at the last release.
func (h *handle) Flush(context.Context) syscall.Errno { return 0 }

func (h *handle) Release(context.Context) syscall.Errno { return Errno(h.f.Close()) }

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Allocate: a punched hole (or a zeroed range) is a trim; a plain
// allocation only grows the file (a vdisk is thin, its space comes from
// the backend as it is written).
func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	ctx = uninterrupted(ctx)
	end := int64(off + size)
	switch mode &^ fallocKeepSize {
	case fallocPunchHole, fallocZeroRange:
		if mode&fallocPunchHole != 0 && mode&fallocKeepSize == 0 {
			return syscall.EOPNOTSUPP // PUNCH_HOLE must come with KEEP_SIZE
		}
		if err := h.f.Punch(ctx, int64(off), int64(size)); err != nil {
			return Errno(err)
		}
	case 0:
	default:
		return syscall.EOPNOTSUPP
	}
	if mode&fallocKeepSize == 0 && end > h.f.Size() {
		// Grow through a write of nothing at the end is not possible;
		// a one-byte write of zero at end-1 grows the file exactly.
		if _, err := h.f.WriteAt(ctx, []byte{0}, end-1); err != nil {
			return Errno(err)
		}
	}
	return 0
}
