package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Small files and directories live in the store: an entry per name under
// its parent's inode number, a record of where each inode is (for
// Resolve), and a file's bytes under its inode number. Every change is one
// atomic Apply that asserts what it read, so nodes changing the same
// files at once never lose an update silently (the loser retries).

func smallAttr(name string, e entry) Attr {
	a := Attr{Name: name, Kind: KindFile, Ino: e.Ino, Size: e.Size, ModTime: e.MTime}
	if e.Dir {
		a.Kind, a.Size = KindDir, 0
	}
	return a
}

// getEntry reads name's entry in directory parent.
func (t *VPool) getEntry(ctx context.Context, parent uint64, name string) (entry, []byte, error) {
	raw, err := t.st.Get(ctx, entKey(parent, name))
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return entry{}, nil, fmt.Errorf("%w: %s", iofs.ErrNotExist, name)
		}
		return entry{}, nil, mapErr(err)
	}
	var e entry
	if err := json.Unmarshal(raw, &e); err != nil {
		return entry{}, nil, fmt.Errorf("%w: entry %s: %w", syscall.EIO, name, err)
	}
	return e, raw, nil
}

// lookupParent walks to the directory that holds the last element.
func (t *VPool) lookupParent(ctx context.Context, parts []string) (uint64, error) {
	dir := uint64(inoRoot)
	for i, name := range parts[:len(parts)-1] {
		if i == 0 {
			if name == SnapshotsDir {
				return 0, fmt.Errorf("%w: %s is read-only", syscall.EROFS, SnapshotsDir)
			}
			if _, ok := vdiskName(name); ok {
				return 0, fmt.Errorf("%w: %s", syscall.ENOTDIR, name)
			}
		}
		e, _, err := t.getEntry(ctx, dir, name)
		if err != nil {
			return 0, err
		}
		if !e.Dir {
			return 0, fmt.Errorf("%w: %s", syscall.ENOTDIR, name)
		}
		dir = e.Ino
	}
	return dir, nil
}

func (t *VPool) lookupSmall(ctx context.Context, parts []string) (entry, []byte, error) {
	dir, err := t.lookupParent(ctx, parts)
	if err != nil {
		return entry{}, nil, err
	}
	return t.getEntry(ctx, dir, parts[len(parts)-1])
}

func (t *VPool) listSmall(ctx context.Context, dir uint64) ([]Attr, error) {
	prefix := keyEnt + hexIno(dir) + "/"
	ents, err := t.st.Range(ctx, prefix)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Attr, 0, len(ents))
	for _, kv := range ents {
		var e entry
		if err := json.Unmarshal(kv.Value, &e); err != nil {
			t.log.Warn("skipping an unreadable small-file entry", "key", kv.Key, "err", err)
			continue
		}
		out = append(out, smallAttr(strings.TrimPrefix(kv.Key, prefix), e))
	}
	return out, nil
}

// retry runs one read-modify-Apply step until it does not conflict.
func (t *VPool) retry(ctx context.Context, step func() error) error {
	t.smallMu.Lock()
	defer t.smallMu.Unlock()
	for range 100 {
		err := step()
		if !errors.Is(err, ErrConflict) {
			return err
		}
		if ctx.Err() != nil {
			return mapErr(ctx.Err())
		}
	}
	return fmt.Errorf("%w: the store kept changing under a small-file update", syscall.EIO)
}

func (t *VPool) createSmall(ctx context.Context, p string, dir bool) (Attr, error) {
	parts, err := split(p)
	if err != nil {
		return Attr{}, err
	}
	if len(parts) == 0 {
		return Attr{}, fmt.Errorf("%w: /", iofs.ErrExist)
	}
	name := parts[len(parts)-1]
	if len(parts) == 1 {
		if name == SnapshotsDir {
			return Attr{}, fmt.Errorf("%w: %s", iofs.ErrExist, name)
		}
		if _, ok := vdiskName(name); ok {
			return Attr{}, fmt.Errorf("%w: NAME.raw at the root is a vdisk file, not a directory", iofs.ErrInvalid)
		}
	}
	var a Attr
	err = t.retry(ctx, func() error {
		parent, err := t.lookupParent(ctx, parts)
		if err != nil {
			return err
		}
		nextRaw, err := t.st.Get(ctx, keyNext)
		if err != nil && !errors.Is(err, iofs.ErrNotExist) {
			return mapErr(err)
		}
		ino := uint64(max(parseUint(nextRaw), inoFirstFree))
		e := entry{Ino: ino, Dir: dir, MTime: time.Now().UTC()}
		eraw, _ := json.Marshal(e)
		wraw, _ := json.Marshal(where{Parent: parent, Name: name})
		ops := []Op{
			opAssert(entKey(parent, name), nil), opAssert(keyNext, nextRaw),
			opSet(keyNext, []byte(strconv.FormatUint(ino+1, 10))),
			opSet(entKey(parent, name), eraw), opSet(keyIno+hexIno(ino), wraw),
		}
		if parent != inoRoot {
			// The parent must still be there.
			ops = append(ops, opAssert(keyIno+hexIno(parent), mustGet(ctx, t.st, keyIno+hexIno(parent))))
		}
		if err := t.st.Apply(ctx, ops...); err != nil {
			if errors.Is(err, ErrConflict) {
				if _, _, gerr := t.getEntry(ctx, parent, name); gerr == nil {
					return fmt.Errorf("%w: %s", iofs.ErrExist, p)
				}
			}
			return err
		}
		a = smallAttr(name, e)
		return nil
	})
	return a, err
}

// mustGet reads key for an assert (nil if absent or unreadable: the
// assert then fails unless it is absent, which is what is wanted).
func mustGet(ctx context.Context, st Store, key string) []byte {
	raw, _ := st.Get(ctx, key)
	return raw
}

func (t *VPool) removeSmall(ctx context.Context, parts []string) error {
	return t.retry(ctx, func() error {
		parent, err := t.lookupParent(ctx, parts)
		if err != nil {
			return err
		}
		name := parts[len(parts)-1]
		e, raw, err := t.getEntry(ctx, parent, name)
		if err != nil {
			return err
		}
		ops := []Op{opAssert(entKey(parent, name), raw), opDel(entKey(parent, name)), opDel(keyIno + hexIno(e.Ino))}
		if e.Dir {
			kids, err := t.st.Range(ctx, keyEnt+hexIno(e.Ino)+"/")
			if err != nil {
				return mapErr(err)
			}
			if len(kids) > 0 {
				return fmt.Errorf("%w: %s", syscall.ENOTEMPTY, name)
			}
		} else {
			usedRaw, err := t.getUsed(ctx)
			if err != nil {
				return err
			}
			ops = append(ops, opDel(keyData+hexIno(e.Ino)), opAssert(keyUsed, usedRaw),
				opSet(keyUsed, []byte(strconv.FormatInt(max(parseUint(usedRaw)-e.Size, 0), 10))))
		}
		return t.st.Apply(ctx, ops...)
	})
}

func (t *VPool) getUsed(ctx context.Context) ([]byte, error) {
	raw, err := t.st.Get(ctx, keyUsed)
	if err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return nil, mapErr(err)
	}
	return raw, nil
}

func (t *VPool) renameSmall(ctx context.Context, fp, tp []string) error {
	if len(tp) == 1 && tp[0] == SnapshotsDir {
		return fmt.Errorf("%w: %s", syscall.EROFS, SnapshotsDir)
	}
	return t.retry(ctx, func() error {
		fparent, err := t.lookupParent(ctx, fp)
		if err != nil {
			return err
		}
		tparent, err := t.lookupParent(ctx, tp)
		if err != nil {
			return err
		}
		fname, tname := fp[len(fp)-1], tp[len(tp)-1]
		e, raw, err := t.getEntry(ctx, fparent, fname)
		if err != nil {
			return err
		}
		if fparent == tparent && fname == tname {
			return nil
		}
		if e.Dir {
			// A directory cannot move under itself.
			for d := tparent; d != inoRoot; {
				if d == e.Ino {
					return fmt.Errorf("%w: a directory cannot move into itself", iofs.ErrInvalid)
				}
				wraw, err := t.st.Get(ctx, keyIno+hexIno(d))
				if err != nil {
					return mapErr(err)
				}
				var w where
				if err := json.Unmarshal(wraw, &w); err != nil {
					return fmt.Errorf("%w: %w", syscall.EIO, err)
				}
				d = w.Parent
			}
		}
		wraw, _ := json.Marshal(where{Parent: tparent, Name: tname})
		ops := []Op{opAssert(entKey(fparent, fname), raw), opDel(entKey(fparent, fname)),
			opSet(entKey(tparent, tname), raw), opSet(keyIno+hexIno(e.Ino), wraw)}
		// POSIX rename replaces a file, or an empty directory, atomically.
		old, oraw, err := t.getEntry(ctx, tparent, tname)
		switch {
		case errors.Is(err, iofs.ErrNotExist):
			ops = append(ops, opAssert(entKey(tparent, tname), nil))
		case err != nil:
			return err
		case old.Dir != e.Dir && old.Dir:
			return fmt.Errorf("%w: %s", syscall.EISDIR, tname)
		case old.Dir != e.Dir:
			return fmt.Errorf("%w: %s", syscall.ENOTDIR, tname)
		case old.Dir:
			kids, err := t.st.Range(ctx, keyEnt+hexIno(old.Ino)+"/")
			if err != nil {
				return mapErr(err)
			}
			if len(kids) > 0 {
				return fmt.Errorf("%w: %s", syscall.ENOTEMPTY, tname)
			}
			ops = append(ops, opAssert(entKey(tparent, tname), oraw), opDel(keyIno+hexIno(old.Ino)))
		default:
			usedRaw, err := t.getUsed(ctx)
			if err != nil {
				return err
			}
			ops = append(ops, opAssert(entKey(tparent, tname), oraw), opDel(keyIno+hexIno(old.Ino)), opDel(keyData+hexIno(old.Ino)),
				opAssert(keyUsed, usedRaw), opSet(keyUsed, []byte(strconv.FormatInt(max(parseUint(usedRaw)-old.Size, 0), 10))))
		}
		return t.st.Apply(ctx, ops...)
	})
}

func (t *VPool) resolveSmall(ctx context.Context, ino uint64) (string, error) {
	var parts []string
	for d := ino; d != inoRoot; {
		if len(parts) > 4096 {
			return "", fmt.Errorf("%w: inode %d: the directory chain loops", syscall.EIO, ino)
		}
		raw, err := t.st.Get(ctx, keyIno+hexIno(d))
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return "", fmt.Errorf("%w: inode %d", iofs.ErrNotExist, ino)
			}
			return "", mapErr(err)
		}
		var w where
		if err := json.Unmarshal(raw, &w); err != nil {
			return "", fmt.Errorf("%w: %w", syscall.EIO, err)
		}
		parts = append(parts, w.Name)
		d = w.Parent
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/"), nil
}

// modifySmall rewrites file ino's bytes with change (which gets the
// current bytes and returns the new ones), within the limits.
func (t *VPool) modifySmall(ctx context.Context, ino uint64, change func([]byte) ([]byte, error)) error {
	return t.retry(ctx, func() error {
		path, err := t.resolveSmall(ctx, ino)
		if err != nil {
			return err
		}
		parts, _ := split(path)
		parent, err := t.lookupParent(ctx, parts)
		if err != nil {
			return err
		}
		name := parts[len(parts)-1]
		e, eraw, err := t.getEntry(ctx, parent, name)
		if err != nil {
			return err
		}
		data, err := t.st.Get(ctx, keyData+hexIno(ino))
		if err != nil && !errors.Is(err, iofs.ErrNotExist) {
			return mapErr(err)
		}
		nd, err := change(append([]byte(nil), data...))
		if err != nil {
			return err
		}
		if int64(len(nd)) > t.opts.MaxSmallFile {
			return fmt.Errorf("%w: small files are at most %d bytes (only NAME.raw at the root is a vdisk)", syscall.EFBIG, t.opts.MaxSmallFile)
		}
		usedRaw, err := t.getUsed(ctx)
		if err != nil {
			return err
		}
		used := max(parseUint(usedRaw)-e.Size, 0) + int64(len(nd))
		if used > t.opts.MaxSmallTotal && int64(len(nd)) > e.Size {
			return fmt.Errorf("%w: small files take at most %d bytes in all", syscall.ENOSPC, t.opts.MaxSmallTotal)
		}
		e.Size, e.MTime = int64(len(nd)), time.Now().UTC()
		neraw, _ := json.Marshal(e)
		return t.st.Apply(ctx, opAssert(entKey(parent, name), eraw), opSet(entKey(parent, name), neraw),
			opSet(keyData+hexIno(ino), nd), opAssert(keyUsed, usedRaw), opSet(keyUsed, []byte(strconv.FormatInt(used, 10))))
	})
}

func (t *VPool) truncateSmall(ctx context.Context, parts []string, size int64) error {
	e, _, err := t.lookupSmall(ctx, parts)
	if err != nil {
		return err
	}
	if e.Dir {
		return fmt.Errorf("%w: %s", syscall.EISDIR, strings.Join(parts, "/"))
	}
	if size > t.opts.MaxSmallFile {
		return fmt.Errorf("%w: small files are at most %d bytes", syscall.EFBIG, t.opts.MaxSmallFile)
	}
	return t.modifySmall(ctx, e.Ino, func(b []byte) ([]byte, error) {
		if int64(len(b)) >= size {
			return b[:size], nil
		}
		return append(b, make([]byte, size-int64(len(b)))...), nil
	})
}

// smallFile is an open small file: every write goes to the store at once
// (they are small), so Sync has nothing left to do.
type smallFile struct {
	t   *VPool
	ino uint64
}

func (f *smallFile) data(ctx context.Context) ([]byte, error) {
	b, err := f.t.st.Get(ctx, keyData+hexIno(f.ino))
	if errors.Is(err, iofs.ErrNotExist) {
		// Empty, or removed: an entry tells which.
		if _, rerr := f.t.resolveSmall(ctx, f.ino); rerr != nil {
			return nil, rerr
		}
		return nil, nil
	}
	if err != nil {
		return nil, mapErr(err)
	}
	return b, nil
}

func (f *smallFile) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", iofs.ErrInvalid)
	}
	b, err := f.data(ctx)
	if err != nil {
		return 0, err
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *smallFile) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", iofs.ErrInvalid)
	}
	if off+int64(len(p)) > f.t.opts.MaxSmallFile {
		return 0, fmt.Errorf("%w: small files are at most %d bytes (only NAME.raw at the root is a vdisk)", syscall.EFBIG, f.t.opts.MaxSmallFile)
	}
	err := f.t.modifySmall(ctx, f.ino, func(b []byte) ([]byte, error) {
		if end := off + int64(len(p)); end > int64(len(b)) {
			b = append(b, make([]byte, end-int64(len(b)))...)
		}
		copy(b[off:], p)
		return b, nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *smallFile) Sync(context.Context) error { return nil }

func (f *smallFile) Punch(ctx context.Context, off, length int64) error {
	return f.t.modifySmall(ctx, f.ino, func(b []byte) ([]byte, error) {
		if off >= int64(len(b)) {
			return b, nil
		}
		clear(b[off:min(int64(len(b)), off+length)])
		return b, nil
	})
}

func (f *smallFile) Size() int64 {
	b, err := f.data(context.Background())
	if err != nil {
		return 0
	}
	return int64(len(b))
}

func (f *smallFile) Close() error { return nil }
