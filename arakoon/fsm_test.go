package arakoon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testFSM is a state machine on a temporary store, fed log entries by hand.
type testFSM struct {
	t     *testing.T
	f     *fsm
	index uint64
}

func newTestFSM(t *testing.T) *testFSM {
	t.Helper()
	f, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &testFSM{t: t, f: f}
}

func (tf *testFSM) apply(c *command) *applyResult {
	tf.t.Helper()
	tf.index++
	r := tf.f.Apply(&raft.Log{Index: tf.index, Type: raft.LogCommand, Data: c.encode()})
	res, ok := r.(*applyResult)
	if !ok {
		tf.t.Fatalf("apply returned %T", r)
	}
	return res
}

func (tf *testFSM) session() uint64 {
	tf.t.Helper()
	r := tf.apply(&command{Type: cmdRegisterSession})
	if r.Status != StatusOK || r.Count == 0 {
		tf.t.Fatalf("register: %+v", r)
	}
	return r.Count
}

func (tf *testFSM) value(k string) (string, bool) {
	v, err := tf.f.get([]byte(k))
	if errors.Is(err, ErrNotFound) {
		return "", false
	}
	if err != nil {
		tf.t.Fatal(err)
	}
	return string(v), true
}

func set(k, v string) mutation { return mutation{Op: opSet, Key: []byte(k), Value: []byte(v)} }

func TestFSMApplyAndSessions(t *testing.T) {
	tf := newTestFSM(t)
	s := tf.session()
	r := tf.apply(&command{Type: cmdClient, Session: s, Seq: 1, Lowest: 1, Mutation: set("a", "1")})
	if r.Status != StatusOK {
		t.Fatalf("set: %+v", r)
	}
	// A test_and_set applied, then retried (same seq) after the key
	// changed: the retry returns the first result and changes nothing.
	tas := mutation{Op: opTestAndSet, Key: []byte("a"), Expected: []byte("1"), Wanted: []byte("2")}
	r1 := tf.apply(&command{Type: cmdClient, Session: s, Seq: 2, Lowest: 2, Mutation: tas})
	if r1.Status != StatusOK || string(r1.Value) != "1" {
		t.Fatalf("tas: %+v", r1)
	}
	tf.apply(&command{Type: cmdClient, Session: s, Seq: 3, Lowest: 2, Mutation: set("a", "1")})
	r2 := tf.apply(&command{Type: cmdClient, Session: s, Seq: 2, Lowest: 2, Mutation: tas})
	if r2.Status != StatusOK || string(r2.Value) != "1" {
		t.Fatalf("retried tas: %+v", r2)
	}
	if v, _ := tf.value("a"); v != "1" {
		t.Fatalf("a = %q: the retried test_and_set applied twice", v)
	}
	// Once the client moved past seq 3, a late duplicate is refused.
	tf.apply(&command{Type: cmdClient, Session: s, Seq: 4, Lowest: 4, Mutation: set("b", "1")})
	if r := tf.apply(&command{Type: cmdClient, Session: s, Seq: 3, Lowest: 3, Mutation: set("a", "9")}); r.Status != StatusSessionExpired {
		t.Fatalf("late duplicate: %+v", r)
	}
	if v, _ := tf.value("a"); v != "1" {
		t.Fatalf("a = %q after a late duplicate", v)
	}
	// Unknown and closed sessions.
	if r := tf.apply(&command{Type: cmdClient, Session: 999, Seq: 1, Lowest: 1, Mutation: set("x", "1")}); r.Status != StatusSessionExpired {
		t.Fatalf("unknown session: %+v", r)
	}
	tf.apply(&command{Type: cmdCloseSession, Session: s})
	if r := tf.apply(&command{Type: cmdClient, Session: s, Seq: 5, Lowest: 5, Mutation: set("x", "1")}); r.Status != StatusSessionExpired {
		t.Fatalf("closed session: %+v", r)
	}
	if st, _ := tf.f.stats(); st.Sessions != 0 {
		t.Fatalf("%d sessions after close", st.Sessions)
	}
	// Bad sequence numbers, undecodable commands, invalid mutations.
	s = tf.session()
	if r := tf.apply(&command{Type: cmdClient, Session: s, Seq: 1, Lowest: 2, Mutation: set("x", "1")}); r.Status != StatusBadRequest {
		t.Fatalf("lowest above seq: %+v", r)
	}
	tf.index++
	if r := tf.f.Apply(&raft.Log{Index: tf.index, Type: raft.LogCommand, Data: []byte{9, 9}}).(*applyResult); r.Status != StatusBadRequest {
		t.Fatalf("garbage command: %+v", r)
	}
	if r := tf.apply(&command{Type: cmdClient, Session: s, Seq: 2, Lowest: 2, Mutation: set("", "1")}); r.Status != StatusBadRequest {
		t.Fatalf("empty key: %+v", r)
	}
}

func TestFSMSessionEviction(t *testing.T) {
	tf := newTestFSM(t)
	tf.f.maxSessions = 50
	first := tf.session()
	second := tf.session()
	// Using the first session makes the second the least recently used.
	tf.apply(&command{Type: cmdClient, Session: first, Seq: 1, Lowest: 1, Mutation: set("x", "1")})
	for range 49 {
		tf.session()
	}
	if st, _ := tf.f.stats(); st.Sessions != 50 {
		t.Fatalf("%d sessions, want 50", st.Sessions)
	}
	if r := tf.apply(&command{Type: cmdClient, Session: first, Seq: 2, Lowest: 2, Mutation: set("x", "2")}); r.Status != StatusOK {
		t.Fatalf("recently used session was evicted: %+v", r)
	}
	first = second
	if r := tf.apply(&command{Type: cmdClient, Session: first, Seq: 1, Lowest: 1, Mutation: set("x", "1")}); r.Status != StatusSessionExpired {
		t.Fatalf("least recently used session was not evicted: %+v", r)
	}
}

func TestFSMSkipsReplayedEntries(t *testing.T) {
	tf := newTestFSM(t)
	s := tf.session()
	tf.apply(&command{Type: cmdClient, Session: s, Seq: 1, Lowest: 1, Mutation: set("a", "1")})
	tf.apply(&command{Type: cmdClient, Session: s, Seq: 2, Lowest: 2, Mutation: set("a", "2")})
	// Raft replays from an older index after a restart: nothing changes.
	r := tf.f.ApplyBatch([]*raft.Log{
		{Index: 2, Type: raft.LogCommand, Data: (&command{Type: cmdClient, Session: s, Seq: 1, Lowest: 1, Mutation: set("a", "1")}).encode()},
		{Index: 3, Type: raft.LogConfiguration},
		{Index: 4, Type: raft.LogCommand, Data: (&command{Type: cmdClient, Session: s, Seq: 3, Lowest: 3, Mutation: set("b", "1")}).encode()},
	})
	if r[0] != nil || r[2].(*applyResult).Status != StatusOK {
		t.Fatalf("batch results: %v", r)
	}
	if v, _ := tf.value("a"); v != "2" {
		t.Fatalf("a = %q after replay", v)
	}
	if tf.f.applied.Load() != 4 {
		t.Fatalf("applied = %d, want 4", tf.f.applied.Load())
	}
	// The applied index survives a reopen.
	path := tf.f.path
	tf.f.Close()
	f2, err := openFSM(path, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if f2.applied.Load() != 4 {
		t.Fatalf("applied after reopen = %d", f2.applied.Load())
	}
}

type bufSink struct {
	bytes.Buffer
	cancelled bool
}

func (b *bufSink) ID() string    { return "test" }
func (b *bufSink) Cancel() error { b.cancelled = true; return nil }
func (b *bufSink) Close() error  { return nil }

func snapshotBytes(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

func dump(t *testing.T, f *fsm) string {
	t.Helper()
	kvs, err := f.rangeEntries(nil, false, nil, false, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(kvs)
}

func TestFSMSnapshotRestore(t *testing.T) {
	tf := newTestFSM(t)
	s := tf.session()
	for i := range 100 {
		tf.apply(&command{Type: cmdClient, Session: s, Seq: uint64(i + 1), Lowest: uint64(i + 1), Mutation: set(fmt.Sprintf("k%03d", i), fmt.Sprint(i))})
	}
	tf.apply(&command{Type: cmdSetMember, Node: NodeInfo{ID: "n9", Client: "127.0.0.1:1", Raft: "127.0.0.1:2"}})
	snap := snapshotBytes(t, tf.f)
	// Writes after the snapshot is taken are not in it.
	tf.apply(&command{Type: cmdClient, Session: s, Seq: 200, Lowest: 200, Mutation: set("late", "1")})

	other := newTestFSM(t)
	other.apply(&command{Type: cmdClient, Session: other.session(), Seq: 1, Lowest: 1, Mutation: set("gone", "1")})
	if err := other.f.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if _, ok := other.value("gone"); ok {
		t.Fatal("restore kept old state")
	}
	if _, ok := other.value("late"); ok {
		t.Fatal("snapshot has a write from after it was taken")
	}
	if v, _ := other.value("k042"); v != "42" {
		t.Fatalf("k042 = %q", v)
	}
	if other.f.applied.Load() != tf.index-1 {
		t.Fatalf("restored applied = %d, want %d", other.f.applied.Load(), tf.index-1)
	}
	ms, err := other.f.members()
	if err != nil || ms["n9"].Client != "127.0.0.1:1" {
		t.Fatalf("members after restore: %v %v", ms, err)
	}
	// The session came along: a retry of its last request is answered
	// from it, not applied again.
	other.index = other.f.applied.Load()
	if r := other.apply(&command{Type: cmdClient, Session: s, Seq: 100, Lowest: 100, Mutation: set("k099", "changed")}); r.Status != StatusOK {
		t.Fatalf("retry after restore: %+v", r)
	}
	if v, _ := other.value("k099"); v != "99" {
		t.Fatalf("k099 = %q: a retry was applied twice after restore", v)
	}

	// A corrupt snapshot is refused and leaves the store as it was.
	before := dump(t, other.f)
	for _, bad := range [][]byte{
		snap[:len(snap)-1],
		append(append([]byte{}, snap[:len(snap)-4]...), 0, 0, 0, 0),
		append([]byte{2}, snap[1:]...),
		{},
	} {
		if err := other.f.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
			t.Fatalf("corrupt snapshot of %d bytes restored", len(bad))
		}
		if dump(t, other.f) != before {
			t.Fatal("a failed restore changed the store")
		}
	}
	flipped := append([]byte{}, snap...)
	flipped[len(flipped)/2] ^= 0x40
	if err := other.f.Restore(io.NopCloser(bytes.NewReader(flipped))); err == nil {
		t.Fatal("snapshot with a flipped bit restored")
	}
}

func TestSequenceOverlay(t *testing.T) {
	tf := newTestFSM(t)
	s := tf.session()
	seq := uint64(0)
	run := func(us ...Update) *applyResult {
		seq++
		return tf.apply(&command{Type: cmdClient, Session: s, Seq: seq, Lowest: seq, Mutation: mutation{Op: opSequence, Updates: us}})
	}
	u := func(k UpdateKind, key string, v []byte) Update { return Update{Kind: k, Key: []byte(key), Value: v} }
	run(u(UpdateSet, "p/a", []byte("1")), u(UpdateSet, "p/b", []byte("2")), u(UpdateSet, "q", []byte("3")))
	// delete_prefix hides earlier sets and stored keys; a later set shows again.
	r := run(u(UpdateSet, "p/c", []byte("x")), u(UpdateDeletePrefix, "p/", nil),
		u(UpdateAssert, "p/a", nil), u(UpdateAssert, "p/c", nil),
		u(UpdateSet, "p/a", []byte("new")), u(UpdateAssert, "p/a", []byte("new")),
		u(UpdateAssertExists, "q", nil))
	if r.Status != StatusOK {
		t.Fatalf("sequence: %+v", r)
	}
	if got := dump(t, tf.f); got != "[{[112 47 97] [110 101 119]} {[113] [51]}]" {
		t.Fatalf("store after sequence: %s", got)
	}
	before := dump(t, tf.f)
	for _, bad := range [][]Update{
		{u(UpdateSet, "z", []byte("1")), u(UpdateAssertExists, "nope", nil)},
		{u(UpdateDeletePrefix, "", nil), u(UpdateAssert, "q", []byte("3"))},
		{u(UpdateDelete, "q", nil), u(UpdateDelete, "q", nil)},
		{u(UpdateSet, "z", []byte("1")), u(UpdateAssert, "z", []byte("2"))},
	} {
		if r := run(bad...); r.Status == StatusOK {
			t.Fatalf("sequence %v succeeded", bad)
		}
		if dump(t, tf.f) != before {
			t.Fatalf("failed sequence %v changed the store", bad)
		}
	}
}

// TestFSMRestoreWhileSnapshotHeld: raft may hold an FSM snapshot (a read
// transaction) while it restores another one; the restore must not wait
// for the snapshot's release (it deadlocked with raft's main loop), and
// the held snapshot still persists the state it pinned.
func TestFSMRestoreWhileSnapshotHeld(t *testing.T) {
	src := newTestFSM(t)
	s := src.session()
	src.apply(&command{Type: cmdClient, Session: s, Seq: 1, Lowest: 1, Mutation: set("new", "1")})
	snap := snapshotBytes(t, src.f)

	tf := newTestFSM(t)
	tf.apply(&command{Type: cmdClient, Session: tf.session(), Seq: 1, Lowest: 1, Mutation: set("old", "1")})
	held, err := tf.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tf.f.Restore(io.NopCloser(bytes.NewReader(snap))) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Restore waits for a held snapshot to be released")
	}
	if _, ok := tf.value("new"); !ok {
		t.Fatal("restored state not served")
	}
	// The held snapshot still streams what it pinned: the old state.
	sink := &bufSink{}
	if err := held.Persist(sink); err != nil {
		t.Fatal(err)
	}
	held.Release()
	other := newTestFSM(t)
	if err := other.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if _, ok := other.value("old"); !ok {
		t.Fatal("the held snapshot lost the state it pinned")
	}
}
