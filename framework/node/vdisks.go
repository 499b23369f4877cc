package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/volumedriver"
)

// clusterVDisks is the REST API's view of the vpool from any node: calls
// on a vdisk this node owns go to the local driver, calls on one owned
// elsewhere to the owner's REST API, so every node gives the same answers.
type clusterVDisks struct{ rt *router }

var _ api.VDisks = (*clusterVDisks)(nil)
var _ api.Cluster = (*clusterVDisks)(nil)

// errMoving: a forwarded call reached a node that is not the owner (the
// vdisk moved in between); the caller retries.
var errMoving = fmt.Errorf("%w: the vdisk is moving between nodes; retry", api.ErrUnavailable)

// owner finds where name lives: a nil client means it is served here
// (and is brought up if it was not yet).
func (c *clusterVDisks) owner(ctx context.Context, name string) (model.OwnedVDisk, *api.Client, error) {
	ov, err := c.rt.store.VDisk(ctx, name)
	if errors.Is(err, model.ErrNotFound) {
		return ov, nil, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	if err != nil {
		return ov, nil, err
	}
	if ov.Owner.Node == c.rt.self {
		if _, err := c.rt.ensureLocal(ctx, ov); err != nil {
			return ov, nil, err
		}
		return ov, nil, nil
	}
	if api.IsForwarded(ctx) {
		// One hop only: the node that sent this thought we own it.
		return ov, nil, errMoving
	}
	cl, err := c.rt.apiOf(ctx, ov.Owner.Node)
	if err != nil {
		return ov, nil, err
	}
	return ov, cl, nil
}

func withOwner(in volumedriver.VolumeInfo, ov model.OwnedVDisk) volumedriver.VolumeInfo {
	in.Owner, in.OwnerEpoch = ov.Owner.Node, ov.Owner.Epoch
	return in
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (c *clusterVDisks) Create(ctx context.Context, name string, size int64, opts volumedriver.CreateOptions) (volumedriver.VolumeInfo, error) {
	if !volumedriver.ValidName(name) {
		return volumedriver.VolumeInfo{}, fmt.Errorf("%w: vdisk name %q (use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", volumedriver.ErrInvalidArgument, name)
	}
	return c.create(ctx, name, func(id string, epoch uint64) (volumedriver.VolumeInfo, error) {
		opts.ID, opts.Epoch = id, epoch
		return c.rt.drv.Create(ctx, name, size, opts)
	})
}

// create reserves name in the model, owned by this node, raises the fence
// and has make create the vdisk; on failure the reservation goes.
func (c *clusterVDisks) create(ctx context.Context, name string, make func(id string, epoch uint64) (volumedriver.VolumeInfo, error)) (volumedriver.VolumeInfo, error) {
	id := newID()
	ov, err := c.rt.store.ReserveVDisk(ctx, name, id, c.rt.self, 1, model.VDiskCreating)
	if errors.Is(err, model.ErrExists) {
		return volumedriver.VolumeInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrExists, name)
	}
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	setFence(c.rt.fencer, ov)
	info, err := make(id, ov.Owner.Epoch)
	if err != nil {
		clearFence(c.rt.fencer, id)
		if derr := c.rt.store.DeleteVDisk(context.WithoutCancel(ctx), name); derr != nil {
			c.rt.log.Error("dropping the reservation of a vdisk whose create failed", "vdisk", name, "err", derr)
		}
		return volumedriver.VolumeInfo{}, err
	}
	if err := c.rt.store.SetVDiskState(ctx, name, model.VDiskReady); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	c.rt.refresh(name)
	return withOwner(info, ov), nil
}

func (c *clusterVDisks) List(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	all, err := c.rt.store.VDisks(ctx)
	if err != nil {
		return nil, err
	}
	byNode := map[string][]model.OwnedVDisk{}
	for _, ov := range all {
		byNode[ov.Owner.Node] = append(byNode[ov.Owner.Node], ov)
	}
	var out []volumedriver.VolumeInfo
	for node, ovs := range byNode {
		infos := map[string]volumedriver.VolumeInfo{}
		var lerr error
		if node == c.rt.self {
			var list []volumedriver.VolumeInfo
			if list, lerr = c.rt.drv.List(ctx); lerr == nil {
				for _, in := range list {
					infos[in.Name] = in
				}
			}
		} else if cl, err := c.rt.apiOf(ctx, node); err != nil {
			lerr = err
		} else {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			list, err := cl.ListLocal(lctx)
			cancel()
			lerr = err
			for _, in := range list {
				infos[in.Name] = in
			}
		}
		for _, ov := range ovs {
			in, ok := infos[ov.Name]
			switch {
			case ok && in.ID == ov.ID:
			case ov.State == model.VDiskCreating:
				in = volumedriver.VolumeInfo{Name: ov.Name, ID: ov.ID, State: "creating"}
			case lerr != nil:
				in = volumedriver.VolumeInfo{Name: ov.Name, ID: ov.ID, State: "unreachable: " + lerr.Error()}
			default:
				in = volumedriver.VolumeInfo{Name: ov.Name, ID: ov.ID, State: "starting"}
			}
			out = append(out, withOwner(in, ov))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ListLocal lists the vdisks served by this node (the other nodes' List
// asks each node for this).
func (c *clusterVDisks) ListLocal(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	return c.rt.drv.List(ctx)
}

func (c *clusterVDisks) Info(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	ov, cl, err := c.owner(ctx, name)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	var in volumedriver.VolumeInfo
	if cl != nil {
		in, err = cl.Info(ctx, name)
	} else {
		in, err = c.rt.drv.Info(ctx, name)
	}
	return withOwner(in, ov), err
}

func (c *clusterVDisks) Delete(ctx context.Context, name string, force bool) error {
	ov, cl, err := c.owner(ctx, name)
	if err != nil {
		return err
	}
	if cl != nil {
		return cl.Delete(ctx, name, force)
	}
	if err := c.rt.drv.Delete(ctx, name, force); err != nil {
		return err
	}
	clearFence(c.rt.fencer, ov.ID)
	c.rt.forget(name)
	return c.rt.store.DeleteVDisk(ctx, name)
}

// onOwner runs local on this node if it owns name, else remote against
// the owner's API.
func onOwner[T any](c *clusterVDisks, ctx context.Context, name string,
	local func() (T, error), remote func(*api.Client) (T, error)) (T, error) {
	ov, cl, err := c.owner(ctx, name)
	if err != nil {
		var zero T
		return zero, err
	}
	if cl != nil {
		// Its progress is on the owner; a job here only says where.
		progress.From(ctx).Start("on node "+ov.Owner.Node, "", 0)
		return remote(cl)
	}
	return local()
}

func (c *clusterVDisks) Resize(ctx context.Context, name string, size int64) (volumedriver.VolumeInfo, error) {
	return onOwner(c, ctx, name, func() (volumedriver.VolumeInfo, error) { return c.rt.drv.Resize(ctx, name, size) },
		func(cl *api.Client) (volumedriver.VolumeInfo, error) { return cl.Resize(ctx, name, size) })
}

func (c *clusterVDisks) Sync(ctx context.Context, name string) error {
	_, err := onOwner(c, ctx, name, func() (struct{}, error) { return struct{}{}, c.rt.drv.Sync(ctx, name) },
		func(cl *api.Client) (struct{}, error) { return struct{}{}, cl.Sync(ctx, name) })
	return err
}

func (c *clusterVDisks) CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (volumedriver.SnapshotInfo, error) {
	return onOwner(c, ctx, vdisk, func() (volumedriver.SnapshotInfo, error) {
		return c.rt.drv.CreateSnapshot(ctx, vdisk, snapshot, metadata)
	}, func(cl *api.Client) (volumedriver.SnapshotInfo, error) {
		return cl.CreateSnapshot(ctx, vdisk, snapshot, metadata)
	})
}

func (c *clusterVDisks) ListSnapshots(ctx context.Context, vdisk string) ([]volumedriver.SnapshotInfo, error) {
	return onOwner(c, ctx, vdisk, func() ([]volumedriver.SnapshotInfo, error) { return c.rt.drv.ListSnapshots(ctx, vdisk) },
		func(cl *api.Client) ([]volumedriver.SnapshotInfo, error) { return cl.ListSnapshots(ctx, vdisk) })
}

func (c *clusterVDisks) DeleteSnapshot(ctx context.Context, vdisk, snapshot string) error {
	_, err := onOwner(c, ctx, vdisk, func() (struct{}, error) { return struct{}{}, c.rt.drv.DeleteSnapshot(ctx, vdisk, snapshot) },
		func(cl *api.Client) (struct{}, error) { return struct{}{}, cl.DeleteSnapshot(ctx, vdisk, snapshot) })
	return err
}

func (c *clusterVDisks) Rollback(ctx context.Context, vdisk, snapshot string, force bool) error {
	_, err := onOwner(c, ctx, vdisk, func() (struct{}, error) { return struct{}{}, c.rt.drv.Rollback(ctx, vdisk, snapshot, force) },
		func(cl *api.Client) (struct{}, error) { return struct{}{}, cl.Rollback(ctx, vdisk, snapshot, force) })
	return err
}

// Clone is made by the parent's owner (it reads the parent's snapshot),
// which then owns the clone.
func (c *clusterVDisks) Clone(ctx context.Context, name, parent, snapshot string) (volumedriver.VolumeInfo, error) {
	return onOwner(c, ctx, parent, func() (volumedriver.VolumeInfo, error) {
		if !volumedriver.ValidName(name) {
			return volumedriver.VolumeInfo{}, fmt.Errorf("%w: vdisk name %q", volumedriver.ErrInvalidArgument, name)
		}
		return c.create(ctx, name, func(id string, epoch uint64) (volumedriver.VolumeInfo, error) {
			return c.rt.drv.CloneWith(ctx, name, parent, snapshot, volumedriver.CloneOptions{ID: id, Epoch: epoch})
		})
	}, func(cl *api.Client) (volumedriver.VolumeInfo, error) { return cl.Clone(ctx, name, parent, snapshot) })
}

func (c *clusterVDisks) Flatten(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	return onOwner(c, ctx, name, func() (volumedriver.VolumeInfo, error) { return c.rt.drv.Flatten(ctx, name) },
		func(cl *api.Client) (volumedriver.VolumeInfo, error) { return cl.Flatten(ctx, name) })
}

func (c *clusterVDisks) SetTemplate(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	return onOwner(c, ctx, name, func() (volumedriver.VolumeInfo, error) { return c.rt.drv.SetTemplate(ctx, name) },
		func(cl *api.Client) (volumedriver.VolumeInfo, error) { return cl.SetTemplate(ctx, name) })
}

func (c *clusterVDisks) Scrub(ctx context.Context, name string) (volumedriver.ScrubResult, error) {
	return onOwner(c, ctx, name, func() (volumedriver.ScrubResult, error) { return c.rt.drv.Scrub(ctx, name) },
		func(cl *api.Client) (volumedriver.ScrubResult, error) { return cl.Scrub(ctx, name) })
}

// --- api.Cluster

func (c *clusterVDisks) Nodes(ctx context.Context) ([]api.NodeInfo, error) {
	nodes, err := c.rt.store.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	beats, err := c.rt.store.Heartbeats(ctx)
	if err != nil {
		return nil, err
	}
	all, err := c.rt.store.VDisks(ctx)
	if err != nil {
		return nil, err
	}
	owned := map[string]int{}
	for _, v := range all {
		owned[v.Owner.Node]++
	}
	out := make([]api.NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		in := api.NodeInfo{ID: n.ID, Site: n.Site, API: n.API, NBD: n.NBD, Forward: n.Forward, DTL: n.DTL, ISCSI: n.ISCSI, ASDs: n.ASDs,
			Joined: n.Joined, VDisks: owned[n.ID], State: "down"}
		if b, ok := beats[n.ID]; ok {
			in.LastSeen = b.At
			// Alive if it beat within a few intervals (heartbeats come
			// every 2s by default).
			if time.Since(b.At) < 10*time.Second {
				in.State = "up"
			}
		}
		out = append(out, in)
	}
	return out, nil
}

// Move hands a vdisk to node to. The owner does the handover; any other
// node passes the call on. With force the owner record changes without
// the owner's help (it is down or frozen): what it had not uploaded is
// lost, and it is fenced.
func (c *clusterVDisks) Move(ctx context.Context, name, to string, force bool) (api.MoveResult, error) {
	ov, err := c.rt.store.VDisk(ctx, name)
	if errors.Is(err, model.ErrNotFound) {
		return api.MoveResult{}, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	if err != nil {
		return api.MoveResult{}, err
	}
	if _, err := c.rt.store.Node(ctx, to); err != nil {
		return api.MoveResult{}, fmt.Errorf("%w: node %q is not part of the cluster", volumedriver.ErrInvalidArgument, to)
	}
	res := api.MoveResult{VDisk: name, From: ov.Owner.Node, To: to}
	if ov.Owner.Node == to {
		res.Epoch = ov.Owner.Epoch
		return res, nil
	}
	start := time.Now()
	switch {
	case force:
		o, _, err := c.rt.store.ChangeOwner(ctx, ov.ID, ov.OwnerRaw, to, model.ForcedTakeover)
		if err != nil {
			return res, err
		}
		res.Epoch = o.Epoch
		if cl, err := c.rt.apiOf(ctx, to); err == nil {
			if _, err := cl.Adopt(ctx, name); err != nil {
				c.rt.log.Warn("the new owner did not adopt the vdisk at once", "vdisk", name, "to", to, "err", err)
			}
		}
	case ov.Owner.Node == c.rt.self:
		if _, err := c.rt.ensureLocal(ctx, ov); err != nil {
			return res, err
		}
		mt, err := c.rt.move(ctx, ov, to)
		if err != nil {
			return res, err
		}
		res.Epoch = ov.Owner.Epoch + 1
		res.HeldIO, res.Release, res.Adopt = mt.held, mt.release, mt.adopt
	default:
		if api.IsForwarded(ctx) {
			return res, errMoving
		}
		cl, err := c.rt.apiOf(ctx, ov.Owner.Node)
		if err != nil {
			return res, err
		}
		progress.From(ctx).Start("on node "+ov.Owner.Node, "", 0)
		return cl.Move(ctx, name, to, false)
	}
	res.Took = time.Since(start)
	c.rt.log.Info("vdisk moved", "vdisk", name, "from", res.From, "to", to, "epoch", res.Epoch, "force", force,
		"took", res.Took.Round(time.Millisecond), "io_held", res.HeldIO.Round(time.Millisecond),
		"release", res.Release.Round(time.Millisecond), "adopt", res.Adopt.Round(time.Millisecond))
	return res, nil
}

// Adopt brings a vdisk the model gives this node up now.
func (c *clusterVDisks) Adopt(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	ov, err := c.rt.store.VDisk(ctx, name)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if ov.Owner.Node != c.rt.self {
		return volumedriver.VolumeInfo{}, fmt.Errorf("%w: %s is owned by %s", volumedriver.ErrInvalidArgument, name, ov.Owner.Node)
	}
	if _, err := c.rt.ensureLocal(ctx, ov); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	c.rt.refresh(name)
	in, err := c.rt.drv.Info(ctx, name)
	return withOwner(in, ov), err
}

// SetDTL records vdisk name's DTL mode in the model and has its owner
// switch to it.
func (c *clusterVDisks) SetDTL(ctx context.Context, name, mode string) (volumedriver.VolumeInfo, error) {
	m, err := volumedriver.ParseDTLMode(mode)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if !api.IsForwarded(ctx) {
		if err := c.rt.store.SetVDiskDTLMode(ctx, name, string(m)); err != nil {
			if errors.Is(err, model.ErrNotFound) {
				return volumedriver.VolumeInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
			}
			return volumedriver.VolumeInfo{}, err
		}
	}
	return onOwner(c, ctx, name, func() (volumedriver.VolumeInfo, error) {
		if err := c.rt.drv.SetDTLMode(name, m); err != nil {
			return volumedriver.VolumeInfo{}, err
		}
		return c.Info(ctx, name)
	}, func(cl *api.Client) (volumedriver.VolumeInfo, error) { return cl.SetDTL(ctx, name, string(m)) })
}

// SetCHAP keeps a target's CHAP secrets in the model, where every node's
// iSCSI target reads them at login.
func (c *clusterVDisks) SetCHAP(ctx context.Context, name string, req api.CHAPRequest) error {
	id := ""
	if name != "" {
		ov, err := c.rt.store.VDisk(ctx, name)
		if errors.Is(err, model.ErrNotFound) {
			return fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		id = ov.ID
	}
	return c.rt.store.SetCHAP(ctx, id, model.CHAP{User: req.User, Secret: req.Secret,
		MutualUser: req.MutualUser, MutualSecret: req.MutualSecret})
}
