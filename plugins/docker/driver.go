// Package docker is the OVS Docker volume plugin: a Docker volume is a
// vdisk with a filesystem on it. Create makes the vdisk (or clones one),
// the first Mount on a host makes the filesystem if the vdisk has none and
// mounts it, Unmount flushes everything back, Remove deletes the vdisk.
//
// A volume is mounted on one host at a time: the host records its mount
// in the cluster (the vdisk's attachment, one arakoon test-and-set), and
// another host's Mount is refused while it is there. Containers on the
// same host share the mount, counted by Docker's mount ids.
//
// The plugin serves Docker's volume plugin protocol through
// github.com/docker/go-plugins-helpers/volume on a unix socket, and talks
// to the cluster through the REST API.
package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
)

// Cluster is what the plugin needs of the REST API; *api.Client has it.
type Cluster interface {
	Create(ctx context.Context, name string, size int64, opts volumedriver.CreateOptions) (volumedriver.VolumeInfo, error)
	Clone(ctx context.Context, name, parent, snapshot string) (volumedriver.VolumeInfo, error)
	Resize(ctx context.Context, name string, size int64) (volumedriver.VolumeInfo, error)
	Info(ctx context.Context, name string) (volumedriver.VolumeInfo, error)
	List(ctx context.Context) ([]volumedriver.VolumeInfo, error)
	Delete(ctx context.Context, name string, force bool) error
	Nodes(ctx context.Context) ([]api.NodeInfo, error)
	Attachment(ctx context.Context, name string) (model.Attachment, error)
	Attach(ctx context.Context, name string, req api.AttachRequest) (model.Attachment, error)
	Detach(ctx context.Context, name, host, user string, force bool) (model.Attachment, error)
}

var _ Cluster = (*api.Client)(nil)

// attachKind is the kind of the plugin's attachments in the cluster.
const attachKind = "docker"

// Config configures a Driver.
type Config struct {
	Cluster Cluster
	// Host identifies this host in the cluster's attachment records
	// (default: the host name).
	Host string
	// StateDir holds the plugin's records and mount points.
	StateDir string
	// Prefix starts the names of the plugin's vdisks (default
	// DefaultPrefix).
	Prefix string
	// NBD is the host:port of the NBD server the plugin connects to
	// (default: the NBD address of the node whose API it uses, or of the
	// first node that is up).
	NBD string
	// APIHost is the host:port of the REST API (to find its node's NBD).
	APIHost string
	// Devices makes vdisks into mounted filesystems (default
	// HostDevices).
	Devices Devices
	// Timeout bounds each call from Docker (default 2 minutes; a Mount
	// waits for a restarting volume driver up to it).
	Timeout time.Duration
	// LookPath finds an mkfs (default exec.LookPath).
	LookPath func(string) (string, error)
	Log      *slog.Logger
}

// Driver implements volume.Driver over an OVS cluster.
type Driver struct {
	cfg   Config
	state stateDir
	log   *slog.Logger
	base  context.Context

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per volume: a slow Mount holds up only its volume
}

var _ volume.Driver = (*Driver)(nil)

// New returns a Driver; ctx bounds every call it serves (cancel it to
// stop the plugin).
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("docker plugin: no cluster")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("docker plugin: no state directory")
	}
	if cfg.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("docker plugin: host id: %w", err)
		}
		cfg.Host = h
	}
	if !model.ValidID(cfg.Host) {
		return nil, fmt.Errorf("docker plugin: host id %q: use 1-64 of A-Z a-z 0-9 . _ -", cfg.Host)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Devices == nil {
		cfg.Devices = &HostDevices{Log: cfg.Log}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.LookPath == nil {
		cfg.LookPath = exec.LookPath
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("docker plugin: state directory: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("docker plugin: state directory: %w", err)
	}
	return &Driver{cfg: cfg, state: stateDir(abs), log: cfg.Log, base: ctx, locks: map[string]*sync.Mutex{}}, nil
}

func (d *Driver) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(d.base, d.cfg.Timeout)
}

// lock takes the volume's lock; the returned func releases it.
func (d *Driver) lock(volume string) func() {
	d.mu.Lock()
	l := d.locks[volume]
	if l == nil {
		l = &sync.Mutex{}
		d.locks[volume] = l
	}
	d.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Create implements volume.Driver: a new vdisk, or a clone for from=.
// Options are checked before anything is made.
func (d *Driver) Create(r *volume.CreateRequest) error {
	name, err := vdiskName(d.cfg.Prefix, r.Name)
	if err != nil {
		return err
	}
	o, err := parseOptions(r.Options, d.cfg.LookPath)
	if err != nil {
		return fmt.Errorf("volume %s: %w", r.Name, err)
	}
	defer d.lock(r.Name)()
	ctx, cancel := d.ctx()
	defer cancel()
	if o.parent != "" {
		parent, err := d.cfg.Cluster.Info(ctx, o.parent)
		if err != nil {
			return fmt.Errorf("volume %s: option from: %w", r.Name, err)
		}
		if o.size != 0 && o.size < parent.Size {
			return fmt.Errorf("volume %s: option size: %s is smaller than %s's %s", r.Name,
				api.FormatSize(o.size), o.parent, api.FormatSize(parent.Size))
		}
		if _, err := d.cfg.Cluster.Clone(ctx, name, o.parent, o.parentSnap); err != nil {
			return fmt.Errorf("volume %s: clone %s@%s: %w", r.Name, o.parent, o.parentSnap, err)
		}
		if o.size > parent.Size {
			if _, err := d.cfg.Cluster.Resize(ctx, name, o.size); err != nil {
				return fmt.Errorf("volume %s: grow the clone to %s: %w", r.Name, api.FormatSize(o.size), err)
			}
		}
	} else {
		size := o.size
		if size == 0 {
			size = DefaultSize
		}
		_, err := d.cfg.Cluster.Create(ctx, name, size, volumedriver.CreateOptions{})
		if errors.Is(err, volumedriver.ErrExists) && len(r.Options) == 0 {
			// Scope global: another host made it; Docker here asks
			// for it by name before its first use.
			d.log.Info("volume exists in the cluster", "volume", r.Name, "vdisk", name)
			return nil
		}
		if err != nil {
			return fmt.Errorf("volume %s: %w", r.Name, err)
		}
	}
	// The filesystem is made at the first mount; until then this is
	// what says which. A host without it (the volume was created
	// elsewhere) makes ext4, and a clone keeps its parent's.
	if err := writeRecord(d.state, r.Name, "volume.json", volumeRecord{Version: recordVersion, VDisk: name, FS: o.fs}); err != nil {
		return fmt.Errorf("volume %s: %w", r.Name, err)
	}
	d.log.Info("volume created", "volume", r.Name, "vdisk", name, "fs", o.fs, "from", r.Options["from"])
	return nil
}

// Remove implements volume.Driver: it deletes the vdisk, unless a host
// has the volume mounted.
func (d *Driver) Remove(r *volume.RemoveRequest) error {
	name, err := vdiskName(d.cfg.Prefix, r.Name)
	if err != nil {
		return err
	}
	defer d.lock(r.Name)()
	ctx, cancel := d.ctx()
	defer cancel()
	var m mountRecord
	if found, err := readRecord(d.state, r.Name, "mount.json", &m); err != nil {
		return err
	} else if found {
		return fmt.Errorf("volume %s is mounted on this host (%d users); unmount it first", r.Name, len(m.Users))
	}
	a, err := d.cfg.Cluster.Attachment(ctx, name)
	switch {
	case errors.Is(err, volumedriver.ErrNotFound):
		// Gone from the cluster already: forget it here too.
		return d.forget(r.Name)
	case err != nil:
		return fmt.Errorf("volume %s: %w", r.Name, err)
	case a.Attached():
		return fmt.Errorf("volume %s is mounted on host %s; unmount it there first", r.Name, a.Host)
	}
	if err := d.cfg.Cluster.Delete(ctx, name, false); err != nil && !errors.Is(err, volumedriver.ErrNotFound) {
		return fmt.Errorf("volume %s: %w", r.Name, err)
	}
	d.log.Info("volume removed", "volume", r.Name, "vdisk", name)
	return d.forget(r.Name)
}

func (d *Driver) forget(volume string) error {
	if err := os.RemoveAll(d.state.volumeDir(volume)); err != nil {
		return fmt.Errorf("volume %s: state dir: %w", volume, err)
	}
	return nil
}

// Mount implements volume.Driver.
func (d *Driver) Mount(r *volume.MountRequest) (*volume.MountResponse, error) {
	name, err := vdiskName(d.cfg.Prefix, r.Name)
	if err != nil {
		return nil, err
	}
	if r.ID == "" {
		return nil, fmt.Errorf("volume %s: mount without a mount id", r.Name)
	}
	defer d.lock(r.Name)()
	ctx, cancel := d.ctx()
	defer cancel()
	var m mountRecord
	mounted, err := readRecord(d.state, r.Name, "mount.json", &m)
	if err != nil {
		return nil, err
	}
	// The cluster first: another host that has the volume wins.
	if _, err := d.cfg.Cluster.Attach(ctx, name, api.AttachRequest{Host: d.cfg.Host, Kind: attachKind, User: r.ID}); err != nil {
		if errors.Is(err, volumedriver.ErrBusy) {
			return nil, fmt.Errorf("volume %s cannot be mounted on %s: %w", r.Name, d.cfg.Host, err)
		}
		return nil, fmt.Errorf("volume %s: %w", r.Name, err)
	}
	if mounted {
		if !slices.Contains(m.Users, r.ID) {
			m.Users = append(m.Users, r.ID)
		}
		if err := writeRecord(d.state, r.Name, "mount.json", m); err != nil {
			return nil, err
		}
		return &volume.MountResponse{Mountpoint: m.Mountpoint}, nil
	}
	mp, err := d.mountNew(ctx, r, name)
	if err != nil {
		if _, derr := d.cfg.Cluster.Detach(ctx, name, d.cfg.Host, "", false); derr != nil {
			d.log.Error("a failed mount left its attachment in the cluster", "volume", r.Name, "err", derr)
		}
		return nil, err
	}
	return &volume.MountResponse{Mountpoint: mp}, nil
}

func (d *Driver) mountNew(ctx context.Context, r *volume.MountRequest, name string) (string, error) {
	fs := "ext4"
	var vr volumeRecord
	if found, err := readRecord(d.state, r.Name, "volume.json", &vr); err != nil {
		return "", err
	} else if found && vr.FS != "" {
		fs = vr.FS
	}
	uri, err := d.nbdURI(ctx, name)
	if err != nil {
		return "", fmt.Errorf("volume %s: %w", r.Name, err)
	}
	dir := d.state.volumeDir(r.Name)
	m := mountRecord{Version: recordVersion, VDisk: name, FS: fs, Users: []string{r.ID},
		FuseMount: filepath.Join(dir, "nbd"), Mountpoint: filepath.Join(dir, "fs")}
	// The record goes down before anything is set up, so that a crash
	// half-way leaves what a restart needs to clean up.
	if err := writeRecord(d.state, r.Name, "mount.json", m); err != nil {
		return "", err
	}
	if err := d.cfg.Devices.Mount(ctx, uri, &m); err != nil {
		d.undo(r.Name, &m)
		return "", fmt.Errorf("volume %s: %w", r.Name, err)
	}
	if err := writeRecord(d.state, r.Name, "mount.json", m); err != nil {
		d.undo(r.Name, &m)
		return "", err
	}
	d.log.Info("volume mounted", "volume", r.Name, "vdisk", name, "device", m.Device, "fs", m.FS, "mountpoint", m.Mountpoint)
	return m.Mountpoint, nil
}

// undo takes down what a failed mount set up.
func (d *Driver) undo(volume string, m *mountRecord) {
	ctx, cancel := d.ctx()
	defer cancel()
	if err := d.cfg.Devices.Unmount(ctx, m); err != nil {
		d.log.Error("cleaning up a failed mount", "volume", volume, "err", err)
		writeRecord(d.state, volume, "mount.json", m) // for the next restart to finish
		return
	}
	removeRecord(d.state, volume, "mount.json")
}

// nbdURI is the NBD URI of vdisk name.
func (d *Driver) nbdURI(ctx context.Context, name string) (string, error) {
	addr := d.cfg.NBD
	if addr == "" {
		nodes, err := d.cfg.Cluster.Nodes(ctx)
		if err != nil {
			return "", fmt.Errorf("find an NBD server: %w", err)
		}
		for _, n := range nodes {
			if n.NBD != "" && (n.API == d.cfg.APIHost || addr == "" && n.State == "up") {
				addr = n.NBD
			}
			if n.API == d.cfg.APIHost && n.NBD != "" {
				break
			}
		}
		if addr == "" {
			return "", errors.New("no node of the cluster serves NBD (set --nbd)")
		}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("NBD address %q: %w", addr, err)
	}
	return (&url.URL{Scheme: "nbd", Host: addr, Path: "/" + name}).String(), nil
}

// Unmount implements volume.Driver: the last user's unmount takes the
// filesystem down and lets the cluster know.
func (d *Driver) Unmount(r *volume.UnmountRequest) error {
	name, err := vdiskName(d.cfg.Prefix, r.Name)
	if err != nil {
		return err
	}
	defer d.lock(r.Name)()
	ctx, cancel := d.ctx()
	defer cancel()
	var m mountRecord
	found, err := readRecord(d.state, r.Name, "mount.json", &m)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("volume %s is not mounted on this host", r.Name)
	}
	m.Users = slices.DeleteFunc(m.Users, func(u string) bool { return u == r.ID })
	if len(m.Users) > 0 {
		if err := writeRecord(d.state, r.Name, "mount.json", m); err != nil {
			return err
		}
		if _, err := d.cfg.Cluster.Detach(ctx, name, d.cfg.Host, r.ID, false); err != nil {
			return fmt.Errorf("volume %s: %w", r.Name, err)
		}
		return nil
	}
	if err := d.cfg.Devices.Unmount(ctx, &m); err != nil {
		return fmt.Errorf("volume %s: %w", r.Name, err)
	}
	if err := removeRecord(d.state, r.Name, "mount.json"); err != nil {
		return err
	}
	d.tidy(r.Name, &m)
	// Only now may another host mount it: everything is flushed.
	if _, err := d.cfg.Cluster.Detach(ctx, name, d.cfg.Host, "", false); err != nil {
		return fmt.Errorf("volume %s is unmounted but the cluster still lists it as mounted here: %w", r.Name, err)
	}
	d.log.Info("volume unmounted", "volume", r.Name, "vdisk", name)
	return nil
}

// tidy removes what an unmounted volume leaves in its directory, and the
// directory itself unless it holds the volume's record.
func (d *Driver) tidy(volume string, m *mountRecord) {
	dir := d.state.volumeDir(volume)
	for _, p := range []string{m.Mountpoint, m.FuseMount, filepath.Join(dir, "nbdfuse.pid"), filepath.Join(dir, "nbdfuse.log")} {
		if p != "" && filepath.Dir(p) == dir {
			os.Remove(p) // a mount point still in use stays: rmdir refuses it
		}
	}
	os.Remove(dir) // only if empty
}

// Path implements volume.Driver: the mount point, "" if not mounted here.
func (d *Driver) Path(r *volume.PathRequest) (*volume.PathResponse, error) {
	if _, err := vdiskName(d.cfg.Prefix, r.Name); err != nil {
		return nil, err
	}
	var m mountRecord
	found, err := readRecord(d.state, r.Name, "mount.json", &m)
	if err != nil || !found {
		return &volume.PathResponse{}, err
	}
	return &volume.PathResponse{Mountpoint: m.Mountpoint}, nil
}

// Get implements volume.Driver.
func (d *Driver) Get(r *volume.GetRequest) (*volume.GetResponse, error) {
	name, err := vdiskName(d.cfg.Prefix, r.Name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := d.ctx()
	defer cancel()
	info, err := d.cfg.Cluster.Info(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", r.Name, err)
	}
	v := d.volume(r.Name, info)
	if a, err := d.cfg.Cluster.Attachment(ctx, name); err == nil && a.Attached() {
		v.Status["mounted_on"] = a.Host
	}
	return &volume.GetResponse{Volume: v}, nil
}

// List implements volume.Driver: the vdisks that carry the plugin's
// prefix (the others belong to VMs and other users of the cluster).
func (d *Driver) List() (*volume.ListResponse, error) {
	ctx, cancel := d.ctx()
	defer cancel()
	all, err := d.cfg.Cluster.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	out := &volume.ListResponse{Volumes: []*volume.Volume{}}
	for _, info := range all {
		vol, ok := strings.CutPrefix(info.Name, d.cfg.Prefix)
		if !ok || vol == "" {
			continue
		}
		out.Volumes = append(out.Volumes, d.volume(vol, info))
	}
	return out, nil
}

func (d *Driver) volume(name string, info volumedriver.VolumeInfo) *volume.Volume {
	v := &volume.Volume{Name: name, Status: map[string]any{"vdisk": info.Name, "size": api.FormatSize(info.Size)}}
	if !info.CreatedAt.IsZero() {
		v.CreatedAt = info.CreatedAt.UTC().Format(time.RFC3339)
	}
	if info.Parent != "" {
		v.Status["parent"] = info.Parent
	}
	var m mountRecord
	if found, _ := readRecord(d.state, name, "mount.json", &m); found {
		v.Mountpoint = m.Mountpoint
	}
	return v
}

// Capabilities implements volume.Driver: a volume lives in the cluster,
// so every host sees the same one.
func (d *Driver) Capabilities() *volume.CapabilitiesResponse {
	return &volume.CapabilitiesResponse{Capabilities: volume.Capability{Scope: "global"}}
}

// Recover runs at start: a volume still mounted here stays mounted (the
// containers that use it go on); what a crash or a reboot left half-made
// is taken down and its attachment released.
func (d *Driver) Recover(ctx context.Context) error {
	vols, err := d.state.volumes()
	if err != nil {
		return err
	}
	var errs []error
	for _, vol := range vols {
		var m mountRecord
		found, err := readRecord(d.state, vol, "mount.json", &m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !found {
			continue
		}
		if d.cfg.Devices.Mounted(&m) {
			d.log.Info("volume still mounted", "volume", vol, "users", len(m.Users), "mountpoint", m.Mountpoint)
			continue
		}
		d.log.Warn("volume was mounted before the plugin stopped but is not any more; cleaning up", "volume", vol)
		if err := d.cfg.Devices.Unmount(ctx, &m); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", vol, err))
			continue
		}
		if err := removeRecord(d.state, vol, "mount.json"); err != nil {
			errs = append(errs, err)
			continue
		}
		d.tidy(vol, &m)
		if _, err := d.cfg.Cluster.Detach(ctx, m.VDisk, d.cfg.Host, "", false); err != nil && !errors.Is(err, volumedriver.ErrNotFound) {
			errs = append(errs, fmt.Errorf("volume %s: release its attachment: %w", vol, err))
		}
	}
	return errors.Join(errs...)
}
