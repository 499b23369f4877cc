package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// fakeDTL is an in-memory stand-in for a DTL server (the real one,
// volumedriver/dtl, is tested over the network in its package and end to
// end in tests/): it keeps the groups in ship order, like the server, and
// is a DTLPlacer, DTLSession factory and DTLSource at once.
type fakeDTL struct {
	mu       sync.Mutex
	groups   []*fakeGroup
	fence    uint64
	sessions []*fakeSession
	// refuse makes PlaceDTL fail (no node can hold it); stall makes
	// WaitDurable hang (a DTL host cut off without a reset).
	refuse, stall atomic.Bool
	// complete is what RecordDTL was told last; records counts the calls.
	complete bool
	records  int
}

type fakeGroup struct {
	tlog, prev string
	entries    []DTLEntry
}

func (f *fakeDTL) PlaceDTL(ctx context.Context, id string, epoch uint64, avoid []string) (DTLSession, string, error) {
	if f.refuse.Load() {
		return nil, "", ErrNoDTLNode
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch < f.fence {
		return nil, "", ErrFenced
	}
	f.fence = epoch
	s := &fakeSession{d: f, epoch: epoch, done: make(chan struct{})}
	f.sessions = append(f.sessions, s)
	return s, "peer", nil
}

func (f *fakeDTL) RecordDTL(ctx context.Context, id string, epoch uint64, node string, complete bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch < f.fence {
		return ErrFenced
	}
	f.complete = complete
	f.records++
	return nil
}

func (f *fakeDTL) setFence(epoch uint64) {
	f.mu.Lock()
	f.fence = max(f.fence, epoch)
	f.mu.Unlock()
}

// snapshot copies what the DTL holds: the "disk" a host that takes over
// reads, frozen at the moment the owner died.
func (f *fakeDTL) snapshot() *fakeDTL {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &fakeDTL{fence: f.fence}
	for _, g := range f.groups {
		c.groups = append(c.groups, &fakeGroup{tlog: g.tlog, prev: g.prev, entries: slices.Clone(g.entries)})
	}
	return c
}

func (f *fakeDTL) Groups(ctx context.Context) ([]DTLGroup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []DTLGroup
	for _, g := range f.groups {
		out = append(out, DTLGroup{TLog: g.tlog, Prev: g.prev, Entries: len(g.entries)})
	}
	return out, nil
}

func (f *fakeDTL) Read(ctx context.Context, from string, fn func(string, DTLEntry) error) error {
	f.mu.Lock()
	groups := slices.Clone(f.groups)
	f.mu.Unlock()
	on := from == ""
	for _, g := range groups {
		on = on || g.tlog == from
		if !on {
			continue
		}
		for _, e := range g.entries {
			if err := fn(g.tlog, e); err != nil {
				return err
			}
		}
	}
	return nil
}

// fakeSession ships synchronously into the fake DTL; durable is always
// everything shipped (the fake has no disk to lose).
type fakeSession struct {
	d      *fakeDTL
	epoch  uint64
	pos    uint64
	broken atomic.Bool
	err    error
	done   chan struct{}
	once   sync.Once
	waits  atomic.Int64
	// received counts the writes that waited for the DTL.
	received atomic.Int64
}

func (s *fakeSession) add(fn func(f *fakeDTL) bool) uint64 {
	if s.broken.Load() {
		return 0
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if s.epoch < s.d.fence {
		s.breakWith(ErrFenced)
		return 0
	}
	if !fn(s.d) {
		s.breakWith(errors.New("entry outside a group"))
		return 0
	}
	s.pos++
	return s.pos
}

func (s *fakeSession) breakWith(err error) {
	s.once.Do(func() {
		s.err = err
		s.broken.Store(true)
		close(s.done)
	})
}

func (s *fakeSession) Begin(tlog, prev string) uint64 {
	return s.add(func(f *fakeDTL) bool {
		// As the server does: a group begun again replaces the old one.
		f.groups = slices.DeleteFunc(f.groups, func(g *fakeGroup) bool { return g.tlog == tlog })
		f.groups = append(f.groups, &fakeGroup{tlog: tlog, prev: prev})
		return true
	})
}

func (s *fakeSession) appendEntry(e DTLEntry) uint64 {
	return s.add(func(f *fakeDTL) bool {
		if len(f.groups) == 0 {
			return false
		}
		g := f.groups[len(f.groups)-1]
		g.entries = append(g.entries, e)
		return true
	})
}

func (s *fakeSession) AppendWrite(addr uint64, crcs []uint32, data []byte) uint64 {
	return s.appendEntry(DTLEntry{Addr: addr, Count: uint32(len(crcs)), CRCs: slices.Clone(crcs), Data: slices.Clone(data)})
}

func (s *fakeSession) AppendTrim(addr uint64, count uint32) uint64 {
	return s.appendEntry(DTLEntry{Trim: true, Addr: addr, Count: count})
}

func (s *fakeSession) Sync(uint64) {}

func (s *fakeSession) WaitReceived(ctx context.Context, pos uint64) error {
	s.received.Add(1)
	return s.WaitDurable(ctx, pos)
}

func (s *fakeSession) WaitDurable(ctx context.Context, pos uint64) error {
	s.waits.Add(1)
	if s.d.stall.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
		}
	}
	if s.broken.Load() {
		if errors.Is(s.err, ErrFenced) {
			return s.err
		}
		return errors.New("broken")
	}
	return nil
}

func (s *fakeSession) Drop(tlog string) {
	s.add(func(f *fakeDTL) bool {
		for i, g := range f.groups {
			if g.tlog == tlog {
				f.groups = f.groups[i+1:]
				break
			}
		}
		return true
	})
}

func (s *fakeSession) Done() <-chan struct{} { return s.done }
func (s *fakeSession) Err() error            { return s.err }
func (s *fakeSession) Close()                { s.breakWith(errors.New("closed")) }

// cutBackend is a backend a test can cut off: every call fails after cut,
// as for a host that died.
type cutBackend struct {
	scos.Backend
	cut atomic.Bool
}

var errCut = errors.New("host is gone")

func (b *cutBackend) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	if b.cut.Load() {
		return errCut
	}
	return b.Backend.Put(ctx, ns, name, data, overwrite)
}

func (b *cutBackend) Delete(ctx context.Context, ns, name string) error {
	if b.cut.Load() {
		return errCut
	}
	return b.Backend.Delete(ctx, ns, name)
}

// ownerWithDTL opens a driver of e whose DTLs dtl places, and creates
// vdisk a (id ida, epoch 1, 16 MiB) on it, its DTL ok.
func ownerWithDTL(t *testing.T, e *testEnv, dtl *fakeDTL) (*Driver, *Volume) {
	t.Helper()
	e.opts.Owned = ownedBy(nil)
	e.opts.DTL = dtl
	d := e.open()
	t.Cleanup(func() { d.Close() })
	if _, err := d.Create(context.Background(), "a", 16<<20, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	waitDTLState(t, d, "a", DTLStateOK)
	v, _ := d.Volume("a")
	return d, v
}

// adoptReplaying has another host (a driver with opts, in a directory of
// its own) adopt vdisk ida under epoch 2, replaying src as its recovery,
// and returns the volume and what the replay did.
func adoptReplaying(t *testing.T, backend scos.Backend, src DTLSource, opts Options) (*Volume, ReplayResult) {
	t.Helper()
	var res ReplayResult
	opts.Owned = ownedBy(nil)
	opts.Recover = func(ctx context.Context, name, id string, epoch uint64, restored bool, replay func(DTLSource) (ReplayResult, error)) error {
		if !restored || epoch != 2 {
			return fmt.Errorf("recover %s epoch %d restored %v", name, epoch, restored)
		}
		var err error
		res, err = replay(src)
		return err
	}
	d, err := Open(context.Background(), filepath.Join(t.TempDir(), "volumes"), backend, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if _, err := d.Adopt(context.Background(), "ida", 2); err != nil {
		t.Fatal(err)
	}
	v, err := d.Volume("a")
	if err != nil {
		t.Fatal(err)
	}
	return v, res
}

func waitState(t *testing.T, d *Driver, name, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := d.Info(context.Background(), name)
		if err == nil && info.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state of %s: %+v, %v; want %q", name, info, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitDTLState(t *testing.T, d *Driver, name, want string) VolumeInfo {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := d.Info(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if info.DTLState == want {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("DTL state of %s: %q, want %q (%+v)", name, info.DTLState, want, info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFailoverReplaysDTL: the owner writes, trims, snapshots and flushes
// while its TLogs go to the backend in the background; then it is gone (its
// local state never read again, its backend cut off). Another host adopts
// the vdisk under a new epoch and replays the DTL: everything flushed is
// there, in sync mode and in async mode (whose fake DTL loses nothing).
func TestFailoverReplaysDTL(t *testing.T) {
	for _, mode := range []DTLMode{DTLSync, DTLAsync} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := context.Background()
			e := newTestEnv(t)
			cut := &cutBackend{Backend: e.backend}
			dtl := &fakeDTL{}
			opts := e.opts
			opts.Owned = ownedBy(nil)
			opts.DTL = dtl
			opts.DTLMode = func(string) DTLMode { return mode }
			opts.AutoSyncInterval = 30 * time.Millisecond
			opts.CloseTimeout = 100 * time.Millisecond
			d1, err := Open(ctx, e.dir, cut, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer d1.Close()
			const size = 32 << 20
			if _, err := d1.Create(ctx, "a", size, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
				t.Fatal(err)
			}
			waitDTLState(t, d1, "a", DTLStateOK)
			v, _ := d1.Volume("a")
			m := &model{data: make([]byte, size)}
			rng := rand.New(rand.NewPCG(7, 8))
			for round := 0; round < 30; round++ {
				randomWrites(t, v, m, rng, 40, 200_000)
				off := int64(rng.IntN(size/4096-64)) * 4096
				if err := v.Trim(ctx, off, 64*4096); err != nil {
					t.Fatal(err)
				}
				copy(m.data[off:off+64*4096], make([]byte, 64*4096))
				if round == 10 {
					if _, err := d1.CreateSnapshot(ctx, "a", "s1", ""); err != nil {
						t.Fatal(err)
					}
				}
				if err := v.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
			info, _ := d1.Info(ctx, "a")
			t.Logf("owner before it dies: %d bytes not on the backend, DTL %s on %s", info.PendingUploadBytes, info.DTLState, info.DTLNode)
			if info.DTLState != DTLStateOK || info.DTLNode != "peer" {
				t.Fatalf("DTL state %q node %q", info.DTLState, info.DTLNode)
			}
			if mode == DTLSync && (dtl.sessions[0].waits.Load() == 0 || dtl.sessions[0].received.Load() == 0) {
				t.Fatal("sync mode writes or flushes never waited for the DTL")
			}
			// (The keeper tells the cluster within a tick of the state
			// going ok; the writes above took longer than that.)
			dtl.mu.Lock()
			complete := dtl.complete
			dtl.mu.Unlock()
			if !complete {
				t.Fatal("the cluster was never told the DTL is complete")
			}
			// The owner dies: the backend is cut off from it and the DTL
			// is what it held at that moment.
			cut.cut.Store(true)
			held := dtl.snapshot()
			held.setFence(2)
			dtl.setFence(2)

			// No node can hold the new owner's DTL (the last one
			// standing): the replay goes on without one.
			none := &fakeDTL{}
			none.refuse.Store(true)
			v2, res := adoptReplaying(t, e.backend, held, Options{DTL: none, DTLMode: func(string) DTLMode { return mode }})
			t.Logf("replayed %+v", res)
			if res.Gap {
				t.Fatal("replay reports a gap")
			}
			check(t, v2, m)
			// The old owner's DTL session is refused once the new epoch
			// fenced it: a flush there fails in sync mode.
			// (Its next write, or the TLog its idle seal starts, finds
			// the fence and the volume goes fenced.)
			err = v.WriteAt(ctx, make([]byte, 4096), 0, false)
			if err == nil {
				err = v.Flush(ctx)
			}
			if mode == DTLSync && !errors.Is(err, ErrFenced) {
				t.Fatalf("flush of the old owner after the fence: %v", err)
			}
			waitState(t, d1, "a", "fenced")
		})
	}
}

// TestDTLSessionLoss: when the DTL session breaks the vdisk goes on
// standalone (degraded), a new session is placed and catches up once the
// TLogs before it are on the backend; with no node to place it on, the
// state is standalone. Replaying a DTL that missed changes the backend
// does not have reports a gap.
func TestDTLSessionLoss(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	dtl := &fakeDTL{}
	e.opts.AutoSyncInterval = time.Hour
	d, v := ownerWithDTL(t, e, dtl)
	m := &model{data: make([]byte, 16<<20)}
	rng := rand.New(rand.NewPCG(1, 2))
	randomWrites(t, v, m, rng, 50, 100_000)

	dtl.refuse.Store(true)
	dtl.sessions[0].breakWith(errors.New("connection reset"))
	waitDTLState(t, d, "a", DTLStateStandalone)
	randomWrites(t, v, m, rng, 50, 100_000) // in no DTL
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush without a DTL: %v", err)
	}
	dtl.mu.Lock()
	complete := dtl.complete
	dtl.mu.Unlock()
	if complete {
		t.Fatal("writes no DTL holds were acknowledged while the cluster believed the DTL complete")
	}
	dtl.refuse.Store(false)
	info := waitDTLState(t, d, "a", DTLStateOK)
	deadline := time.Now().Add(10 * time.Second)
	for {
		dtl.mu.Lock()
		n, complete := len(dtl.sessions), dtl.complete
		dtl.mu.Unlock()
		if n == 2 && complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions, complete %v", n, complete)
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(t, v, m)
	// The new session got a copy of what the backend lacks (none of it
	// was uploaded), the writes made standalone too: it is ok at once,
	// and a host taking over from the backend and this DTL has it all.
	if info.PendingUploadBytes == 0 {
		t.Fatal("everything was uploaded: the copy was not needed")
	}
	var held *fakeDTL
	for held == nil || len(held.groups) == 0 {
		held = dtl.snapshot()
	}
	v2, res := adoptReplaying(t, e.backend, held, Options{})
	t.Logf("replayed %+v", res)
	check(t, v2, m)
}

// TestDTLReplayGap: a DTL whose first group does not follow what the
// backend holds is replayed, and the gap reported.
func TestDTLReplayGap(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.Owned = ownedBy(nil)
	d := e.open()
	defer d.Close()
	if _, err := d.Create(ctx, "a", 1<<20, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8192)
	fillPattern(data, 3)
	src := &fakeDTL{groups: []*fakeGroup{{tlog: "tlog_x", prev: "tlog_unknown", entries: []DTLEntry{
		{Addr: 2, Count: 2, CRCs: []uint32{crc32c(data[:4096]), crc32c(data[4096:])}, Data: data},
	}}}}
	v, _ := d.Volume("a")
	res, err := v.replayDTL(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Gap || res.Entries != 1 || res.From != "tlog_x" {
		t.Fatalf("replay: %+v", res)
	}
	m := &model{data: make([]byte, 1<<20)}
	m.write(data, 8192)
	check(t, v, m)

	// A corrupt entry is refused, not applied.
	bad := &fakeDTL{groups: []*fakeGroup{{tlog: "tlog_y", entries: []DTLEntry{{Addr: 0, Count: 1, CRCs: []uint32{1}, Data: make([]byte, 4096)}}}}}
	if _, err := v.replayDTL(ctx, bad); err == nil {
		t.Fatal("a corrupt DTL entry was replayed")
	}
	check(t, v, m)
}

// TestDTLStalled: a DTL that stops answering holds a sync flush only for
// dtlSyncTimeout; the session is dropped and another one placed.
func TestDTLStalled(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	dtl := &fakeDTL{}
	var leases atomic.Int32
	e.opts.Lease = func(context.Context) error { leases.Add(1); return nil }
	d, v := ownerWithDTL(t, e, dtl)
	m := &model{data: make([]byte, 16<<20)}
	rng := rand.New(rand.NewPCG(3, 4))
	randomWrites(t, v, m, rng, 20, 100_000)
	dtl.stall.Store(true)
	start := time.Now()
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush with a stalled DTL: %v", err)
	}
	t.Logf("the flush waited %s for a stalled DTL", time.Since(start).Round(time.Millisecond))
	if leases.Load() == 0 {
		t.Fatal("a flush no DTL holds was acknowledged without the lease")
	}
	dtl.stall.Store(false)
	waitDTLState(t, d, "a", DTLStateOK)
	dtl.mu.Lock()
	n := len(dtl.sessions)
	dtl.mu.Unlock()
	if n < 2 {
		t.Fatalf("%d sessions: the stalled one was not replaced", n)
	}
	check(t, v, m)
}

// TestRecoverFailureRetries: a vdisk whose recovery failed is not served,
// and the next adoption restores it from the backend and recovers again
// (it does not trust what the failed attempt left).
func TestRecoverFailureRetries(t *testing.T) {
	ctx := context.Background()
	e, d1, _ := twoHosts(t)
	if _, err := d1.Create(ctx, "a", 8<<20, CreateOptions{ID: "ida", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if err := d1.Sync(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	var calls []bool
	fail := true
	recover := func(ctx context.Context, name, id string, epoch uint64, restored bool, replay func(DTLSource) (ReplayResult, error)) error {
		calls = append(calls, restored)
		if fail {
			return errors.New("the DTL does not answer")
		}
		return nil
	}
	d2, err := Open(ctx, filepath.Join(t.TempDir(), "volumes"), e.backend, Options{Owned: ownedBy(nil), Recover: recover})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := d2.Adopt(ctx, "ida", 2); err == nil {
		t.Fatal("adopted a vdisk whose recovery failed")
	}
	if _, err := d2.Volume("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a vdisk whose recovery failed is served: %v", err)
	}
	fail = false
	if _, err := d2.Adopt(ctx, "ida", 2); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 || !calls[0] || !calls[1] {
		t.Fatalf("recover calls (restored): %v, want two restored", calls)
	}
}
