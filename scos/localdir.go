package scos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ovs-storage/ovs/scos/internal/fsutil"
)

// LocalDir is a Backend that keeps each namespace as a directory and each
// object as a file under root. Puts are atomic and durable: the data goes to
// a temporary file that is fsynced, then renamed (or hard-linked, to refuse
// overwriting) into place, and the directory is fsynced.
type LocalDir struct {
	root string
	fds  *FileCache
}

// localDirOpenFiles bounds the objects kept open for ranged reads: enough
// for the SCOs a few busy vdisks read from, far below RLIMIT_NOFILE.
const localDirOpenFiles = 512

// NewLocalDir opens (creating if needed) a local-directory backend at root.
func NewLocalDir(root string) (*LocalDir, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("local backend %s: %w", root, err)
	}
	return &LocalDir{root: root, fds: NewFileCache(localDirOpenFiles)}, nil
}

// CheapReads: objects are local files.
func (b *LocalDir) CheapReads() bool { return true }

// Root returns the directory the backend lives in.
func (b *LocalDir) Root() string { return b.root }

// ValidName reports whether s is acceptable as a namespace or object name:
// 1-200 characters of [A-Za-z0-9._-], not starting with '.'.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 200 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (b *LocalDir) nsPath(ns string) (string, error) {
	if !ValidName(ns) {
		return "", fmt.Errorf("%w: namespace %q", ErrInvalidName, ns)
	}
	return filepath.Join(b.root, ns), nil
}

func (b *LocalDir) objPath(ns, name string) (string, string, error) {
	dir, err := b.nsPath(ns)
	if err != nil {
		return "", "", err
	}
	if !ValidName(name) {
		return "", "", fmt.Errorf("%w: object %q", ErrInvalidName, name)
	}
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("%w: %s", ErrNamespaceNotFound, ns)
		}
		return "", "", fmt.Errorf("namespace %s: %w", ns, err)
	}
	return dir, filepath.Join(dir, name), nil
}

func (b *LocalDir) CreateNamespace(ctx context.Context, ns string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := b.nsPath(ns)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrNamespaceExists, ns)
		}
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return fsutil.SyncDir(b.root)
}

func (b *LocalDir) DeleteNamespace(ctx context.Context, ns string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := b.nsPath(ns)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNamespaceNotFound, ns)
	}
	// Rename first so that a crash midway never leaves a half-deleted
	// namespace that still looks like one.
	trash := filepath.Join(b.root, fsutil.TmpPrefix+"del-"+ns+"-"+fsutil.RandomSuffix())
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	b.fds.InvalidatePrefix(dir + string(filepath.Separator))
	if err := fsutil.SyncDir(b.root); err != nil {
		return err
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	return nil
}

func (b *LocalDir) ListNamespaces(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(b.root)
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ValidName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (b *LocalDir) NamespaceExists(ctx context.Context, ns string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	dir, err := b.nsPath(ns)
	if err != nil {
		return false, err
	}
	_, err = os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("namespace %s: %w", ns, err)
	}
	return true, nil
}

func (b *LocalDir) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	return b.put(ctx, ns, name, overwrite, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// PutFile stores the contents of src. The copy happens in the kernel
// (copy_file_range), so the data never passes through this process.
func (b *LocalDir) PutFile(ctx context.Context, ns, name string, src *os.File, overwrite bool) error {
	return b.put(ctx, ns, name, overwrite, func(f *os.File) error {
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, err := f.ReadFrom(src) // copy_file_range(2) between two files
		return err
	})
}

func (b *LocalDir) put(ctx context.Context, ns, name string, overwrite bool, fill func(*os.File) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, path, err := b.objPath(ns, name)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, fsutil.TmpPrefix+name+"-"+fsutil.RandomSuffix())
	if err := fsutil.WriteFileWith(tmp, fill); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s/%s: %w", ns, name, err)
	}
	if overwrite {
		err = os.Rename(tmp, path)
		b.fds.Invalidate(path) // an open handle would read the old object
	} else {
		// link(2) refuses to replace an existing name: an atomic create.
		err = os.Link(tmp, path)
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s/%s", ErrObjectExists, ns, name)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s/%s: %w", ns, name, err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return fmt.Errorf("put %s/%s: %w", ns, name, err)
	}
	return nil
}

func (b *LocalDir) Get(ctx context.Context, ns, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, path, err := b.objPath(ns, name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, b.readErr(ns, name, err)
	}
	return data, nil
}

func (b *LocalDir) ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !ValidName(ns) || !ValidName(name) {
		return fmt.Errorf("%w: %s/%s", ErrInvalidName, ns, name)
	}
	// Ranged reads are the hot path of a vdisk whose SCOs left the write
	// buffer: keep the objects open rather than open(2) each time.
	path := filepath.Join(b.root, ns, name)
	o, err := b.fds.Acquire(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if ok, _ := b.NamespaceExists(ctx, ns); !ok {
				return fmt.Errorf("%w: %s", ErrNamespaceNotFound, ns)
			}
		}
		return b.readErr(ns, name, err)
	}
	defer b.fds.Release(o)
	if _, err := o.f.ReadAt(p, off); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s/%s [%d,+%d): past the end of the object", ns, name, off, len(p))
		}
		return fmt.Errorf("read %s/%s: %w", ns, name, err)
	}
	return nil
}

func (b *LocalDir) Delete(ctx context.Context, ns, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, path, err := b.objPath(ns, name)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return b.readErr(ns, name, err)
	}
	b.fds.Invalidate(path)
	return fsutil.SyncDir(dir)
}

func (b *LocalDir) List(ctx context.Context, ns, prefix string) ([]ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := b.nsPath(ns)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNamespaceNotFound, ns)
		}
		return nil, fmt.Errorf("list %s: %w", ns, err)
	}
	var out []ObjectInfo
	for _, e := range ents {
		n := e.Name()
		if !ValidName(n) || !strings.HasPrefix(n, prefix) || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed while listing
		}
		out = append(out, ObjectInfo{Name: n, Size: fi.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (b *LocalDir) Stat(ctx context.Context, ns, name string) (ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	_, path, err := b.objPath(ns, name)
	if err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return ObjectInfo{}, b.readErr(ns, name, err)
	}
	return ObjectInfo{Name: name, Size: fi.Size()}, nil
}

func (b *LocalDir) readErr(ns, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s/%s", ErrObjectNotFound, ns, name)
	}
	return fmt.Errorf("%s/%s: %w", ns, name, err)
}
