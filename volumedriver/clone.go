package volumedriver

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/scos"
)

func (v *Volume) setAncestors(anc []ancestor) {
	ns := make([]string, len(anc))
	for i, a := range anc {
		ns[i] = a.Namespace
	}
	v.ancestors.Store(&ns)
	chain := append([]ancestor(nil), anc...)
	v.chain.Store(&chain)
}

// CreateSnapshot snapshots a vdisk (see Volume.CreateSnapshot).
func (d *Driver) CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (SnapshotInfo, error) {
	v, err := d.Volume(vdisk)
	if err != nil {
		return SnapshotInfo{}, err
	}
	return v.CreateSnapshot(ctx, snapshot, metadata)
}

// ListSnapshots lists a vdisk's snapshots, oldest first.
func (d *Driver) ListSnapshots(ctx context.Context, vdisk string) ([]SnapshotInfo, error) {
	v, err := d.Volume(vdisk)
	if err != nil {
		return nil, err
	}
	return v.Snapshots(), nil
}

// DeleteSnapshot deletes a snapshot that no clone is built on.
func (d *Driver) DeleteSnapshot(ctx context.Context, vdisk, snapshot string) error {
	v, unlock, err := d.lockVolume(ctx, vdisk)
	if err != nil {
		return err
	}
	defer unlock()
	if clones := d.clonesOf(v.state.Config.ID, snapshot); len(clones) > 0 {
		return fmt.Errorf("%w: clones %v are built on %s@%s; flatten or delete them first", ErrBusy, clones, vdisk, snapshot)
	}
	return v.DeleteSnapshot(ctx, snapshot)
}

// Rollback returns a vdisk to a snapshot. With clients connected it is
// refused unless force: they would see their disk change under them.
func (d *Driver) Rollback(ctx context.Context, vdisk, snapshot string, force bool) error {
	v, unlock, err := d.lockVolume(ctx, vdisk)
	if err != nil {
		return err
	}
	defer unlock()
	if n := v.clients.Load(); n > 0 && !force {
		return fmt.Errorf("%w: %s has %d client(s) connected; use force to roll back anyway", ErrBusy, vdisk, n)
	}
	v.mu.Lock()
	id := v.state.Config.ID
	var later []string
	found := false
	for _, sn := range v.state.Snapshots {
		if found {
			later = append(later, sn.Name)
		}
		found = found || sn.Name == snapshot
	}
	v.mu.Unlock()
	for _, l := range later {
		if clones := d.clonesOf(id, l); len(clones) > 0 {
			return fmt.Errorf("%w: rolling back would discard snapshot %s, which clones %v are built on", ErrBusy, l, clones)
		}
	}
	return v.Rollback(ctx, snapshot)
}

// Clone makes a new vdisk from a snapshot of parent: instant, no data is
// copied; the clone's unwritten clusters resolve to the parent's snapshot.
// With snapshot empty, parent must be a template (its latest snapshot).
func (d *Driver) Clone(ctx context.Context, name, parent, snapshot string) (VolumeInfo, error) {
	return d.CloneWith(ctx, name, parent, snapshot, CloneOptions{})
}

// CloneWith is Clone with the clone's namespace id and owner epoch chosen
// by the control plane (zero values: a random id, epoch 0).
func (d *Driver) CloneWith(ctx context.Context, name, parent, snapshot string, opts CloneOptions) (VolumeInfo, error) {
	if !validName(name) {
		return VolumeInfo{}, fmt.Errorf("%w: vdisk name %q", ErrInvalidArgument, name)
	}
	id, err := chooseID(opts.ID)
	if err != nil {
		return VolumeInfo{}, err
	}
	// The parent's control lock keeps it, and the snapshot, from going
	// away (delete, rollback, snapshot delete) until the clone is
	// registered; a scrub of the parent would rename the TLogs the clone
	// records. Neither lock is shared with other vdisks: a parent stuck
	// syncing to a stalled backend holds up only operations on itself.
	// The name is taken first, so that a create of it fails at once
	// rather than after the wait.
	release, err := d.reserveName(name)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer release()
	p, unlock, err := d.lockVolume(ctx, parent)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer unlock()
	p.scrubMu.Lock()
	defer p.scrubMu.Unlock()
	p.mu.Lock()
	pcfg := p.state.Config
	if snapshot == "" {
		if !pcfg.Template || len(p.state.Snapshots) == 0 {
			p.mu.Unlock()
			return VolumeInfo{}, fmt.Errorf("%w: name a snapshot of %s to clone (only templates clone from their latest snapshot)", ErrInvalidArgument, parent)
		}
		snapshot = p.state.Snapshots[len(p.state.Snapshots)-1].Name
	}
	i := p.findSnapshotLocked(snapshot)
	if i < 0 {
		p.mu.Unlock()
		return VolumeInfo{}, fmt.Errorf("%w: %s@%s", ErrSnapshotNotFound, parent, snapshot)
	}
	sn := p.state.Snapshots[i]
	synced := sn.TLogCount <= p.publishedCount
	p.mu.Unlock()
	if len(pcfg.Ancestors)+1 > MaxCloneDepth {
		return VolumeInfo{}, fmt.Errorf("%w: %s is already %d clones deep (the limit is %d)", ErrInvalidArgument, parent, len(pcfg.Ancestors), MaxCloneDepth)
	}
	// The clone reads the snapshot from the parent's namespace on the
	// backend, so it must be there first.
	if !synced {
		if err := p.Sync(ctx); err != nil {
			return VolumeInfo{}, fmt.Errorf("clone %s: sync %s@%s first: %w", name, parent, snapshot, err)
		}
	}
	p.mu.Lock()
	if i = p.findSnapshotLocked(snapshot); i < 0 || p.state.Snapshots[i].TLogCount > p.publishedCount {
		p.mu.Unlock()
		return VolumeInfo{}, fmt.Errorf("clone %s: %s@%s is not on the backend", name, parent, snapshot)
	}
	tlogs := make([]string, 0, sn.TLogCount)
	for _, t := range p.state.Sealed[:sn.TLogCount] {
		tlogs = append(tlogs, t.Name)
	}
	p.mu.Unlock()

	cfg := volumeConfig{
		Format:         formatVersion,
		ID:             id,
		Name:           name,
		Size:           p.Size(),
		ClusterSize:    pcfg.ClusterSize,
		SCOMultiplier:  pcfg.SCOMultiplier,
		TLogMultiplier: pcfg.TLogMultiplier,
		CreatedAt:      time.Now().UTC().Truncate(time.Second),
		Ancestors: append([]ancestor{{
			ID: pcfg.ID, Name: pcfg.Name, Namespace: p.ns, Snapshot: snapshot, TLogs: tlogs,
		}}, pcfg.Ancestors...),
	}
	v, err := d.createVolume(ctx, cfg, opts.Epoch)
	if err != nil {
		return VolumeInfo{}, err
	}
	d.log.Info("vdisk cloned", "vdisk", name, "from", parent+"@"+snapshot, "depth", len(cfg.Ancestors))
	return v.info(), nil
}

// createVolume writes a new vdisk's namespace, brings it up under owner
// epoch epoch and registers it. The caller holds a reservation of the name
// (reserveName), not d.mu.
func (d *Driver) createVolume(ctx context.Context, cfg volumeConfig, epoch uint64) (*Volume, error) {
	ns := namespacePrefix + cfg.ID
	if err := d.backend.CreateNamespace(ctx, ns); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.Name, err)
	}
	// The namespace is new, so a local directory by its id (an id the
	// control plane chose and used before) holds nothing of this vdisk.
	if dir := filepath.Join(d.dir, cfg.ID); dirExists(dir) {
		quarantine(d.log, d.dir, dir, "local state under the id of a vdisk being created")
	}
	fail := func(err error) (*Volume, error) {
		if derr := d.backend.DeleteNamespace(context.WithoutCancel(ctx), ns); derr != nil {
			d.log.Error("clean up after failed create", "vdisk", cfg.Name, "err", derr)
		}
		os.RemoveAll(filepath.Join(d.dir, cfg.ID))
		return nil, fmt.Errorf("create %s: %w", cfg.Name, err)
	}
	snaps, _ := json.Marshal(snapshotsFile{Format: formatVersion, TLogs: []string{}, Snapshots: []snapshotRecord{}})
	if err := d.backend.Put(ctx, ns, snapshotsObject, snaps, false); err != nil {
		return fail(err)
	}
	// volume.json last: its presence is what makes the vdisk exist.
	vj, _ := json.Marshal(cfg)
	if err := d.backend.Put(ctx, ns, volumeObject, vj, false); err != nil {
		return fail(err)
	}
	v, err := d.openVolume(ctx, cfg, epoch)
	if err != nil {
		return fail(err)
	}
	if err := d.registerVolume(v); err != nil {
		return nil, err
	}
	return v, nil
}

// SetTemplate makes a vdisk a read-only template. Its latest state is kept
// as a snapshot (one is taken if anything was written since the last) and
// synced, so clones can be made from it.
func (d *Driver) SetTemplate(ctx context.Context, name string) (VolumeInfo, error) {
	v, unlock, err := d.lockVolume(ctx, name)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer unlock()
	v.mu.Lock()
	isTemplate := v.state.Config.Template
	n := len(v.state.Snapshots)
	needSnap := n == 0 || v.state.Snapshots[n-1].TLogCount < len(v.state.Sealed) || v.tlog.records > 0
	v.mu.Unlock()
	if isTemplate {
		return v.info(), nil
	}
	if needSnap {
		if _, err := v.CreateSnapshot(ctx, "template-"+time.Now().UTC().Format("20060102-150405"), ""); err != nil {
			return VolumeInfo{}, err
		}
	}
	if err := v.Sync(ctx); err != nil {
		return VolumeInfo{}, err
	}
	if err := v.updateConfig(ctx, func(c *volumeConfig) { c.Template = true }); err != nil {
		return VolumeInfo{}, err
	}
	d.log.Info("vdisk is now a template", "vdisk", name)
	return v.info(), nil
}

// updateConfig changes volume.json: on the backend first (the authority
// on restart), then in the local state. The caller holds the control lock,
// which keeps the configuration from changing while mu is released for
// the backend write: reads and writes of the vdisk go on meanwhile.
func (v *Volume) updateConfig(ctx context.Context, change func(*volumeConfig)) error {
	v.mu.Lock()
	cfg := v.state.Config
	v.mu.Unlock()
	change(&cfg)
	b, _ := json.Marshal(cfg)
	if err := v.backend.Put(ctx, v.ns, volumeObject, b, true); err != nil {
		return fmt.Errorf("%s: update volume.json: %w", cfg.Name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("%s: %w", cfg.Name, ErrClosed)
	}
	v.state.Config = cfg
	v.setAncestors(cfg.Ancestors)
	if err := writeLocalState(v.dir, &v.state); err != nil {
		return v.failLocked(err)
	}
	return nil
}

// Flatten copies every cluster a clone still inherits into its own SCOs,
// then cuts it loose from its parent. The vdisk keeps serving I/O: a
// cluster the client writes meanwhile is not overwritten by the copy.
func (d *Driver) Flatten(ctx context.Context, name string) (VolumeInfo, error) {
	v, err := d.Volume(name)
	if err != nil {
		return VolumeInfo{}, err
	}
	v.mu.Lock()
	anc := v.state.Config.Ancestors
	v.mu.Unlock()
	if len(anc) == 0 {
		return v.info(), nil
	}
	start := time.Now()
	copied, err := v.copyInherited(ctx)
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("flatten %s: %w", name, err)
	}
	// Everything it needs must be in its own namespace before the chain
	// is cut.
	progress.From(ctx).Start("sync", "", 0)
	if err := v.Sync(ctx); err != nil {
		return VolumeInfo{}, fmt.Errorf("flatten %s: %w", name, err)
	}
	v, unlock, err := d.lockVolume(ctx, name)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer unlock()
	progress.From(ctx).Start("detach", "", 0)
	if err := v.updateConfig(ctx, func(c *volumeConfig) { c.Ancestors = nil }); err != nil {
		return VolumeInfo{}, err
	}
	d.log.Info("vdisk flattened", "vdisk", name, "copied_bytes", copied, "took", time.Since(start).Round(time.Millisecond))
	return v.info(), nil
}

// copyInherited rewrites, page by page, the clusters whose location is in
// an ancestor as the volume's own writes.
//
// Its progress is in bytes of the mapped address range looked at: the
// pages with entries are counted up front (a bitmap), the inherited
// clusters among them are not known until each page is read.
func (v *Volume) copyInherited(ctx context.Context) (int64, error) {
	cs := v.clusterSize
	var copied int64
	buf := make([]byte, v.maxRunClusters()*cs)
	pt := progress.From(ctx)
	pageBytes := int64(pageEntries) * int64(cs)
	v.mu.Lock()
	pages := v.md.allocated.count()
	v.mu.Unlock()
	pt.Start("copy", "bytes", int64(pages)*pageBytes)
	for page := uint64(0); ; page++ {
		if err := ctx.Err(); err != nil {
			return copied, err
		}
		v.mu.Lock()
		next, ok := v.md.allocated.nextSet(page)
		if !ok {
			v.mu.Unlock()
			return copied, nil
		}
		page = next
		type inherited struct {
			addr uint64
			e    mdEntry
		}
		var todo []inherited
		for a := page * pageEntries; a < (page+1)*pageEntries; a++ {
			e, err := v.md.get(a)
			if err != nil {
				v.mu.Unlock()
				return copied, err
			}
			if e.loc != 0 && scos.UnpackLocation(e.loc).SCO.CloneID != 0 {
				todo = append(todo, inherited{a, e})
			}
		}
		v.mu.Unlock()
		for i := 0; i < len(todo); {
			// A run: consecutive addresses whose clusters are
			// consecutive in one ancestor object, read with one
			// ranged read and written as one batch.
			j := i + 1
			for j < len(todo) && j-i < v.maxRunClusters() && todo[j].addr == todo[j-1].addr+1 &&
				todo[j].e.loc == todo[j-1].e.loc+1 && todo[j].e.loc>>16 == todo[i].e.loc>>16 {
				j++
			}
			run := todo[i:j]
			ls := make([]lookup, len(run))
			exp := make([]mdEntry, len(run))
			for k, t := range run {
				ls[k], exp[k] = lookup{e: t.e}, t.e
			}
			data := buf[:len(run)*cs]
			// rmwMu keeps partial writes of these clusters out while
			// they are read and copied.
			v.rmwMu.Lock()
			err := v.readRun(ctx, ls, data)
			if err == nil {
				err = v.writeClustersIf(ctx, run[0].addr, data, exp)
			}
			v.rmwMu.Unlock()
			if err != nil {
				return copied, err
			}
			copied += int64(len(data))
			i = j
		}
		pt.Add(pageBytes)
	}
}

// writeClustersIf writes the clusters of data from address addr, each
// only if its metadata entry is still the one in expect: a write that came
// in since wins over the copy. The clusters that still match are appended
// in runs of consecutive addresses.
func (v *Volume) writeClustersIf(ctx context.Context, addr uint64, data []byte, expect []mdEntry) error {
	if err := v.throttle(ctx); err != nil {
		return err
	}
	cs := v.clusterSize
	crcs := make([]uint32, len(expect))
	for i, e := range expect {
		crcs[i] = e.crc
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("%s: %w", v.name(), ErrClosed)
	}
	for i := 0; i < len(expect); {
		if e, err := v.md.get(addr + uint64(i)); err != nil {
			return err
		} else if e != expect[i] {
			i++
			continue
		}
		j := i + 1
		for ; j < len(expect); j++ {
			e, err := v.md.get(addr + uint64(j))
			if err != nil {
				return err
			}
			if e != expect[j] {
				break
			}
		}
		if err := v.appendClustersLocked(addr+uint64(i), data[i*cs:j*cs], crcs[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func dirExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}
