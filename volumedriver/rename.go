package volumedriver

import (
	"context"
	"encoding/json"
	"fmt"
)

// Rename gives vdisk from the name to. The backend's volume.json is
// rewritten first, in one put: it is what a restart (here or on another
// host) reads the name from, so a crash leaves the vdisk under one name or
// the other, never neither. Then the local state and the registry follow.
// The namespace is by id, so no data moves; clones refer to their parents
// by id and keep working.
func (d *Driver) Rename(ctx context.Context, from, to string) (VolumeInfo, error) {
	if !validName(to) {
		return VolumeInfo{}, fmt.Errorf("%w: vdisk name %q (use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", ErrInvalidArgument, to)
	}
	if from == to {
		return d.Info(ctx, from)
	}
	release, err := d.reserveName(to)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer release()
	v, unlock, err := d.lockVolume(ctx, from)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer unlock()
	v.mu.Lock()
	if err := v.writableLocked(); err != nil {
		v.mu.Unlock()
		return VolumeInfo{}, err
	}
	cfg := v.state.Config
	v.mu.Unlock()
	cfg.Name = to
	b, err := json.Marshal(cfg)
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("rename %s: %w", from, err)
	}
	// Crash tests: the node renames in arakoon before calling this, so
	// these are the two cuts of a rename in the cluster: the model renamed
	// and volume.json not, and both renamed with this host's state not.
	d.failpoint("rename-before-volume-json")
	if err := v.backend.Put(ctx, v.ns, volumeObject, b, true); err != nil {
		return VolumeInfo{}, fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	d.failpoint("rename-after-volume-json")
	d.mu.Lock()
	v.mu.Lock()
	v.state.Config = cfg
	v.vname.Store(&to)
	// state.json catches up at its next write if this one fails: the
	// backend's volume.json is authoritative on restart.
	if err := writeLocalState(v.dir, &v.state); err != nil {
		v.log.Warn("rename: could not rewrite the local state (volume.json has the new name)", "vdisk", to, "err", err)
	}
	v.mu.Unlock()
	delete(d.vols, from)
	delete(d.pending, to)
	d.vols[to] = v
	d.mu.Unlock()
	d.log.Info("vdisk renamed", "from", from, "to", to, "id", cfg.ID)
	return v.info(), nil
}

// NameOf returns the name this host serves the vdisk with namespace id
// under, if it serves it.
func (d *Driver) NameOf(id string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, v := range d.vols {
		if v.id == id {
			return name, true
		}
	}
	return "", false
}
