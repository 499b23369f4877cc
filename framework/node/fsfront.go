package node

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
	vfs "github.com/ovs-storage/ovs/volumedriver/fs"
	"github.com/ovs-storage/ovs/volumedriver/fs/fusefs"
)

// The file frontend: the vpool as a tree of files (volumedriver/fs) over
// this node's cluster-wide vdisk service and router, so that the tree on
// any node shows and opens every vdisk of the cluster, with small files
// and file sizes in arakoon.

var _ api.Renamer = (*clusterVDisks)(nil)

// Rename renames a vdisk at its owner: the model first (one atomic step,
// the cluster's truth), then the owner's driver (volume.json). A crash in
// between leaves the model with the new name and volume.json with the old
// one; the router's next resolve of the vdisk finds it by id and has the
// driver follow (followRename), so the vdisk is never under neither name.
func (c *clusterVDisks) Rename(ctx context.Context, from, to string) (volumedriver.VolumeInfo, error) {
	if !volumedriver.ValidName(to) {
		return volumedriver.VolumeInfo{}, fmt.Errorf("%w: vdisk name %q (use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", volumedriver.ErrInvalidArgument, to)
	}
	ov, cl, err := c.owner(ctx, from)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if cl != nil {
		return cl.Rename(ctx, from, to)
	}
	if err := c.rt.store.RenameVDisk(ctx, from, to); err != nil {
		switch {
		case errors.Is(err, model.ErrExists):
			return volumedriver.VolumeInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrExists, to)
		case errors.Is(err, model.ErrNotFound):
			return volumedriver.VolumeInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, from)
		}
		return volumedriver.VolumeInfo{}, err
	}
	c.rt.forget(from)
	info, err := c.rt.drv.Rename(ctx, from, to)
	c.rt.refresh(to)
	if err != nil {
		return volumedriver.VolumeInfo{}, fmt.Errorf("renamed %s to %s in the model; the volume driver follows at the next use: %w", from, to, err)
	}
	return withOwner(info, ov), nil
}

// followRename has the driver serve the vdisk of ov under the model's name
// if it serves it under another (a rename cut short by a crash).
func (r *router) followRename(ctx context.Context, ov model.OwnedVDisk) error {
	old, ok := r.drv.NameOf(ov.ID)
	if !ok || old == ov.Name {
		return nil
	}
	r.log.Warn("the volume driver has the vdisk under its old name; finishing its rename", "from", old, "to", ov.Name)
	_, err := r.drv.Rename(ctx, old, ov.Name)
	return err
}

// fsVDisks is what the tree needs of the cluster's vdisks.
type fsVDisks struct {
	c *clusterVDisks
}

func toFSInfo(in volumedriver.VolumeInfo) vfs.VDiskInfo {
	return vfs.VDiskInfo{Name: in.Name, ID: in.ID, Size: in.Size, Created: in.CreatedAt}
}

func (v fsVDisks) List(ctx context.Context) ([]vfs.VDiskInfo, error) {
	list, err := v.c.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]vfs.VDiskInfo, 0, len(list))
	for _, in := range list {
		if in.State == "creating" {
			continue
		}
		out = append(out, toFSInfo(in))
	}
	return out, nil
}

func (v fsVDisks) Info(ctx context.Context, name string) (vfs.VDiskInfo, error) {
	in, err := v.c.Info(ctx, name)
	return toFSInfo(in), err
}

func (v fsVDisks) Create(ctx context.Context, name string, size int64) (vfs.VDiskInfo, error) {
	in, err := v.c.Create(ctx, name, size, volumedriver.CreateOptions{})
	return toFSInfo(in), err
}

func (v fsVDisks) Resize(ctx context.Context, name string, size int64) error {
	_, err := v.c.Resize(ctx, name, size)
	return err
}

func (v fsVDisks) Delete(ctx context.Context, name string) error { return v.c.Delete(ctx, name, false) }

func (v fsVDisks) Rename(ctx context.Context, from, to string) error {
	_, err := v.c.Rename(ctx, from, to)
	return err
}

func (v fsVDisks) Open(ctx context.Context, name string) (vfs.Device, error) {
	d, err := v.c.rt.open(ctx, name, false)
	if err != nil {
		return nil, err
	}
	return fsDevice{d}, nil
}

func (v fsVDisks) Snapshots(ctx context.Context, name string) ([]vfs.SnapshotInfo, error) {
	list, err := v.c.ListSnapshots(ctx, name)
	if err != nil {
		return nil, err
	}
	out := make([]vfs.SnapshotInfo, len(list))
	for i, s := range list {
		out[i] = vfs.SnapshotInfo{Name: s.Name, Created: s.CreatedAt}
	}
	return out, nil
}

// OpenSnapshot builds the view here from the backend, wherever the vdisk
// lives; a snapshot not yet on the backend is synced there by its owner
// first.
func (v fsVDisks) OpenSnapshot(ctx context.Context, name, id, snapshot string) (vfs.SnapshotDevice, error) {
	sv, err := v.c.rt.drv.OpenSnapshotView(ctx, id, snapshot)
	// The backend's snapshots.json lacks a snapshot until it is
	// uploaded (the caller saw it listed by the owner).
	if errors.Is(err, volumedriver.ErrSnapshotNotSynced) || errors.Is(err, volumedriver.ErrSnapshotNotFound) {
		if err := v.c.Sync(ctx, name); err != nil {
			return nil, fmt.Errorf("sync %s to read snapshot %s: %w", name, snapshot, err)
		}
		sv, err = v.c.rt.drv.OpenSnapshotView(ctx, id, snapshot)
	}
	if err != nil {
		return nil, err
	}
	return sv, nil
}

// fsDevice is a routed vdisk as the tree's Device.
type fsDevice struct{ d *routedDevice }

func (f fsDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	return f.d.ReadAt(ctx, p, off)
}
func (f fsDevice) WriteAt(ctx context.Context, p []byte, off int64) error {
	return f.d.WriteAt(ctx, p, off, false)
}
func (f fsDevice) Flush(ctx context.Context) error { return f.d.Flush(ctx) }
func (f fsDevice) Trim(ctx context.Context, off, length int64) error {
	return f.d.Trim(ctx, off, length)
}
func (f fsDevice) Close() error { f.d.release(); return nil }

// fsStore is the model's KV (arakoon) as the tree's Store.
type fsStore struct{ kv model.KV }

func (s fsStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := s.kv.Get(ctx, key)
	if errors.Is(err, model.ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", iofs.ErrNotExist, err)
	}
	return v, err
}

func (s fsStore) Range(ctx context.Context, prefix string) ([]vfs.Entry, error) {
	ents, err := s.kv.Range(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]vfs.Entry, len(ents))
	for i, e := range ents {
		out[i] = vfs.Entry{Key: e.Key, Value: e.Value}
	}
	return out, nil
}

func (s fsStore) Apply(ctx context.Context, ops ...vfs.Op) error {
	mops := make([]model.Op, len(ops))
	for i, op := range ops {
		k := model.OpSet
		switch op.Kind {
		case vfs.OpDelete:
			k = model.OpDelete
		case vfs.OpAssert:
			k = model.OpAssert
		}
		mops[i] = model.Op{Kind: k, Key: op.Key, Value: op.Value}
	}
	err := s.kv.Apply(ctx, mops...)
	if errors.Is(err, model.ErrConflict) {
		return fmt.Errorf("%w: %w", vfs.ErrConflict, err)
	}
	return err
}

// newVPoolTree is the vpool as files on this node.
func newVPoolTree(vd *clusterVDisks, kv model.KV, log *slog.Logger) *vfs.VPool {
	return vfs.NewVPool(fsVDisks{vd}, fsStore{kv}, vfs.Options{Logger: log})
}

// startMount mounts tree at dir with FUSE ("" : no mount).
func startMount(dir string, tree *vfs.VPool, log *slog.Logger) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	m, err := fusefs.Start(dir, tree, fusefs.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	return func() {
		if err := m.Close(); err != nil {
			log.Error("unmount the vpool", "dir", dir, "err", err)
		}
	}, nil
}
