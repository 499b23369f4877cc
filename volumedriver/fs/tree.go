// Package fs is the file frontend: the vpool seen as a tree of files, each
// vdisk a NAME.raw file at the root, its snapshots read-only under
// .snapshots/NAME/SNAP.raw, and small non-vdisk files (a hypervisor's VM
// configs) kept in the cluster's store. The FUSE mount and the NFS export
// both serve one Tree, so the two show the same files with the same
// semantics; they differ only in how they speak to the kernel or the client.
package fs

import (
	"context"
	"time"
)

// Tree is the vpool as files. Paths are slash-separated and relative to the
// root ("" is the root; a leading "/" is allowed). Every method may block on
// the cluster and honours ctx.
//
// Errors carry their meaning for errors.Is, so that each frontend can map
// them onto its errno or NFS status: io/fs's ErrNotExist, ErrExist,
// ErrPermission and ErrInvalid, or a syscall.Errno (ENOTEMPTY, EBUSY for a
// vdisk that still has clones, EROFS for a snapshot, EISDIR, ENOTDIR,
// ENOSPC, EFBIG, EIO) wrapped with context.
type Tree interface {
	// Stat describes the entry at path.
	Stat(ctx context.Context, path string) (Attr, error)
	// ReadDir lists a directory, sorted by name.
	ReadDir(ctx context.Context, path string) ([]Attr, error)
	// Mkdir makes a directory (for small files; not under .snapshots).
	Mkdir(ctx context.Context, path string) (Attr, error)
	// Create makes an empty regular file and fails with ErrExist if the
	// name is taken. A NAME.raw at the root is a thin vdisk of size 0;
	// any other name is a small file.
	Create(ctx context.Context, path string) (Attr, error)
	// Open opens a regular file for I/O; writable is refused (EROFS) for
	// snapshots.
	Open(ctx context.Context, path string, writable bool) (File, error)
	// Truncate sets a regular file's size; a vdisk grows thin, and
	// shrinking a vdisk is refused (EINVAL) because it would drop data a
	// snapshot or clone may still refer to.
	Truncate(ctx context.Context, path string, size int64) error
	// Remove deletes a file or an empty directory. A vdisk with clones is
	// refused with EBUSY; snapshots are removed with ovs snapshot delete.
	Remove(ctx context.Context, path string) error
	// Rename moves an entry. Renaming NAME.raw to OTHER.raw renames the
	// vdisk; a vdisk cannot leave the root or lose its .raw suffix.
	Rename(ctx context.Context, from, to string) error
	// Resolve returns the path of the entry with inode number ino, for
	// frontends whose clients keep handles (NFS) across server restarts.
	Resolve(ctx context.Context, ino uint64) (string, error)
}

// Kind is what an entry of the tree stands for.
type Kind uint8

const (
	KindDir      Kind = iota + 1 // a directory (the root, .snapshots, or a user's)
	KindVDisk                    // NAME.raw at the root: a vdisk
	KindSnapshot                 // .snapshots/NAME/SNAP.raw: a read-only snapshot
	KindFile                     // a small file kept in the cluster's store
)

// Attr describes one entry.
type Attr struct {
	Name    string // the last path element ("" for the root)
	Kind    Kind
	Ino     uint64 // stable across restarts and across nodes; never 0
	Size    int64
	ModTime time.Time
	// ReadOnly entries refuse writes (snapshots, .snapshots itself).
	ReadOnly bool
}

// IsDir reports whether the entry is a directory.
func (a Attr) IsDir() bool { return a.Kind == KindDir }

// File is an open regular file. Its methods are safe for concurrent use.
type File interface {
	// ReadAt reads len(p) bytes at off; at the end of the file it returns
	// the bytes there are and io.EOF.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// WriteAt writes p at off. A write past the end grows the file (a
	// vdisk thin), so that cp and sequential writers work.
	WriteAt(ctx context.Context, p []byte, off int64) (int, error)
	// Sync makes every completed write to the file durable (fsync,
	// NFS COMMIT and FILE_SYNC writes).
	Sync(ctx context.Context) error
	// Punch discards a range, which then reads as zeros; the size stays.
	Punch(ctx context.Context, off, length int64) error
	// Size is the file's current size.
	Size() int64
	// Close releases the file; it does not imply Sync.
	Close() error
}
