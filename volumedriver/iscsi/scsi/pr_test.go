package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// Three I_T nexuses: a and b are two initiators through one target port;
// a2 is a's initiator through a second target port.
var (
	nxA  = Nexus{InitiatorName: "iqn.a", InitiatorPort: "iqn.a,i,0x01", TargetPort: "iqn.t,t,0x1", RelativePort: 1}
	nxB  = Nexus{InitiatorName: "iqn.b", InitiatorPort: "iqn.b,i,0x02", TargetPort: "iqn.t,t,0x1", RelativePort: 1}
	nxA2 = Nexus{InitiatorName: "iqn.a", InitiatorPort: "iqn.a,i,0x01", TargetPort: "iqn.t,t,0x2", RelativePort: 2}
)

// prStep is one PERSISTENT RESERVE OUT and what it must yield.
type prStep struct {
	nx     Nexus
	p      prOut
	status Status
	asc    uint8 // for CHECK CONDITION
}

func reg(key, sark uint64) prOut        { return prOut{sa: saRegister, key: key, sark: sark} }
func regIgn(sark uint64) prOut          { return prOut{sa: saRegisterIgnore, sark: sark} }
func reserve(key uint64, t uint8) prOut { return prOut{sa: saReserve, key: key, typ: t} }
func release(key uint64, t uint8) prOut { return prOut{sa: saRelease, key: key, typ: t} }
func preempt(key, sark uint64, t uint8) prOut {
	return prOut{sa: saPreempt, key: key, sark: sark, typ: t}
}

const (
	sGood     = StatusGood
	sConflict = StatusReservationConflict
	sCheck    = StatusCheckCondition
)

// TestPRStateMachine runs service action sequences (SPC-5 5.14) and
// checks each status, then the keys, the reservation and the generation.
func TestPRStateMachine(t *testing.T) {
	for _, tc := range []struct {
		name    string
		steps   []prStep
		keys    []uint64
		resType uint8 // 0: none
		resKey  uint64
		gen     uint32
	}{
		{name: "register and unregister",
			steps: []prStep{{nx: nxA, p: reg(0, 1), status: sGood}, {nx: nxA, p: reg(1, 0), status: sGood}},
			keys:  nil, gen: 2},
		{name: "unregistered REGISTER with a key conflicts",
			steps: []prStep{{nx: nxA, p: reg(5, 1), status: sConflict}}, gen: 0},
		{name: "unregistered REGISTER of key 0 does nothing",
			steps: []prStep{{nx: nxA, p: reg(0, 0), status: sGood}}, gen: 0},
		{name: "re-register needs the current key",
			steps: []prStep{{nx: nxA, p: reg(0, 1), status: sGood}, {nx: nxA, p: reg(0, 2), status: sConflict},
				{nx: nxA, p: reg(1, 2), status: sGood}},
			keys: []uint64{2}, gen: 2},
		{name: "register and ignore replaces the key",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: regIgn(7), status: sGood}},
			keys:  []uint64{7}, gen: 2},
		{name: "reserve needs a registration",
			steps: []prStep{{nx: nxA, p: reserve(0, prWriteExclusive), status: sConflict}}},
		{name: "reserve with the wrong key conflicts",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: reserve(2, prWriteExclusive), status: sConflict}},
			keys:  []uint64{1}, gen: 1},
		{name: "reserve, again with the same type, not another",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: reserve(1, prExclusiveAccess), status: sGood},
				{nx: nxA, p: reserve(1, prExclusiveAccess), status: sGood},
				{nx: nxA, p: reserve(1, prWriteExclusive), status: sConflict}},
			keys: []uint64{1}, resType: prExclusiveAccess, resKey: 1, gen: 1},
		{name: "reserve of another's reservation conflicts",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prWriteExclusive), status: sGood},
				{nx: nxB, p: reserve(2, prWriteExclusive), status: sConflict}},
			keys: []uint64{1, 2}, resType: prWriteExclusive, resKey: 1, gen: 2},
		{name: "bad type and scope",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: reserve(1, 2), status: sCheck, asc: 0x24},
				{nx: nxA, p: prOut{sa: saReserve, key: 1, typ: prWriteExclusive, scope: 1}, status: sCheck, asc: 0x24}},
			keys: []uint64{1}, gen: 1},
		{name: "release by the holder; of the wrong type is invalid",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: reserve(1, prExclusiveAccess), status: sGood},
				{nx: nxA, p: release(1, prWriteExclusive), status: sCheck, asc: 0x26},
				{nx: nxA, p: release(1, prExclusiveAccess), status: sGood}},
			keys: []uint64{1}, gen: 1},
		{name: "release by a registered non-holder does nothing",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prExclusiveAccess), status: sGood},
				{nx: nxB, p: release(2, prExclusiveAccess), status: sGood}},
			keys: []uint64{1, 2}, resType: prExclusiveAccess, resKey: 1, gen: 2},
		{name: "the holder unregistering releases",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prWriteExclusiveRegOnly), status: sGood}, {nx: nxA, p: reg(1, 0), status: sGood}},
			keys: []uint64{2}, gen: 3},
		{name: "all registrants: stays until the last goes",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prExclusiveAccessAllRegs), status: sGood},
				{nx: nxB, p: reserve(2, prExclusiveAccessAllRegs), status: sGood}, // a holder too
				{nx: nxA, p: reg(1, 0), status: sGood}},
			keys: []uint64{2}, resType: prExclusiveAccessAllRegs, resKey: 0, gen: 3},
		{name: "all registrants: the last unregistering releases",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: reserve(1, prWriteExclusiveAllRegs), status: sGood},
				{nx: nxA, p: regIgn(0), status: sGood}},
			gen: 2},
		{name: "clear",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prExclusiveAccess), status: sGood},
				{nx: nxB, p: prOut{sa: saClear, key: 2}, status: sGood}},
			gen: 3},
		{name: "clear needs the key",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: prOut{sa: saClear, key: 9}, status: sConflict}},
			keys:  []uint64{1}, gen: 1},
		{name: "preempt a registration without a reservation",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxB, p: preempt(2, 1, prExclusiveAccess), status: sGood}},
			keys: []uint64{2}, gen: 3},
		{name: "preempt of an unknown key conflicts; of key 0 is invalid",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxB, p: preempt(2, 9, prExclusiveAccess), status: sConflict},
				{nx: nxB, p: preempt(2, 0, prExclusiveAccess), status: sCheck, asc: 0x26}},
			keys: []uint64{1, 2}, gen: 2},
		{name: "preempt the holder takes the reservation",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prWriteExclusive), status: sGood},
				{nx: nxB, p: preempt(2, 1, prExclusiveAccessRegOnly), status: sGood}},
			keys: []uint64{2}, resType: prExclusiveAccessRegOnly, resKey: 2, gen: 3},
		{name: "preempt a non-holder leaves the reservation",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA2, p: regIgn(3), status: sGood},
				{nx: nxA, p: reserve(1, prWriteExclusive), status: sGood},
				{nx: nxB, p: preempt(2, 3, prWriteExclusive), status: sGood}},
			keys: []uint64{1, 2}, resType: prWriteExclusive, resKey: 1, gen: 4},
		{name: "preempt all registrants with key 0",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prWriteExclusiveAllRegs), status: sGood},
				{nx: nxB, p: preempt(2, 0, prWriteExclusive), status: sGood}},
			keys: []uint64{2}, resType: prWriteExclusive, resKey: 2, gen: 3},
		{name: "preempt and abort is a preempt",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxB, p: regIgn(2), status: sGood},
				{nx: nxA, p: reserve(1, prExclusiveAccess), status: sGood},
				{nx: nxB, p: prOut{sa: saPreemptAndAbort, key: 2, sark: 1, typ: prExclusiveAccess}, status: sGood}},
			keys: []uint64{2}, resType: prExclusiveAccess, resKey: 2, gen: 3},
		{name: "a key per I_T nexus: a through two ports",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA2, p: regIgn(2), status: sGood},
				{nx: nxA2, p: reserve(1, prExclusiveAccess), status: sConflict}},
			keys: []uint64{1, 2}, gen: 2},
		{name: "ALL_TG_PT registers through every port",
			steps: []prStep{{nx: nxA, p: prOut{sa: saRegisterIgnore, sark: 4, all: true}, status: sGood},
				{nx: nxA2, p: reserve(4, prExclusiveAccess), status: sGood}},
			keys: []uint64{4}, resType: prExclusiveAccess, resKey: 4, gen: 1},
		{name: "register and move",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood}, {nx: nxA, p: reserve(1, prWriteExclusive), status: sGood},
				{nx: nxA, p: prOut{sa: saRegisterAndMove, key: 1, sark: 5, typ: prWriteExclusive, unreg: true,
					moveTo: nxB.InitiatorPort, moveRTPI: 1}, status: sGood}},
			keys: []uint64{5}, resType: prWriteExclusive, resKey: 5, gen: 2},
		{name: "register and move to itself is invalid; without a reservation conflicts",
			steps: []prStep{{nx: nxA, p: regIgn(1), status: sGood},
				{nx: nxA, p: prOut{sa: saRegisterAndMove, key: 1, sark: 5, typ: prWriteExclusive, moveTo: nxB.InitiatorPort, moveRTPI: 1},
					status: sConflict},
				{nx: nxA, p: reserve(1, prWriteExclusive), status: sGood},
				{nx: nxA, p: prOut{sa: saRegisterAndMove, key: 1, sark: 5, typ: prWriteExclusive, moveTo: nxA.InitiatorPort, moveRTPI: 1},
					status: sCheck, asc: 0x26}},
			keys: []uint64{1}, resType: prWriteExclusive, resKey: 1, gen: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &prState{Format: prFormat}
			for i, st := range tc.steps {
				r, _ := s.apply(st.nx, st.p)
				if r.Status != st.status || st.status == sCheck && r.Sense.ASC != st.asc {
					t.Fatalf("step %d (%+v): status 0x%02x sense %+v, want 0x%02x asc 0x%02x", i, st.p, r.Status, r.Sense, st.status, st.asc)
				}
			}
			var keys []uint64
			for _, r := range s.Regs {
				keys = append(keys, r.Key)
			}
			if !equalKeys(keys, tc.keys) {
				t.Errorf("keys %v, want %v", keys, tc.keys)
			}
			switch {
			case tc.resType == 0 && s.Res != nil:
				t.Errorf("reservation %+v, want none", s.Res)
			case tc.resType != 0 && (s.Res == nil || s.Res.Type != tc.resType):
				t.Errorf("reservation %+v, want type %d", s.Res, tc.resType)
			case tc.resType != 0:
				if k, _ := s.holderKey(); k != tc.resKey {
					t.Errorf("reservation key %d, want %d", k, tc.resKey)
				}
			}
			if s.Generation != tc.gen {
				t.Errorf("generation %d, want %d", s.Generation, tc.gen)
			}
		})
	}
}

func equalKeys(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPRConflicts: who may read and write under each type (SPC-5 5.14.1
// table 65), for the holder a, the registered b and the unregistered c.
func TestPRConflicts(t *testing.T) {
	nxC := Nexus{InitiatorPort: "iqn.c,i,0x03", TargetPort: "iqn.t,t,0x1"}
	for _, tc := range []struct {
		typ uint8
		// Read and write allowed for b (registered) and c (not).
		bRead, bWrite, cRead, cWrite bool
	}{
		{prWriteExclusive, true, false, true, false},
		{prExclusiveAccess, false, false, false, false},
		{prWriteExclusiveRegOnly, true, true, true, false},
		{prExclusiveAccessRegOnly, true, true, false, false},
		{prWriteExclusiveAllRegs, true, true, true, false},
		{prExclusiveAccessAllRegs, true, true, false, false},
	} {
		s := &prState{}
		s.apply(nxA, regIgn(1))
		s.apply(nxB, regIgn(2))
		if r, _ := s.apply(nxA, reserve(1, tc.typ)); r.Status != StatusGood {
			t.Fatalf("type %d: reserve: %+v", tc.typ, r)
		}
		for _, c := range []struct {
			nx   Nexus
			a    prAccess
			want bool // allowed
		}{
			{nxA, prRead, true}, {nxA, prWrite, true}, {nxA, prAllowed, true},
			{nxB, prRead, tc.bRead}, {nxB, prWrite, tc.bWrite}, {nxB, prAllowed, true},
			{nxC, prRead, tc.cRead}, {nxC, prWrite, tc.cWrite}, {nxC, prAllowed, true},
		} {
			if got := !s.conflicts(c.nx, c.a); got != c.want {
				t.Errorf("type %d, %s access %d: allowed %v, want %v", tc.typ, c.nx.InitiatorPort, c.a, got, c.want)
			}
		}
	}
}

// countingStore counts loads; it can fail them and lose a race once.
type countingStore struct {
	MemPRStore
	mu        sync.Mutex
	loads     int
	failLoads bool
	// interfere, if set, is stored behind the caller's back before the
	// next compare-and-swap.
	interfere []byte
}

func (c *countingStore) Load(ctx context.Context) ([]byte, error) {
	c.mu.Lock()
	c.loads++
	fail := c.failLoads
	c.mu.Unlock()
	if fail {
		return nil, errors.New("store down")
	}
	return c.MemPRStore.Load(ctx)
}

func (c *countingStore) CompareAndSwap(ctx context.Context, old, new []byte) (bool, error) {
	c.mu.Lock()
	in := c.interfere
	c.interfere = nil
	c.mu.Unlock()
	if in != nil {
		cur, _ := c.MemPRStore.Load(ctx)
		c.MemPRStore.CompareAndSwap(ctx, cur, in)
	}
	return c.MemPRStore.CompareAndSwap(ctx, old, new)
}

// TestReservationsCache: I/O checks read the store at most once per
// interval and see changes made through the same Reservations at once;
// PR commands always read it; an unreadable store keeps the last state.
func TestReservationsCache(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{}
	r := NewReservations(st).WithLogger(slog.New(slog.DiscardHandler))
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }

	for range 100 {
		if c, err := r.conflict(ctx, nxB, prWrite); err != nil || c {
			t.Fatalf("conflict %v %v", c, err)
		}
	}
	if st.loads != 1 {
		t.Fatalf("%d loads for 100 I/O checks, want 1", st.loads)
	}
	// Another node reserves: not seen until the interval passes.
	other := NewReservations(st)
	for _, p := range []prOut{regIgn(1), reserve(1, prExclusiveAccess)} {
		if res, err := other.update(ctx, func(s *prState) (Result, bool) { return s.apply(nxA, p) }); err != nil || res.Status != StatusGood {
			t.Fatalf("update: %+v %v", res, err)
		}
	}
	if c, _ := r.conflict(ctx, nxB, prWrite); c {
		t.Fatal("conflict seen before the refresh interval (the cache was not used)")
	}
	now = now.Add(time.Second)
	if c, _ := r.conflict(ctx, nxB, prWrite); !c {
		t.Fatal("no conflict after the refresh interval")
	}
	// The store goes down: the last state holds.
	st.failLoads = true
	now = now.Add(time.Second)
	if c, err := r.conflict(ctx, nxB, prWrite); err != nil || !c {
		t.Fatalf("with the store down: conflict %v, err %v", c, err)
	}
	if _, err := r.current(ctx); err == nil {
		t.Fatal("PERSISTENT RESERVE IN with the store down succeeded")
	}
	// A fresh Reservations with the store down refuses.
	if _, err := NewReservations(st).conflict(ctx, nxB, prWrite); err == nil {
		t.Fatal("no error without any state")
	}
}

// TestReservationsCASRetry: an update that loses the race is redone on
// what won.
func TestReservationsCASRetry(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{}
	r := NewReservations(st)
	won, _ := json.Marshal(&prState{Format: prFormat, Generation: 1, Regs: []prReg{{Key: 9, Initiator: nxB.InitiatorPort, Target: nxB.TargetPort}}})
	st.interfere = won
	if res, err := r.update(ctx, func(s *prState) (Result, bool) { return s.apply(nxA, regIgn(1)) }); err != nil || res.Status != StatusGood {
		t.Fatalf("update: %+v %v", res, err)
	}
	s, err := r.current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Regs) != 2 || s.Generation != 2 {
		t.Fatalf("state %+v: the concurrent registration was lost", s)
	}
}

// TestPRFormat: the stored state carries its format; a newer one is
// refused, not overwritten.
func TestPRFormat(t *testing.T) {
	ctx := context.Background()
	st := &MemPRStore{}
	r := NewReservations(st)
	if _, err := r.update(ctx, func(s *prState) (Result, bool) { return s.apply(nxA, regIgn(0x1122334455667788)) }); err != nil {
		t.Fatal(err)
	}
	raw, _ := st.Load(ctx)
	if !bytes.Contains(raw, []byte(`"format":1`)) || !bytes.Contains(raw, []byte(`"1234605616436508552"`)) {
		t.Fatalf("stored %s", raw)
	}
	newer := []byte(`{"format":2}`)
	st2 := &MemPRStore{val: newer}
	if _, err := NewReservations(st2).update(ctx, func(s *prState) (Result, bool) { return s.apply(nxA, regIgn(1)) }); err == nil {
		t.Fatal("a newer format was accepted")
	}
	if got, _ := st2.Load(ctx); !bytes.Equal(got, newer) {
		t.Fatalf("a newer format was overwritten: %s", got)
	}
}

// prCDB builds a PERSISTENT RESERVE OUT and its basic parameter list.
func prOutCDB(sa, typ uint8, key, sark uint64, flags byte) (cdb, out []byte) {
	cdb = make([]byte, 10)
	cdb[0], cdb[1], cdb[2] = opPersistentReserveOut, sa, typ
	binary.BigEndian.PutUint32(cdb[5:9], 24)
	out = make([]byte, 24)
	binary.BigEndian.PutUint64(out[0:8], key)
	binary.BigEndian.PutUint64(out[8:16], sark)
	out[20] = flags
	return cdb, out
}

func prInCDB(sa uint8) []byte {
	cdb := make([]byte, 10)
	cdb[0], cdb[1] = opPersistentReserveIn, sa
	binary.BigEndian.PutUint16(cdb[7:9], 4096)
	return cdb
}

// TestPRCommands drives PR through Execute: the parameter data of PR IN,
// RESERVATION CONFLICT on I/O, and the CDB checks.
func TestPRCommands(t *testing.T) {
	ctx := context.Background()
	lu, _ := newLU()
	if r := lu.Execute(ctx, nxA, prInCDB(saReadKeys), nil); r.Status != StatusCheckCondition || r.Sense.ASC != 0x20 {
		t.Fatalf("PR IN without PR: %+v", r)
	}
	lu.PR = NewReservations(&MemPRStore{})
	run := func(nx Nexus, cdb, out []byte) Result { return lu.Execute(ctx, nx, cdb, out) }
	prOut := func(nx Nexus, sa, typ uint8, key, sark uint64, flags byte) Result {
		cdb, out := prOutCDB(sa, typ, key, sark, flags)
		return run(nx, cdb, out)
	}
	mustGood := func(r Result) Result {
		t.Helper()
		if r.Status != StatusGood {
			t.Fatalf("status 0x%02x sense %+v", r.Status, r.Sense)
		}
		return r
	}
	mustGood(prOut(nxA, saRegisterIgnore, 0, 0, 0xA, 0x01)) // APTPL accepted
	mustGood(prOut(nxB, saRegisterIgnore, 0, 0, 0xB, 0))
	mustGood(prOut(nxA, saReserve, prExclusiveAccessRegOnly, 0xA, 0, 0))

	keys := mustGood(run(nxB, prInCDB(saReadKeys), nil)).Data
	want := []byte{0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xA, 0, 0, 0, 0, 0, 0, 0, 0xB}
	if !bytes.Equal(keys, want) {
		t.Fatalf("READ KEYS % x, want % x", keys, want)
	}
	res := mustGood(run(nxB, prInCDB(saReadReservation), nil)).Data
	if len(res) != 24 || be64(res[8:16]) != 0xA || res[21] != prExclusiveAccessRegOnly {
		t.Fatalf("READ RESERVATION % x", res)
	}
	caps := mustGood(run(nxB, prInCDB(saReportCaps), nil)).Data
	if len(caps) != 8 || caps[1] != 8 || caps[3]&0x81 != 0x81 {
		t.Fatalf("REPORT CAPABILITIES % x", caps)
	}
	full := mustGood(run(nxB, prInCDB(saReadFullStatus), nil)).Data
	if n := be32(full[4:8]); int(n) != len(full)-8 {
		t.Fatalf("READ FULL STATUS length %d of %d", n, len(full))
	}
	if full[8+12] != 0x01 || full[8+13] != prExclusiveAccessRegOnly {
		t.Fatalf("READ FULL STATUS: a is not the holder: % x", full[8:32])
	}
	if port, ok := parseTransportID(full[8+24:]); !ok || port != nxA.InitiatorPort {
		t.Fatalf("READ FULL STATUS TransportID %q %v", port, ok)
	}
	if r := run(nxB, prInCDB(0x04), nil); r.Status != StatusCheckCondition {
		t.Fatalf("PR IN service action 4: %+v", r)
	}
	// Truncated READ KEYS keeps its ADDITIONAL LENGTH.
	short := prInCDB(saReadKeys)
	binary.BigEndian.PutUint16(short[7:9], 8)
	if d := mustGood(run(nxB, short, nil)).Data; len(d) != 8 || be32(d[4:8]) != 16 {
		t.Fatalf("READ KEYS in 8 bytes: % x", d)
	}

	// Registrants only, exclusive access: b (registered) reads and
	// writes, c (not) does neither, yet may INQUIRY and READ CAPACITY.
	nxC := Nexus{InitiatorPort: "iqn.c,i,0x03", TargetPort: nxA.TargetPort, RelativePort: 1}
	blk := make([]byte, BlockSize)
	mustGood(run(nxB, cdb10(opWrite10, 0, 1, 1), blk))
	mustGood(run(nxB, cdb10(opRead10, 0, 1, 1), nil))
	for _, cdb := range [][]byte{cdb10(opRead10, 0, 1, 1), cdb10(opWrite10, 0, 1, 1), cdb10(opSyncCache10, 0, 0, 0),
		{opModeSense6, 0, 0x3F, 0, 255, 0}} {
		if r := run(nxC, cdb, blk); r.Status != StatusReservationConflict {
			t.Fatalf("op 0x%02x from an unregistered nexus: status 0x%02x, want RESERVATION CONFLICT", cdb[0], r.Status)
		}
	}
	for _, cdb := range [][]byte{{opInquiry, 0, 0, 0, 96, 0}, cdb10(opReadCapacity10, 0, 0, 0), {opTestUnitReady, 0, 0, 0, 0, 0}} {
		mustGood(run(nxC, cdb, nil))
	}
	// PR OUT other than REGISTER from c conflicts; bad lengths do not
	// reach the state.
	if r := prOut(nxC, saReserve, prWriteExclusive, 0, 0, 0); r.Status != StatusReservationConflict {
		t.Fatalf("RESERVE unregistered: %+v", r)
	}
	cdb, out := prOutCDB(saRegister, 0, 0, 1, 0)
	binary.BigEndian.PutUint32(cdb[5:9], 20)
	if r := run(nxC, cdb, out[:20]); r.Status != StatusCheckCondition || r.Sense.ASC != 0x1A {
		t.Fatalf("PR OUT of 20 bytes: %+v", r)
	}
	if r := prOut(nxC, saRegister, 0, 0, 1, 0x08); r.Status != StatusCheckCondition || r.Sense.ASC != 0x26 {
		t.Fatalf("SPEC_I_PT: %+v", r)
	}
	// The holder is preempted by b: now a conflicts.
	mustGood(prOut(nxB, saPreempt, prExclusiveAccess, 0xB, 0xA, 0))
	if r := run(nxA, cdb10(opRead10, 0, 1, 1), nil); r.Status != StatusReservationConflict {
		t.Fatalf("read by the preempted: status 0x%02x", r.Status)
	}
}
