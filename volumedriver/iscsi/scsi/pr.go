package scsi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PRStore keeps a vdisk's persistent reservation state where every node
// serving the vdisk sees it (the cluster's KV in a cluster, memory in a
// test). The state is opaque bytes to the store; this package encodes it.
type PRStore interface {
	// Load returns the stored state; nil when there is none.
	Load(ctx context.Context) ([]byte, error)
	// CompareAndSwap replaces old (nil: none) by new and reports whether
	// old was still what the store held.
	CompareAndSwap(ctx context.Context, old, new []byte) (bool, error)
}

// MemPRStore is a PRStore in memory: for tests, and for a vdisk served
// by one process only. The zero value is empty and ready.
type MemPRStore struct {
	mu  sync.Mutex
	val []byte
}

// Load returns a copy of the state.
func (m *MemPRStore) Load(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.val), nil
}

// CompareAndSwap replaces old by new if old is what is held.
func (m *MemPRStore) CompareAndSwap(_ context.Context, old, new []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if (old == nil) != (m.val == nil) || !bytes.Equal(old, m.val) {
		return false, nil
	}
	m.val = bytes.Clone(new)
	return true, nil
}

// prFormat is the version of the encoded state. A state of a newer
// format is refused rather than overwritten.
const prFormat = 1

// Persistent reservation types (SPC-5 table 214).
const (
	prWriteExclusive         = 0x1
	prExclusiveAccess        = 0x3
	prWriteExclusiveRegOnly  = 0x5
	prExclusiveAccessRegOnly = 0x6
	prWriteExclusiveAllRegs  = 0x7
	prExclusiveAccessAllRegs = 0x8
)

func validPRType(t uint8) bool {
	switch t {
	case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRegOnly,
		prExclusiveAccessRegOnly, prWriteExclusiveAllRegs, prExclusiveAccessAllRegs:
		return true
	}
	return false
}

// allRegistrants: every registered I_T nexus holds the reservation.
func allRegistrants(t uint8) bool {
	return t == prWriteExclusiveAllRegs || t == prExclusiveAccessAllRegs
}

// registrantsAccess: registered I_T nexuses have access (the "registrants
// only" and "all registrants" types).
func registrantsAccess(t uint8) bool {
	return t == prWriteExclusiveRegOnly || t == prExclusiveAccessRegOnly || allRegistrants(t)
}

// exclusiveAccess: reads conflict too, not only writes.
func exclusiveAccess(t uint8) bool {
	return t == prExclusiveAccess || t == prExclusiveAccessRegOnly || t == prExclusiveAccessAllRegs
}

// prReg is the registration of one I_T nexus (or, with AllTgPt, of an
// initiator port through every target port).
type prReg struct {
	Key       uint64 `json:"key,string"`
	Initiator string `json:"initiator"`
	Target    string `json:"target,omitempty"`
	AllTgPt   bool   `json:"all_tg_pt,omitempty"`
	RelPort   uint16 `json:"rtpi"`
}

// prRes is the persistent reservation: its type and, unless every
// registrant holds it, the I_T nexus that does.
type prRes struct {
	Type      uint8  `json:"type"`
	Initiator string `json:"initiator,omitempty"`
	Target    string `json:"target,omitempty"`
}

// prState is the whole persistent reservation state of a vdisk, as
// stored (JSON).
type prState struct {
	Format     int     `json:"format"`
	Generation uint32  `json:"generation"`
	Regs       []prReg `json:"registrations,omitempty"`
	Res        *prRes  `json:"reservation,omitempty"`
	// Resets counts the LUN and target resets of the vdisk on any node:
	// a session that sees it grow reports a unit attention, also when
	// the reset came through another node.
	Resets uint64 `json:"resets,omitempty"`
}

// samePort compares port names: iSCSI names are case-insensitive.
func samePort(a, b string) bool { return strings.EqualFold(a, b) }

func (r prReg) matches(nx Nexus) bool {
	return samePort(r.Initiator, nx.InitiatorPort) && (r.AllTgPt || samePort(r.Target, nx.TargetPort))
}

// find returns the index of nx's registration, or -1.
func (s *prState) find(nx Nexus) int {
	for i, r := range s.Regs {
		if r.matches(nx) {
			return i
		}
	}
	return -1
}

// holds reports whether nx holds the reservation.
func (s *prState) holds(nx Nexus) bool {
	if s.Res == nil {
		return false
	}
	if allRegistrants(s.Res.Type) {
		return s.find(nx) >= 0
	}
	return samePort(s.Res.Initiator, nx.InitiatorPort) && samePort(s.Res.Target, nx.TargetPort)
}

// holderKey is the reservation key READ RESERVATION reports: the holder's
// key, 0 for the all-registrants types.
func (s *prState) holderKey() (uint64, bool) {
	if s.Res == nil || allRegistrants(s.Res.Type) {
		return 0, false
	}
	for _, r := range s.Regs {
		if samePort(r.Initiator, s.Res.Initiator) && (r.AllTgPt || samePort(r.Target, s.Res.Target)) {
			return r.Key, true
		}
	}
	return 0, false
}

// heldBy reports whether registration r is the holder's.
func (s *prState) heldBy(r prReg) bool {
	if s.Res == nil {
		return false
	}
	if allRegistrants(s.Res.Type) {
		return true
	}
	return samePort(r.Initiator, s.Res.Initiator) && (r.AllTgPt || samePort(r.Target, s.Res.Target))
}

// unregister removes registration i; the reservation goes with its
// holder (SPC-5 5.14.11.2.3), or with the last registrant for the
// all-registrants types.
func (s *prState) unregister(i int) {
	r := s.Regs[i]
	s.Regs = append(s.Regs[:i:i], s.Regs[i+1:]...)
	if s.Res == nil {
		return
	}
	if allRegistrants(s.Res.Type) {
		if len(s.Regs) == 0 {
			s.Res = nil
		}
		return
	}
	if samePort(r.Initiator, s.Res.Initiator) && (r.AllTgPt || samePort(r.Target, s.Res.Target)) {
		s.Res = nil
	}
}

func (s *prState) clone() *prState {
	c := *s
	c.Regs = append([]prReg(nil), s.Regs...)
	if s.Res != nil {
		res := *s.Res
		c.Res = &res
	}
	return &c
}

func decodePR(raw []byte) (*prState, error) {
	if len(raw) == 0 {
		return &prState{Format: prFormat}, nil
	}
	var s prState
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("scsi: decode persistent reservations: %w", err)
	}
	if s.Format > prFormat {
		return nil, fmt.Errorf("scsi: persistent reservations in format %d, newer than %d", s.Format, prFormat)
	}
	s.Format = prFormat
	return &s, nil
}

// prAccess is how a command fares under a persistent reservation held by
// another I_T nexus (SPC-5 table 70, SBC-4 table 13).
type prAccess uint8

const (
	prAllowed prAccess = iota // allowed under every type
	prRead                    // conflicts under the exclusive access types only
	prWrite                   // conflicts under every type
)

// conflicts reports whether a command of access a from nx meets a
// reservation conflict.
func (s *prState) conflicts(nx Nexus, a prAccess) bool {
	if s.Res == nil || a == prAllowed || s.holds(nx) {
		return false
	}
	if registrantsAccess(s.Res.Type) && s.find(nx) >= 0 {
		return false
	}
	return a == prWrite || exclusiveAccess(s.Res.Type)
}

// Reservations is the persistent reservation state of one vdisk, kept in
// a PRStore. Ordinary commands check conflicts against a cached copy,
// refreshed from the store at most every refresh interval; PERSISTENT
// RESERVE commands always read the store and update it by
// compare-and-swap. It is safe for concurrent use.
//
// A node must make one Reservations per vdisk and give it to every LU of
// the vdisk it opens: besides the cache, it holds the state those LUs
// share on this node alone (SPC-2 reservations, the extent locks of
// COMPARE AND WRITE and ORWRITE; see localState).
type Reservations struct {
	store   PRStore
	refresh time.Duration
	now     func() time.Time
	log     *slog.Logger

	mu    sync.Mutex // serialises refreshes of cache
	cache atomic.Pointer[prCache]

	// local is the vdisk's state on this node only (the SPC-2
	// reservation, extent locks), shared by the LUs of the vdisk here
	// as they share this Reservations.
	local localState
}

// prCache is a decoded state, the bytes it came from, and when.
type prCache struct {
	raw   []byte
	state *prState
	at    time.Time
}

// NewReservations returns the reservation state kept in store.
func NewReservations(store PRStore) *Reservations {
	return &Reservations{store: store, refresh: time.Second, now: time.Now, log: slog.Default()}
}

// WithLogger sets the logger of store failures; it returns r.
func (r *Reservations) WithLogger(l *slog.Logger) *Reservations {
	r.log = l
	return r
}

// errPRBusy: the compare-and-swap kept losing to other writers.
var errPRBusy = errors.New("scsi: persistent reservations: too many concurrent updates")

// cached returns the state for a conflict check: the cached copy when
// fresh, else reloaded. When the store cannot be read, the last state
// known is used (the store is then down for every node, so it cannot
// have changed since) and the store is retried after the interval.
func (r *Reservations) cached(ctx context.Context) (*prState, error) {
	if c := r.cache.Load(); c != nil && r.now().Sub(c.at) < r.refresh {
		return c.state, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cache.Load()
	if c != nil && r.now().Sub(c.at) < r.refresh {
		return c.state, nil
	}
	s, raw, err := r.load(ctx)
	if err != nil {
		if c == nil {
			return nil, err
		}
		r.log.Warn("scsi: persistent reservations unreadable; using the last state read", "err", err)
		r.cache.Store(&prCache{raw: c.raw, state: c.state, at: r.now()})
		return c.state, nil
	}
	r.cache.Store(&prCache{raw: raw, state: s, at: r.now()})
	return s, nil
}

func (r *Reservations) load(ctx context.Context) (*prState, []byte, error) {
	raw, err := r.store.Load(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("scsi: load persistent reservations: %w", err)
	}
	s, err := decodePR(raw)
	if err != nil {
		return nil, nil, err
	}
	return s, raw, nil
}

// current reads the state from the store (a PERSISTENT RESERVE IN).
func (r *Reservations) current(ctx context.Context) (*prState, error) {
	s, raw, err := r.load(ctx)
	if err != nil {
		return nil, err
	}
	r.cache.Store(&prCache{raw: raw, state: s, at: r.now()})
	return s, nil
}

// update applies fn to the stored state and stores the result by
// compare-and-swap, retrying when another writer came first. fn works on
// a copy and reports whether it changed it; it may run more than once.
func (r *Reservations) update(ctx context.Context, fn func(s *prState) (Result, bool)) (Result, error) {
	const attempts = 100
	for range attempts {
		s, raw, err := r.load(ctx)
		if err != nil {
			return Result{}, err
		}
		work := s.clone()
		res, changed := fn(work)
		if !changed {
			r.cache.Store(&prCache{raw: raw, state: s, at: r.now()})
			return res, nil
		}
		next, err := json.Marshal(work)
		if err != nil {
			return Result{}, fmt.Errorf("scsi: encode persistent reservations: %w", err)
		}
		ok, err := r.store.CompareAndSwap(ctx, raw, next)
		if err != nil {
			return Result{}, fmt.Errorf("scsi: store persistent reservations: %w", err)
		}
		if ok {
			r.cache.Store(&prCache{raw: next, state: work, at: r.now()})
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
	}
	return Result{}, errPRBusy
}

// conflict reports whether a command of access a from nx meets a
// reservation conflict, from the cached state.
func (r *Reservations) conflict(ctx context.Context, nx Nexus, a prAccess) (bool, error) {
	if a == prAllowed {
		return false, nil
	}
	s, err := r.cached(ctx)
	if err != nil {
		return false, err
	}
	return s.conflicts(nx, a), nil
}
