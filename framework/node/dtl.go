package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/dtl"
)

// The cluster's side of the DTL and of failover.
//
// Liveness: every node rewrites its heartbeat record every few seconds.
// Each node watches the others' records and takes a node for dead once its
// record has not changed for the failover timeout, measured on the
// watcher's own clock and only over time the watcher could read the model
// (an arakoon outage or a frozen watcher proves nothing about the others).
//
// Failover: the vdisks of a dead owner are taken by one surviving node
// each, the one holding the vdisk's DTL if it is alive, else one chosen by
// a hash of the vdisk id among the live nodes; every node computes the
// same choice, and the owner record's compare-and-set makes one win
// anyway. The new owner fences the DTL with its new epoch (from then on
// the old owner can ship nothing more, so it cannot acknowledge a flush
// the new owner will not see), restores the vdisk from the backend and
// replays the DTL.
//
// Lease: a sync-mode flush with no DTL session is acknowledged only while
// the node's last heartbeat is recent enough that no other node can have
// declared it dead (half the failover timeout).

// liveness tracks the other nodes' heartbeats as this node sees them.
type liveness struct {
	timeout time.Duration
	mu      sync.Mutex
	seen    map[string]seenBeat
	// lastRead is when the model was last read; a gap longer than a few
	// polls restarts every node's clock.
	lastRead time.Time
	// beatAt is when this node's last successful heartbeat began.
	beatAt  time.Time
	beatNew chan struct{}
}

type seenBeat struct {
	at      time.Time // the record's own time, as a value to compare
	changed time.Time // when this node saw it change (its clock)
}

func newLiveness(timeout time.Duration) *liveness {
	return &liveness{timeout: timeout, seen: map[string]seenBeat{}, beatNew: make(chan struct{})}
}

// observe records a reading of every node's heartbeat.
func (l *liveness) observe(beats map[string]model.Heartbeat, poll time.Duration) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	blind := !l.lastRead.IsZero() && now.Sub(l.lastRead) > 3*poll
	l.lastRead = now
	for id, h := range beats {
		s, ok := l.seen[id]
		if !ok || blind || !s.at.Equal(h.At) {
			l.seen[id] = seenBeat{at: h.At, changed: now}
		}
	}
	if blind {
		for id, s := range l.seen {
			s.changed = now
			l.seen[id] = s
		}
	}
}

// alive: node's heartbeat changed within the timeout (or this node has
// not watched it that long yet).
func (l *liveness) alive(node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.seen[node]
	return ok && time.Since(s.changed) < l.timeout
}

// dead: node's heartbeat has not changed for the timeout while this node
// watched.
func (l *liveness) dead(node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.seen[node]
	return ok && time.Since(s.changed) >= l.timeout
}

// beat records a successful heartbeat of this node that began at start.
func (l *liveness) beat(start time.Time) {
	l.mu.Lock()
	if start.After(l.beatAt) {
		l.beatAt = start
	}
	close(l.beatNew)
	l.beatNew = make(chan struct{})
	l.mu.Unlock()
}

// lease returns nil while no other node can have taken this node for
// dead, waiting a little for the next heartbeat if it is late.
func (l *liveness) lease(ctx context.Context) error {
	deadline := time.NewTimer(l.timeout / 2)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		at, ch := l.beatAt, l.beatNew
		l.mu.Unlock()
		if !at.IsZero() && time.Since(at) < l.timeout/2 {
			return nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return fmt.Errorf("the last heartbeat is %s old (failover after %s)", time.Since(at).Round(time.Millisecond), l.timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// heartbeat tells the model every interval that node runs.
func heartbeat(ctx context.Context, store *model.Store, node string, live *liveness, every time.Duration, log *slog.Logger) {
	started := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		bctx, cancel := context.WithTimeout(ctx, every)
		start := time.Now()
		err := store.Beat(bctx, node, started)
		cancel()
		if err == nil {
			live.beat(start)
		} else if ctx.Err() == nil {
			log.Warn("heartbeat", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dtlPlacer places vdisks' DTLs on other nodes (volumedriver.DTLPlacer).
type dtlPlacer struct {
	self  string
	site  string
	store *model.Store
	live  *liveness
	tls   *tls.Config
	log   *slog.Logger
}

// PlaceDTL picks a live node other than this one, in another site where
// there is one, holding the fewest DTLs, records it in the model under
// the vdisk's owner record (so a stale owner cannot), and opens a session.
func (p *dtlPlacer) PlaceDTL(ctx context.Context, id string, epoch uint64, avoid []string) (volumedriver.DTLSession, string, error) {
	nodes, err := p.store.Nodes(ctx)
	if err != nil {
		return nil, "", err
	}
	all, err := p.store.VDisks(ctx)
	if err != nil {
		return nil, "", err
	}
	load := map[string]int{}
	var prev string
	for _, ov := range all {
		switch {
		case ov.ID == id:
			prev = ov.DTL.Node
		case ov.DTL.Node != "":
			load[ov.DTL.Node]++
		}
	}
	cands := chooseDTLNodes(nodes, p.self, p.site, avoid, p.live.alive, load, id)
	// The node that held it before, if it still can: it has the groups
	// of the TLogs not on the backend yet (an owner restarting here).
	if prev != "" && !slices.Contains(avoid, prev) {
		for i, n := range cands {
			if n.ID == prev {
				cands[0], cands[i] = cands[i], cands[0]
				break
			}
		}
	}
	if len(cands) == 0 {
		return nil, "", volumedriver.ErrNoDTLNode
	}
	n := cands[0]
	if err := p.RecordDTL(ctx, id, epoch, n.ID, false); err != nil {
		return nil, "", err
	}
	s := dtl.NewShipper(dtl.ShipperConfig{Addr: n.DTL, TLS: p.tls, VDisk: id, Epoch: epoch,
		ClusterSize: volumedriver.DefaultClusterSize, Log: p.log})
	return shipperSession{s}, n.ID, nil
}

// RecordDTL records whether the vdisk's DTL on node is complete, under
// the owner record of this tenure.
func (p *dtlPlacer) RecordDTL(ctx context.Context, id string, epoch uint64, node string, complete bool) error {
	o, raw, err := p.store.Owner(ctx, id)
	if err != nil {
		return err
	}
	if o.Node != p.self || o.Epoch != epoch {
		return fmt.Errorf("%w: owner of %s is %s (epoch %d)", volumedriver.ErrFenced, id, o.Node, o.Epoch)
	}
	if _, err := p.store.PlaceDTL(ctx, id, raw, node, complete); err != nil {
		if errors.Is(err, model.ErrConflict) {
			return fmt.Errorf("%w: %w", volumedriver.ErrFenced, err)
		}
		return err
	}
	return nil
}

// chooseDTLNodes orders the nodes that can hold a DTL for vdisk id: live,
// not self, with a DTL address; another site first, then nodes not in
// avoid, then the fewest DTLs, then a hash of the vdisk id (so that equal
// nodes share the vdisks).
func chooseDTLNodes(nodes []model.Node, self, site string, avoid []string, alive func(string) bool, load map[string]int, id string) []model.Node {
	var out []model.Node
	for _, n := range nodes {
		if n.ID != self && n.DTL != "" && alive(n.ID) {
			out = append(out, n)
		}
	}
	rank := func(n model.Node) (int, int, int, uint32) {
		other, avoided := 0, 0
		if n.Site == site {
			other = 1
		}
		if slices.Contains(avoid, n.ID) {
			avoided = 1
		}
		return other, avoided, load[n.ID], hash32(id + "/" + n.ID)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a1, a2, a3, a4 := rank(out[i])
		b1, b2, b3, b4 := rank(out[j])
		switch {
		case a1 != b1:
			return a1 < b1
		case a2 != b2:
			return a2 < b2
		case a3 != b3:
			return a3 < b3
		}
		return a4 < b4
	})
	return out
}

func hash32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// shipperSession adapts a dtl.Shipper to volumedriver.DTLSession.
type shipperSession struct{ s *dtl.Shipper }

func (a shipperSession) Begin(tlog, prev string) uint64 { return a.s.Begin(tlog, prev) }
func (a shipperSession) AppendWrite(addr uint64, crcs []uint32, data []byte) uint64 {
	return a.s.Append(dtl.Entry{Kind: dtl.Write, Addr: addr, Count: uint32(len(crcs)), CRCs: crcs, Data: data})
}
func (a shipperSession) AppendTrim(addr uint64, count uint32) uint64 {
	return a.s.Append(dtl.Entry{Kind: dtl.Trim, Addr: addr, Count: count})
}
func (a shipperSession) Sync(pos uint64) { a.s.Sync(pos) }
func (a shipperSession) WaitReceived(ctx context.Context, pos uint64) error {
	return fencedAs(a.s.WaitReceived(ctx, pos))
}
func (a shipperSession) WaitDurable(ctx context.Context, pos uint64) error {
	return fencedAs(a.s.WaitDurable(ctx, pos))
}
func (a shipperSession) Drop(tlog string)      { a.s.Drop(tlog) }
func (a shipperSession) Done() <-chan struct{} { return a.s.Done() }
func (a shipperSession) Err() error            { return fencedAs(a.s.Err()) }
func (a shipperSession) Close()                { a.s.Close() }

// fencedAs makes the DTL's fenced error one the volume driver knows.
func fencedAs(err error) error {
	if errors.Is(err, dtl.ErrFenced) {
		return fmt.Errorf("%w: %w", volumedriver.ErrFenced, err)
	}
	return err
}

// dtlSource reads a vdisk's DTL on a node (volumedriver.DTLSource).
type dtlSource struct {
	addr  string
	tls   *tls.Config
	vdisk string
	epoch uint64
}

func (s dtlSource) Groups(ctx context.Context) ([]volumedriver.DTLGroup, error) {
	gs, err := dtl.Groups(ctx, s.addr, s.tls, s.vdisk, s.epoch)
	if err != nil {
		return nil, err
	}
	out := make([]volumedriver.DTLGroup, len(gs))
	for i, g := range gs {
		out[i] = volumedriver.DTLGroup{TLog: g.TLog, Prev: g.Prev, Entries: g.Entries, Bytes: g.Bytes}
	}
	return out, nil
}

func (s dtlSource) Read(ctx context.Context, from string, fn func(string, volumedriver.DTLEntry) error) error {
	return dtl.Read(ctx, s.addr, s.tls, s.vdisk, s.epoch, from, func(group string, e dtl.Entry) error {
		return fn(group, volumedriver.DTLEntry{Trim: e.Kind == dtl.Trim, Addr: e.Addr, Count: e.Count, CRCs: e.CRCs, Data: e.Data})
	})
}

// dtlModeOf is the DTL mode of a vdisk: its own, else the vpool's, else
// sync.
func dtlModeOf(ov model.OwnedVDisk, c model.Cluster) volumedriver.DTLMode {
	for _, m := range []string{ov.DTLMode, c.VPool.DTLMode} {
		if mode, err := volumedriver.ParseDTLMode(m); err == nil {
			return mode
		}
	}
	return volumedriver.DTLSync
}

// dtlMode is the DTL mode of the vdisk with namespace id, from the model.
func (r *router) dtlMode(id string) volumedriver.DTLMode {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.store.Cluster(ctx)
	if err != nil {
		c = r.cluster
	}
	all, err := r.store.VDisks(ctx)
	if err == nil {
		for _, ov := range all {
			if ov.ID == id {
				return dtlModeOf(ov, c)
			}
		}
	}
	return dtlModeOf(model.OwnedVDisk{}, c)
}

// recoverDTL is the DTL's part of bringing a vdisk up (the driver's
// Options.Recover): when its state came from the backend alone (a new
// owner, or this one without its local state), the DTL the model names is
// fenced with this tenure's epoch (an older owner's shipments are refused
// from then on) and what it holds beyond the backend is replayed. After a
// handover the backend has everything; after a failover the DTL must be
// read, and reading is retried a while if its node does not answer.
func (r *router) recoverDTL(ctx context.Context, name, id string, epoch uint64, restored bool,
	replay func(volumedriver.DTLSource) (volumedriver.ReplayResult, error)) error {
	if !restored {
		return nil // local state of this tenure: it has everything
	}
	p, err := r.store.DTL(ctx, id)
	if err != nil {
		return fmt.Errorf("where the DTL of %s is: %w", name, err)
	}
	if p.Node == "" {
		return nil
	}
	// After a handover the backend has everything: the DTL is read if
	// it answers. After a forced takeover what it holds is read if it
	// can be (clients were told). After a takeover it must be read:
	// the clients go on, trusting every write that was acknowledged.
	takeover, forced := true, true
	if o, _, err := r.store.Owner(ctx, id); err == nil && o.Epoch == epoch {
		takeover, forced = o.Takeover, o.Forced
	}
	n, err := r.store.Node(ctx, p.Node)
	if err != nil || n.DTL == "" {
		r.log.Error("the vdisk's DTL node is gone from the model; changes not on the backend are lost",
			"vdisk", name, "dtl_node", p.Node, "err", err)
		return nil
	}
	src := dtlSource{addr: n.DTL, tls: r.forwardTLS, vdisk: id, epoch: epoch}
	wait := 5 * time.Second
	if takeover {
		wait = r.dtlReadWait
	}
	deadline := time.Now().Add(wait)
	for {
		err = dtl.Fence(ctx, n.DTL, r.forwardTLS, id, epoch)
		if err == nil {
			var res volumedriver.ReplayResult
			res, err = replay(src)
			if err == nil {
				r.log.Info("DTL recovered", "vdisk", name, "dtl_node", p.Node, "groups", res.Groups,
					"entries", res.Entries, "bytes", res.Bytes, "gap", res.Gap, "took", res.Took.Round(time.Millisecond))
				go r.forgetOldDTL(name, id, epoch, p.Node, n.DTL)
				return nil
			}
		}
		if errors.Is(err, dtl.ErrFenced) {
			return fmt.Errorf("the DTL of %s on %s has a newer owner: %w", name, p.Node, volumedriver.ErrFenced)
		}
		if !errors.Is(err, dtl.ErrBroken) && !isNetErr(err) && !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("replay the DTL of %s from %s: %w", name, p.Node, err)
		}
		if time.Now().After(deadline) {
			switch {
			case takeover && !forced:
				return fmt.Errorf("the DTL of %s on %s cannot be read (%w); the vdisk stays down until it can, or until an operator forces it over with `ovs vdisk move --force` (losing what only the DTL holds)",
					name, p.Node, err)
			case forced:
				r.log.Error("could not read the vdisk's DTL; it is served from the backend alone (changes that were only in the DTL are lost)",
					"vdisk", name, "dtl_node", p.Node, "err", err)
			default:
				r.log.Warn("could not read the vdisk's DTL after a handover; the backend has everything", "vdisk", name, "dtl_node", p.Node, "err", err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// forgetOldDTL drops what the old DTL held of a vdisk once the backend has
// everything replayed from it, unless the vdisk's DTL is there again (its
// session drops the old groups as the new TLogs reach the backend).
func (r *router) forgetOldDTL(name, id string, epoch uint64, node, addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	select {
	case <-r.drvReady:
	case <-ctx.Done():
		return
	}
	var err error
	for range 60 {
		if err = r.drv.Sync(ctx, name); !errors.Is(err, volumedriver.ErrNotFound) {
			break
		}
		time.Sleep(time.Second) // not registered yet
	}
	if err != nil {
		r.log.Warn("after a DTL replay: sync to the backend", "vdisk", name, "err", err)
		return
	}
	if cur, err := r.store.DTL(ctx, id); err != nil || cur.Node == node {
		return
	}
	if err := dtl.Forget(ctx, addr, r.forwardTLS, id, epoch); err != nil {
		r.log.Warn("dropping a replayed DTL", "vdisk", name, "dtl_node", node, "err", err)
	}
}

// tick calls fn every interval until ctx ends.
func tick(ctx context.Context, every time.Duration, fn func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

func isNetErr(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne)
}

// watchFailover reads every node's heartbeat each interval, and takes
// over the vdisks of owners that are dead whose choice falls on this node.
func (r *router) watchFailover(ctx context.Context, every time.Duration) {
	tick(ctx, every, func() {
		beats, err := r.store.Heartbeats(ctx)
		if err != nil {
			return
		}
		r.live.observe(beats, every)
		all, err := r.store.VDisks(ctx)
		if err != nil {
			return
		}
		var nodes []string
		for id := range beats {
			if r.live.alive(id) {
				nodes = append(nodes, id)
			}
		}
		sort.Strings(nodes)
		for _, ov := range all {
			if ov.OwnerRaw == nil || ov.Owner.Node == r.self || ov.State != model.VDiskReady || !r.live.dead(ov.Owner.Node) {
				continue
			}
			if takeover(ov, nodes, r.live.alive) != r.self {
				continue
			}
			r.failover(ctx, ov)
		}
	})
}

// takeover is the node that takes over vdisk ov from its dead owner: its
// DTL's node if alive, else one of the live nodes by a hash of its id.
func takeover(ov model.OwnedVDisk, live []string, alive func(string) bool) string {
	if n := ov.DTL.Node; n != "" && n != ov.Owner.Node && alive(n) {
		return n
	}
	var cands []string
	for _, n := range live {
		if n != ov.Owner.Node {
			cands = append(cands, n)
		}
	}
	if len(cands) == 0 {
		return ""
	}
	return cands[hash32(ov.ID)%uint32(len(cands))]
}

// failover takes vdisk ov over from its dead owner.
func (r *router) failover(ctx context.Context, ov model.OwnedVDisk) {
	start := time.Now()
	// Clients writing through the old owner are told (their connections
	// fail) unless a sync DTL holds what it acknowledged.
	forced := dtlModeOf(ov, r.cluster) != volumedriver.DTLSync || ov.DTL.Node == "" || !ov.DTL.Complete ||
		ov.DTL.Epoch != ov.Owner.Epoch
	how := model.Takeover
	if forced {
		how = model.ForcedTakeover
	}
	o, raw, err := r.store.ChangeOwner(ctx, ov.ID, ov.OwnerRaw, r.self, how)
	if err != nil {
		if !errors.Is(err, model.ErrConflict) {
			r.log.Warn("failover: taking the vdisk", "vdisk", ov.Name, "err", err)
		}
		return
	}
	r.log.Warn("failover: the vdisk's owner is dead; taking it over", "vdisk", ov.Name, "dead_owner", ov.Owner.Node,
		"epoch", o.Epoch, "dtl_node", ov.DTL.Node, "clients_told", forced)
	ov.Owner, ov.OwnerRaw = o, raw
	r.refresh(ov.Name)
	actx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if _, err := r.ensureLocal(actx, ov); err != nil {
		r.log.Error("failover: bringing the vdisk up", "vdisk", ov.Name, "err", err)
		return
	}
	r.log.Warn("failover done", "vdisk", ov.Name, "epoch", o.Epoch, "took", time.Since(start).Round(time.Millisecond))
}

// The DTL janitor. A node that was some vdisk's DTL and was replaced (it
// was down, or too slow, or the vdisk moved or was deleted) keeps what it
// held: nobody reads it any more (a new owner reads the DTL the model
// names), but it takes space. Once a vdisk's DTL data here has not
// changed for dtlStaleAfter, no session ships to it and the model names
// another node (or no such vdisk), it is forgotten.

// dtlStaleAfter: how long DTL data nobody ships to must sit unchanged
// before the janitor may drop it.
const dtlStaleAfter = 10 * time.Minute

// staleDTLs names the vdisks whose DTL data on node self can go.
func staleDTLs(held []dtl.VDiskInfo, vdisks []model.OwnedVDisk, self string, now time.Time) []dtl.VDiskInfo {
	placed := make(map[string]string, len(vdisks))
	for _, ov := range vdisks {
		placed[ov.ID] = ov.DTL.Node
	}
	var out []dtl.VDiskInfo
	for _, h := range held {
		node, known := placed[h.VDisk]
		if h.Session || now.Sub(h.Changed) < dtlStaleAfter || (known && node == self) {
			continue
		}
		out = append(out, h)
	}
	return out
}

// dtlJanitor drops stale DTL data every interval.
func (r *router) dtlJanitor(ctx context.Context, srv *dtl.Server, addr string, every time.Duration) {
	tick(ctx, every, func() {
		all, err := r.store.VDisks(ctx)
		if err != nil {
			return
		}
		for _, h := range staleDTLs(srv.VDisks(), all, r.self, time.Now()) {
			if err := dtl.Forget(ctx, addr, r.forwardTLS, h.VDisk, h.Epoch); err != nil {
				r.log.Warn("dropping stale DTL data", "vdisk_id", h.VDisk, "err", err)
				continue
			}
			r.log.Info("dropped stale DTL data (another node holds this vdisk's DTL, or the vdisk is gone)",
				"vdisk_id", h.VDisk, "groups", h.Groups, "bytes", h.Bytes)
		}
	})
}
