package arakoon

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/internal/freeport"
)

// freeAddrs returns n distinct 127.0.0.1 addresses that were free a moment ago.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	out, err := freeport.Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fastTuning keeps elections and snapshots quick in tests (less so under
// the race detector, where one 8 MiB append can outlast a heartbeat).
var fastTuning = Tuning{
	HeartbeatTimeout:   Duration(raceRaftSlowdown * 400 * time.Millisecond),
	ElectionTimeout:    Duration(raceRaftSlowdown * 400 * time.Millisecond),
	LeaderLeaseTimeout: Duration(raceRaftSlowdown * 300 * time.Millisecond),
	CommitTimeout:      Duration(5 * time.Millisecond),
	SnapshotInterval:   Duration(200 * time.Millisecond),
	SnapshotThreshold:  64,
	TrailingLogs:       32,
}

func testConfig(t testing.TB, n int) *Config {
	t.Helper()
	dir := t.TempDir()
	addrs := freeAddrs(t, 2*n)
	c := &Config{Cluster: "test", Tuning: fastTuning}
	for i := range n {
		id := "n" + strconv.Itoa(i+1)
		c.Nodes = append(c.Nodes, NodeConfig{ID: id, Client: addrs[2*i], Raft: addrs[2*i+1], Data: filepath.Join(dir, id)})
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

type testCluster struct {
	t   testing.TB
	cfg *Config
	tls *TLSConfig  // nodes serve over TLS when set
	ctl *tls.Config // and clients use this
	mu  sync.Mutex
	srv map[string]*Server
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("ARAKOON_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return nil
}

func startCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, cfg: testConfig(t, n), srv: map[string]*Server{}}
	t.Cleanup(tc.stopAll)
	for _, nd := range tc.cfg.Nodes {
		tc.start(nd.ID)
	}
	tc.waitMaster()
	return tc
}

func (tc *testCluster) start(id string) *Server {
	tc.t.Helper()
	n, _ := tc.cfg.Node(id)
	var s *Server
	var err error
	// The raft port of a node just stopped may linger briefly.
	for i := 0; i < 50; i++ {
		s, err = Start(tc.cfg, id, ServerOptions{Logger: testLogger(tc.t), Join: n.Join, TLS: tc.tls})
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		tc.t.Fatalf("start %s: %v", id, err)
	}
	tc.mu.Lock()
	tc.srv[id] = s
	tc.mu.Unlock()
	return s
}

func (tc *testCluster) stop(id string) {
	tc.t.Helper()
	tc.mu.Lock()
	s := tc.srv[id]
	delete(tc.srv, id)
	tc.mu.Unlock()
	if s != nil {
		if err := s.Close(); err != nil {
			tc.t.Logf("close %s: %v", id, err)
		}
	}
}

func (tc *testCluster) stopAll() {
	tc.mu.Lock()
	ids := make([]string, 0, len(tc.srv))
	for id := range tc.srv {
		ids = append(ids, id)
	}
	tc.mu.Unlock()
	for _, id := range ids {
		tc.stop(id)
	}
}

// waitMaster waits until a running node is the master and returns its id.
func (tc *testCluster) waitMaster() string {
	tc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		tc.mu.Lock()
		for id, s := range tc.srv {
			if s.IsMaster() {
				tc.mu.Unlock()
				return id
			}
		}
		tc.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatal("no master within 15s")
	return ""
}

func (tc *testCluster) client() *Client {
	tc.t.Helper()
	cc := tc.cfg.ClientConfig()
	cc.AttemptTimeout = raceSlowdown * 3 * time.Second
	cc.TLS = tc.ctl
	c, err := NewClient(cc)
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func b(s string) []byte { return []byte(s) }

func TestClusterOperations(t *testing.T) {
	tc := startCluster(t, 3)
	c := tc.client()
	// A bound against hangs, not a timing: under -race on a loaded
	// machine the whole sequence (with its 8 MiB values) takes minutes.
	ctx := ctxT(t, raceSlowdown*60*time.Second)

	if _, err := c.Get(ctx, b("missing")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	for i := range 10 {
		if err := c.Set(ctx, b(fmt.Sprintf("k/%02d", i)), b(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(ctx, b("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, b("empty")); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("empty value: %q %v", v, err)
	}
	if v, err := c.Get(ctx, b("k/03")); err != nil || string(v) != "3" {
		t.Fatalf("get: %q %v", v, err)
	}
	if ok, err := c.Exists(ctx, b("k/04")); err != nil || !ok {
		t.Fatalf("exists: %v %v", ok, err)
	}
	if ok, err := c.Exists(ctx, b("k/99")); err != nil || ok {
		t.Fatalf("exists missing: %v %v", ok, err)
	}
	vs, err := c.MultiGetOption(ctx, [][]byte{b("k/01"), b("nope"), b("empty")})
	if err != nil || string(vs[0]) != "1" || vs[1] != nil || vs[2] == nil {
		t.Fatalf("multi_get_option: %q %v", vs, err)
	}
	if _, err := c.MultiGet(ctx, [][]byte{b("k/01"), b("nope")}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("multi_get with a missing key: %v", err)
	}
	keys, err := c.PrefixKeys(ctx, b("k/"), 3)
	if err != nil || len(keys) != 3 || string(keys[2]) != "k/02" {
		t.Fatalf("prefix_keys: %q %v", keys, err)
	}
	keys, err = c.Range(ctx, Range{First: b("k/02"), Last: b("k/05"), LastInclusive: true})
	if err != nil || len(keys) != 3 || string(keys[0]) != "k/03" || string(keys[2]) != "k/05" {
		t.Fatalf("range: %q %v", keys, err)
	}
	ents, err := c.RangeEntries(ctx, Range{First: b("k/08"), FirstInclusive: true, Max: 5})
	if err != nil || len(ents) != 2 || string(ents[1].Value) != "9" {
		t.Fatalf("range_entries: %v %v", ents, err)
	}
	old, ok, err := c.TestAndSet(ctx, b("k/01"), b("1"), b("one"))
	if err != nil || !ok || string(old) != "1" {
		t.Fatalf("tas: %q %v %v", old, ok, err)
	}
	old, ok, err = c.TestAndSet(ctx, b("k/01"), b("1"), b("uno"))
	if err != nil || ok || string(old) != "one" {
		t.Fatalf("failing tas: %q %v %v", old, ok, err)
	}
	if _, ok, err = c.TestAndSet(ctx, b("new"), nil, b("x")); err != nil || !ok {
		t.Fatalf("tas on absent: %v %v", ok, err)
	}
	if _, ok, err = c.TestAndSet(ctx, b("new"), b("x"), nil); err != nil || !ok {
		t.Fatalf("tas delete: %v %v", ok, err)
	}
	if ok, _ := c.Exists(ctx, b("new")); ok {
		t.Fatal("tas with nil wanted did not delete")
	}
	if err := c.Delete(ctx, b("k/00")); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, b("k/00")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if n, err := c.DeletePrefix(ctx, b("k/0")); err != nil || n != 9 {
		t.Fatalf("delete_prefix: %d %v", n, err)
	}
	if err := c.Set(ctx, b("big"), make([]byte, MaxValueSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("value over 8 MiB: %v", err)
	}
	if err := c.Set(ctx, b("big"), bytes.Repeat(b("x"), MaxValueSize)); err != nil {
		t.Fatalf("8 MiB value: %v", err)
	}
	if v, err := c.Get(ctx, b("big")); err != nil || len(v) != MaxValueSize {
		t.Fatalf("get 8 MiB: %d %v", len(v), err)
	}
	if err := c.Set(ctx, nil, b("v")); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("empty key: %v", err)
	}
	if err := c.Nop(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := c.WhoMaster(ctx)
	if err != nil || m.ID != tc.waitMaster() {
		t.Fatalf("who_master: %v %v (master %s)", m, err, tc.waitMaster())
	}
	st, err := c.Statistics(ctx, "")
	if err != nil || st.State != "Leader" || len(st.Members) != 3 || st.Ops["set"] == 0 {
		t.Fatalf("statistics: %+v %v", st, err)
	}
	// A stale read from each node sees a write once it has replicated.
	if err := c.Set(ctx, b("everywhere"), b("1")); err != nil {
		t.Fatal(err)
	}
	for _, n := range tc.cfg.Nodes {
		waitFor(t, 10*time.Second, "stale read on "+n.ID, func() bool {
			v, err := c.Get(ctx, b("everywhere"), ReadFrom(n.ID))
			return err == nil && string(v) == "1"
		})
	}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSequenceAtomicity(t *testing.T) {
	tc := startCluster(t, 1)
	c := tc.client()
	ctx := ctxT(t, 30*time.Second)
	if err := c.Set(ctx, b("a"), b("1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, b("p/1"), b("x")); err != nil {
		t.Fatal(err)
	}
	// The assert fails on its third step: nothing of the first two stays.
	seq := (&Sequence{}).Set(b("b"), b("2")).DeletePrefix(b("p/")).Assert(b("a"), b("wrong")).Set(b("c"), b("3"))
	if err := c.Sequence(ctx, seq); !errors.Is(err, ErrAssertionFailed) {
		t.Fatalf("sequence with a failing assert: %v", err)
	}
	for _, k := range []string{"b", "c"} {
		if ok, _ := c.Exists(ctx, b(k)); ok {
			t.Fatalf("%s set by a failed sequence", k)
		}
	}
	if ok, _ := c.Exists(ctx, b("p/1")); !ok {
		t.Fatal("p/1 deleted by a failed sequence")
	}
	// Delete of a missing key fails the sequence too.
	if err := c.Sequence(ctx, (&Sequence{}).Set(b("b"), b("2")).Delete(b("nope"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("sequence deleting a missing key: %v", err)
	}
	if ok, _ := c.Exists(ctx, b("b")); ok {
		t.Fatal("b set by a failed sequence")
	}
	// Asserts see earlier steps.
	seq = (&Sequence{}).Set(b("b"), b("2")).Assert(b("b"), b("2")).AssertExists(b("a")).
		Delete(b("a")).Assert(b("a"), nil).DeletePrefix(b("p/")).Assert(b("p/1"), nil).
		Set(b("p/2"), b("y")).AssertExists(b("p/2"))
	if err := c.Sequence(ctx, seq); err != nil {
		t.Fatalf("good sequence: %v", err)
	}
	want := map[string]string{"b": "2", "p/2": "y"}
	ents, err := c.RangeEntries(ctx, Range{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range ents {
		got[string(e.Key)] = string(e.Value)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after sequences: %v, want %v", got, want)
	}
}

// increment adds one to the counter with test_and_set, retrying on
// contention; it returns how many test_and_sets it took.
func increment(ctx context.Context, c *Client, key []byte) error {
	for {
		cur, err := c.Get(ctx, key)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		n := 0
		if cur != nil {
			if n, err = strconv.Atoi(string(cur)); err != nil {
				return err
			}
		}
		_, ok, err := c.TestAndSet(ctx, key, cur, []byte(strconv.Itoa(n+1)))
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
}

func TestCounterIncrementsAcrossFailover(t *testing.T) {
	tc := startCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	const workers, each = 6, 25
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		c := tc.client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := increment(ctx, c, b("counter")); err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	// Take the master down in the middle, bring it back later.
	waitFor(t, 30*time.Second, "some increments", func() bool { return done.Load() > workers*each/3 })
	m := tc.waitMaster()
	tc.stop(m)
	waitFor(t, 30*time.Second, "more increments", func() bool { return done.Load() > 2*workers*each/3 })
	tc.start(m)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	v, err := tc.client().Get(ctx, b("counter"))
	if err != nil {
		t.Fatal(err)
	}
	if string(v) != strconv.Itoa(workers*each) {
		t.Fatalf("counter = %s after %d increments", v, workers*each)
	}
}

func TestFailoverAndCatchUpFromSnapshot(t *testing.T) {
	tc := startCluster(t, 3)
	c := tc.client()
	ctx := ctxT(t, 90*time.Second)
	for i := range 20 {
		if err := c.Set(ctx, b(fmt.Sprintf("a/%d", i)), b("v")); err != nil {
			t.Fatal(err)
		}
	}
	// Stop a follower, write well past the snapshot threshold and
	// trailing logs, so that it can only catch up from a snapshot.
	m := tc.waitMaster()
	var follower string
	for _, n := range tc.cfg.Nodes {
		if n.ID != m {
			follower = n.ID
			break
		}
	}
	tc.stop(follower)
	for i := range 400 {
		if err := c.Set(ctx, b(fmt.Sprintf("b/%03d", i)), b(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "a snapshot on the master", func() bool {
		st, err := c.Statistics(ctx, m)
		return err == nil && st.LastSnapshotIndex > 100
	})
	// Stop the master too: the follower comes back to a new master.
	tc.stop(m)
	tc.start(follower)
	tc.waitMaster()
	if err := c.Set(ctx, b("after"), b("1")); err != nil {
		t.Fatal(err)
	}
	tc.start(m)
	for _, id := range []string{follower, m} {
		waitFor(t, 20*time.Second, id+" caught up", func() bool {
			v, err := c.Get(ctx, b("after"), ReadFrom(id))
			return err == nil && string(v) == "1"
		})
		keys, err := c.PrefixKeys(ctx, b("b/"), 0, ReadFrom(id))
		if err != nil || len(keys) != 400 {
			t.Fatalf("%s has %d b/ keys: %v", id, len(keys), err)
		}
	}
	st, err := c.Statistics(ctx, follower)
	if err != nil {
		t.Fatal(err)
	}
	if st.SnapshotRestores == 0 {
		t.Errorf("%s caught up without installing a snapshot: %+v", follower, st)
	}
	// Stop everything and start again: the data is intact.
	tc.stopAll()
	for _, n := range tc.cfg.Nodes {
		tc.start(n.ID)
	}
	c2 := tc.client()
	keys, err := c2.PrefixKeys(ctx, b("b/"), 0)
	if err != nil || len(keys) != 400 {
		t.Fatalf("after a full restart: %d keys, %v", len(keys), err)
	}
}

func TestMembershipChange(t *testing.T) {
	tc := startCluster(t, 3)
	addrs := freeAddrs(t, 2)
	n4 := NodeConfig{ID: "n4", Client: addrs[0], Raft: addrs[1], Data: filepath.Join(t.TempDir(), "n4"), Join: true}
	tc.cfg.Nodes = append(tc.cfg.Nodes, n4)
	tc.start("n4")
	c := tc.client()
	ctx := ctxT(t, 60*time.Second)
	if err := c.Set(ctx, b("x"), b("1")); err != nil {
		t.Fatal(err)
	}
	// n4 joins as a learner: it replicates but does not vote.
	n4info := NodeInfo{ID: "n4", Client: n4.Client, Raft: n4.Raft}
	if err := c.AddNode(ctx, n4info, true); err != nil {
		t.Fatalf("add_node learner: %v", err)
	}
	waitFor(t, 10*time.Second, "n4 replicated", func() bool {
		v, err := c.Get(ctx, b("x"), ReadFrom("n4"))
		return err == nil && string(v) == "1"
	})
	voters := func() map[string]bool {
		ms, err := c.Members(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, m := range ms {
			out[m.ID] = m.Voter
		}
		return out
	}
	if v := voters(); len(v) != 4 || v["n4"] {
		t.Fatalf("members after adding a learner: %v", v)
	}
	// A linearizable read on a learner is redirected to the master.
	if v, err := c.Get(ctx, b("x")); err != nil || string(v) != "1" {
		t.Fatalf("get: %q %v", v, err)
	}
	// Promote it.
	if err := c.AddNode(ctx, n4info, false); err != nil {
		t.Fatalf("add_node voter: %v", err)
	}
	if v := voters(); len(v) != 4 || !v["n4"] {
		t.Fatalf("members after promoting n4: %v", v)
	}
	// Remove the master itself: another node takes over.
	m := tc.waitMaster()
	if err := c.RemoveNode(ctx, m); err != nil {
		t.Fatalf("remove_node %s: %v", m, err)
	}
	tc.stop(m)
	if err := c.Set(ctx, b("y"), b("2")); err != nil {
		t.Fatal(err)
	}
	ms, err := c.Members(ctx)
	if err != nil || len(ms) != 3 {
		t.Fatalf("members after remove: %v %v", ms, err)
	}
	for _, mb := range ms {
		if mb.ID == m {
			t.Fatalf("%s still a member: %v", m, ms)
		}
	}
	if err := c.RemoveNode(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove unknown node: %v", err)
	}
}

func TestWrongCluster(t *testing.T) {
	tc := startCluster(t, 1)
	cc := tc.cfg.ClientConfig()
	cc.Cluster = "other"
	c, err := NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Get(ctxT(t, 10*time.Second), b("k")); !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("client of another cluster: %v", err)
	}
}

func TestServerRejectsBadFrames(t *testing.T) {
	tc := startCluster(t, 1)
	addr := tc.cfg.Nodes[0].Client
	c := tc.client()
	ctx := ctxT(t, 30*time.Second)
	if err := c.Set(ctx, b("k"), b("v")); err != nil {
		t.Fatal(err)
	}
	roundTrip := func(nc net.Conn, raw []byte) (frame, error) {
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Write(raw); err != nil {
			return frame{}, err
		}
		return readFrame(nc)
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A well-framed request with a bad payload: an error, and the
	// connection keeps working.
	f, err := roundTrip(nc, appendFrame(nil, byte(opGet), 1, []byte{0, 0xff, 0xff}))
	if err != nil || Status(f.Kind) != StatusBadRequest || f.ID != 1 {
		t.Fatalf("bad payload: %+v %v", f, err)
	}
	f, err = roundTrip(nc, appendFrame(nil, 200, 2, nil))
	if err != nil || Status(f.Kind) != StatusBadRequest || !bytes.Contains(f.Payload, b("unknown op")) {
		t.Fatalf("unknown op: %+v %v", f, err)
	}
	f, err = roundTrip(nc, appendFrame(nil, byte(opGet), 3, (&request{Op: opGet, Key: b("k")}).encode()))
	if err != nil || Status(f.Kind) != StatusOK {
		t.Fatalf("good request after bad ones: %+v %v", f, err)
	}
	// A bad version or an oversized frame: an error, then the node
	// closes the connection.
	bad := appendFrame(nil, byte(opGet), 4, nil)
	bad[0] = 9
	f, err = roundTrip(nc, bad)
	if err != nil || Status(f.Kind) != StatusBadRequest || !bytes.Contains(f.Payload, b("version")) {
		t.Fatalf("bad version: %+v %v", f, err)
	}
	if _, err := readFrame(nc); err == nil {
		t.Fatal("connection still open after a bad version")
	}
	nc2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	huge := appendFrame(nil, byte(opSet), 5, nil)
	huge[10], huge[11], huge[12], huge[13] = 0x7f, 0xff, 0xff, 0xff
	if f, err = roundTrip(nc2, huge); err != nil || Status(f.Kind) != StatusBadRequest {
		t.Fatalf("oversized frame: %+v %v", f, err)
	}
	// Other clients were not disturbed.
	if v, err := c.Get(ctx, b("k")); err != nil || string(v) != "v" {
		t.Fatalf("after bad frames: %q %v", v, err)
	}
}
