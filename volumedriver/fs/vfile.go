package fs

import (
	"context"
	"fmt"
	"io"
	iofs "io/fs"
	"sync"
	"syscall"
	"time"
)

// vfile is a vdisk open on this node, shared by every handle of it. It
// keeps the file's size: a write past the end grows it in memory at once
// (and the vdisk, in steps, before the write), and the size goes to the
// store at Sync, at the last Close and when the vdisk grows, so a size is
// durable with the data an fsync covers.
type vfile struct {
	t  *VPool
	id string

	refs int // under t.mu

	devMu sync.RWMutex // guards dev and name (a rename swaps them)
	dev   Device
	name  string

	growMu sync.Mutex // one grow or truncate at a time

	mu    sync.Mutex // guards the fields below
	size  int64      // the file's size
	vsize int64      // the vdisk's size
	dirty bool       // size not yet in the store
	mod   time.Time
}

// vhandle is one Open of a vdisk file.
type vhandle struct {
	f    *vfile
	once sync.Once
}

func (t *VPool) openVDisk(ctx context.Context, name string) (File, error) {
	in, err := t.vd.Info(ctx, name)
	if err != nil {
		return nil, mapErr(err)
	}
	t.mu.Lock()
	if f := t.open[in.ID]; f != nil {
		f.refs++
		t.mu.Unlock()
		return &vhandle{f: f}, nil
	}
	t.mu.Unlock()
	rec, _, err := t.sizeRecord(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	dev, err := t.vd.Open(ctx, name)
	if err != nil {
		return nil, mapErr(err)
	}
	size, mod := fileSize(in, rec)
	f := &vfile{t: t, id: in.ID, refs: 1, dev: dev, name: name, size: size, vsize: in.Size, mod: mod}
	t.mu.Lock()
	if g := t.open[in.ID]; g != nil {
		// Another Open won the race.
		g.refs++
		t.mu.Unlock()
		dev.Close()
		return &vhandle{f: g}, nil
	}
	t.open[in.ID] = f
	t.mu.Unlock()
	return &vhandle{f: f}, nil
}

func (f *vfile) device() (Device, string) {
	f.devMu.RLock()
	defer f.devMu.RUnlock()
	return f.dev, f.name
}

func (f *vfile) reopen(ctx context.Context, name string) error {
	dev, err := f.t.vd.Open(ctx, name)
	if err != nil {
		return mapErr(err)
	}
	f.devMu.Lock()
	old := f.dev
	f.dev, f.name = dev, name
	f.devMu.Unlock()
	return old.Close()
}

// observe takes in what the store says of the file (the writer may be on
// another node): a larger recorded size, or a larger vdisk, is adopted;
// a file never shrinks, so a smaller one is this node's unsynced growth
// and stays. It returns the file's size.
func (f *vfile) observe(in VDiskInfo, rec *sizeRecord) int64 {
	size, _ := fileSize(in, rec)
	f.mu.Lock()
	defer f.mu.Unlock()
	if size > f.size {
		f.size = size
	}
	if in.Size > f.vsize {
		f.vsize = in.Size
	}
	return f.size
}

// refresh is observe with a fresh look at the store, for a read past the
// end this node knows of.
func (f *vfile) refresh(ctx context.Context) (int64, error) {
	_, name := f.device()
	in, err := f.t.vd.Info(ctx, name)
	if err != nil {
		return 0, mapErr(err)
	}
	rec, _, err := f.t.sizeRecord(ctx, f.id)
	if err != nil {
		return 0, err
	}
	return f.observe(in, rec), nil
}

func (f *vfile) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size
}

func (f *vfile) mtime() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mod
}

// ensure makes the vdisk at least end bytes long: grown by a step (so a
// sequential writer resizes rarely), the size record written for the new
// vdisk size before the resize so that a crash in between keeps the
// file's size.
func (f *vfile) ensure(ctx context.Context, end int64) error {
	f.mu.Lock()
	vsize := f.vsize
	f.mu.Unlock()
	if end <= vsize {
		return nil
	}
	f.growMu.Lock()
	defer f.growMu.Unlock()
	f.mu.Lock()
	vsize, size, mod := f.vsize, f.size, f.mod
	f.mu.Unlock()
	if end <= vsize {
		return nil
	}
	step := f.t.opts.GrowStep
	nv := roundUp(max(end, vsize+vsize/4), step)
	if err := f.t.putSize(ctx, f.id, sizeRecord{Size: size, VDisk: nv, MTime: mod}); err != nil {
		return err
	}
	_, name := f.device()
	if err := f.t.vd.Resize(ctx, name, nv); err != nil {
		return mapErr(err)
	}
	f.mu.Lock()
	f.vsize = nv
	f.mu.Unlock()
	return nil
}

func (f *vfile) truncate(ctx context.Context, size int64) error {
	f.mu.Lock()
	cur := f.size
	f.mu.Unlock()
	switch {
	case size == cur:
		return nil
	case size < cur:
		return fmt.Errorf("%w: a vdisk file does not shrink (%d to %d bytes): a snapshot or clone may refer to what it holds", iofs.ErrInvalid, cur, size)
	}
	if err := f.ensure(ctx, roundUp(size, 512)); err != nil {
		return err
	}
	f.growMu.Lock()
	defer f.growMu.Unlock()
	f.mu.Lock()
	cur, vsize := f.size, f.vsize
	f.mu.Unlock()
	if size <= cur {
		return nil
	}
	// What lies between the old end and the new one reads as zeros,
	// even if a write there was cut off by a crash before its size was
	// recorded.
	dev, _ := f.device()
	if end := min(size, vsize); end > cur {
		if err := dev.Trim(ctx, cur, end-cur); err != nil {
			return mapErr(err)
		}
	}
	now := time.Now().UTC()
	if err := f.t.putSize(ctx, f.id, sizeRecord{Size: size, VDisk: vsize, MTime: now}); err != nil {
		return err
	}
	f.mu.Lock()
	if size > f.size {
		f.size = size
	}
	f.mod = now
	f.mu.Unlock()
	return nil
}

// persist writes the size record if it changed.
func (f *vfile) persist(ctx context.Context) error {
	f.mu.Lock()
	if !f.dirty {
		f.mu.Unlock()
		return nil
	}
	rec := sizeRecord{Size: f.size, VDisk: f.vsize, MTime: f.mod}
	f.dirty = false
	f.mu.Unlock()
	if err := f.t.putSize(ctx, f.id, rec); err != nil {
		f.mu.Lock()
		f.dirty = true
		f.mu.Unlock()
		return err
	}
	return nil
}

func (h *vhandle) Size() int64 { return h.f.Size() }

func (h *vhandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", iofs.ErrInvalid)
	}
	size := h.f.Size()
	if off+int64(len(p)) > size {
		// Another node may have grown the file since this one looked.
		var err error
		if size, err = h.f.refresh(ctx); err != nil {
			return 0, err
		}
	}
	if off >= size {
		return 0, io.EOF
	}
	n := len(p)
	if rest := size - off; int64(n) > rest {
		n = int(rest)
	}
	dev, _ := h.f.device()
	if err := dev.ReadAt(ctx, p[:n], off); err != nil {
		return 0, mapErr(err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *vhandle) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", iofs.ErrInvalid)
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := off + int64(len(p))
	if err := h.f.ensure(ctx, end); err != nil {
		return 0, err
	}
	dev, _ := h.f.device()
	if err := dev.WriteAt(ctx, p, off); err != nil {
		return 0, mapErr(err)
	}
	f := h.f
	f.mu.Lock()
	if end > f.size {
		f.size = end
		f.dirty = true
	}
	f.mod = time.Now().UTC()
	f.mu.Unlock()
	return len(p), nil
}

// Sync flushes the vdisk, then records the size the flushed data covers.
func (h *vhandle) Sync(ctx context.Context) error {
	dev, _ := h.f.device()
	if err := dev.Flush(ctx); err != nil {
		return mapErr(err)
	}
	return h.f.persist(ctx)
}

func (h *vhandle) Punch(ctx context.Context, off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("%w: negative range", iofs.ErrInvalid)
	}
	size := h.f.Size()
	if off >= size || length == 0 {
		return nil
	}
	length = min(length, size-off)
	dev, _ := h.f.device()
	return mapErr(dev.Trim(ctx, off, length))
}

func (h *vhandle) Close() error {
	var err error
	h.once.Do(func() {
		f := h.f
		t := f.t
		t.mu.Lock()
		f.refs--
		last := f.refs == 0
		t.mu.Unlock()
		if !last {
			return
		}
		// The size goes to the store while the file is still in the
		// open map, so a Stat never sees neither.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = f.persist(ctx)
		t.mu.Lock()
		if f.refs > 0 {
			// Opened again meanwhile: it stays.
			t.mu.Unlock()
			return
		}
		delete(t.open, f.id)
		t.mu.Unlock()
		dev, _ := f.device()
		if cerr := dev.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

// --- snapshots

// snapfile is a snapshot view open on this node, shared by its handles.
type snapfile struct {
	key  string
	dev  SnapshotDevice
	size int64
	refs int // under t.mu
}

type snaphandle struct {
	t    *VPool
	f    *snapfile
	once sync.Once
}

func (t *VPool) openSnapshot(ctx context.Context, in VDiskInfo, snap string, size int64) (File, error) {
	key := in.ID + "@" + snap
	t.mu.Lock()
	if f := t.snaps[key]; f != nil {
		f.refs++
		t.mu.Unlock()
		return &snaphandle{t: t, f: f}, nil
	}
	t.mu.Unlock()
	dev, err := t.vd.OpenSnapshot(ctx, in.Name, in.ID, snap)
	if err != nil {
		return nil, mapErr(err)
	}
	f := &snapfile{key: key, dev: dev, size: min(size, dev.Size()), refs: 1}
	t.mu.Lock()
	if g := t.snaps[key]; g != nil {
		g.refs++
		t.mu.Unlock()
		dev.Close()
		return &snaphandle{t: t, f: g}, nil
	}
	t.snaps[key] = f
	t.mu.Unlock()
	return &snaphandle{t: t, f: f}, nil
}

func (h *snaphandle) Size() int64 { return h.f.size }

func (h *snaphandle) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", iofs.ErrInvalid)
	}
	if off >= h.f.size {
		return 0, io.EOF
	}
	n := len(p)
	if rest := h.f.size - off; int64(n) > rest {
		n = int(rest)
	}
	if err := h.f.dev.ReadAt(ctx, p[:n], off); err != nil {
		return 0, mapErr(err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *snaphandle) WriteAt(context.Context, []byte, int64) (int, error) {
	return 0, fmt.Errorf("%w: snapshots are read-only", syscall.EROFS)
}

func (h *snaphandle) Sync(context.Context) error { return nil }

func (h *snaphandle) Punch(context.Context, int64, int64) error {
	return fmt.Errorf("%w: snapshots are read-only", syscall.EROFS)
}

func (h *snaphandle) Close() error {
	var err error
	h.once.Do(func() {
		h.t.mu.Lock()
		h.f.refs--
		last := h.f.refs == 0
		if last {
			delete(h.t.snaps, h.f.key)
		}
		h.t.mu.Unlock()
		if last {
			err = h.f.dev.Close()
		}
	})
	return err
}
