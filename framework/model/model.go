// Package model is the cluster model of OVS kept in arakoon, the cluster's
// one source of truth: the cluster record (id, vpool settings, backend
// preset), the nodes (storage routers) with their addresses and failure
// domains, the vdisks with their backend namespace, and each vdisk's owner
// with an epoch that grows at every change of owner.
//
// Keys (all under "ovs/", so they never meet the backend's own keys):
//
//	ovs/cluster              Cluster (JSON)
//	ovs/node/<id>            Node (JSON)
//	ovs/alive/<id>           Heartbeat (JSON), rewritten by a running node
//	ovs/vdisk/<name>         VDisk (JSON)
//	ovs/owner/<vdisk id>     Owner (JSON); the fence of the vdisk's namespace
//	ovs/dtl/<vdisk id>       DTLPlacement (JSON): the node holding its DTL
//	ovs/scrubbed/<vdisk id>  time of its last scheduled scrub (schedule.go)
//	ovs/attach/<vdisk id>    Attachment (JSON): the host that has it attached (attachment.go)
//
// The owner record is kept apart from the vdisk record so that it changes
// only when the owner does: the backend asserts its exact bytes on every
// write to the vdisk's namespace (see OwnerKey), and an unrelated update
// must not fence the owner.
package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Errors of the model; callers test with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrConflict     = errors.New("changed concurrently")
	ErrNotBootstrap = errors.New("the cluster is not initialised (ovs cluster init)")
)

// KV is what the model needs of arakoon: reads, prefix scans and atomic
// sequences of asserts and updates.
type KV interface {
	// Get returns key's value or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Range returns every entry whose key starts with prefix, in key order.
	Range(ctx context.Context, prefix string) ([]Entry, error)
	// Apply carries out ops atomically; a failed assert changes nothing
	// and returns an error wrapping ErrConflict.
	Apply(ctx context.Context, ops ...Op) error
}

// Entry is one key and its value.
type Entry struct {
	Key   string
	Value []byte
}

// OpKind is what an Op does.
type OpKind int

const (
	OpSet    OpKind = iota // set Key to Value
	OpDelete               // delete Key (absent is fine)
	OpAssert               // fail unless Key holds exactly Value (nil: is absent)
)

// Op is one step of an atomic Apply.
type Op struct {
	Kind  OpKind
	Key   string
	Value []byte
}

func set(key string, v []byte) Op    { return Op{Kind: OpSet, Key: key, Value: v} }
func del(key string) Op              { return Op{Kind: OpDelete, Key: key} }
func assert(key string, v []byte) Op { return Op{Kind: OpAssert, Key: key, Value: v} }

const (
	keyCluster = "ovs/cluster"
	keyNode    = "ovs/node/"
	keyAlive   = "ovs/alive/"
	keyVDisk   = "ovs/vdisk/"
	keyOwner   = "ovs/owner/"
	keyDTL     = "ovs/dtl/"
	keyPR      = "ovs/iscsi/pr/"   // + vdisk id: SCSI persistent reservations
	keyCHAP    = "ovs/iscsi/chap/" // + vdisk id; keyDiscoveryCHAP for discovery
)

// OwnerKey is the key of the owner record of the vdisk with namespace id
// id: the fence the backend asserts on every write to its namespace.
func OwnerKey(id string) string { return keyOwner + id }

// Cluster is the cluster record written by `ovs cluster init`.
type Cluster struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Preset is the backend preset new vdisk namespaces use, with its
	// policies ("k,m,c,x", first preferred) and its bound of fragments
	// per site (0: none), as `ovs cluster init` was given them. The
	// backend adds the preset to its store when it is missing.
	Preset     string   `json:"preset"`
	Policies   []string `json:"policies,omitempty"`
	MaxPerSite int      `json:"max_per_site,omitempty"`
	// VPool holds the defaults of new vdisks.
	VPool VPool `json:"vpool"`
}

// VPool is the pool of vdisks the cluster serves, with their defaults.
type VPool struct {
	Name          string `json:"name"`
	ClusterSize   int    `json:"cluster_size,omitempty"`
	SCOMultiplier int    `json:"sco_multiplier,omitempty"`
	// DTLMode is the DTL mode of vdisks that do not set one: sync (the
	// default when empty), async or none.
	DTLMode string `json:"dtl_mode,omitempty"`
	// Schedule is the automatic snapshot and scrub schedule of vdisks
	// that do not override it (see schedule.go).
	Schedule Schedule `json:"schedule,omitzero"`
}

// Node is a storage router: one host running `ovs node serve`.
type Node struct {
	ID   string `json:"id"`
	Site string `json:"site"`
	// Addresses other nodes and clients reach it on.
	API     string `json:"api"`               // REST API, host:port
	NBD     string `json:"nbd,omitempty"`     // NBD, host:port
	Forward string `json:"forward,omitempty"` // I/O forwarding, host:port
	DTL     string `json:"dtl,omitempty"`     // DTL server, host:port
	ISCSI   string `json:"iscsi,omitempty"`   // iSCSI target portal, host:port
	// ASDs are the ids of the storage daemons on this host.
	ASDs   []string  `json:"asds,omitempty"`
	Joined time.Time `json:"joined"`
}

// Heartbeat says a node runs; it is rewritten every few seconds.
type Heartbeat struct {
	Node    string    `json:"node"`
	At      time.Time `json:"at"`
	Started time.Time `json:"started"`
}

// VDisk states in the model.
const (
	VDiskCreating = "creating" // reserved; the owner is making its namespace
	VDiskReady    = "ready"
)

// VDisk is a vdisk of the vpool.
type VDisk struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"` // backend namespace "vd-<id>"
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	// DTLMode overrides the vpool's DTL mode ("": the vpool's).
	DTLMode string `json:"dtl_mode,omitempty"`
	// Schedule overrides the fields of the vpool's schedule it sets.
	Schedule Schedule `json:"schedule,omitzero"`
}

// DTLPlacement says which node holds a vdisk's DTL, placed by the owner
// of epoch Epoch. A node taking the vdisk over reads it back from there.
type DTLPlacement struct {
	Node  string    `json:"node"`
	Epoch uint64    `json:"epoch"`
	Since time.Time `json:"since"`
	// Complete: the owner of Epoch says the DTL holds every change the
	// backend does not, so a node taking the vdisk over loses nothing
	// acknowledged (otherwise it tells the vdisk's clients).
	Complete bool `json:"complete,omitempty"`
}

// Owner says which node serves a vdisk, under which epoch. The epoch
// grows by one at every change of owner.
type Owner struct {
	Node  string    `json:"node"`
	Epoch uint64    `json:"epoch"`
	Since time.Time `json:"since"`
	// Takeover: the owner changed without a handover from the previous
	// one (it was dead, down or frozen): what the backend lacks is in
	// the vdisk's DTL. Forced: and not all of what it acknowledged may be
	// there (no complete sync DTL): clients that were writing through it
	// must be told.
	Takeover bool `json:"takeover,omitempty"`
	Forced   bool `json:"forced,omitempty"`
}

// Change is how the owner of a vdisk changes.
type Change int

const (
	// Handover: the old owner uploaded everything and let go.
	Handover Change = iota
	// Takeover: the old owner is dead; its complete sync DTL holds what
	// it acknowledged and the backend lacks. Its clients go on.
	Takeover
	// ForcedTakeover: without the old owner and without a complete DTL:
	// what it acknowledged may be lost, and its clients are told.
	ForcedTakeover
)

// OwnedVDisk is a vdisk with its owner, and the owner record's exact bytes
// (the fence value).
type OwnedVDisk struct {
	VDisk
	Owner    Owner
	OwnerRaw []byte
	// DTL is where its DTL is (zero: none placed).
	DTL DTLPlacement
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidID reports whether s can name a node or a cluster.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// Store reads and changes the model.
type Store struct{ kv KV }

// New returns a Store over kv.
func New(kv KV) *Store { return &Store{kv: kv} }

func getJSON[T any](ctx context.Context, kv KV, key string) (T, []byte, error) {
	var v T
	raw, err := kv.Get(ctx, key)
	if err != nil {
		return v, nil, err
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, nil, fmt.Errorf("model: %s: %w", key, err)
	}
	return v, raw, nil
}

// Init writes the cluster record. It fails with ErrExists if the cluster
// was initialised before (with the record it has).
func (s *Store) Init(ctx context.Context, c Cluster) (Cluster, error) {
	if !ValidID(c.ID) {
		return Cluster{}, fmt.Errorf("cluster id %q: use 1-64 of A-Z a-z 0-9 . _ -", c.ID)
	}
	if c.Created.IsZero() {
		c.Created = time.Now().UTC().Truncate(time.Second)
	}
	raw, _ := json.Marshal(c)
	err := s.kv.Apply(ctx, assert(keyCluster, nil), set(keyCluster, raw))
	if errors.Is(err, ErrConflict) {
		have, herr := s.Cluster(ctx)
		if herr != nil {
			return Cluster{}, herr
		}
		return have, fmt.Errorf("%w: cluster %s was initialised on %s", ErrExists, have.ID, have.Created.Format(time.RFC3339))
	}
	if err != nil {
		return Cluster{}, fmt.Errorf("init cluster: %w", err)
	}
	return c, nil
}

// Cluster returns the cluster record, or ErrNotBootstrap.
func (s *Store) Cluster(ctx context.Context) (Cluster, error) {
	c, _, err := getJSON[Cluster](ctx, s.kv, keyCluster)
	if errors.Is(err, ErrNotFound) {
		return Cluster{}, ErrNotBootstrap
	}
	return c, err
}

// PutNode registers a node or updates its record (addresses, ASDs). The
// join time of an existing node is kept.
func (s *Store) PutNode(ctx context.Context, n Node) (Node, error) {
	if !ValidID(n.ID) {
		return Node{}, fmt.Errorf("node id %q: use 1-64 of A-Z a-z 0-9 . _ -", n.ID)
	}
	if n.API == "" {
		return Node{}, fmt.Errorf("node %s: no API address", n.ID)
	}
	for {
		old, raw, err := getJSON[Node](ctx, s.kv, keyNode+n.ID)
		switch {
		case err == nil:
			n.Joined = old.Joined
		case errors.Is(err, ErrNotFound):
			n.Joined = time.Now().UTC().Truncate(time.Second)
		default:
			return Node{}, err
		}
		out, _ := json.Marshal(n)
		err = s.kv.Apply(ctx, assert(keyNode+n.ID, raw), set(keyNode+n.ID, out))
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return Node{}, fmt.Errorf("register node %s: %w", n.ID, err)
		}
		return n, nil
	}
}

// Node returns one node's record.
func (s *Store) Node(ctx context.Context, id string) (Node, error) {
	n, _, err := getJSON[Node](ctx, s.kv, keyNode+id)
	if errors.Is(err, ErrNotFound) {
		return Node{}, fmt.Errorf("node %q: %w", id, ErrNotFound)
	}
	return n, err
}

// Nodes returns every node, by id.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	ents, err := s.kv.Range(ctx, keyNode)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]Node, 0, len(ents))
	for _, e := range ents {
		var n Node
		if err := json.Unmarshal(e.Value, &n); err != nil {
			return nil, fmt.Errorf("model: %s: %w", e.Key, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// Beat records that node runs now (started at started).
func (s *Store) Beat(ctx context.Context, node string, started time.Time) error {
	raw, _ := json.Marshal(Heartbeat{Node: node, At: time.Now().UTC(), Started: started.UTC()})
	return s.kv.Apply(ctx, set(keyAlive+node, raw))
}

// Heartbeats returns the last heartbeat of every node that sent one.
func (s *Store) Heartbeats(ctx context.Context) (map[string]Heartbeat, error) {
	ents, err := s.kv.Range(ctx, keyAlive)
	if err != nil {
		return nil, fmt.Errorf("heartbeats: %w", err)
	}
	out := make(map[string]Heartbeat, len(ents))
	for _, e := range ents {
		var h Heartbeat
		if json.Unmarshal(e.Value, &h) == nil {
			out[strings.TrimPrefix(e.Key, keyAlive)] = h
		}
	}
	return out, nil
}

// ReserveVDisk records a new vdisk (state creating) owned by node under
// epoch first, atomically with the check that the name is free. first is
// 1 for a vdisk created now, 0 for one found on the backend without a
// record (made before the model existed: its local state has no epoch).
func (s *Store) ReserveVDisk(ctx context.Context, name, id, node string, first uint64, state string) (OwnedVDisk, error) {
	now := time.Now().UTC().Truncate(time.Second)
	v := VDisk{Name: name, ID: id, State: state, Created: now}
	o := Owner{Node: node, Epoch: first, Since: now}
	vraw, _ := json.Marshal(v)
	oraw, _ := json.Marshal(o)
	err := s.kv.Apply(ctx,
		assert(keyVDisk+name, nil), assert(OwnerKey(id), nil),
		set(keyVDisk+name, vraw), set(OwnerKey(id), oraw))
	if errors.Is(err, ErrConflict) {
		return OwnedVDisk{}, fmt.Errorf("vdisk %q: %w", name, ErrExists)
	}
	if err != nil {
		return OwnedVDisk{}, fmt.Errorf("reserve vdisk %s: %w", name, err)
	}
	return OwnedVDisk{VDisk: v, Owner: o, OwnerRaw: oraw}, nil
}

// SetVDiskState changes a vdisk's state (creating -> ready).
func (s *Store) SetVDiskState(ctx context.Context, name, state string) error {
	v, raw, err := getJSON[VDisk](ctx, s.kv, keyVDisk+name)
	if err != nil {
		return fmt.Errorf("vdisk %q: %w", name, err)
	}
	v.State = state
	out, _ := json.Marshal(v)
	if err := s.kv.Apply(ctx, assert(keyVDisk+name, raw), set(keyVDisk+name, out)); err != nil {
		return fmt.Errorf("vdisk %s: %w", name, err)
	}
	return nil
}

// DeleteVDisk removes a vdisk's records.
func (s *Store) DeleteVDisk(ctx context.Context, name string) error {
	v, _, err := getJSON[VDisk](ctx, s.kv, keyVDisk+name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.kv.Apply(ctx, del(keyVDisk+name), del(OwnerKey(v.ID)), del(keyDTL+v.ID), del(keyPR+v.ID), del(keyCHAP+v.ID),
		del(keyScrubbed+v.ID), del(keyAttach+v.ID))
}

// SetVDiskDTLMode sets a vdisk's DTL mode ("": the vpool's).
func (s *Store) SetVDiskDTLMode(ctx context.Context, name, mode string) error {
	return s.updateVDisk(ctx, name, "set the DTL mode of", func(v *VDisk) { v.DTLMode = mode })
}

// updateVDisk applies change to vdisk name's record, retrying while
// another writer changes the record in between; what names the change
// in the error.
func (s *Store) updateVDisk(ctx context.Context, name, what string, change func(*VDisk)) error {
	for {
		v, raw, err := getJSON[VDisk](ctx, s.kv, keyVDisk+name)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("vdisk %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return err
		}
		change(&v)
		out, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("%s vdisk %s: %w", what, name, err)
		}
		err = s.kv.Apply(ctx, assert(keyVDisk+name, raw), set(keyVDisk+name, out))
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s vdisk %s: %w", what, name, err)
		}
		return nil
	}
}

// PlaceDTL records that node holds the DTL of the vdisk with namespace id
// ("": none), complete or not, placed by its owner whose record is exactly
// owner (as read): it fails with ErrConflict if the owner changed since.
func (s *Store) PlaceDTL(ctx context.Context, id string, owner []byte, node string, complete bool) (DTLPlacement, error) {
	var o Owner
	if err := json.Unmarshal(owner, &o); err != nil {
		return DTLPlacement{}, fmt.Errorf("owner of %s: %w", id, err)
	}
	p := DTLPlacement{Node: node, Epoch: o.Epoch, Since: time.Now().UTC(), Complete: complete}
	raw, _ := json.Marshal(p)
	if err := s.kv.Apply(ctx, assert(OwnerKey(id), owner), set(keyDTL+id, raw)); err != nil {
		return DTLPlacement{}, fmt.Errorf("place the DTL of %s on %s: %w", id, node, err)
	}
	return p, nil
}

// DTL returns where the DTL of the vdisk with namespace id is (zero and
// no error if none was placed).
func (s *Store) DTL(ctx context.Context, id string) (DTLPlacement, error) {
	p, _, err := getJSON[DTLPlacement](ctx, s.kv, keyDTL+id)
	if errors.Is(err, ErrNotFound) {
		return DTLPlacement{}, nil
	}
	return p, err
}

// VDisk returns one vdisk with its owner.
func (s *Store) VDisk(ctx context.Context, name string) (OwnedVDisk, error) {
	v, _, err := getJSON[VDisk](ctx, s.kv, keyVDisk+name)
	if errors.Is(err, ErrNotFound) {
		return OwnedVDisk{}, fmt.Errorf("vdisk %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return OwnedVDisk{}, err
	}
	o, raw, err := getJSON[Owner](ctx, s.kv, OwnerKey(v.ID))
	if err != nil {
		return OwnedVDisk{}, fmt.Errorf("owner of vdisk %s: %w", name, err)
	}
	p, err := s.DTL(ctx, v.ID)
	if err != nil {
		return OwnedVDisk{}, fmt.Errorf("DTL of vdisk %s: %w", name, err)
	}
	return OwnedVDisk{VDisk: v, Owner: o, OwnerRaw: raw, DTL: p}, nil
}

// VDisks returns every vdisk with its owner, by name.
func (s *Store) VDisks(ctx context.Context) ([]OwnedVDisk, error) {
	vents, err := s.kv.Range(ctx, keyVDisk)
	if err != nil {
		return nil, fmt.Errorf("list vdisks: %w", err)
	}
	oents, err := s.kv.Range(ctx, keyOwner)
	if err != nil {
		return nil, fmt.Errorf("list owners: %w", err)
	}
	owners := make(map[string][]byte, len(oents))
	for _, e := range oents {
		owners[strings.TrimPrefix(e.Key, keyOwner)] = e.Value
	}
	dents, err := s.kv.Range(ctx, keyDTL)
	if err != nil {
		return nil, fmt.Errorf("list DTL placements: %w", err)
	}
	dtls := make(map[string]DTLPlacement, len(dents))
	for _, e := range dents {
		var p DTLPlacement
		if json.Unmarshal(e.Value, &p) == nil {
			dtls[strings.TrimPrefix(e.Key, keyDTL)] = p
		}
	}
	out := make([]OwnedVDisk, 0, len(vents))
	for _, e := range vents {
		var v VDisk
		if err := json.Unmarshal(e.Value, &v); err != nil {
			return nil, fmt.Errorf("model: %s: %w", e.Key, err)
		}
		ov := OwnedVDisk{VDisk: v, OwnerRaw: owners[v.ID], DTL: dtls[v.ID]}
		if ov.OwnerRaw != nil {
			if err := json.Unmarshal(ov.OwnerRaw, &ov.Owner); err != nil {
				return nil, fmt.Errorf("model: owner of %s: %w", v.Name, err)
			}
		}
		out = append(out, ov)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ChangeOwner hands the vdisk with namespace id from the owner whose
// record is exactly from (as read) to node, with the next epoch, in the
// way how says. It fails with ErrConflict if the owner changed since from
// was read.
func (s *Store) ChangeOwner(ctx context.Context, id string, from []byte, node string, how Change) (Owner, []byte, error) {
	var old Owner
	if err := json.Unmarshal(from, &old); err != nil {
		return Owner{}, nil, fmt.Errorf("owner of %s: %w", id, err)
	}
	o := Owner{Node: node, Epoch: old.Epoch + 1, Since: time.Now().UTC(), Takeover: how != Handover, Forced: how == ForcedTakeover}
	raw, _ := json.Marshal(o)
	if err := s.kv.Apply(ctx, assert(OwnerKey(id), from), set(OwnerKey(id), raw)); err != nil {
		return Owner{}, nil, fmt.Errorf("change owner of %s to %s: %w", id, node, err)
	}
	return o, raw, nil
}

// Owner returns the owner of the vdisk with namespace id and its record's
// exact bytes.
func (s *Store) Owner(ctx context.Context, id string) (Owner, []byte, error) {
	o, raw, err := getJSON[Owner](ctx, s.kv, OwnerKey(id))
	if err != nil {
		return Owner{}, nil, fmt.Errorf("owner of %s: %w", id, err)
	}
	return o, raw, nil
}

// RenameVDisk moves vdisk from's record to name to in one atomic step
// (the name index is the record's key): whatever happens, the model has
// the vdisk under exactly one of the two names. Everything else about the
// vdisk is keyed by its id and stays.
func (s *Store) RenameVDisk(ctx context.Context, from, to string) error {
	for {
		v, raw, err := getJSON[VDisk](ctx, s.kv, keyVDisk+from)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("vdisk %q: %w", from, ErrNotFound)
		}
		if err != nil {
			return err
		}
		v.Name = to
		out, _ := json.Marshal(v)
		err = s.kv.Apply(ctx, assert(keyVDisk+from, raw), assert(keyVDisk+to, nil), del(keyVDisk+from), set(keyVDisk+to, out))
		if errors.Is(err, ErrConflict) {
			if _, gerr := s.kv.Get(ctx, keyVDisk+to); gerr == nil {
				return fmt.Errorf("vdisk %q: %w", to, ErrExists)
			}
			continue // the record changed meanwhile
		}
		if err != nil {
			return fmt.Errorf("rename vdisk %s to %s: %w", from, to, err)
		}
		return nil
	}
}
