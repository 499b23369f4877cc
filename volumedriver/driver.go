// Package volumedriver is the per-host engine of OVS: it turns a vdisk's
// writes into appends to SCOs in a local write buffer, records them in
// TLogs and a metadata store, serves reads through a read cache, and ships
// sealed SCOs and TLogs to a backend in the background.
package volumedriver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver/internal/readcache"
)

// Options tune a Driver. Zero values take the defaults.
type Options struct {
	// ReadCacheBytes bounds the read cache shared by all volumes
	// (default 64 MiB; negative disables it).
	ReadCacheBytes int64
	// ReadCacheDiskBytes bounds the disk read cache under dir/readcache,
	// shared by all volumes, in front of a backend whose reads are not
	// local (0 or negative: none; DefaultReadCacheDiskBytes suggests a
	// size).
	ReadCacheDiskBytes int64
	// MetadataCacheBytes bounds each volume's metadata page cache
	// (default 64 MiB: every page of a 13 GiB vdisk, counted as they
	// take memory).
	MetadataCacheBytes int64
	// WriteBufferBytes: past this, a volume's uploaded SCOs are evicted
	// from the local write buffer (default 1 GiB).
	WriteBufferBytes int64
	// MaxPendingUploadBytes: past this much data not yet on the backend, a
	// volume's writes wait (default 512 MiB).
	MaxPendingUploadBytes int64
	// OpenSCOFiles bounds the SCO files of all write buffers kept open
	// for reads (default 256).
	OpenSCOFiles int
	// UploadConcurrency: SCOs of a TLog uploaded at once (default 4: on
	// the EC backend an SCO put waits on k+m fragment writes and their
	// fsyncs; 1 MiB sequential writes on ovs up measured 138 MiB/s with 2
	// in flight and ~160 with 4; 8 gave ~177 but each upload holds a
	// 6 MiB buffer (the SCO and its parity), and the RSS budget of ovs
	// up is 256 MiB).
	UploadConcurrency int
	// AutoSyncInterval: an open TLog holding data is sealed and uploaded
	// after this long (default 30s).
	AutoSyncInterval time.Duration
	// ScrubInterval: every vdisk is scrubbed this often in the background
	// (default 1h; negative disables the background scrubber).
	ScrubInterval time.Duration
	// ScrubGarbageRatio: a vdisk is also scrubbed, between intervals, as
	// soon as its garbage (overwritten data no snapshot sees) exceeds this
	// fraction of its live data (default DefaultScrubGarbageRatio;
	// negative disables).
	ScrubGarbageRatio float64
	// GarbageGrace: objects a scrub replaced are deleted this long after
	// the switch, so that reads that resolved them before finish (default 10s).
	GarbageGrace time.Duration
	// CloseTimeout bounds how long Close waits for the volumes' sealed
	// TLogs and their last snapshots.json to reach the backend (default
	// 30s). Past it, Close logs an error and stops anyway: the data is
	// safe locally and goes up on the next start on this host.
	CloseTimeout time.Duration
	// Failpoint, if set, is called at named points of multi-step
	// operations ("rollback-after-switch", "scrub-before-switch",
	// "scrub-after-switch") so that crash tests can kill the process
	// exactly there.
	Failpoint func(point string)
	// Owned, if set, makes the driver serve only the vdisks this host
	// owns in a cluster: Open brings up a vdisk (by its namespace id,
	// volume.json's id) only if Owned says ok, under the owner epoch it
	// returns, and leaves every other namespace alone. Nil: every vdisk
	// on the backend, epoch 0 (a single host).
	Owned func(id string) (epoch uint64, ok bool)
	// OnFenced, if set, is called once for a vdisk that goes fenced (the
	// backend refused a write of its namespace as fenced, or Fence was
	// called), from a goroutine of its own with no lock of the driver
	// held.
	OnFenced func(name, id string)
	// DTL, if set, places each vdisk's DTL on another node (dtl.go);
	// nil: no DTL (a single host).
	DTL DTLPlacer
	// DTLMode, if set, gives a vdisk's DTL mode when it is brought up
	// (default sync when DTL is set); SetDTLMode changes it later.
	DTLMode func(id string) DTLMode
	// Recover, if set, is called for every vdisk brought up (Open,
	// Adopt) before it serves I/O: restored says its state came from the
	// backend alone (no local state of this owner epoch), so what the
	// backend lacks may be in a DTL, which Recover applies with replay.
	// An error leaves the vdisk down (Adopt fails; Open counts it broken).
	Recover func(ctx context.Context, name, id string, epoch uint64, restored bool, replay func(DTLSource) (ReplayResult, error)) error
	// Lease, if set, returns nil while no other node can have taken
	// this node's vdisks over (its liveness record is current), and an
	// error once that is not sure. A sync-mode flush with no DTL session
	// is acknowledged only under the lease.
	Lease  func(ctx context.Context) error
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.ReadCacheBytes == 0 {
		o.ReadCacheBytes = 64 << 20
	}
	if o.MetadataCacheBytes <= 0 {
		o.MetadataCacheBytes = 64 << 20
	}
	if o.WriteBufferBytes <= 0 {
		o.WriteBufferBytes = 1 << 30
	}
	if o.MaxPendingUploadBytes <= 0 {
		o.MaxPendingUploadBytes = 512 << 20
	}
	if o.OpenSCOFiles <= 0 {
		o.OpenSCOFiles = 256
	}
	if o.UploadConcurrency <= 0 {
		o.UploadConcurrency = 4
	}
	if o.AutoSyncInterval <= 0 {
		o.AutoSyncInterval = 30 * time.Second
	}
	if o.GarbageGrace <= 0 {
		o.GarbageGrace = 10 * time.Second
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = 30 * time.Second
	}
	if o.ScrubInterval == 0 {
		o.ScrubInterval = time.Hour
	}
	if o.ScrubGarbageRatio == 0 {
		o.ScrubGarbageRatio = DefaultScrubGarbageRatio
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// namespacePrefix marks the backend namespaces that hold vdisks.
const namespacePrefix = "vd-"

// Driver owns the volumes of one host: host-local state under dir, objects
// on the backend.
type Driver struct {
	dir     string
	backend scos.Backend
	opts    Options
	log     *slog.Logger
	cache   *ristretto.Cache[uint64, *cachedCluster]
	// rc is the disk read cache behind cache (readcache.go); nil: none.
	rc *readcache.Cache
	// files holds read handles of SCOs in the write buffers, bounded so
	// that many vdisks do not take a file descriptor per SCO.
	files *scos.FileCache

	stop chan struct{}
	wg   sync.WaitGroup

	// mu guards the maps below and is never held across backend I/O
	// (see ctl.go).
	// Garbage-triggered scrub requests, by vdisk name (see requestScrub).
	scrubReqMu sync.Mutex
	scrubReqs  map[string]bool
	scrubKick  chan struct{}

	mu     sync.Mutex
	vols   map[string]*Volume // by name
	broken map[string]brokenVolume
	// pending: names of vdisks being created or cloned.
	pending map[string]struct{}
	closed  bool
}

// brokenVolume is a vdisk whose namespace exists but that this host could
// not bring up; it is listed (so its name stays taken) and can be deleted.
type brokenVolume struct {
	cfg volumeConfig
	ns  string
	err error
}

type cachedCluster struct {
	salt uint64
	loc  uint64
	data []byte
}

// Open brings up every vdisk found on the backend (only those it owns, with
// Options.Owned): from its local state if this host has it under the same
// owner epoch, otherwise by replaying its TLogs from the backend.
func Open(ctx context.Context, dir string, backend scos.Backend, opts Options) (*Driver, error) {
	opts.setDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("volume driver dir: %w", err)
	}
	d := &Driver{
		dir:     dir,
		backend: backend,
		opts:    opts,
		log:     opts.Logger,
		vols:    map[string]*Volume{},
		broken:  map[string]brokenVolume{},
		pending: map[string]struct{}{},
		stop:    make(chan struct{}),
		files:   scos.NewFileCache(opts.OpenSCOFiles),

		scrubKick: make(chan struct{}, 1),
	}
	if opts.ReadCacheBytes > 0 {
		c, err := ristretto.NewCache(&ristretto.Config[uint64, *cachedCluster]{
			NumCounters: max(opts.ReadCacheBytes/4096*10, 1000),
			MaxCost:     opts.ReadCacheBytes,
			BufferItems: 64,
		})
		if err != nil {
			return nil, fmt.Errorf("read cache: %w", err)
		}
		d.cache = c
	}
	d.openReadCache(backend)
	// Views left by a crash are scratch.
	os.RemoveAll(filepath.Join(dir, snapViewDir))
	nss, err := backend.ListNamespaces(ctx)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("list vdisks on the backend: %w", err)
	}
	live := map[string]bool{}
	// dying: namespaces of a create or delete that did not finish; their
	// local state goes with them.
	dying := map[string]bool{}
	for _, ns := range nss {
		if !strings.HasPrefix(ns, namespacePrefix) {
			continue
		}
		var epoch uint64
		if opts.Owned != nil {
			// Another host's vdisk, or one being created by another
			// host (no volume.json yet): not ours to touch.
			e, ok := opts.Owned(strings.TrimPrefix(ns, namespacePrefix))
			if !ok {
				continue
			}
			epoch = e
		}
		b, err := backend.Get(ctx, ns, volumeObject)
		if errors.Is(err, scos.ErrObjectNotFound) && opts.Owned != nil {
			// The control plane finishes or undoes its creates.
			d.log.Warn("an owned vdisk namespace has no volume.json; leaving it alone", "namespace", ns)
			continue
		}
		if errors.Is(err, scos.ErrObjectNotFound) {
			// A create or delete that did not finish.
			d.log.Warn("removing a vdisk namespace without volume.json", "namespace", ns)
			dying[strings.TrimPrefix(ns, namespacePrefix)] = true
			if err := backend.DeleteNamespace(ctx, ns); err != nil {
				d.log.Error("remove namespace", "namespace", ns, "err", err)
			}
			continue
		}
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("read %s/%s: %w", ns, volumeObject, err)
		}
		cfg, err := decodeVolumeConfig(b)
		if err != nil {
			d.log.Error("vdisk has an unreadable volume.json", "namespace", ns, "err", err)
			live[strings.TrimPrefix(ns, namespacePrefix)] = true // keep its local state
			continue
		}
		if cfg.ID != strings.TrimPrefix(ns, namespacePrefix) {
			d.log.Error("vdisk's volume.json names another namespace id", "namespace", ns, "id", cfg.ID)
			d.broken[cfg.Name] = brokenVolume{cfg: cfg, ns: ns, err: fmt.Errorf("volume.json in %s names id %s", ns, cfg.ID)}
			live[strings.TrimPrefix(ns, namespacePrefix)] = true
			continue
		}
		live[cfg.ID] = true
		start := time.Now()
		v, err := d.openVolume(ctx, cfg, epoch)
		if err != nil {
			d.log.Error("could not bring up vdisk", "vdisk", cfg.Name, "err", err)
			d.broken[cfg.Name] = brokenVolume{cfg: cfg, ns: ns, err: err}
			continue
		}
		d.vols[cfg.Name] = v
		d.log.Info("vdisk up", "vdisk", cfg.Name, "size", cfg.Size, "took", time.Since(start).Round(time.Millisecond))
	}
	// Local directories of vdisks that are gone from the backend.
	ents, err := os.ReadDir(dir)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range ents {
		if !e.IsDir() || live[e.Name()] || e.Name() == quarantineDir || e.Name() == readCacheDir || e.Name() == snapViewDir {
			continue
		}
		switch {
		case dying[e.Name()]:
			d.log.Warn("removing local state of a vdisk whose create or delete did not finish", "id", e.Name())
			os.RemoveAll(filepath.Join(dir, e.Name()))
		case opts.Owned != nil:
			// Another host owns it now (or it is gone): whatever it
			// holds is from an earlier tenure here.
			quarantine(d.log, dir, filepath.Join(dir, e.Name()), "stale local state of a vdisk this host does not own")
		default:
			// It may hold writes that never reached the backend: set it
			// aside for the operator rather than delete it.
			quarantine(d.log, dir, filepath.Join(dir, e.Name()), "local state of a vdisk that is not on the backend")
		}
	}
	if opts.ScrubInterval > 0 || opts.ScrubGarbageRatio > 0 {
		d.wg.Add(1)
		go d.scrubber(opts.ScrubInterval)
	}
	return d, nil
}

func (d *Driver) newVolume(cfg volumeConfig, epoch uint64) *Volume {
	var salt [8]byte
	_, _ = rand.Read(salt[:])
	v := &Volume{
		id:           cfg.ID,
		epoch:        epoch,
		drv:          d,
		dir:          filepath.Join(d.dir, cfg.ID),
		ns:           namespacePrefix + cfg.ID,
		log:          d.log,
		cacheSalt:    binary.LittleEndian.Uint64(salt[:]),
		clusterSize:  cfg.ClusterSize,
		scoClusters:  cfg.SCOMultiplier,
		tlogMult:     cfg.TLogMultiplier,
		state:        localState{Format: formatVersion, Config: cfg, Epoch: epoch},
		scos:         map[uint32]*scoFile{},
		nextSCO:      1,
		progress:     make(chan struct{}),
		countChanges: true,
		kick:         make(chan struct{}, 1),
		stop:         make(chan struct{}),
		draining:     make(chan struct{}),
		uploaderDone: make(chan struct{}),
		ctl:          make(chan struct{}, 1),
		caw:          make(chan struct{}, 1),
	}
	v.vname.Store(&cfg.Name)
	v.dtl.mode, v.dtl.kick, v.dtl.recCh = DTLSync, make(chan struct{}), make(chan struct{})
	if d.opts.DTLMode != nil {
		if m, err := ParseDTLMode(string(d.opts.DTLMode(cfg.ID))); err == nil {
			v.dtl.mode = m
		}
	}
	v.backend = &fencingBackend{Backend: d.backend, v: v}
	v.committed = sync.NewCond(&v.mu)
	v.size.Store(cfg.Size)
	v.setAncestors(cfg.Ancestors)
	cheap, ok := d.backend.(scos.CheapReader)
	v.cacheReads = d.cache != nil && !(ok && cheap.CheapReads())
	return v
}

// openVolume brings a vdisk up under owner epoch epoch. Local state
// recorded under another epoch is from an earlier tenure on this host:
// another host may have written the vdisk since, so replaying it would mix
// stale writes into the vdisk. It is set aside (or removed, if the backend
// has all of it) and the vdisk restored from the backend. Under the same
// epoch the local state is what this host last wrote and is used (a crash
// of the owner loses nothing).
func (d *Driver) openVolume(ctx context.Context, cfg volumeConfig, epoch uint64) (*Volume, error) {
	v := d.newVolume(cfg, epoch)
	st, err := readLocalState(v.dir)
	// restored: the state comes from the backend alone; what the backend
	// lacks may be in a DTL (Options.Recover).
	restored := false
	switch {
	case err == nil && st.Epoch != epoch:
		d.log.Warn("local state of the vdisk is from another owner epoch; restoring it from the backend",
			"vdisk", cfg.Name, "local_epoch", st.Epoch, "epoch", epoch)
		d.setAsideEarlierTenure(v, &st, fmt.Sprintf("local state of owner epoch %d (now %d) with writes the backend does not have", st.Epoch, epoch))
		err = v.restoreFromBackend(ctx)
		restored = true
	case err == nil:
		err = v.restoreLocal(ctx, st)
	case errors.Is(err, errNewerFormat):
		return nil, fmt.Errorf("local state of %s: %w", cfg.Name, err)
	case epoch != 0 && readEpochFile(v.dir) != epoch:
		// In a cluster, local TLogs without a readable state.json are
		// replayed only if the epoch file says they are of this
		// tenure: those of an earlier one must never be.
		if !errors.Is(err, fs.ErrNotExist) {
			d.log.Error("state.json is damaged; restoring the vdisk from the backend (the local files are set aside if they hold anything else)",
				"vdisk", cfg.Name, "err", err)
		}
		d.setAsideEarlierTenure(v, nil, "local state without a readable state.json (owner epoch unknown)")
		err = v.restoreFromBackend(ctx)
		restored = true
	default:
		if !errors.Is(err, fs.ErrNotExist) {
			// What the local TLogs and SCOs hold is recovered as if
			// state.json were missing; the bad file is kept aside.
			d.log.Error("state.json is damaged; recovering the vdisk from its local TLogs and the backend", "vdisk", cfg.Name, "err", err)
			quarantine(d.log, v.dir, filepath.Join(v.dir, "state.json"), "unreadable state.json")
		}
		err = v.restoreWithoutState(ctx)
	}
	if err != nil {
		v.closeFiles()
		return nil, err
	}
	if epoch != 0 {
		if err := writeFileAtomic(filepath.Join(v.dir, epochFileName), []byte(strconv.FormatUint(epoch, 10)+"\n")); err != nil {
			d.log.Warn("could not record the owner epoch beside the local state", "vdisk", cfg.Name, "err", err)
		}
	}
	// From here on, a metadata page that fails verification makes the
	// volume rebuild its metadata instead of failing reads.
	v.md.onCorrupt = func(cause error) error {
		err := v.rebuildMetadataLocked(cause)
		if err != nil {
			v.log.Error("could not rebuild the vdisk's metadata; it fails every I/O", "vdisk", v.name(), "err", err)
		}
		return err
	}
	uctx, cancel := context.WithCancel(context.Background())
	v.wg.Add(2)
	go v.uploader(uctx)
	go func() {
		defer v.wg.Done()
		<-v.stop
		cancel()
	}()
	if rec := d.opts.Recover; rec != nil && !cfg.Template {
		replay := func(src DTLSource) (ReplayResult, error) { return v.replayDTL(ctx, src) }
		if err := rec(ctx, cfg.Name, cfg.ID, epoch, restored, replay); err != nil {
			v.discard()
			if restored {
				// What is here came from the backend (and part of a
				// replay nobody was told of): the next try restores
				// and recovers again rather than trust it.
				if rerr := os.RemoveAll(v.dir); rerr != nil {
					d.log.Error("removing the local state of a vdisk whose recovery failed", "vdisk", cfg.Name, "err", rerr)
				}
			}
			return nil, fmt.Errorf("recover %s: %w", cfg.Name, err)
		}
	}
	v.wg.Add(1)
	go v.dtlKeeper()
	return v, nil
}

// Create makes a new, empty vdisk.
func (d *Driver) Create(ctx context.Context, name string, size int64, opts CreateOptions) (VolumeInfo, error) {
	if !validName(name) {
		return VolumeInfo{}, fmt.Errorf("%w: vdisk name %q (use 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", ErrInvalidArgument, name)
	}
	if opts.ClusterSize == 0 {
		opts.ClusterSize = DefaultClusterSize
	}
	if opts.SCOMultiplier == 0 {
		opts.SCOMultiplier = int(DefaultClusterSize * DefaultSCOMultiplier / int64(opts.ClusterSize))
	}
	if err := checkLayout(opts.ClusterSize, opts.SCOMultiplier); err != nil {
		return VolumeInfo{}, err
	}
	if err := checkSize(size, opts.ClusterSize); err != nil {
		return VolumeInfo{}, err
	}
	id, err := chooseID(opts.ID)
	if err != nil {
		return VolumeInfo{}, err
	}
	release, err := d.reserveName(name)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer release()
	cfg := volumeConfig{
		Format:         formatVersion,
		ID:             id,
		Name:           name,
		Size:           size,
		ClusterSize:    opts.ClusterSize,
		SCOMultiplier:  opts.SCOMultiplier,
		TLogMultiplier: tlogMultiplierFor(int64(opts.ClusterSize) * int64(opts.SCOMultiplier)),
		CreatedAt:      time.Now().UTC().Truncate(time.Second),
	}
	v, err := d.createVolume(ctx, cfg, opts.Epoch)
	if err != nil {
		return VolumeInfo{}, err
	}
	d.log.Info("vdisk created", "vdisk", name, "size", size, "id", cfg.ID)
	return v.info(), nil
}

// List returns every vdisk, sorted by name.
func (d *Driver) List(ctx context.Context) ([]VolumeInfo, error) {
	d.mu.Lock()
	vols := make([]*Volume, 0, len(d.vols))
	for _, v := range d.vols {
		vols = append(vols, v)
	}
	out := make([]VolumeInfo, 0, len(vols)+len(d.broken))
	for _, b := range d.broken {
		out = append(out, b.info())
	}
	d.mu.Unlock()
	for _, v := range vols {
		out = append(out, v.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (b brokenVolume) info() VolumeInfo {
	return VolumeInfo{
		Name: b.cfg.Name, ID: b.cfg.ID, Size: b.cfg.Size, ClusterSize: b.cfg.ClusterSize,
		SCOSize: int64(b.cfg.ClusterSize) * int64(b.cfg.SCOMultiplier), CreatedAt: b.cfg.CreatedAt,
		State: "failed: " + b.err.Error(),
	}
}

// Info describes one vdisk.
func (d *Driver) Info(ctx context.Context, name string) (VolumeInfo, error) {
	d.mu.Lock()
	v, ok := d.vols[name]
	b, isBroken := d.broken[name]
	d.mu.Unlock()
	if isBroken {
		return b.info(), nil
	}
	if !ok {
		return VolumeInfo{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return v.info(), nil
}

// Volume returns a vdisk for I/O without taking a client reference. A
// vdisk being released or fenced is refused (ErrReleased, ErrFenced).
func (d *Driver) Volume(name string) (*Volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vols[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err := v.gate.err(); err != nil {
		return nil, err
	}
	return v, nil
}

// Acquire returns a vdisk for a frontend client and counts the client
// until release is called (once). A vdisk with clients is not deleted
// without force.
func (d *Driver) Acquire(name string) (v *Volume, release func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vols[name]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err := v.gate.err(); err != nil {
		return nil, nil, err
	}
	v.clients.Add(1)
	var once sync.Once
	return v, func() { once.Do(func() { v.clients.Add(-1) }) }, nil
}

// Names returns the names of the vdisks that can serve I/O (not those
// being released or fenced).
func (d *Driver) Names() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.vols))
	for n, v := range d.vols {
		if v.gate.err() == nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Delete removes a vdisk and everything it stored. A vdisk with frontend
// clients is refused unless force; forced, their I/O fails from then on.
func (d *Driver) Delete(ctx context.Context, name string, force bool) error {
	d.mu.Lock()
	v, ok := d.vols[name]
	b, isBroken := d.broken[name]
	d.mu.Unlock()
	if !ok && !isBroken {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	id := b.cfg.ID
	if ok && v.fenced.Load() {
		// Its namespace is another host's now; Drop sets it aside here.
		return v.fencedErr()
	}
	if ok {
		// No clone of it may be taken while it goes.
		unlock, err := v.lockCtl(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		id = v.state.Config.ID // fixed at creation
	}
	if clones := d.clonesOf(id, ""); len(clones) > 0 {
		return fmt.Errorf("%w: %s has clones (%s); flatten or delete them first", ErrBusy, name, describeClones(clones))
	}
	var ns, dir string
	d.mu.Lock()
	if ok && d.vols[name] != v || !ok && d.broken[name].ns != b.ns {
		d.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, name) // deleted meanwhile
	}
	if ok {
		if n := v.clients.Load(); n > 0 && !force {
			d.mu.Unlock()
			return fmt.Errorf("%w: %s has %d client(s) connected; use force to delete anyway", ErrBusy, name, n)
		}
		delete(d.vols, name)
		ns, dir = v.ns, v.dir
	} else {
		delete(d.broken, name)
		ns, dir = b.ns, filepath.Join(d.dir, b.cfg.ID)
	}
	d.mu.Unlock()
	if v != nil {
		v.discard()
	}
	// volume.json first: without it the namespace is garbage that the
	// next start removes, even if this delete is cut short.
	if err := d.backend.Delete(ctx, ns, volumeObject); err != nil && !errors.Is(err, scos.ErrObjectNotFound) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	d.invalidateReadCache(ns) // a vdisk created again under this id reuses the names
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if err := d.backend.DeleteNamespace(ctx, ns); err != nil && !errors.Is(err, scos.ErrNamespaceNotFound) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	d.log.Info("vdisk deleted", "vdisk", name)
	return nil
}

// Resize grows a vdisk. Shrinking is refused: it would destroy data.
func (d *Driver) Resize(ctx context.Context, name string, size int64) (VolumeInfo, error) {
	v, unlock, err := d.lockVolume(ctx, name)
	if err != nil {
		return VolumeInfo{}, err
	}
	defer unlock()
	if err := checkSize(size, v.clusterSize); err != nil {
		return VolumeInfo{}, err
	}
	if cur := v.Size(); size < cur {
		return VolumeInfo{}, fmt.Errorf("%w: %s is %d bytes; shrinking to %d would destroy data", ErrInvalidArgument, name, cur, size)
	} else if size == cur {
		return v.info(), nil
	}
	if err := v.resize(ctx, size); err != nil {
		return VolumeInfo{}, err
	}
	d.log.Info("vdisk resized", "vdisk", name, "size", size)
	return v.info(), nil
}

// Sync returns once every write to the vdisk completed before the call is
// on the backend.
func (d *Driver) Sync(ctx context.Context, name string) error {
	v, err := d.Volume(name)
	if err != nil {
		return err
	}
	return v.Sync(ctx)
}

// Close stops every volume cleanly: what is sealed is uploaded and named
// in snapshots.json (all volumes at once, for at most CloseTimeout), then
// each is flushed, checkpointed and its files closed. Without the upload
// a rollback or snapshot made just before the stop would be missing from
// the backend, and a new host would see the state before it.
func (d *Driver) Close() error {
	d.mu.Lock()
	if !d.closed {
		close(d.stop)
	}
	d.closed = true
	d.mu.Unlock()
	d.wg.Wait()
	d.mu.Lock()
	vols := d.vols
	d.vols = map[string]*Volume{}
	d.mu.Unlock()
	for _, v := range vols {
		v.startDrain()
	}
	deadline := time.Now().Add(d.opts.CloseTimeout)
	for _, v := range vols {
		v.waitDrained(deadline)
	}
	var errs []error
	for _, v := range vols {
		if err := v.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if d.cache != nil {
		d.cache.Close()
	}
	if err := d.closeReadCache(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Driver) cacheKey(v *Volume, loc uint64) uint64 {
	return (loc * 0x9e3779b97f4a7c15) ^ v.cacheSalt
}

func (d *Driver) cacheGet(v *Volume, loc uint64) ([]byte, bool) {
	c, ok := d.cache.Get(d.cacheKey(v, loc))
	if !ok || c.salt != v.cacheSalt || c.loc != loc {
		return nil, false
	}
	return c.data, true
}

func (d *Driver) cacheSet(v *Volume, loc uint64, data []byte) {
	if d.cache == nil {
		return
	}
	// Locations are immutable, so an entry never goes stale; a dropped
	// Set only costs a later miss.
	d.cache.Set(d.cacheKey(v, loc), &cachedCluster{salt: v.cacheSalt, loc: loc, data: append([]byte(nil), data...)}, int64(len(data))+64)
}

// resize grows the volume: volume.json on the backend first (it is the
// authority on restart), then the local view. The caller holds the control
// lock, so the configuration cannot change while mu is released for the
// backend write.
func (v *Volume) resize(ctx context.Context, size int64) error {
	v.mu.Lock()
	if err := v.writableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	cfg := v.state.Config
	v.mu.Unlock()
	cfg.Size = size
	b, _ := json.Marshal(cfg)
	if err := v.backend.Put(ctx, v.ns, volumeObject, b, true); err != nil {
		return fmt.Errorf("resize %s: %w", cfg.Name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("resize %s: %w", cfg.Name, ErrClosed)
	}
	v.state.Config = cfg
	v.md.grow(numPages(size, v.clusterSize))
	v.size.Store(size)
	if err := writeLocalState(v.dir, &v.state); err != nil {
		// The backend has the new size; state.json catches up at the
		// next write of it.
		return v.ioErrLocked(err)
	}
	return nil
}

// startDrain asks the uploader to put everything sealed on the backend,
// snapshots.json last, and stop.
func (v *Volume) startDrain() { v.drainOnce.Do(func() { close(v.draining) }) }

// waitDrained waits until the uploader drained or deadline passed; then it
// says loudly what the backend does not have.
func (v *Volume) waitDrained(deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-v.uploaderDone:
		return
	case <-t.C:
	}
	v.mu.Lock()
	notUploaded := len(v.state.Sealed) - v.uploadedCount
	stale, pending, lastErr := v.snapshotsDirty || v.publishedCount < v.uploadedCount, v.pendingUpload, v.uploadErr
	v.mu.Unlock()
	v.log.Error("stopping before the backend has this vdisk's last changes; they are safe on this host and go up at its next start, but until then the backend (and a new host) sees an older state",
		"vdisk", v.name(), "tlogs_not_uploaded", notUploaded, "snapshots_json_stale", stale,
		"pending_upload_bytes", pending, "last_upload_error", lastErr, "waited", v.drv.opts.CloseTimeout)
}

// close stops the volume cleanly.
func (v *Volume) close() error {
	v.stopOnce.Do(func() { close(v.stop) })
	v.wg.Wait()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	var err error
	if v.failed == nil {
		err = v.checkpointLocked()
	}
	v.closed = true
	close(v.progress)
	v.progress = make(chan struct{})
	v.closeFilesLocked()
	if err != nil {
		return fmt.Errorf("close %s: %w", v.name(), err)
	}
	return nil
}

// discard stops the volume without saving anything: it is being deleted.
func (v *Volume) discard() {
	v.stopOnce.Do(func() { close(v.stop) })
	v.wg.Wait()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return
	}
	v.closed = true
	close(v.progress)
	v.progress = make(chan struct{})
	v.closeFilesLocked()
}

func (v *Volume) closeFiles() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closeFilesLocked()
}

func (v *Volume) closeFilesLocked() {
	for _, s := range v.scos {
		v.dropSCOFileLocked(s)
	}
	if v.tlog != nil && v.tlog.f != nil {
		v.tlog.f.Close()
	}
	if v.md != nil {
		v.md.close()
	}
}

func (d *Driver) failpoint(point string) {
	if d.opts.Failpoint != nil {
		d.opts.Failpoint(point)
	}
}
