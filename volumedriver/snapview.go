package volumedriver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ovs-storage/ovs/scos"
)

// snapViewDir holds the metadata of open snapshot views; it is scratch,
// emptied at every start.
const snapViewDir = "snapviews"

// SnapshotView is a read-only view of a vdisk as of one of its snapshots.
// It is built the way a clone is: the vdisk becomes the view's only
// "parent" (followed by the vdisk's own ancestors), its TLogs up to the
// snapshot are replayed into a private metadata store, and reads resolve
// every cluster to the parent's namespace on the backend. So it needs
// nothing of the vdisk's owner and works on any host, once the snapshot is
// on the backend.
//
// Opening one costs a read of the snapshot's TLogs from the backend and a
// metadata store of the vdisk's size on the local disk (under
// dir/snapviews, removed on Close); reads cost what a clone's reads of
// inherited clusters cost (the read caches apply).
type SnapshotView struct {
	v    *Volume
	size int64
}

// ErrSnapshotNotSynced: the snapshot is not on the backend yet; sync the
// vdisk (at its owner) and try again.
var ErrSnapshotNotSynced = errors.New("snapshot is not on the backend yet")

// OpenSnapshotView opens snapshot of the vdisk with namespace id, from
// the backend.
func (d *Driver) OpenSnapshotView(ctx context.Context, id, snapshot string) (*SnapshotView, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: vdisk id %q", ErrInvalidArgument, id)
	}
	ns := namespacePrefix + id
	b, err := d.backend.Get(ctx, ns, volumeObject)
	if errors.Is(err, scos.ErrObjectNotFound) || errors.Is(err, scos.ErrNamespaceNotFound) {
		return nil, fmt.Errorf("%w: no vdisk with id %s on the backend", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot view of %s: %w", id, err)
	}
	pcfg, err := decodeVolumeConfig(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot view of %s: %w", id, err)
	}
	b, err = d.backend.Get(ctx, ns, snapshotsObject)
	if err != nil {
		return nil, fmt.Errorf("snapshot view of %s: read snapshots.json: %w", pcfg.Name, err)
	}
	snaps, err := decodeSnapshotsFile(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot view of %s: %w", pcfg.Name, err)
	}
	var sn *snapshotRecord
	for i := range snaps.Snapshots {
		if snaps.Snapshots[i].Name == snapshot {
			sn = &snaps.Snapshots[i]
		}
	}
	if sn == nil {
		return nil, fmt.Errorf("%w: %s@%s", ErrSnapshotNotFound, pcfg.Name, snapshot)
	}
	if sn.TLogCount > len(snaps.TLogs) {
		return nil, fmt.Errorf("%s@%s: %w", pcfg.Name, snapshot, ErrSnapshotNotSynced)
	}
	if len(pcfg.Ancestors)+1 > MaxCloneDepth {
		return nil, fmt.Errorf("%w: %s is too deep a clone for a snapshot view", ErrInvalidArgument, pcfg.Name)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	cfg := volumeConfig{
		Format:         formatVersion,
		ID:             "view-" + hex.EncodeToString(rnd[:]),
		Name:           pcfg.Name,
		Size:           pcfg.Size,
		ClusterSize:    pcfg.ClusterSize,
		SCOMultiplier:  pcfg.SCOMultiplier,
		TLogMultiplier: pcfg.TLogMultiplier,
		CreatedAt:      sn.CreatedAt,
		Ancestors: append([]ancestor{{
			ID: pcfg.ID, Name: pcfg.Name, Namespace: ns, Snapshot: snapshot,
			TLogs: append([]string(nil), snaps.TLogs[:sn.TLogCount]...),
		}}, pcfg.Ancestors...),
	}
	v := d.newVolume(cfg, 0)
	v.dir = filepath.Join(d.dir, snapViewDir, cfg.ID)
	v.countChanges = false
	fail := func(err error) (*SnapshotView, error) {
		v.closeFiles()
		os.RemoveAll(v.dir)
		return nil, fmt.Errorf("snapshot view of %s@%s: %w", pcfg.Name, snapshot, err)
	}
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return fail(err)
	}
	if err := v.openMetadata(); err != nil {
		return fail(err)
	}
	v.mu.Lock()
	err = v.replayAncestors(ctx)
	v.mu.Unlock()
	if err != nil {
		return fail(err)
	}
	return &SnapshotView{v: v, size: pcfg.Size}, nil
}

// Size is the vdisk's size when the view was opened (a vdisk only grows,
// and what lies past its size at the snapshot reads as zeros).
func (s *SnapshotView) Size() int64 { return s.size }

// ReadAt reads the snapshot's content.
func (s *SnapshotView) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.v.readAt(ctx, p, off)
}

// Close drops the view and its scratch metadata.
func (s *SnapshotView) Close() error {
	s.v.mu.Lock()
	s.v.closed = true
	s.v.closeFilesLocked()
	s.v.mu.Unlock()
	return os.RemoveAll(s.v.dir)
}
