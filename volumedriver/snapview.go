package volumedriver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

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
//
// A scrub of the vdisk can replace SCOs the snapshot refers to (an SCO
// that also holds clusters overwritten before the snapshot is rewritten as
// a new version, the old one deleted once snapshots.json names the
// rewritten TLogs). The owner cannot know of views on other hosts, so the
// view does not pin anything: a read that finds an object gone rebuilds
// the view from the backend's current snapshots.json, whose TLogs name
// where the clusters are now, and reads again.
type SnapshotView struct {
	d        *Driver
	id       string
	snapshot string
	size     int64

	rebuildMu sync.Mutex // one rebuild at a time

	mu     sync.RWMutex // held for reading by every read; guards the fields below
	v      *Volume
	tlogs  []string // the snapshot's TLogs the view was built from
	gen    int      // bumped at each rebuild
	closed bool
}

// ErrSnapshotNotSynced: the snapshot is not on the backend yet; sync the
// vdisk (at its owner) and try again.
var ErrSnapshotNotSynced = errors.New("snapshot is not on the backend yet")

// OpenSnapshotView opens snapshot of the vdisk with namespace id, from
// the backend.
func (d *Driver) OpenSnapshotView(ctx context.Context, id, snapshot string) (*SnapshotView, error) {
	v, size, tlogs, err := d.buildSnapshotView(ctx, id, snapshot)
	if err != nil {
		return nil, err
	}
	return &SnapshotView{d: d, id: id, snapshot: snapshot, size: size, v: v, tlogs: tlogs}, nil
}

// buildSnapshotView replays the snapshot's TLogs, as the backend's
// snapshots.json names them now, into a private volume. It returns the
// volume, the vdisk's size and the snapshot's TLogs.
func (d *Driver) buildSnapshotView(ctx context.Context, id, snapshot string) (*Volume, int64, []string, error) {
	if !validID(id) {
		return nil, 0, nil, fmt.Errorf("%w: vdisk id %q", ErrInvalidArgument, id)
	}
	ns := namespacePrefix + id
	b, err := d.backend.Get(ctx, ns, volumeObject)
	if errors.Is(err, scos.ErrObjectNotFound) || errors.Is(err, scos.ErrNamespaceNotFound) {
		return nil, 0, nil, fmt.Errorf("%w: no vdisk with id %s on the backend", ErrNotFound, id)
	}
	if err != nil {
		return nil, 0, nil, fmt.Errorf("snapshot view of %s: %w", id, err)
	}
	pcfg, err := decodeVolumeConfig(b)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("snapshot view of %s: %w", id, err)
	}
	b, err = d.backend.Get(ctx, ns, snapshotsObject)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("snapshot view of %s: read snapshots.json: %w", pcfg.Name, err)
	}
	snaps, err := decodeSnapshotsFile(b)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("snapshot view of %s: %w", pcfg.Name, err)
	}
	var sn *snapshotRecord
	for i := range snaps.Snapshots {
		if snaps.Snapshots[i].Name == snapshot {
			sn = &snaps.Snapshots[i]
		}
	}
	if sn == nil {
		return nil, 0, nil, fmt.Errorf("%w: %s@%s", ErrSnapshotNotFound, pcfg.Name, snapshot)
	}
	if sn.TLogCount > len(snaps.TLogs) {
		return nil, 0, nil, fmt.Errorf("%s@%s: %w", pcfg.Name, snapshot, ErrSnapshotNotSynced)
	}
	if len(pcfg.Ancestors)+1 > MaxCloneDepth {
		return nil, 0, nil, fmt.Errorf("%w: %s is too deep a clone for a snapshot view", ErrInvalidArgument, pcfg.Name)
	}
	tlogs := append([]string(nil), snaps.TLogs[:sn.TLogCount]...)
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
			TLogs: tlogs,
		}}, pcfg.Ancestors...),
	}
	v := d.newVolume(cfg, 0)
	v.dir = filepath.Join(d.dir, snapViewDir, cfg.ID)
	v.countChanges = false
	fail := func(err error) (*Volume, int64, []string, error) {
		v.closeFiles()
		os.RemoveAll(v.dir)
		return nil, 0, nil, fmt.Errorf("snapshot view of %s@%s: %w", pcfg.Name, snapshot, err)
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
	return v, pcfg.Size, tlogs, nil
}

// Size is the vdisk's size when the view was opened (a vdisk only grows,
// and what lies past its size at the snapshot reads as zeros).
func (s *SnapshotView) Size() int64 { return s.size }

// ReadAt reads the snapshot's content. An object gone from the backend
// (replaced by a scrub) makes the view rebuild once from the backend's
// current TLogs and read again.
func (s *SnapshotView) ReadAt(ctx context.Context, p []byte, off int64) error {
	const attempts = 3
	var err error
	for range attempts {
		s.mu.RLock()
		if s.closed {
			s.mu.RUnlock()
			return fmt.Errorf("snapshot view %s: %w", s.snapshot, ErrClosed)
		}
		gen := s.gen
		err = s.v.readAt(ctx, p, off)
		s.mu.RUnlock()
		if err == nil || !errors.Is(err, scos.ErrObjectNotFound) || ctx.Err() != nil {
			return err
		}
		// A TLog gone while rebuilding (another scrub) tries again.
		if rerr := s.rebuild(ctx, gen); rerr != nil && !errors.Is(rerr, scos.ErrObjectNotFound) {
			return fmt.Errorf("%w (and rebuilding the snapshot view failed: %v)", err, rerr)
		}
	}
	return err
}

// errViewCurrent: the backend names the same TLogs the view was built
// from, so a rebuild cannot help.
var errViewCurrent = errors.New("the snapshot's TLogs on the backend are those the view was built from")

// rebuild replaces the view's volume by one built from the backend's
// current snapshots.json, unless a rebuild after generation gen already
// did.
func (s *SnapshotView) rebuild(ctx context.Context, gen int) error {
	s.rebuildMu.Lock()
	defer s.rebuildMu.Unlock()
	s.mu.RLock()
	done, tlogs := s.gen != gen, s.tlogs
	s.mu.RUnlock()
	if done {
		return nil
	}
	nv, _, ntlogs, err := s.d.buildSnapshotView(ctx, s.id, s.snapshot)
	if err != nil {
		return err
	}
	if slices.Equal(ntlogs, tlogs) {
		closeViewVolume(nv)
		return errViewCurrent
	}
	s.d.log.Info("snapshot view rebuilt: the vdisk was scrubbed since it was opened", "vdisk", nv.name(), "snapshot", s.snapshot)
	// The write lock waits for the reads on the old volume to end.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		closeViewVolume(nv)
		return fmt.Errorf("snapshot view %s: %w", s.snapshot, ErrClosed)
	}
	old := s.v
	s.v, s.tlogs = nv, ntlogs
	s.gen++
	s.mu.Unlock()
	closeViewVolume(old)
	return nil
}

// closeViewVolume drops a view's volume and its scratch metadata.
func closeViewVolume(v *Volume) error {
	v.mu.Lock()
	v.closed = true
	v.closeFilesLocked()
	v.mu.Unlock()
	return os.RemoveAll(v.dir)
}

// Close drops the view and its scratch metadata.
func (s *SnapshotView) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return closeViewVolume(s.v)
}
