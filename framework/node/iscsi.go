package node

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/iscsi"
	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// iscsiTargets serves every ready vdisk of the cluster as an iSCSI target
// (LUN 0), wherever it lives: I/O goes through the router like NBD's.
type iscsiTargets struct {
	r      *router
	vdisks *clusterVDisks

	mu  sync.Mutex
	prs map[string]*scsi.Reservations // by vdisk id: shared by its sessions here
}

func newISCSITargets(r *router, vd *clusterVDisks) *iscsiTargets {
	return &iscsiTargets{r: r, vdisks: vd, prs: map[string]*scsi.Reservations{}}
}

func (t *iscsiTargets) ListTargets(ctx context.Context) ([]string, error) {
	return readyVDisks(ctx, t.r.store)
}

// ErrUnknownTarget: no vdisk by the name a login asked for.
var ErrUnknownTarget = errors.New("no such target")

func (t *iscsiTargets) OpenLU(ctx context.Context, name string) (*scsi.LU, func(), error) {
	ov, err := t.r.store.VDisk(ctx, name)
	if errors.Is(err, model.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: %s", ErrUnknownTarget, name)
	}
	if err != nil {
		return nil, nil, err
	}
	if ov.State != model.VDiskReady {
		return nil, nil, fmt.Errorf("%w: %s is %s", ErrUnknownTarget, name, ov.State)
	}
	info, err := t.vdisks.Info(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	d, err := t.r.open(ctx, name, false)
	if err != nil {
		if errors.Is(err, volumedriver.ErrNotFound) {
			return nil, nil, fmt.Errorf("%w: %s", ErrUnknownTarget, name)
		}
		return nil, nil, err
	}
	lu := &scsi.LU{Dev: d, ReadOnly: info.Template, Product: "OVS vdisk", Serial: ov.ID,
		ID: naaLocal(ov.ID), PR: t.reservations(ov.ID)}
	return lu, d.release, nil
}

// CHAP returns the secrets a login to target must prove (discovery for
// ""): the vdisk's, kept in the model by its namespace id.
func (t *iscsiTargets) CHAP(ctx context.Context, target string) (iscsi.CHAP, error) {
	id := ""
	if target != "" {
		ov, err := t.r.store.VDisk(ctx, target)
		if errors.Is(err, model.ErrNotFound) {
			return iscsi.CHAP{}, fmt.Errorf("%w: %s", ErrUnknownTarget, target)
		}
		if err != nil {
			return iscsi.CHAP{}, err
		}
		id = ov.ID
	}
	c, err := t.r.store.CHAP(ctx, id)
	if err != nil {
		return iscsi.CHAP{}, err
	}
	return iscsi.CHAP{User: c.User, Secret: c.Secret, MutualUser: c.MutualUser, MutualSecret: c.MutualSecret}, nil
}

// dropGone ends the iSCSI sessions whose vdisk is gone from the model
// (all): deleted, no longer ready, or deleted and made again under the
// same name (another id), so that an old session never reaches another
// vdisk. The reservation state of vdisks gone goes too.
func (t *iscsiTargets) dropGone(srv *iscsi.Server, all []model.OwnedVDisk) {
	ids := make(map[string]string, len(all))
	live := make(map[string]bool, len(all))
	for _, v := range all {
		live[v.ID] = true
		if v.State == model.VDiskReady {
			ids[v.Name] = v.ID
		}
	}
	srv.DropSessions(func(target string, lu *scsi.LU) bool { return ids[target] != lu.Serial })
	t.mu.Lock()
	defer t.mu.Unlock()
	for id := range t.prs {
		if !live[id] {
			delete(t.prs, id)
		}
	}
}

// reservations returns the one Reservations of vdisk id on this node, so
// that its sessions here share one cached state.
func (t *iscsiTargets) reservations(id string) *scsi.Reservations {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.prs[id]
	if !ok {
		r = scsi.NewReservations(modelPRStore{t.r.store, id}).WithLogger(t.r.log.With("frontend", "iscsi", "vdisk_id", id))
		t.prs[id] = r
	}
	return r
}

// naaLocal is the vdisk's 8-byte NAA identifier (VPD page 0x83): NAA 3,
// locally assigned, from a hash of its namespace id, so that it is the
// same on every node and after every restart (multipath and VMware key
// LUNs by it) and differs between vdisks.
func naaLocal(id string) [8]byte {
	h := sha256.Sum256([]byte("ovs vdisk " + id))
	v := binary.BigEndian.Uint64(h[:8])&(1<<60-1) | 3<<60
	var out [8]byte
	binary.BigEndian.PutUint64(out[:], v)
	return out
}

// modelPRStore keeps a vdisk's persistent reservations in the cluster's
// model, so that every node serving the vdisk sees one state.
type modelPRStore struct {
	store *model.Store
	id    string
}

func (s modelPRStore) Load(ctx context.Context) ([]byte, error) { return s.store.PR(ctx, s.id) }

func (s modelPRStore) CompareAndSwap(ctx context.Context, old, new []byte) (bool, error) {
	return s.store.SwapPR(ctx, s.id, old, new)
}

// readyVDisks names the vdisks that clients may open (discovery).
func readyVDisks(ctx context.Context, store *model.Store) ([]string, error) {
	all, err := store.VDisks(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(all))
	for _, v := range all {
		if v.State == model.VDiskReady {
			names = append(names, v.Name)
		}
	}
	return names, nil
}
