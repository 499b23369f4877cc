package ec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/reedsolomon"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
)

// Backend is the erasure-coded, geo-spread scos.Backend (ALBA-like). Each
// object is split into k data fragments plus m parity fragments
// (Reed-Solomon) stored on k+m different ASDs, placed by weighted
// rendezvous hashing within the node and site bounds of the namespace's
// preset. Manifests, namespaces, the ASD registry and presets live in a
// KVStore:
//
//	ns/<ns>          namespace record (JSON)
//	obj/<ns>/<name>  object manifest (binary, see Manifest)
//	asd/<id>         ASD record (JSON)
//	preset/<name>    preset (JSON)
//	deg/<ns>/<name>  an object maintenance must look at (JSON)
//	gc/<id>          fragments to delete (JSON)
//
// Reads fetch only the data fragments covering the range and decode only
// when one of them is missing, stale or corrupt. Background maintenance
// repairs degraded objects, drains decommissioned ASDs, scrubs and
// rebalances (see Repair, Scrub, Rebalance).
type Backend struct {
	cfg Config
	kv  KVStore // cache, in front of cfg.KV
	// direct is what maintenance reads manifests from: the store itself
	// unless this process is the sole writer. Another node's maintenance
	// may change a manifest that this node caches (for a namespace it
	// holds a fence on); reads survive a stale manifest, but garbage
	// collection and scrub must not judge a fragment by one.
	direct KVStore
	cache  *cachingKV // everything (SoleWriter) or only fenced namespaces
	// presets holds the presets read so far, by name (they never change).
	presets sync.Map
	// objBufs holds the buffers PutFile reads SCOs into.
	objBufs objectBufs
	log     *slog.Logger
	hc      *http.Client

	fenceMu sync.RWMutex
	fences  map[string]*fenceState // by namespace

	mu       sync.Mutex
	asds     map[string]*asdState
	encoders map[[2]int]reedsolomon.Encoder

	stats       ecCounters
	ra          *readAhead
	progress    progress
	statusCache statusCache
	maintMu     sync.Mutex // one maintenance pass at a time

	kick      chan struct{} // wakes the maintenance loop
	gcKick    chan struct{} // wakes the deletion of discarded fragments
	rebalance atomic.Bool   // ASDs were added: rebalance on the next pass
	fullPass  atomic.Bool   // the registry changed: sweep on the next wake-up
	drained   []string      // ASDs a sweep found drained; under maintMu
	reported  sync.Map      // "ns/name/objid" of objects already reported degraded by a read

	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// Config configures a Backend. Zero durations take the defaults.
type Config struct {
	// KV holds manifests, namespaces, the ASD registry and presets. The
	// backend does not close it.
	KV KVStore
	// SoleWriter: this process is the only one that changes the backend
	// (a single-host cluster). Manifests and namespace records are then
	// cached in memory, which takes a KV round trip off every read.
	// Without it (a cluster) only the namespaces this process holds a
	// fence on are cached (see SetFence): the fence holder is their only
	// writer; every other namespace is read through to the KV.
	SoleWriter bool
	// Preset is the preset new namespaces use (default "default").
	Preset string
	// Presets are added to the store when missing (an existing preset of
	// the same name is left alone). If Preset names none of them and the
	// store has no such preset either, LocalPreset is added under it.
	Presets []Preset
	// HTTPClient talks to the ASDs; nil uses one with asd.NewTransport.
	// Its transport's TLS configuration is also what the binary read
	// protocol's connections use.
	HTTPClient *http.Client
	// HTTPReads: read fragments over HTTP only, not over the ASDs'
	// binary read protocol (which falls back to HTTP by itself for an
	// ASD that does not speak it).
	HTTPReads bool
	// ReadAhead: after a few ranged reads of an object that each start
	// where the previous ended, one read fetches this many bytes ahead
	// and the next are served from memory (default 1 MiB; negative: off).
	ReadAhead int64
	Logger    *slog.Logger

	// HealthInterval: how often every ASD is probed (default 1s), each
	// probe giving up after ProbeTimeout (default 1s).
	HealthInterval time.Duration
	ProbeTimeout   time.Duration
	// FragmentTimeout bounds one fragment operation (default 5s), plus a
	// second per 16 MiB of fragment.
	FragmentTimeout time.Duration
	// HedgeAfter: a read that has waited this long for a data fragment
	// starts decoding from the others (default 750ms).
	HedgeAfter time.Duration
	// LostAfter: an ASD down for longer is considered lost and its
	// fragments are rebuilt elsewhere (default 15m).
	LostAfter time.Duration
	// MaintenanceInterval: how often the background maintenance runs
	// (default 30s); negative disables the background loop (Repair,
	// Scrub and Rebalance can still be called).
	MaintenanceInterval time.Duration
	// ScrubInterval: how often maintenance verifies every fragment
	// (default 24h); negative disables scheduled scrubs.
	ScrubInterval time.Duration
	// RebalanceThreshold: maintenance rebalances when the fill of two
	// ASDs differs by more than this fraction (default 0.10).
	RebalanceThreshold float64
	// OrphanGrace: a fragment no manifest refers to is deleted by a scrub
	// once it is older than this (default 1h), so in-flight puts are safe.
	OrphanGrace time.Duration
	// LocalPids, if set, gives the pid of ASDs run as local child
	// processes, by ASD id (for listings).
	LocalPids func() map[string]int
	// LocalSockets, if set, gives the local socket of ASDs of this host,
	// by ASD id: their reads skip TLS and TCP (asd.WireConfig.Socket).
	LocalSockets func() map[string]string
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HealthInterval, time.Second)
	def(&c.ProbeTimeout, time.Second)
	def(&c.FragmentTimeout, 5*time.Second)
	def(&c.HedgeAfter, 750*time.Millisecond)
	def(&c.LostAfter, 15*time.Minute)
	def(&c.MaintenanceInterval, 30*time.Second)
	def(&c.ScrubInterval, 24*time.Hour)
	def(&c.OrphanGrace, time.Hour)
	if c.RebalanceThreshold == 0 {
		c.RebalanceThreshold = 0.10
	}
	if c.Preset == "" {
		c.Preset = DefaultPresetName
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ASD administrative states.
const (
	ASDActive          = "active"
	ASDDecommissioning = "decommissioning" // being drained; receives nothing new
	ASDDecommissioned  = "decommissioned"  // drained; can be removed
)

// ASDRecord is an ASD in the registry.
type ASDRecord struct {
	ID    string    `json:"id"`
	Addr  string    `json:"addr"`
	Node  string    `json:"node"`
	Site  string    `json:"site"`
	State string    `json:"state"`
	Added time.Time `json:"added"`
}

// asdState is a registered ASD with what the health monitor knows of it.
type asdState struct {
	rec       ASDRecord
	client    *asd.Client
	probed    bool // at least one probe finished
	up        bool
	lastSeen  time.Time
	downSince time.Time
	health    asd.Health
	lastErr   string
}

const (
	kvNamespace = "ns/"
	kvObject    = "obj/"
	kvASD       = "asd/"
	kvPreset    = "preset/"
	kvDegraded  = "deg/"
	kvGarbage   = "gc/"
)

func objKey(ns, name string) string      { return kvObject + ns + "/" + name }
func degradedKey(ns, name string) string { return kvDegraded + ns + "/" + name }

// New opens the backend on cfg.KV, probes the registered ASDs
// once and starts the health monitor and (unless disabled) maintenance.
// ctx bounds the start only; Close stops the background work.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.KV == nil {
		return nil, errors.New("ec backend: no KV store")
	}
	cfg.setDefaults()
	b := &Backend{
		cfg:      cfg,
		kv:       cfg.KV,
		direct:   cfg.KV,
		fences:   map[string]*fenceState{},
		log:      cfg.Logger,
		hc:       cfg.HTTPClient,
		asds:     map[string]*asdState{},
		encoders: map[[2]int]reedsolomon.Encoder{},
		objBufs:  newObjectBufs(objectBufsKept),
		kick:     make(chan struct{}, 1),
		gcKick:   make(chan struct{}, 1),
	}
	if b.hc == nil {
		b.hc = &http.Client{Transport: asd.NewTransport()}
	}
	if cfg.ReadAhead == 0 {
		cfg.ReadAhead = defaultReadAhead
	}
	b.ra = newReadAhead(cfg.ReadAhead)
	b.cache = newCachingKV(cfg.KV, 32<<20, kvObject, kvNamespace) // 32 MiB of manifests
	if cfg.SoleWriter {
		b.direct = b.cache
	} else {
		b.cache.only = b.fencedKey
	}
	b.kv = b.cache
	presets := cfg.Presets
	if !containsPreset(presets, cfg.Preset) {
		if _, err := b.preset(ctx, cfg.Preset); errors.Is(err, ErrPresetNotFound) {
			p := LocalPreset()
			p.Name = cfg.Preset
			presets = append(presets, p)
		}
	}
	for _, p := range presets {
		if err := b.AddPreset(ctx, p); err != nil && !errors.Is(err, ErrPresetExists) {
			return nil, err
		}
	}
	if err := b.reloadRegistry(ctx); err != nil {
		return nil, err
	}
	b.probeAll(ctx)
	bg, stop := context.WithCancel(context.Background())
	b.stop = stop
	b.wg.Add(2)
	go b.healthLoop(bg)
	go b.gcLoop(bg)
	if cfg.MaintenanceInterval > 0 {
		b.wg.Add(1)
		go b.maintenanceLoop(bg)
	}
	return b, nil
}

func containsPreset(ps []Preset, name string) bool {
	for _, p := range ps {
		if p.Name == name {
			return true
		}
	}
	return false
}

// Close stops the background work and waits for it. It does not close
// the KV store.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.stop()
	b.wg.Wait()
	b.mu.Lock()
	for _, st := range b.asds {
		if st.client != nil {
			st.client.Close()
		}
	}
	b.mu.Unlock()
	return nil
}

// --- presets -----------------------------------------------------------------

var (
	ErrPresetNotFound = errors.New("preset not found")
	ErrPresetExists   = errors.New("preset already exists")
	ErrASDNotFound    = errors.New("ASD not registered")
	ErrASDInUse       = errors.New("ASD still holds fragments")
)

func (b *Backend) preset(ctx context.Context, name string) (Preset, error) {
	// A preset is never changed or removed once stored (AddPreset only
	// creates), so a copy found once stays right; every put asks for its
	// namespace's preset, and asking arakoon each time cost a round trip
	// per SCO upload.
	if p, ok := b.presets.Load(name); ok {
		return p.(Preset), nil
	}
	raw, err := b.kv.Get(ctx, kvPreset+name)
	if errors.Is(err, ErrKeyNotFound) {
		return Preset{}, fmt.Errorf("%w: %s", ErrPresetNotFound, name)
	}
	if err != nil {
		return Preset{}, fmt.Errorf("preset %s: %w", name, err)
	}
	var p Preset
	if err := json.Unmarshal(raw, &p); err != nil {
		return Preset{}, fmt.Errorf("preset %s: %w: %v", name, scos.ErrCorrupt, err)
	}
	b.presets.Store(name, p)
	return p, nil
}

// AddPreset stores a new preset.
func (b *Backend) AddPreset(ctx context.Context, p Preset) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidPreset, err)
	}
	raw, _ := json.Marshal(p)
	err := b.kv.TestAndSet(ctx, kvPreset+p.Name, nil, raw)
	if errors.Is(err, ErrKVConflict) {
		return fmt.Errorf("%w: %s", ErrPresetExists, p.Name)
	}
	return err
}

// ListPresets returns every preset, sorted by name.
func (b *Backend) ListPresets(ctx context.Context) ([]Preset, error) {
	out := []Preset{}
	err := kvRangeAll(ctx, b.kv, kvPreset, func(e KV) (bool, error) {
		var p Preset
		if err := json.Unmarshal(e.Value, &p); err != nil {
			return false, fmt.Errorf("preset %s: %w: %v", e.Key, scos.ErrCorrupt, err)
		}
		out = append(out, p)
		return true, nil
	})
	return out, err
}

// --- the ASD registry and health ---------------------------------------------

// reloadRegistry brings the in-memory registry in line with the store.
func (b *Backend) reloadRegistry(ctx context.Context) error {
	recs := map[string]ASDRecord{}
	err := kvRangeAll(ctx, b.kv, kvASD, func(e KV) (bool, error) {
		var r ASDRecord
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return false, fmt.Errorf("asd record %s: %w: %v", e.Key, scos.ErrCorrupt, err)
		}
		recs[r.ID] = r
		return true, nil
	})
	if err != nil {
		return err
	}
	var sockets map[string]string
	if b.cfg.LocalSockets != nil {
		sockets = b.cfg.LocalSockets()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, r := range recs {
		st := b.asds[id]
		if st == nil {
			st = &asdState{}
			b.asds[id] = st
		}
		if st.client == nil || st.rec.Addr != r.Addr {
			if st.client != nil {
				st.client.Close()
			}
			st.client = asd.NewClient(r.Addr, b.hc).For(id)
			if !b.cfg.HTTPReads {
				st.client = st.client.WithWire(asd.WireConfig{Socket: sockets[id], Logger: b.log})
			}
		}
		st.rec = r
	}
	for id, st := range b.asds {
		if _, ok := recs[id]; !ok {
			st.client.Close()
			delete(b.asds, id)
		}
	}
	return nil
}

func (b *Backend) healthLoop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := b.reloadRegistry(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("reloading the ASD registry", "err", err)
		}
		b.probeAll(ctx)
	}
}

// probeAll asks every registered ASD for its health, in parallel.
func (b *Backend) probeAll(ctx context.Context) {
	b.mu.Lock()
	states := make([]*asdState, 0, len(b.asds))
	for _, st := range b.asds {
		states = append(states, st)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, st := range states {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.probe(ctx, st)
		}()
	}
	wg.Wait()
}

func (b *Backend) probe(ctx context.Context, st *asdState) {
	b.mu.Lock()
	c, id := st.client, st.rec.ID
	b.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, b.cfg.ProbeTimeout)
	h, err := c.Health(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err == nil && h.ID != id {
		err = fmt.Errorf("the ASD at %s is %s, not %s (replaced disk?)", c.Addr(), h.ID, id)
	}
	b.setHealth(st, h, err)
}

// setHealth records the outcome of a probe (or of a failed operation,
// with a nil health and an error).
func (b *Backend) setHealth(st *asdState, h asd.Health, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	wasUp, wasProbed := st.up, st.probed
	st.probed = true
	if err == nil {
		st.up, st.health, st.lastSeen, st.lastErr = true, h, now, ""
		st.downSince = time.Time{}
		if !wasUp && wasProbed {
			b.log.Info("ASD is up again", "asd", st.rec.ID, "addr", st.rec.Addr)
		}
		return
	}
	st.lastErr = err.Error()
	if wasUp || !wasProbed {
		st.up = false
		st.downSince = now
		b.log.Warn("ASD is down", "asd", st.rec.ID, "addr", st.rec.Addr, "err", err)
	}
}

// suspect marks an ASD down after an operation on it could not reach it;
// the next probe brings it back if it answers.
func (b *Backend) suspect(id string, err error) {
	if !errors.Is(err, asd.ErrUnavailable) {
		return
	}
	b.mu.Lock()
	st := b.asds[id]
	b.mu.Unlock()
	if st != nil {
		b.setHealth(st, asd.Health{}, err)
	}
}

// asd returns the client of an ASD and whether it is usable for reads
// (registered, probed up).
func (b *Backend) asd(id string) (*asd.Client, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.asds[id]
	if st == nil {
		return nil, false
	}
	return st.client, st.up
}

// writeCandidates lists the ASDs that can take new fragments: active, up,
// and with room for a fragment of size bytes.
func (b *Backend) writeCandidates(size int64, exclude map[string]error) []asdCandidate {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []asdCandidate
	for id, st := range b.asds {
		if !st.up || st.rec.State != ASDActive || exclude[id] != nil {
			continue
		}
		if st.health.Capacity.Free < size+4096 {
			continue
		}
		out = append(out, asdCandidate{ID: id, Node: st.rec.Node, Site: st.rec.Site, Free: st.health.Capacity.Free})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// candidateOf describes a registered ASD for placement bounds (up or not).
func (b *Backend) candidateOf(id string) asdCandidate {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st := b.asds[id]; st != nil {
		return asdCandidate{ID: id, Node: st.rec.Node, Site: st.rec.Site, Free: st.health.Capacity.Free}
	}
	return asdCandidate{ID: id, Node: "?" + id, Site: "?" + id}
}

func (b *Backend) encoder(k, m int) (reedsolomon.Encoder, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.encoders[[2]int{k, m}]; e != nil {
		return e, nil
	}
	e, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, fmt.Errorf("reed-solomon %d+%d: %w", k, m, err)
	}
	b.encoders[[2]int{k, m}] = e
	return e, nil
}

// opTimeout bounds one fragment operation moving n bytes.
func (b *Backend) opTimeout(n int64) time.Duration {
	return b.cfg.FragmentTimeout + time.Duration(n>>24)*time.Second
}

// --- namespaces --------------------------------------------------------------

type nsRecord struct {
	Preset   string    `json:"preset"`
	Created  time.Time `json:"created"`
	Deleting bool      `json:"deleting,omitempty"`
}

func (b *Backend) namespace(ctx context.Context, ns string) (nsRecord, []byte, error) {
	if !scos.ValidName(ns) {
		return nsRecord{}, nil, fmt.Errorf("%w: namespace %q", scos.ErrInvalidName, ns)
	}
	raw, err := b.kv.Get(ctx, kvNamespace+ns)
	if errors.Is(err, ErrKeyNotFound) {
		return nsRecord{}, nil, fmt.Errorf("%w: %s", scos.ErrNamespaceNotFound, ns)
	}
	if err != nil {
		return nsRecord{}, nil, fmt.Errorf("namespace %s: %w", ns, err)
	}
	var r nsRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nsRecord{}, nil, fmt.Errorf("namespace %s: %w: %v", ns, scos.ErrCorrupt, err)
	}
	return r, raw, nil
}

// liveNamespace returns the namespace unless it is missing or being deleted.
func (b *Backend) liveNamespace(ctx context.Context, ns string) (nsRecord, error) {
	r, _, err := b.namespace(ctx, ns)
	if err == nil && r.Deleting {
		err = fmt.Errorf("%w: %s (being deleted)", scos.ErrNamespaceNotFound, ns)
	}
	return r, err
}

func (b *Backend) CreateNamespace(ctx context.Context, ns string) error {
	return b.CreateNamespaceWithPreset(ctx, ns, "")
}

// CreateNamespaceWithPreset creates a namespace whose objects use the
// named preset ("" for the configured default).
func (b *Backend) CreateNamespaceWithPreset(ctx context.Context, ns, preset string) error {
	if !scos.ValidName(ns) {
		return fmt.Errorf("%w: namespace %q", scos.ErrInvalidName, ns)
	}
	if preset == "" {
		preset = b.cfg.Preset
	}
	if _, err := b.preset(ctx, preset); err != nil {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	raw, _ := json.Marshal(nsRecord{Preset: preset, Created: time.Now().UTC()})
	f, _ := b.fence(ns)
	for {
		err := b.testAndSet(ctx, f, kvNamespace+ns, nil, raw)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrKVConflict) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
		r, _, err := b.namespace(ctx, ns)
		if errors.Is(err, scos.ErrNamespaceNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if !r.Deleting {
			return fmt.Errorf("%w: %s", scos.ErrNamespaceExists, ns)
		}
		// An interrupted delete: finish it first.
		if err := b.deleteNamespace(ctx, f, ns); err != nil && !errors.Is(err, scos.ErrNamespaceNotFound) {
			return err
		}
	}
}

func (b *Backend) DeleteNamespace(ctx context.Context, ns string) error {
	f, _ := b.fence(ns)
	return b.deleteNamespace(ctx, f, ns)
}

// deleteNamespace deletes ns, every step guarded by f (if set): a fenced
// writer's delete stops at the first step after the fence moved, leaving
// what was not deleted yet in place.
func (b *Backend) deleteNamespace(ctx context.Context, f *scos.Fence, ns string) error {
	r, raw, err := b.namespace(ctx, ns)
	if err != nil {
		return err
	}
	if !r.Deleting {
		r.Deleting = true
		del, _ := json.Marshal(r)
		if err := b.testAndSet(ctx, f, kvNamespace+ns, raw, del); err != nil {
			if errors.Is(err, ErrKVConflict) {
				return b.deleteNamespace(ctx, f, ns)
			}
			return fmt.Errorf("delete namespace %s: %w", ns, err)
		}
		raw = del
	}
	// Delete objects page by page from the start: each delete removes
	// what the next Range would return.
	for {
		page, err := b.kv.Range(ctx, kvObject+ns+"/", "", 256)
		if err != nil {
			return fmt.Errorf("delete namespace %s: %w", ns, err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			name := e.Key[len(kvObject+ns+"/"):]
			if err := b.delete(ctx, f, ns, name); err != nil && !errors.Is(err, scos.ErrObjectNotFound) {
				return fmt.Errorf("delete namespace %s: %w", ns, err)
			}
		}
	}
	if err := kvRangeAll(ctx, b.kv, kvDegraded+ns+"/", func(e KV) (bool, error) {
		return true, b.kv.Delete(ctx, e.Key)
	}); err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	if err := b.testAndSet(ctx, f, kvNamespace+ns, raw, nil); err != nil && !errors.Is(err, ErrKVConflict) {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	return nil
}

func (b *Backend) ListNamespaces(ctx context.Context) ([]string, error) {
	var out []string
	err := kvRangeAll(ctx, b.kv, kvNamespace, func(e KV) (bool, error) {
		var r nsRecord
		if json.Unmarshal(e.Value, &r) == nil && !r.Deleting {
			out = append(out, e.Key[len(kvNamespace):])
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	return out, nil
}

func (b *Backend) NamespaceExists(ctx context.Context, ns string) (bool, error) {
	_, err := b.liveNamespace(ctx, ns)
	if errors.Is(err, scos.ErrNamespaceNotFound) {
		return false, nil
	}
	return err == nil, err
}

// --- fencing -------------------------------------------------------------------

var _ scos.Fencer = (*Backend)(nil)

// SetFence sets (nil f: removes) the fence of namespace ns: from now on
// every operation of this process that changes what a reader of ns sees
// (Put, Delete, CreateNamespace, DeleteNamespace) commits only if, in the
// same atomic KV step, f.Key holds f.Value, and fails with an error
// wrapping scos.ErrFenced otherwise. An operation keeps the fence it started
// with, so a write begun under a fence cannot commit unguarded.
//
// Without SoleWriter, manifests of ns are cached while the fence is set;
// setting or removing it drops what was cached for ns.
//
// Once a guarded write of ns has failed with scos.ErrFenced, this process is
// not the namespace's only writer any more: its cached state of ns is
// dropped, reads go to the KV, and puts fail before writing fragments.
func (b *Backend) SetFence(ns string, f *scos.Fence) {
	b.fenceMu.Lock()
	if f == nil {
		delete(b.fences, ns)
	} else {
		b.fences[ns] = &fenceState{f: scos.Fence{Key: f.Key, Value: bytes.Clone(f.Value)}}
	}
	b.fenceMu.Unlock()
	b.dropCached(ns)
}

// fenceState is a fence and whether a write found it lost.
type fenceState struct {
	f    scos.Fence
	lost bool
}

// fence returns a copy of the fence of ns (nil if none) and whether a
// write has found it lost already.
func (b *Backend) fence(ns string) (*scos.Fence, bool) {
	b.fenceMu.RLock()
	defer b.fenceMu.RUnlock()
	if st, ok := b.fences[ns]; ok {
		f := st.f
		return &f, st.lost
	}
	return nil, false
}

// fenceLost records that a write guarded by f found the fence of ns moved.
func (b *Backend) fenceLost(ns string, f *scos.Fence) {
	b.fenceMu.Lock()
	st := b.fences[ns]
	first := st != nil && !st.lost && st.f.Key == f.Key && bytes.Equal(st.f.Value, f.Value)
	if first {
		st.lost = true
	}
	b.fenceMu.Unlock()
	if first {
		b.log.Warn("fenced: another writer owns the namespace now; its writes from here are refused",
			"namespace", ns, "key", f.Key)
		b.dropCached(ns)
	}
}

// dropCached forgets the cached record and manifests of ns (a cluster
// node caches them only while it holds a fence on ns).
func (b *Backend) dropCached(ns string) {
	if b.cfg.SoleWriter {
		return
	}
	b.cache.drop(func(key string) bool { n, ok := keyNamespace(key); return ok && n == ns })
}

// fencedKey reports whether key is the record or a manifest of a
// namespace this process holds a live fence on (what a cluster node
// caches).
func (b *Backend) fencedKey(key string) bool {
	ns, ok := keyNamespace(key)
	if !ok {
		return false
	}
	b.fenceMu.RLock()
	defer b.fenceMu.RUnlock()
	st := b.fences[ns]
	return st != nil && !st.lost
}

// keyNamespace returns the namespace of a namespace record or manifest key.
func keyNamespace(key string) (string, bool) {
	if rest, ok := strings.CutPrefix(key, kvObject); ok {
		ns, _, ok := strings.Cut(rest, "/")
		return ns, ok
	}
	return strings.CutPrefix(key, kvNamespace)
}

// testAndSet is the KV TestAndSet of a key of a namespace, guarded by f
// when the namespace is fenced.
func (b *Backend) testAndSet(ctx context.Context, f *scos.Fence, key string, expected, wanted []byte) error {
	if f == nil {
		return b.kv.TestAndSet(ctx, key, expected, wanted)
	}
	err := b.kv.GuardedTestAndSet(ctx, *f, key, expected, wanted)
	if errors.Is(err, scos.ErrFenced) {
		if ns, ok := keyNamespace(key); ok {
			b.fenceLost(ns, f)
		}
	}
	return err
}
