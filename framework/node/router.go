package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/nbd"
	"github.com/ovs-storage/ovs/volumedriver/remote"
)

// The router sends each I/O of a vdisk to where the vdisk lives: the
// local volume if this node owns it, else the owner over the forwarding
// protocol. Every node exports every vdisk this way, so a client does not
// care where a vdisk lives, and a vdisk can move under a connected client:
// the old owner holds new I/O at the route's gate while it hands the vdisk
// over, then lets it through to the new owner.

// ErrFenced is what I/O on a connection gets once the vdisk it was served
// from here was taken away from this node without a handover: the client
// must not see the new owner's older data silently.
var ErrFenced = errors.New("this node lost the vdisk without a handover; reconnect")

type routerConfig struct {
	self        string
	store       *model.Store
	fencer      scos.Fencer
	log         *slog.Logger
	retryWindow time.Duration
	cluster     model.Cluster
	dtlReadWait time.Duration
	live        *liveness
}

type router struct {
	routerConfig
	drv        *volumedriver.Driver
	drvReady   chan struct{} // closed once drv is set
	forwardTLS *tls.Config
	apiToken   string

	mu      sync.Mutex
	routes  map[string]*route         // by vdisk name
	clients map[string]*remote.Client // forwarding clients by node id
	apis    map[string]*api.Client    // REST clients by node id
	adopts  map[string]*adoptCall     // adoptions in progress by vdisk id
	moving  map[string]bool           // vdisks this node is handing over, by name
	closed  bool

	// sawVDisks, if set before watchOwners starts, is given every list
	// of the vdisks the owner check reads (the frontends drop what is
	// gone).
	sawVDisks func([]model.OwnedVDisk)
}

// route is where one vdisk's I/O goes.
type route struct {
	name string
	// gate: I/O on the local volume holds it shared; a handover holds it
	// exclusively, so I/O waits instead of failing.
	gate  sync.RWMutex
	local *volumedriver.Volume // under gate: served here
	id    string               // under gate
	owner string               // under gate: the owner when not local
	epoch uint64               // under gate: the owner's epoch
	// forcedAt (under gate) is the latest epoch this node saw begin
	// without a handover: devices opened before it were writing through
	// an owner whose unuploaded writes are gone, and get errors.
	forcedAt uint64
	stale    bool // under gate: resolve again before use
	// tenure grows when this node loses the vdisk without a handover;
	// devices opened before then fail every I/O.
	tenure atomic.Uint64
}

type adoptCall struct {
	done chan struct{}
	err  error
}

func newRouter(cfg routerConfig) *router {
	return &router{routerConfig: cfg, drvReady: make(chan struct{}), routes: map[string]*route{}, clients: map[string]*remote.Client{},
		apis: map[string]*api.Client{}, adopts: map[string]*adoptCall{}, moving: map[string]bool{}}
}

func (r *router) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, c := range r.clients {
		c.Close()
	}
	r.clients = map[string]*remote.Client{}
}

// routeOf returns the vdisk's route, resolved.
func (r *router) routeOf(ctx context.Context, name string) (*route, error) {
	rt := r.routeFor(name)
	return rt, r.fresh(ctx, rt)
}

// routeFor returns the vdisk's route as it is (a new one is stale).
func (r *router) routeFor(name string) *route {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.routes[name]
	if rt == nil {
		rt = &route{name: name, stale: true}
		r.routes[name] = rt
	}
	return rt
}

// fresh resolves rt again if it is stale.
func (r *router) fresh(ctx context.Context, rt *route) error {
	rt.gate.RLock()
	stale := rt.stale
	rt.gate.RUnlock()
	if !stale {
		return nil
	}
	return r.resolve(ctx, rt)
}

// resolve reads the vdisk's owner from the model and points the route at
// the local volume (adopting it if the model gave it to this node) or at
// the owner.
func (r *router) resolve(ctx context.Context, rt *route) error {
	ov, err := r.store.VDisk(ctx, rt.name)
	if errors.Is(err, model.ErrNotFound) {
		r.forget(rt.name)
		return fmt.Errorf("%w: %s", volumedriver.ErrNotFound, rt.name)
	}
	if err != nil {
		return err
	}
	var local *volumedriver.Volume
	if ov.Owner.Node == r.self {
		if local, err = r.ensureLocal(ctx, ov); err != nil {
			if errors.Is(err, ec.ErrObjectUnavailable) || errors.Is(err, asd.ErrUnavailable) || errors.Is(err, ec.ErrInsufficientASDs) {
				return fmt.Errorf("%w: %w", errAdoptLater, err)
			}
			return err
		}
	}
	rt.gate.Lock()
	rt.local, rt.id, rt.owner, rt.epoch, rt.stale = local, ov.ID, ov.Owner.Node, ov.Owner.Epoch, false
	if ov.Owner.Forced && ov.Owner.Epoch > rt.forcedAt {
		rt.forcedAt = ov.Owner.Epoch
	}
	rt.gate.Unlock()
	return nil
}

// refresh makes the route of name, if there is one, be looked up again.
func (r *router) refresh(name string) {
	r.mu.Lock()
	rt := r.routes[name]
	r.mu.Unlock()
	if rt != nil {
		r.invalidate(rt)
	}
}

func (r *router) forget(name string) {
	r.mu.Lock()
	delete(r.routes, name)
	r.mu.Unlock()
}

// invalidate makes the next I/O resolve the route again.
func (r *router) invalidate(rt *route) {
	rt.gate.Lock()
	rt.stale = true
	rt.local = nil
	rt.gate.Unlock()
}

// ensureLocal returns the local volume of a vdisk the model says this node
// owns, adopting it from the backend first if it is not open here (it was
// moved or failed over to this node). Adoptions of one vdisk are done
// once, whoever asks.
func (r *router) ensureLocal(ctx context.Context, ov model.OwnedVDisk) (*volumedriver.Volume, error) {
	r.mu.Lock()
	// An adoption in progress registers the volume before it replays
	// the DTL: the volume is not to be served until it is done.
	call := r.adopts[ov.ID]
	if call == nil {
		if v, err := r.drv.Volume(ov.Name); err == nil {
			r.mu.Unlock()
			return v, nil
		}
	}
	if r.moving[ov.Name] {
		// Released here, the model not yet changed: not to be taken back.
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: %s is being handed over", volumedriver.ErrReleased, ov.Name)
	}
	leader := call == nil
	if leader {
		call = &adoptCall{done: make(chan struct{})}
		r.adopts[ov.ID] = call
	}
	r.mu.Unlock()
	if leader {
		call.err = r.adopt(ov)
		r.mu.Lock()
		delete(r.adopts, ov.ID)
		r.mu.Unlock()
		close(call.done)
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if call.err != nil {
		return nil, call.err
	}
	return r.drv.Volume(ov.Name)
}

// adopt brings a vdisk up on this node under the owner record ov carries:
// its fence first, so that nothing it writes lands unless the record
// still holds.
func (r *router) adopt(ov model.OwnedVDisk) error {
	if _, err := r.drv.Volume(ov.Name); err == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, ok := r.drv.NameOf(ov.ID); ok {
		return r.followRename(ctx, ov)
	}
	setFence(r.fencer, ov)
	start := time.Now()
	if _, err := r.drv.Adopt(ctx, ov.ID, ov.Owner.Epoch); err != nil {
		clearFence(r.fencer, ov.ID)
		return fmt.Errorf("adopt vdisk %s: %w", ov.Name, err)
	}
	if err := r.followRename(ctx, ov); err != nil {
		return fmt.Errorf("adopt vdisk %s: %w", ov.Name, err)
	}

	r.log.Info("vdisk adopted", "vdisk", ov.Name, "epoch", ov.Owner.Epoch, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// retryable: the route is out of date (the vdisk moved, is moving, or its
// owner is unreachable for now).
func retryable(err error) bool {
	return errors.Is(err, volumedriver.ErrReleased) || errors.Is(err, volumedriver.ErrClosed) ||
		errors.Is(err, remote.ErrNotOwner) || errors.Is(err, remote.ErrUnavailable) ||
		errors.Is(err, errAdoptLater)
}

// errAdoptLater: the backend cannot serve a vdisk's objects yet (a
// restart of several hosts), so this node could not bring up a vdisk it
// owns; a moment later it may.
var errAdoptLater = errors.New("the backend cannot serve the vdisk yet")

// do runs one I/O on the vdisk wherever it lives, following it when it
// moves, until it succeeds, fails for good, or the retry window closes.
func (r *router) do(ctx context.Context, name string, rt *route, tenure, epoch uint64, localOnly bool,
	local func(*volumedriver.Volume) error, fwd func(context.Context, *remote.Client) error) error {
	var deadline time.Time
	backoff := 5 * time.Millisecond
	for {
		// The device's route saves a lookup in the router's map (and its
		// lock) on every I/O.
		var err error
		if rt == nil {
			rt, err = r.routeOf(ctx, name)
		} else {
			err = r.fresh(ctx, rt)
		}
		if err != nil && !retryable(err) {
			return err
		}
		if err == nil {
			if rt.tenure.Load() != tenure {
				return ErrFenced
			}
			rt.gate.RLock()
			v, owner := rt.local, rt.owner
			if epoch < rt.forcedAt {
				rt.gate.RUnlock()
				return ErrFenced
			}
			if v != nil {
				err = local(v)
				rt.gate.RUnlock()
			} else {
				rt.gate.RUnlock()
				if localOnly {
					return fmt.Errorf("%w: %s is served by %s", remote.ErrNotOwner, name, owner)
				}
				var c *remote.Client
				if c, err = r.forwarder(ctx, owner); err == nil {
					// A frozen owner must not hold the I/O for good: past
					// the attempt's deadline the route is looked up again.
					actx, cancel := context.WithTimeout(ctx, forwardAttemptTimeout)
					err = fwd(actx, c)
					if err != nil && actx.Err() != nil && ctx.Err() == nil {
						err = fmt.Errorf("%w: %s did not answer within %s", remote.ErrUnavailable, owner, forwardAttemptTimeout)
					}
					cancel()
				}
			}
			if err == nil || !retryable(err) {
				return err
			}
			r.invalidate(rt)
		}
		if err := r.retryWait(ctx, name, err, &deadline, &backoff); err != nil {
			return err
		}
	}
}

// retryWait waits before the next attempt at vdisk name after the
// retryable error err, or returns why not to: the retry window, opened at
// the first failure (*deadline), has closed, or ctx is done.
func (r *router) retryWait(ctx context.Context, name string, err error, deadline *time.Time, backoff *time.Duration) error {
	if deadline.IsZero() {
		*deadline = time.Now().Add(r.retryWindow)
	} else if time.Now().After(*deadline) {
		return fmt.Errorf("vdisk %s: no owner answered for %s: %w", name, r.retryWindow, err)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(*backoff):
	}
	*backoff = min(2**backoff, 250*time.Millisecond)
	return nil
}

// forwardAttemptTimeout bounds one try of a forwarded I/O: past it the
// owner is taken for gone (frozen, partitioned) and the route is read
// again; a write tried twice writes the same bytes twice.
//
// It is long on purpose: a write given up on here may still be carried
// out by the owner later, and the longer the wait, the less likely a
// newer write to the same blocks overtakes it.
const forwardAttemptTimeout = 2 * time.Minute

// forwarder returns the forwarding client of node id.
func (r *router) forwarder(ctx context.Context, id string) (*remote.Client, error) {
	r.mu.Lock()
	c := r.clients[id]
	r.mu.Unlock()
	if c != nil {
		return c, nil
	}
	n, err := r.store.Node(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%w: owner %s: %v", remote.ErrUnavailable, id, err)
	}
	if n.Forward == "" {
		return nil, fmt.Errorf("%w: node %s does not forward I/O (no forward address)", remote.ErrUnavailable, id)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("%w: node is stopping", remote.ErrUnavailable)
	}
	if c = r.clients[id]; c == nil {
		c = remote.NewClient(n.Forward, remote.ClientOptions{TLS: r.forwardTLS, Logger: r.log})
		r.clients[id] = c
	}
	return c, nil
}

// apiOf returns a REST client of node id's API, authenticated as a node.
func (r *router) apiOf(ctx context.Context, id string) (*api.Client, error) {
	r.mu.Lock()
	c := r.apis[id]
	r.mu.Unlock()
	if c != nil {
		return c, nil
	}
	n, err := r.store.Node(ctx, id)
	if err != nil {
		return nil, err
	}
	c = api.NewClient("http://"+n.API, nil).WithToken(r.apiToken).Forwarded()
	r.mu.Lock()
	r.apis[id] = c
	r.mu.Unlock()
	return c, nil
}

// onFenced: the backend refused a write of a vdisk served here, or the
// owner check found it taken: another node owns it now. Connections that
// were served here get errors from now on; new ones are forwarded.
func (r *router) onFenced(name, id string) {
	r.log.Error("vdisk fenced: another node owns it now; dropping it here", "vdisk", name, "id", id)
	r.mu.Lock()
	rt := r.routes[name]
	r.mu.Unlock()
	if rt != nil {
		rt.tenure.Add(1)
		r.invalidate(rt)
	}
	clearFence(r.fencer, id)
	if err := r.drv.Drop(name); err != nil {
		r.log.Error("dropping a fenced vdisk", "vdisk", name, "err", err)
	}
}

// move hands vdisk name, owned by this node, to node to (a node of the
// cluster, checked by the caller): the volume is
// synced while I/O goes on, then I/O is held at the gate while the rest is
// uploaded, the owner record changes (new epoch) and the new owner adopts
// it; held I/O then goes to the new owner.
func (r *router) move(ctx context.Context, ov model.OwnedVDisk, to string) (moveTimes, error) {
	var mt moveTimes
	pt := progress.From(ctx)
	pt.Start("sync", "steps", 3)
	// Upload while I/O goes on, so that what is left for the handover
	// (while I/O waits) is what came in during the last round.
	for range 3 {
		start := time.Now()
		if err := r.drv.Sync(ctx, ov.Name); err != nil {
			return mt, fmt.Errorf("move %s: sync before the handover: %w", ov.Name, err)
		}
		if time.Since(start) < 200*time.Millisecond {
			break
		}
	}
	rt, err := r.routeOf(ctx, ov.Name)
	if err != nil {
		return mt, err
	}
	r.mu.Lock()
	r.moving[ov.Name] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.moving, ov.Name)
		r.mu.Unlock()
	}()
	rt.gate.Lock()
	defer rt.gate.Unlock()
	held := time.Now()
	pt.SetStage("release")
	pt.Add(1)
	if err := r.drv.Release(ctx, ov.Name); err != nil {
		return mt, fmt.Errorf("move %s: hand over: %w", ov.Name, err)
	}
	mt.release = time.Since(held)
	o, _, err := r.store.ChangeOwner(ctx, ov.ID, ov.OwnerRaw, to, model.Handover)
	if err != nil {
		// The owner did not change: serve it here again.
		if _, aerr := r.drv.Adopt(context.WithoutCancel(ctx), ov.ID, ov.Owner.Epoch); aerr != nil {
			r.log.Error("could not take back a vdisk whose move failed", "vdisk", ov.Name, "err", aerr)
		}
		rt.stale = true
		return mt, fmt.Errorf("move %s: %w", ov.Name, err)
	}
	clearFence(r.fencer, ov.ID)
	rt.local, rt.owner, rt.epoch, rt.stale = nil, to, o.Epoch, false
	// Have the new owner bring it up now rather than on the first
	// forwarded I/O; held I/O waits for that either way.
	adopt := time.Now()
	pt.SetStage("adopt")
	pt.Add(1)
	if c, err := r.apiOf(ctx, to); err == nil {
		if _, err := c.Adopt(ctx, ov.Name); err != nil {
			r.log.Warn("the new owner did not adopt the vdisk at once; it will on the first I/O", "vdisk", ov.Name, "to", to, "err", err)
		}
	}
	mt.adopt = time.Since(adopt)
	mt.held = time.Since(held)
	pt.Add(1)
	return mt, nil
}

// moveTimes: how long I/O was held in a handover, and its two big parts:
// the old owner's last upload and the new owner's restore.
type moveTimes struct{ held, release, adopt time.Duration }

// watchOwners compares, every interval, what this node serves with the
// model: a vdisk whose owner record changed under it is fenced at once
// (its next backend write would be refused anyway), and one the model
// gave to this node is brought up.
func (r *router) watchOwners(ctx context.Context, every time.Duration) {
	tick(ctx, every, func() {
		all, err := r.store.VDisks(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("owner check: reading the model", "err", err)
			}
			return
		}
		local := map[string]volumedriver.VolumeInfo{}
		if infos, err := r.drv.List(ctx); err == nil {
			for _, in := range infos {
				local[in.Name] = in
			}
		}
		r.mu.Lock()
		moving := maps.Clone(r.moving)
		r.mu.Unlock()
		for _, ov := range all {
			in, here := local[ov.Name]
			if moving[ov.Name] {
				delete(local, ov.Name)
				continue
			}
			delete(local, ov.Name)
			mine := ov.OwnerRaw != nil && ov.Owner.Node == r.self
			switch {
			case here && (!mine || in.ID != ov.ID):
				r.drv.Fence(ov.Name)
			case !here && mine && ov.State == model.VDiskReady:
				go func(ov model.OwnedVDisk) {
					actx, cancel := context.WithTimeout(ctx, 10*time.Minute)
					defer cancel()
					if _, err := r.ensureLocal(actx, ov); err != nil && ctx.Err() == nil {
						r.log.Error("bringing up a vdisk the model gives this node", "vdisk", ov.Name, "err", err)
					}
				}(ov)
			}
		}
		for name := range local {
			// Served here, gone from the model: deleted or taken.
			r.drv.Fence(name)
		}
		if r.sawVDisks != nil {
			r.sawVDisks(all)
		}
	})
}

// --- frontends

// nbdExports serves every vdisk of the cluster as an NBD export.
type nbdExports struct{ r *router }

func (e nbdExports) OpenExport(ctx context.Context, name string) (nbd.Device, func(), error) {
	d, err := e.r.open(ctx, name, false)
	if err != nil {
		if errors.Is(err, volumedriver.ErrNotFound) {
			return nil, nil, fmt.Errorf("%w: %s", nbd.ErrUnknownExport, name)
		}
		return nil, nil, err
	}
	return d, d.release, nil
}

func (e nbdExports) ListExports(ctx context.Context) ([]string, error) {
	return readyVDisks(ctx, e.r.store)
}

// forwardTarget serves other nodes' forwarded I/O: local vdisks only.
type forwardTarget struct{ r *router }

func (t forwardTarget) OpenDevice(ctx context.Context, name string) (remote.Device, func(), error) {
	d, err := t.r.open(ctx, name, true)
	if err != nil {
		return nil, nil, err
	}
	return d, d.release, nil
}

// classifyForward maps errors of local I/O onto the forwarding protocol's
// statuses.
func classifyForward(err error) remote.Status {
	switch {
	case errors.Is(err, remote.ErrNotOwner), errors.Is(err, volumedriver.ErrReleased), errors.Is(err, volumedriver.ErrClosed),
		// A fenced owner is not the owner: the forwarding node looks
		// the vdisk up again, sees the forced change and fails the
		// connections that wrote through this node.
		errors.Is(err, volumedriver.ErrFenced), errors.Is(err, ErrFenced):
		return remote.StatusNotOwner
	case errors.Is(err, volumedriver.ErrNotFound):
		return remote.StatusNotFound
	case errors.Is(err, volumedriver.ErrInvalidArgument):
		return remote.StatusInvalid
	}
	// ErrOutOfRange is ENOSPC, ErrReadOnly EPERM: the default maps errnos.
	return remote.DefaultClassify(err)
}

// routedDevice is one client's view of a vdisk, wherever it lives. It is
// both an nbd.Device and a remote.Device (one type), and compares and
// writes at the owner.
var _ remote.CompareAndWriter = (*routedDevice)(nil)

type routedDevice struct {
	r         *router
	name      string
	rt        *route
	size      int64
	tenure    uint64
	epoch     uint64 // the owner epoch at open
	localOnly bool
	acquired  func() // the driver's count of clients, when opened here
}

func (r *router) open(ctx context.Context, name string, localOnly bool) (*routedDevice, error) {
	// A new client starts from the model as it is now, so that it is not
	// failed for a forced owner change it never wrote across.
	rt := r.routeFor(name)
	// A vdisk being handed over is waited for, as its I/O is: a client
	// connecting during a move was refused (NBD_REP_ERR_POLICY, seen in
	// the ansible upgrade test) where one connected before it was not.
	// Other failures (a backend that cannot serve the vdisk yet) still
	// refuse at once.
	var deadline time.Time
	backoff := 5 * time.Millisecond
	for {
		err := r.resolve(ctx, rt)
		if err == nil {
			break
		}
		if !errors.Is(err, volumedriver.ErrReleased) {
			return nil, err
		}
		r.invalidate(rt)
		if err := r.retryWait(ctx, name, err, &deadline, &backoff); err != nil {
			return nil, err
		}
	}
	d := &routedDevice{r: r, name: name, rt: rt, tenure: rt.tenure.Load(), localOnly: localOnly}
	rt.gate.RLock()
	v, owner := rt.local, rt.owner
	d.epoch = rt.epoch
	rt.gate.RUnlock()
	switch {
	case v != nil:
		d.size = v.Size()
		if !localOnly {
			if _, rel, err := r.drv.Acquire(name); err == nil {
				d.acquired = rel
			}
		}
	case localOnly:
		return nil, fmt.Errorf("%w: %s is served by %s", remote.ErrNotOwner, name, owner)
	default:
		err := r.do(ctx, name, rt, d.tenure, d.epoch, false, func(v *volumedriver.Volume) error {
			d.size = v.Size()
			return nil
		}, func(ctx context.Context, c *remote.Client) error {
			var err error
			d.size, err = c.Size(ctx, name)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *routedDevice) release() {
	if d.acquired != nil {
		d.acquired()
	}
}

func (d *routedDevice) run(ctx context.Context, local func(*volumedriver.Volume) error, fwd func(context.Context, *remote.Client) error) error {
	return d.r.do(ctx, d.name, d.rt, d.tenure, d.epoch, d.localOnly, local, fwd)
}

func (d *routedDevice) Size() int64 { return d.size }

func (d *routedDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	return d.run(ctx, func(v *volumedriver.Volume) error { return v.ReadAt(ctx, p, off) },
		func(ctx context.Context, c *remote.Client) error { return c.ReadAt(ctx, d.name, p, off) })
}

func (d *routedDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return d.run(ctx, func(v *volumedriver.Volume) error { return v.WriteAt(ctx, p, off, fua) },
		func(ctx context.Context, c *remote.Client) error { return c.WriteAt(ctx, d.name, p, off, fua) })
}

func (d *routedDevice) Flush(ctx context.Context) error {
	return d.run(ctx, func(v *volumedriver.Volume) error { return v.Flush(ctx) },
		func(ctx context.Context, c *remote.Client) error { return c.Flush(ctx, d.name) })
}

func (d *routedDevice) Trim(ctx context.Context, off, length int64) error {
	return d.run(ctx, func(v *volumedriver.Volume) error { return v.Trim(ctx, off, length) },
		func(ctx context.Context, c *remote.Client) error { return c.Trim(ctx, d.name, off, length) })
}

func (d *routedDevice) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	return d.run(ctx, func(v *volumedriver.Volume) error { return v.WriteZeroes(ctx, off, length, noHole, fua) },
		func(ctx context.Context, c *remote.Client) error {
			return c.WriteZeroes(ctx, d.name, off, length, noHole, fua)
		})
}

// CompareAndWrite is SCSI COMPARE AND WRITE (ATS) wherever the vdisk
// lives: always carried out at the owner, under the Volume's lock, so that
// CompareAndWrites from every node's frontends are serialised there.
//
// The router retries a forwarded one whose reply was lost (owner gone,
// attempt timed out) like any I/O. A retry compares again: if the first
// attempt wrote, the second finds the new data and reports a miscompare
// although this caller's data is what the vdisk holds. That is what SCSI
// allows after a lost command status, and initiators re-read on a
// miscompare (VMware re-reads the lock record and finds it holds its own
// lock). The opposite, two callers both told they won, cannot happen: every
// attempt compares against what the owner holds at that moment.
func (d *routedDevice) CompareAndWrite(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error) {
	var m int64
	err := d.run(ctx, func(v *volumedriver.Volume) error {
		var err error
		m, err = v.CompareAndWrite(ctx, off, cmp, data, fua)
		return err
	}, func(ctx context.Context, c *remote.Client) error {
		var err error
		m, err = c.CompareAndWrite(ctx, d.name, off, cmp, data, fua)
		return err
	})
	return m, err
}

func (d *routedDevice) BlockStatus(ctx context.Context, off, length int64) ([]remote.Extent, error) {
	var out []remote.Extent
	err := d.run(ctx, func(v *volumedriver.Volume) error {
		ext, err := v.Extents(ctx, off, length)
		if err != nil {
			return err
		}
		out = make([]remote.Extent, len(ext))
		for i, e := range ext {
			out[i] = remote.Extent{Length: e.Length, Hole: !e.Mapped, Zero: !e.Mapped}
		}
		return nil
	}, func(ctx context.Context, c *remote.Client) error {
		var err error
		out, err = c.BlockStatus(ctx, d.name, off, length)
		return err
	})
	return out, err
}
