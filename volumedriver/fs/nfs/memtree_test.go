package nfs

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	ovsfs "github.com/ovs-storage/ovs/volumedriver/fs"
)

// memTree is an in-memory fs.Tree with the contract's semantics that the
// NFS server depends on: NAME.raw at the root are vdisks (shrinking is
// EINVAL), .snapshots is read-only, inode numbers are stable and Resolve
// finds them. It counts Syncs so tests can see COMMIT and FILE_SYNC reach
// the Tree.
type memTree struct {
	mu      sync.Mutex
	nodes   map[string]*memNode // by clean path, "" is the root
	nextIno uint64
	syncs   atomic.Int64
	// busy names vdisks that "have clones": Remove gives EBUSY.
	busy map[string]bool
}

// memMaxSize bounds a memTree file, so that a fuzzed WRITE far out is
// EFBIG rather than an allocation of terabytes.
const memMaxSize = 256 << 20

type memNode struct {
	attr ovsfs.Attr
	data []byte
}

func newMemTree() *memTree {
	t := &memTree{nodes: map[string]*memNode{}, nextIno: 1, busy: map[string]bool{}}
	t.add("", ovsfs.KindDir, false)
	t.add(".snapshots", ovsfs.KindDir, true)
	return t
}

func (t *memTree) add(p string, k ovsfs.Kind, ro bool) *memNode {
	n := &memNode{attr: ovsfs.Attr{Name: path.Base("/" + p), Kind: k, Ino: t.nextIno, ModTime: time.Unix(1700000000, 0), ReadOnly: ro}}
	if p == "" {
		n.attr.Name = ""
	}
	t.nextIno++
	t.nodes[p] = n
	return n
}

// addSnapshot adds a read-only snapshot file with data.
func (t *memTree) addSnapshot(vdisk, snap string, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.nodes[".snapshots/"+vdisk]; !ok {
		t.add(".snapshots/"+vdisk, ovsfs.KindDir, true)
	}
	n := t.add(".snapshots/"+vdisk+"/"+snap+".raw", ovsfs.KindSnapshot, true)
	n.data = append([]byte(nil), data...)
	n.attr.Size = int64(len(data))
}

func (t *memTree) node(p string) (*memNode, error) {
	n, ok := t.nodes[clean(p)]
	if !ok {
		return nil, fmt.Errorf("memtree %q: %w", p, fs.ErrNotExist)
	}
	return n, nil
}

func (t *memTree) parentDir(p string) (*memNode, error) {
	dir := clean(path.Dir("/" + clean(p)))
	n, err := t.node(dir)
	if err != nil {
		return nil, err
	}
	if !n.attr.IsDir() {
		return nil, fmt.Errorf("memtree %q: %w", dir, syscall.ENOTDIR)
	}
	if n.attr.ReadOnly {
		return nil, fmt.Errorf("memtree %q: %w", dir, syscall.EROFS)
	}
	return n, nil
}

func (t *memTree) Stat(ctx context.Context, p string) (ovsfs.Attr, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.node(p)
	if err != nil {
		return ovsfs.Attr{}, err
	}
	a := n.attr
	a.Size = int64(len(n.data))
	return a, nil
}

func (t *memTree) ReadDir(ctx context.Context, p string) ([]ovsfs.Attr, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, err := t.node(p)
	if err != nil {
		return nil, err
	}
	if !d.attr.IsDir() {
		return nil, fmt.Errorf("memtree %q: %w", p, syscall.ENOTDIR)
	}
	var out []ovsfs.Attr
	prefix := clean(p)
	for q, n := range t.nodes {
		if q != "" && clean(path.Dir("/"+q)) == prefix {
			a := n.attr
			a.Size = int64(len(n.data))
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (t *memTree) Mkdir(ctx context.Context, p string) (ovsfs.Attr, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.parentDir(p); err != nil {
		return ovsfs.Attr{}, err
	}
	if _, ok := t.nodes[clean(p)]; ok {
		return ovsfs.Attr{}, fmt.Errorf("memtree %q: %w", p, fs.ErrExist)
	}
	return t.add(clean(p), ovsfs.KindDir, false).attr, nil
}

func (t *memTree) Create(ctx context.Context, p string) (ovsfs.Attr, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.parentDir(p); err != nil {
		return ovsfs.Attr{}, err
	}
	p = clean(p)
	if _, ok := t.nodes[p]; ok {
		return ovsfs.Attr{}, fmt.Errorf("memtree %q: %w", p, fs.ErrExist)
	}
	k := ovsfs.KindFile
	if !strings.Contains(p, "/") && strings.HasSuffix(p, ".raw") {
		k = ovsfs.KindVDisk
	}
	return t.add(p, k, false).attr, nil
}

func (t *memTree) Open(ctx context.Context, p string, writable bool) (ovsfs.File, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.node(p)
	if err != nil {
		return nil, err
	}
	if n.attr.IsDir() {
		return nil, fmt.Errorf("memtree %q: %w", p, syscall.EISDIR)
	}
	if writable && n.attr.ReadOnly {
		return nil, fmt.Errorf("memtree %q: %w", p, syscall.EROFS)
	}
	return &memFile{t: t, n: n}, nil
}

func (t *memTree) Truncate(ctx context.Context, p string, size int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.node(p)
	if err != nil {
		return err
	}
	switch {
	case n.attr.IsDir():
		return fmt.Errorf("memtree %q: %w", p, syscall.EISDIR)
	case n.attr.ReadOnly:
		return fmt.Errorf("memtree %q: %w", p, syscall.EROFS)
	case n.attr.Kind == ovsfs.KindVDisk && size < int64(len(n.data)):
		return fmt.Errorf("memtree %q: shrink: %w", p, syscall.EINVAL)
	case size > memMaxSize:
		return fmt.Errorf("memtree %q: %w", p, syscall.EFBIG)
	}
	n.data = resize(n.data, size)
	return nil
}

func resize(b []byte, size int64) []byte {
	if size <= int64(len(b)) {
		return b[:size]
	}
	return append(b, make([]byte, size-int64(len(b)))...)
}

func (t *memTree) Remove(ctx context.Context, p string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	p = clean(p)
	n, err := t.node(p)
	if err != nil {
		return err
	}
	if n.attr.ReadOnly {
		return fmt.Errorf("memtree %q: %w", p, syscall.EROFS)
	}
	if t.busy[p] {
		return fmt.Errorf("memtree %q: has clones: %w", p, syscall.EBUSY)
	}
	if n.attr.IsDir() {
		for q := range t.nodes {
			if strings.HasPrefix(q, p+"/") {
				return fmt.Errorf("memtree %q: %w", p, syscall.ENOTEMPTY)
			}
		}
	}
	delete(t.nodes, p)
	return nil
}

func (t *memTree) Rename(ctx context.Context, from, to string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	from, to = clean(from), clean(to)
	n, err := t.node(from)
	if err != nil {
		return err
	}
	if _, err := t.parentDir(to); err != nil {
		return err
	}
	if n.attr.IsDir() {
		return fmt.Errorf("memtree: directory renames are not modelled: %w", syscall.EXDEV)
	}
	if old, ok := t.nodes[to]; ok && old.attr.IsDir() {
		return fmt.Errorf("memtree %q: %w", to, syscall.EISDIR)
	}
	delete(t.nodes, from)
	n.attr.Name = path.Base("/" + to)
	t.nodes[to] = n
	return nil
}

func (t *memTree) Resolve(ctx context.Context, ino uint64) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, n := range t.nodes {
		if n.attr.Ino == ino {
			return "/" + p, nil
		}
	}
	return "", fmt.Errorf("memtree ino %d: %w", ino, fs.ErrNotExist)
}

type memFile struct {
	t *memTree
	n *memNode
}

func (f *memFile) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	if off+int64(len(p)) > memMaxSize {
		return 0, fmt.Errorf("memtree: %w", syscall.EFBIG)
	}
	if end := off + int64(len(p)); end > int64(len(f.n.data)) {
		f.n.data = resize(f.n.data, end)
	}
	return copy(f.n.data[off:], p), nil
}

func (f *memFile) Sync(ctx context.Context) error { f.t.syncs.Add(1); return nil }

func (f *memFile) Punch(ctx context.Context, off, length int64) error {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	for i := off; i < off+length && i < int64(len(f.n.data)); i++ {
		f.n.data[i] = 0
	}
	return nil
}

func (f *memFile) Size() int64 {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	return int64(len(f.n.data))
}

func (f *memFile) Close() error { return nil }

// data returns a copy of a file's bytes.
func (t *memTree) data(p string) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.nodes[clean(p)]
	if !ok {
		return nil
	}
	return append([]byte(nil), n.data...)
}

// put stores a file with data.
func (t *memTree) put(p string, data []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := ovsfs.KindFile
	if !strings.Contains(clean(p), "/") && strings.HasSuffix(p, ".raw") {
		k = ovsfs.KindVDisk
	}
	n := t.add(clean(p), k, false)
	n.data = append([]byte(nil), data...)
}
