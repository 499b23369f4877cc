package fs

import (
	"context"
	"errors"
	"time"
)

// VDisks is what the tree needs of the cluster's vdisks. The node
// implements it over its cluster-wide vdisk service and its router, so
// the tree on any node sees (and opens) every vdisk of the cluster.
// Errors are the volume driver's (volumedriver.ErrNotFound, ErrExists,
// ErrBusy, ErrInvalidArgument, ...) or io/fs's; the tree maps them.
type VDisks interface {
	List(ctx context.Context) ([]VDiskInfo, error)
	Info(ctx context.Context, name string) (VDiskInfo, error)
	// Create makes a thin vdisk of size bytes (a multiple of 512).
	Create(ctx context.Context, name string, size int64) (VDiskInfo, error)
	// Resize grows a vdisk to size bytes (a multiple of 512).
	Resize(ctx context.Context, name string, size int64) error
	// Delete removes a vdisk; one with clones is refused (ErrBusy).
	Delete(ctx context.Context, name string) error
	// Rename gives a vdisk a new name, crash safe.
	Rename(ctx context.Context, from, to string) error
	// Open opens a vdisk for I/O wherever it lives.
	Open(ctx context.Context, name string) (Device, error)
	Snapshots(ctx context.Context, name string) ([]SnapshotInfo, error)
	// OpenSnapshot opens a read-only view of the vdisk (name, namespace
	// id) as of snapshot.
	OpenSnapshot(ctx context.Context, name, id, snapshot string) (SnapshotDevice, error)
}

// VDiskInfo is what the tree uses of a vdisk.
type VDiskInfo struct {
	Name    string
	ID      string // stable: the backend namespace id
	Size    int64  // the vdisk's size (cluster/sector aligned)
	Created time.Time
}

// SnapshotInfo is one snapshot of a vdisk.
type SnapshotInfo struct {
	Name    string
	Created time.Time
}

// Device is an open vdisk.
type Device interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64) error
	Close() error
}

// SnapshotDevice is an open read-only snapshot view.
type SnapshotDevice interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	Close() error
}

// Store is the cluster's consistent KV (arakoon through the model): the
// tree keeps small files, directories and the exact byte size of vdisk
// files there, so every node sees them.
type Store interface {
	// Get returns key's value, or an error wrapping io/fs.ErrNotExist.
	Get(ctx context.Context, key string) ([]byte, error)
	// Range returns every entry whose key starts with prefix, in key order.
	Range(ctx context.Context, prefix string) ([]Entry, error)
	// Apply carries out ops atomically; a failed assert changes nothing
	// and returns an error wrapping ErrConflict.
	Apply(ctx context.Context, ops ...Op) error
}

// Entry is one key and its value.
type Entry struct {
	Key   string
	Value []byte
}

// OpKind is what an Op does.
type OpKind int

const (
	OpSet    OpKind = iota // set Key to Value
	OpDelete               // delete Key (absent is fine)
	OpAssert               // fail unless Key holds exactly Value (nil: absent)
)

// Op is one step of an atomic Apply.
type Op struct {
	Kind  OpKind
	Key   string
	Value []byte
}

// ErrConflict: an assert of Store.Apply failed.
var ErrConflict = errors.New("changed concurrently")

func opSet(k string, v []byte) Op    { return Op{Kind: OpSet, Key: k, Value: v} }
func opDel(k string) Op              { return Op{Kind: OpDelete, Key: k} }
func opAssert(k string, v []byte) Op { return Op{Kind: OpAssert, Key: k, Value: v} }
