package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	iofs "io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/volumedriver"
)

// Limits of the small files kept in the cluster's store: they are a
// hypervisor's VM configs and the like, not data.
const (
	DefaultMaxSmallFile  = 1 << 20  // bytes per file (EFBIG above)
	DefaultMaxSmallTotal = 64 << 20 // bytes of all small files (ENOSPC above)
	// DefaultGrowStep: a write past the end of a vdisk grows it by at
	// least this much (rounded to it), so that a sequential writer does
	// not resize the vdisk at every write; the file's size is exact all
	// the same (kept in the store).
	DefaultGrowStep = 64 << 20
)

// SnapshotsDir is the root directory that holds the snapshots.
const SnapshotsDir = ".snapshots"

const rawSuffix = ".raw"

// Inode numbers. Fixed ones for the root and .snapshots; small files and
// directories get numbers from a counter in the store (below 1<<62); the
// others are derived from vdisk ids and snapshot names, with the top two
// bits saying which, so they are the same on every node and after every
// restart.
const (
	inoRoot      = 1
	inoSnapshots = 2
	inoFirstFree = 16
	tagShift     = 62
	tagVDisk     = 1
	tagSnapDir   = 2
	tagSnapshot  = 3
	hashMask     = 1<<tagShift - 1
)

// Keys in the store.
const (
	keyPrefix = "ovs/fs/"
	keySize   = keyPrefix + "size/" // + vdisk id: sizeRecord
	keyEnt    = keyPrefix + "ent/"  // + parent ino (hex) + "/" + name: entry
	keyIno    = keyPrefix + "ino/"  // + ino (hex): where (parent, name)
	keyData   = keyPrefix + "data/" // + ino (hex): a small file's bytes
	keyNext   = keyPrefix + "next"  // the next free inode number (decimal)
	keyUsed   = keyPrefix + "used"  // bytes of all small files (decimal)
)

// sizeRecord is a vdisk file's exact byte size. The vdisk itself is
// sized in whole sectors and grows in steps, so the file's size is kept
// apart. VDisk is the vdisk size the record was written for: if the vdisk
// is larger than that (resized outside the file frontend), the file is the
// whole vdisk again.
type sizeRecord struct {
	Size  int64     `json:"size"`
	VDisk int64     `json:"vdisk"`
	MTime time.Time `json:"mtime"`
}

// entry is a small file or directory.
type entry struct {
	Ino   uint64    `json:"ino"`
	Dir   bool      `json:"dir,omitempty"`
	Size  int64     `json:"size"`
	MTime time.Time `json:"mtime"`
}

// where is an inode's place, for Resolve.
type where struct {
	Parent uint64 `json:"parent"`
	Name   string `json:"name"`
}

// Options tune the tree. Zero values take the defaults.
type Options struct {
	MaxSmallFile  int64
	MaxSmallTotal int64
	GrowStep      int64
	Logger        *slog.Logger
}

// VPool is the Tree of a vpool: its vdisks, their snapshots and small
// files, from any node of the cluster.
type VPool struct {
	vd   VDisks
	st   Store
	opts Options
	log  *slog.Logger

	mu    sync.Mutex
	open  map[string]*vfile    // open vdisk files by vdisk id
	snaps map[string]*snapfile // open snapshot views by id + "@" + snapshot
	// smallMu serialises this node's changes of small files (other
	// nodes' are caught by the store's asserts).
	smallMu sync.Mutex
}

var _ Tree = (*VPool)(nil)

// NewVPool returns the tree of the vpool that vd serves, keeping small
// files and sizes in st.
func NewVPool(vd VDisks, st Store, opts Options) *VPool {
	if opts.MaxSmallFile <= 0 {
		opts.MaxSmallFile = DefaultMaxSmallFile
	}
	if opts.MaxSmallTotal <= 0 {
		opts.MaxSmallTotal = DefaultMaxSmallTotal
	}
	if opts.GrowStep <= 0 {
		opts.GrowStep = DefaultGrowStep
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &VPool{vd: vd, st: st, opts: opts, log: opts.Logger, open: map[string]*vfile{}, snaps: map[string]*snapfile{}}
}

func hash62(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	v := h.Sum64() & hashMask
	if v == 0 {
		v = 1
	}
	return v
}

func vdiskIno(id string) uint64       { return tagVDisk<<tagShift | hash62(id) }
func snapDirIno(id string) uint64     { return tagSnapDir<<tagShift | hash62(id) }
func snapshotIno(id, s string) uint64 { return tagSnapshot<<tagShift | hash62(id+"@"+s) }

func hexIno(ino uint64) string { return fmt.Sprintf("%016x", ino) }

func entKey(parent uint64, name string) string { return keyEnt + hexIno(parent) + "/" + name }

// split cleans p into its elements ("" is the root).
func split(p string) ([]string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil, nil
	}
	parts := strings.Split(p, "/")
	for _, s := range parts {
		if s == "" || s == "." || s == ".." {
			return nil, fmt.Errorf("%w: path %q", iofs.ErrInvalid, p)
		}
	}
	return parts, nil
}

// vdiskName returns the vdisk a root entry name stands for, if it ends in
// .raw.
func vdiskName(name string) (string, bool) {
	if !strings.HasSuffix(name, rawSuffix) || len(name) == len(rawSuffix) {
		return "", false
	}
	return strings.TrimSuffix(name, rawSuffix), true
}

// mapErr gives an error of the vdisk service its meaning for errors.Is.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, iofs.ErrNotExist), errors.Is(err, iofs.ErrExist), errors.Is(err, iofs.ErrInvalid),
		errors.Is(err, iofs.ErrPermission), errors.As(err, &errno):
		return err
	case errors.Is(err, volumedriver.ErrNotFound):
		return fmt.Errorf("%w: %w", iofs.ErrNotExist, err)
	case errors.Is(err, volumedriver.ErrExists):
		return fmt.Errorf("%w: %w", iofs.ErrExist, err)
	case errors.Is(err, volumedriver.ErrBusy):
		return fmt.Errorf("%w: %w", syscall.EBUSY, err)
	case errors.Is(err, volumedriver.ErrInvalidArgument):
		return fmt.Errorf("%w: %w", iofs.ErrInvalid, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", syscall.EINTR, err)
	}
	return fmt.Errorf("%w: %w", syscall.EIO, err)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// --- attributes

func rootAttr() Attr { return Attr{Kind: KindDir, Ino: inoRoot} }

func snapshotsAttr() Attr {
	return Attr{Name: SnapshotsDir, Kind: KindDir, Ino: inoSnapshots, ReadOnly: true}
}

// fileSize is a vdisk file's size: the record's if it was written for
// this vdisk size or a larger one being grown to, else the vdisk's.
func fileSize(in VDiskInfo, rec *sizeRecord) (int64, time.Time) {
	if rec != nil && rec.Size <= in.Size && rec.VDisk >= in.Size {
		return rec.Size, rec.MTime
	}
	return in.Size, in.Created
}

func (t *VPool) sizeRecord(ctx context.Context, id string) (*sizeRecord, []byte, error) {
	raw, err := t.st.Get(ctx, keySize+id)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, mapErr(err)
	}
	var r sizeRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, raw, fmt.Errorf("%w: size record of vdisk %s: %w", syscall.EIO, id, err)
	}
	return &r, raw, nil
}

func (t *VPool) putSize(ctx context.Context, id string, r sizeRecord) error {
	b, _ := json.Marshal(r)
	if err := t.st.Apply(ctx, opSet(keySize+id, b)); err != nil {
		return mapErr(fmt.Errorf("record the size of vdisk %s: %w", id, err))
	}
	return nil
}

func (t *VPool) vdiskAttr(in VDiskInfo, rec *sizeRecord) Attr {
	size, mtime := fileSize(in, rec)
	t.mu.Lock()
	f := t.open[in.ID]
	t.mu.Unlock()
	if f != nil {
		// Open here: this node's size, unless another node's writer
		// has recorded a larger one since (at its fsync or close).
		size = f.observe(in, rec)
		if m := f.mtime(); !m.IsZero() {
			mtime = m
		}
	}
	return Attr{Name: in.Name + rawSuffix, Kind: KindVDisk, Ino: vdiskIno(in.ID), Size: size, ModTime: mtime}
}

func (t *VPool) statVDisk(ctx context.Context, name string) (VDiskInfo, Attr, error) {
	in, err := t.vd.Info(ctx, name)
	if err != nil {
		return in, Attr{}, mapErr(err)
	}
	rec, _, err := t.sizeRecord(ctx, in.ID)
	if err != nil {
		return in, Attr{}, err
	}
	return in, t.vdiskAttr(in, rec), nil
}

func (t *VPool) snapshotOf(ctx context.Context, vdisk, file string) (VDiskInfo, SnapshotInfo, error) {
	in, err := t.vd.Info(ctx, vdisk)
	if err != nil {
		return in, SnapshotInfo{}, mapErr(err)
	}
	name, ok := strings.CutSuffix(file, rawSuffix)
	if !ok {
		return in, SnapshotInfo{}, fmt.Errorf("%w: %s/%s", iofs.ErrNotExist, vdisk, file)
	}
	snaps, err := t.vd.Snapshots(ctx, vdisk)
	if err != nil {
		return in, SnapshotInfo{}, mapErr(err)
	}
	for _, s := range snaps {
		if s.Name == name {
			return in, s, nil
		}
	}
	return in, SnapshotInfo{}, fmt.Errorf("%w: snapshot %s@%s", iofs.ErrNotExist, vdisk, name)
}

// snapshotAttr: a snapshot file is as large as the vdisk file is now (a
// vdisk file only grows; what lies past its size at the snapshot reads as
// zeros).
func (t *VPool) snapshotAttr(ctx context.Context, in VDiskInfo, s SnapshotInfo) (Attr, error) {
	rec, _, err := t.sizeRecord(ctx, in.ID)
	if err != nil {
		return Attr{}, err
	}
	size, _ := fileSize(in, rec)
	return Attr{Name: s.Name + rawSuffix, Kind: KindSnapshot, Ino: snapshotIno(in.ID, s.Name), Size: size, ModTime: s.Created, ReadOnly: true}, nil
}

// Stat describes the entry at p.
func (t *VPool) Stat(ctx context.Context, p string) (Attr, error) {
	parts, err := split(p)
	if err != nil {
		return Attr{}, err
	}
	switch {
	case len(parts) == 0:
		return rootAttr(), nil
	case parts[0] == SnapshotsDir:
		switch len(parts) {
		case 1:
			return snapshotsAttr(), nil
		case 2:
			in, err := t.vd.Info(ctx, parts[1])
			if err != nil {
				return Attr{}, mapErr(err)
			}
			return Attr{Name: in.Name, Kind: KindDir, Ino: snapDirIno(in.ID), ModTime: in.Created, ReadOnly: true}, nil
		case 3:
			in, s, err := t.snapshotOf(ctx, parts[1], parts[2])
			if err != nil {
				return Attr{}, err
			}
			return t.snapshotAttr(ctx, in, s)
		}
		return Attr{}, fmt.Errorf("%w: %s", iofs.ErrNotExist, p)
	case len(parts) == 1:
		if name, ok := vdiskName(parts[0]); ok {
			_, a, err := t.statVDisk(ctx, name)
			return a, err
		}
	}
	e, _, err := t.lookupSmall(ctx, parts)
	if err != nil {
		return Attr{}, err
	}
	return smallAttr(parts[len(parts)-1], e), nil
}

// ReadDir lists a directory, sorted by name.
func (t *VPool) ReadDir(ctx context.Context, p string) ([]Attr, error) {
	parts, err := split(p)
	if err != nil {
		return nil, err
	}
	var out []Attr
	switch {
	case len(parts) == 0:
		list, err := t.vd.List(ctx)
		if err != nil {
			return nil, mapErr(err)
		}
		sizes, err := t.st.Range(ctx, keySize)
		if err != nil {
			return nil, mapErr(err)
		}
		recs := map[string]*sizeRecord{}
		for _, e := range sizes {
			var r sizeRecord
			if json.Unmarshal(e.Value, &r) == nil {
				recs[strings.TrimPrefix(e.Key, keySize)] = &r
			}
		}
		for _, in := range list {
			out = append(out, t.vdiskAttr(in, recs[in.ID]))
		}
		out = append(out, snapshotsAttr())
		small, err := t.listSmall(ctx, inoRoot)
		if err != nil {
			return nil, err
		}
		out = append(out, small...)
	case parts[0] == SnapshotsDir && len(parts) == 1:
		list, err := t.vd.List(ctx)
		if err != nil {
			return nil, mapErr(err)
		}
		for _, in := range list {
			out = append(out, Attr{Name: in.Name, Kind: KindDir, Ino: snapDirIno(in.ID), ModTime: in.Created, ReadOnly: true})
		}
	case parts[0] == SnapshotsDir && len(parts) == 2:
		in, err := t.vd.Info(ctx, parts[1])
		if err != nil {
			return nil, mapErr(err)
		}
		snaps, err := t.vd.Snapshots(ctx, parts[1])
		if err != nil {
			return nil, mapErr(err)
		}
		for _, s := range snaps {
			a, err := t.snapshotAttr(ctx, in, s)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
	case parts[0] == SnapshotsDir:
		return nil, fmt.Errorf("%w: %s", syscall.ENOTDIR, p)
	default:
		if len(parts) == 1 {
			if _, ok := vdiskName(parts[0]); ok {
				return nil, fmt.Errorf("%w: %s", syscall.ENOTDIR, p)
			}
		}
		e, _, err := t.lookupSmall(ctx, parts)
		if err != nil {
			return nil, err
		}
		if !e.Dir {
			return nil, fmt.Errorf("%w: %s", syscall.ENOTDIR, p)
		}
		if out, err = t.listSmall(ctx, e.Ino); err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// --- changes

// Mkdir makes a directory for small files.
func (t *VPool) Mkdir(ctx context.Context, p string) (Attr, error) {
	return t.createSmall(ctx, p, true)
}

// Create makes an empty file: a thin vdisk for NAME.raw at the root.
func (t *VPool) Create(ctx context.Context, p string) (Attr, error) {
	parts, err := split(p)
	if err != nil {
		return Attr{}, err
	}
	if len(parts) == 1 {
		if name, ok := vdiskName(parts[0]); ok {
			if !volumedriver.ValidName(name) {
				return Attr{}, fmt.Errorf("%w: %q cannot name a vdisk (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, then .raw)", iofs.ErrInvalid, parts[0])
			}
			// A vdisk cannot be empty: it is made one step long and
			// the file's size, 0, is recorded first (a crash in
			// between leaves an orphan record, harmless).
			in, err := t.vd.Create(ctx, name, t.opts.GrowStep)
			if err != nil {
				return Attr{}, mapErr(err)
			}
			if err := t.putSize(ctx, in.ID, sizeRecord{Size: 0, VDisk: in.Size, MTime: time.Now().UTC()}); err != nil {
				return Attr{}, err
			}
			return Attr{Name: parts[0], Kind: KindVDisk, Ino: vdiskIno(in.ID), ModTime: in.Created}, nil
		}
	}
	return t.createSmall(ctx, p, false)
}

// Open opens a regular file.
func (t *VPool) Open(ctx context.Context, p string, writable bool) (File, error) {
	parts, err := split(p)
	if err != nil {
		return nil, err
	}
	switch {
	case len(parts) == 0:
		return nil, fmt.Errorf("%w: /", syscall.EISDIR)
	case parts[0] == SnapshotsDir:
		if len(parts) != 3 {
			if len(parts) < 3 {
				return nil, fmt.Errorf("%w: %s", syscall.EISDIR, p)
			}
			return nil, fmt.Errorf("%w: %s", iofs.ErrNotExist, p)
		}
		if writable {
			return nil, fmt.Errorf("%w: snapshots are read-only", syscall.EROFS)
		}
		in, s, err := t.snapshotOf(ctx, parts[1], parts[2])
		if err != nil {
			return nil, err
		}
		a, err := t.snapshotAttr(ctx, in, s)
		if err != nil {
			return nil, err
		}
		return t.openSnapshot(ctx, in, s.Name, a.Size)
	case len(parts) == 1:
		if name, ok := vdiskName(parts[0]); ok {
			return t.openVDisk(ctx, name)
		}
	}
	e, _, err := t.lookupSmall(ctx, parts)
	if err != nil {
		return nil, err
	}
	if e.Dir {
		return nil, fmt.Errorf("%w: %s", syscall.EISDIR, p)
	}
	return &smallFile{t: t, ino: e.Ino}, nil
}

// Truncate sets a regular file's size.
func (t *VPool) Truncate(ctx context.Context, p string, size int64) error {
	if size < 0 {
		return fmt.Errorf("%w: negative size", iofs.ErrInvalid)
	}
	parts, err := split(p)
	if err != nil {
		return err
	}
	switch {
	case len(parts) == 0:
		return fmt.Errorf("%w: /", syscall.EISDIR)
	case parts[0] == SnapshotsDir:
		return fmt.Errorf("%w: snapshots are read-only", syscall.EROFS)
	case len(parts) == 1:
		if name, ok := vdiskName(parts[0]); ok {
			f, err := t.openVDisk(ctx, name)
			if err != nil {
				return err
			}
			defer f.Close()
			return f.(*vhandle).f.truncate(ctx, size)
		}
	}
	return t.truncateSmall(ctx, parts, size)
}

// Remove deletes a file or an empty directory.
func (t *VPool) Remove(ctx context.Context, p string) error {
	parts, err := split(p)
	if err != nil {
		return err
	}
	switch {
	case len(parts) == 0:
		return fmt.Errorf("%w: the root", syscall.EBUSY)
	case parts[0] == SnapshotsDir:
		return fmt.Errorf("%w: snapshots are removed with ovs snapshot delete", syscall.EROFS)
	case len(parts) == 1:
		if name, ok := vdiskName(parts[0]); ok {
			in, err := t.vd.Info(ctx, name)
			if err != nil {
				return mapErr(err)
			}
			if err := t.vd.Delete(ctx, name); err != nil {
				return mapErr(err)
			}
			if err := t.st.Apply(ctx, opDel(keySize+in.ID)); err != nil {
				t.log.Warn("a deleted vdisk's size record stays behind", "vdisk", name, "err", err)
			}
			return nil
		}
	}
	return t.removeSmall(ctx, parts)
}

// Rename moves an entry.
func (t *VPool) Rename(ctx context.Context, from, to string) error {
	fp, err := split(from)
	if err != nil {
		return err
	}
	tp, err := split(to)
	if err != nil {
		return err
	}
	if len(fp) == 0 || len(tp) == 0 {
		return fmt.Errorf("%w: the root cannot be renamed", syscall.EBUSY)
	}
	if fp[0] == SnapshotsDir || tp[0] == SnapshotsDir {
		return fmt.Errorf("%w: %s is read-only", syscall.EROFS, SnapshotsDir)
	}
	fromV, fromIsV := "", false
	if len(fp) == 1 {
		fromV, fromIsV = vdiskName(fp[0])
	}
	toV, toIsV := "", false
	if len(tp) == 1 {
		toV, toIsV = vdiskName(tp[0])
	}
	switch {
	case fromIsV && toIsV:
		return t.renameVDisk(ctx, fromV, toV)
	case fromIsV || toIsV:
		// Between a vdisk and a small file the data would have to move:
		// mv copies and unlinks on EXDEV.
		return fmt.Errorf("%w: %s and %s are kept apart (vdisk and small file)", syscall.EXDEV, from, to)
	}
	return t.renameSmall(ctx, fp, tp)
}

func (t *VPool) renameVDisk(ctx context.Context, from, to string) error {
	if from == to {
		return nil
	}
	if !volumedriver.ValidName(to) {
		return fmt.Errorf("%w: %q cannot name a vdisk", iofs.ErrInvalid, to+rawSuffix)
	}
	in, err := t.vd.Info(ctx, from)
	if err != nil {
		return mapErr(err)
	}
	// Replacing a vdisk by a rename would delete one: refused.
	if _, err := t.vd.Info(ctx, to); err == nil {
		return fmt.Errorf("%w: vdisk %s exists; remove it first", iofs.ErrExist, to)
	}
	if err := t.vd.Rename(ctx, from, to); err != nil {
		return mapErr(err)
	}
	// Files open under the old name go on under the new one.
	t.mu.Lock()
	f := t.open[in.ID]
	t.mu.Unlock()
	if f != nil {
		if err := f.reopen(ctx, to); err != nil {
			t.log.Warn("an open vdisk file could not follow its rename; its I/O fails", "from", from, "to", to, "err", err)
		}
	}
	return nil
}

// Resolve returns the path of the entry with inode number ino.
func (t *VPool) Resolve(ctx context.Context, ino uint64) (string, error) {
	switch ino {
	case inoRoot:
		return "", nil
	case inoSnapshots:
		return SnapshotsDir, nil
	}
	tag := ino >> tagShift
	if tag == 0 {
		return t.resolveSmall(ctx, ino)
	}
	list, err := t.vd.List(ctx)
	if err != nil {
		return "", mapErr(err)
	}
	for _, in := range list {
		switch tag {
		case tagVDisk:
			if vdiskIno(in.ID) == ino {
				return in.Name + rawSuffix, nil
			}
		case tagSnapDir:
			if snapDirIno(in.ID) == ino {
				return path.Join(SnapshotsDir, in.Name), nil
			}
		case tagSnapshot:
			snaps, err := t.vd.Snapshots(ctx, in.Name)
			if err != nil {
				continue
			}
			for _, s := range snaps {
				if snapshotIno(in.ID, s.Name) == ino {
					return path.Join(SnapshotsDir, in.Name, s.Name+rawSuffix), nil
				}
			}
		}
	}
	return "", fmt.Errorf("%w: inode %d", iofs.ErrNotExist, ino)
}

// parseUint reads a decimal counter of the store (absent: 0).
func parseUint(raw []byte) int64 {
	n, _ := strconv.ParseInt(string(raw), 10, 64)
	return n
}
