package scos

import (
	"context"
	"errors"
	"os"
)

// Typed errors of every Backend. Implementations wrap them with context;
// callers test with errors.Is.
var (
	ErrObjectNotFound    = errors.New("object not found")
	ErrObjectExists      = errors.New("object already exists")
	ErrNamespaceNotFound = errors.New("namespace not found")
	ErrNamespaceExists   = errors.New("namespace already exists")
	ErrInvalidName       = errors.New("invalid namespace or object name")
	ErrCorrupt           = errors.New("object is corrupt")
	// ErrUnsupportedFormat: a file or message of a format version this
	// build does not understand.
	ErrUnsupportedFormat = errors.New("unsupported format version")
	// ErrFenced: this process no longer owns the namespace (the key its
	// fence asserts holds another value, e.g. a newer owner epoch), so the
	// mutation was refused and changed nothing.
	ErrFenced = errors.New("fenced: the namespace's owner key no longer holds this writer's value")
)

// Fence makes a namespace's mutations conditional: each commits only if,
// atomically with the commit, the KV key Key holds exactly Value (nil:
// Key is absent). In a cluster Key is the vdisk's owner record and Value
// this node's "node/epoch", so a node that lost the vdisk can make nothing
// visible in its namespace any more.
type Fence struct {
	Key   string
	Value []byte
}

// Fencer is implemented by backends that can fence a namespace.
//
// SetFence sets (nil f: removes) the fence of namespace ns. An operation
// keeps the fence it started with until it ends, so remove a fence only
// once the namespace's writers in this process have stopped. Backend
// maintenance (repair, rebalance, scrub, garbage collection) is never
// fenced: it preserves objects, whoever owns them.
type Fencer interface {
	SetFence(ns string, f *Fence)
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Name string
	Size int64
}

// Backend stores the objects of vdisks (SCOs, TLogs, volume metadata) in
// namespaces, one per vdisk. Objects are written whole and read in ranges.
// Every call honours its context.
type Backend interface {
	CreateNamespace(ctx context.Context, ns string) error
	// DeleteNamespace removes the namespace and every object in it.
	DeleteNamespace(ctx context.Context, ns string) error
	ListNamespaces(ctx context.Context) ([]string, error)
	NamespaceExists(ctx context.Context, ns string) (bool, error)

	// Put stores data as object name. Without overwrite an existing
	// object makes it fail with ErrObjectExists. A Put that returns nil is
	// durable; a Put that fails leaves either the old object or none.
	Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error
	// Get returns the whole object.
	Get(ctx context.Context, ns, name string) ([]byte, error)
	// ReadAt fills p from offset off of the object. Reading past the end
	// is an error (the caller knows what it stored).
	ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error
	Delete(ctx context.Context, ns, name string) error
	// List returns the objects whose names start with prefix, sorted by name.
	List(ctx context.Context, ns, prefix string) ([]ObjectInfo, error)
	Stat(ctx context.Context, ns, name string) (ObjectInfo, error)
}

// FilePutter is implemented by backends that can store an object straight
// from a local file (a sealed SCO in the write buffer) without the caller
// reading it into memory first. f is read from offset 0 to its end.
type FilePutter interface {
	PutFile(ctx context.Context, ns, name string, f *os.File, overwrite bool) error
}

// CheapReader is implemented by backends whose ranged reads cost about what
// reading a local file costs (the local-directory backend). The volume
// driver does not copy what it reads from them into its read cache, which
// would only duplicate the kernel's page cache.
type CheapReader interface {
	CheapReads() bool
}
