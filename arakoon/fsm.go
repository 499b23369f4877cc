package arakoon

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// Bounds of the session table. They are part of the replicated state
// machine's behaviour, so every node must use the same values.
const (
	maxSessions          = 16384 // the least recently used session is evicted beyond this
	maxResultsPerSession = 1024  // results a session keeps for retries
)

var (
	metaApplied  = []byte("applied")
	metaSessions = []byte("sessions")
)

// fsm is the replicated state machine: a bbolt store of the keys, the
// client sessions and the members' client addresses, plus the index of the
// last log entry applied. Each batch of log entries is one synced bbolt
// transaction, so the store is durable on its own and a restart resumes
// from it instead of replaying the log from a snapshot (raft is told not
// to restore one on start).
type fsm struct {
	path string
	log  *slog.Logger

	mu sync.RWMutex // readers hold it shared; Restore holds it to swap db
	db *bbolt.DB

	applied  atomic.Uint64 // last log index applied (command or configuration)
	restores atomic.Uint64 // snapshots restored since the node started

	maxSessions uint64 // maxSessions; lowered by tests

	failOnce sync.Once
	failErr  error
	failed   chan struct{} // closed after a storage error: the node must stop
}

func boltOptions() *bbolt.Options {
	return &bbolt.Options{
		Timeout:         2 * time.Second,
		InitialMmapSize: 256 << 20, // remaps wait for open read transactions (snapshots)
		FreelistType:    bbolt.FreelistMapType,
	}
}

// openFSM opens (or creates) the state machine's store at path.
func openFSM(path string, log *slog.Logger) (*fsm, error) {
	f := &fsm{path: path, log: log, failed: make(chan struct{}), maxSessions: maxSessions}
	db, err := openStore(path)
	if err != nil {
		return nil, err
	}
	f.db = db
	if err := f.loadApplied(); err != nil {
		db.Close()
		return nil, err
	}
	return f, nil
}

func openStore(path string) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o600, boltOptions())
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: locked by another process (is this node already running?)", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range snapshotBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize %s: %w", path, err)
	}
	return db, nil
}

func (f *fsm) loadApplied() error {
	return f.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(metaApplied)
		switch len(v) {
		case 0:
			f.applied.Store(0)
		case 8:
			f.applied.Store(binary.BigEndian.Uint64(v))
		default:
			return fmt.Errorf("%s: applied index record of %d bytes", f.path, len(v))
		}
		return nil
	})
}

// Close closes the store.
func (f *fsm) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.db.Close()
}

// fail stops the state machine after a storage error: applying later
// entries after a lost one would make this replica diverge.
func (f *fsm) fail(err error) {
	f.failOnce.Do(func() {
		f.failErr = err
		f.log.Error("arakoon state machine stopped: storage error", "err", err)
		close(f.failed)
	})
}

func (f *fsm) isFailed() bool {
	select {
	case <-f.failed:
		return true
	default:
		return false
	}
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch implements raft.BatchingFSM: the whole batch is one
// transaction. Entries at or below the stored applied index were applied
// before a restart and are skipped.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	if f.isFailed() {
		for i := range out {
			out[i] = &applyResult{Status: StatusInternal, Msg: "state machine stopped after a storage error"}
		}
		return out
	}
	applied := f.applied.Load()
	last := applied
	err := f.db.Update(func(tx *bbolt.Tx) error {
		for i, l := range logs {
			if l.Index <= applied {
				continue
			}
			if l.Type == raft.LogCommand {
				r, err := f.applyCommand(tx, l)
				if err != nil {
					return fmt.Errorf("log entry %d: %w", l.Index, err)
				}
				out[i] = r
			}
			last = l.Index
		}
		if last == applied {
			return nil
		}
		return tx.Bucket(bucketMeta).Put(metaApplied, binary.BigEndian.AppendUint64(nil, last))
	})
	if err != nil {
		f.fail(err)
		for i := range out {
			out[i] = &applyResult{Status: StatusInternal, Msg: "storage error: " + err.Error()}
		}
		return out
	}
	f.applied.Store(last)
	return out
}

// applyCommand applies one command. A command that is invalid or whose
// preconditions fail yields an error result and changes nothing; an error
// return is a storage failure that aborts the batch.
func (f *fsm) applyCommand(tx *bbolt.Tx, l *raft.Log) (*applyResult, error) {
	c, err := decodeCommand(l.Data)
	if err != nil {
		return &applyResult{Status: StatusBadRequest, Msg: err.Error()}, nil
	}
	switch c.Type {
	case cmdNop:
		return &applyResult{}, nil
	case cmdRegisterSession:
		return f.registerSession(tx, l.Index)
	case cmdCloseSession:
		return &applyResult{}, f.dropSession(tx, c.Session)
	case cmdSetMember:
		if err := validName("node id", c.Node.ID); err != nil {
			return &applyResult{Status: StatusBadRequest, Msg: err.Error()}, nil
		}
		return &applyResult{}, tx.Bucket(bucketMembers).Put([]byte(c.Node.ID), encodeMember(c.Node))
	case cmdRemoveMember:
		return &applyResult{}, tx.Bucket(bucketMembers).Delete([]byte(c.Node.ID))
	case cmdClient:
		return f.applyClient(tx, l.Index, c)
	}
	return &applyResult{Status: StatusBadRequest, Msg: fmt.Sprintf("unknown command %d", c.Type)}, nil
}

func sessionKey(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

func lruKey(index, id uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, index), id)
}

func (f *fsm) registerSession(tx *bbolt.Tx, index uint64) (*applyResult, error) {
	meta := tx.Bucket(bucketMeta)
	count := uint64(0)
	if v := meta.Get(metaSessions); len(v) == 8 {
		count = binary.BigEndian.Uint64(v)
	}
	s := &session{LastIndex: index, Lowest: 1, Results: map[uint64]*applyResult{}}
	if err := tx.Bucket(bucketSessions).Put(sessionKey(index), s.encode()); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketLRU).Put(lruKey(index, index), []byte{}); err != nil {
		return nil, err
	}
	count++
	for count > f.maxSessions {
		k, _ := tx.Bucket(bucketLRU).Cursor().First()
		if k == nil {
			break
		}
		id := binary.BigEndian.Uint64(k[8:])
		if err := f.dropSession(tx, id); err != nil {
			return nil, err
		}
		count--
	}
	if err := meta.Put(metaSessions, binary.BigEndian.AppendUint64(nil, count)); err != nil {
		return nil, err
	}
	return &applyResult{Count: index}, nil
}

// dropSession forgets a session (closed by its client, or evicted).
func (f *fsm) dropSession(tx *bbolt.Tx, id uint64) error {
	sb := tx.Bucket(bucketSessions)
	v := sb.Get(sessionKey(id))
	if v == nil {
		return nil
	}
	if s, err := decodeSession(v); err == nil {
		if err := tx.Bucket(bucketLRU).Delete(lruKey(s.LastIndex, id)); err != nil {
			return err
		}
	}
	if err := sb.Delete(sessionKey(id)); err != nil {
		return err
	}
	meta := tx.Bucket(bucketMeta)
	if v := meta.Get(metaSessions); len(v) == 8 {
		if c := binary.BigEndian.Uint64(v); c > 0 {
			return meta.Put(metaSessions, binary.BigEndian.AppendUint64(nil, c-1))
		}
	}
	return nil
}

// applyClient applies a client mutation at most once per (session, seq):
// a retry of a request that was applied gets the stored result.
func (f *fsm) applyClient(tx *bbolt.Tx, index uint64, c *command) (*applyResult, error) {
	sb := tx.Bucket(bucketSessions)
	v := sb.Get(sessionKey(c.Session))
	if v == nil {
		return &applyResult{Status: StatusSessionExpired, Msg: fmt.Sprintf("session %d is unknown (closed, or evicted as least recently used)", c.Session)}, nil
	}
	s, err := decodeSession(v)
	if err != nil {
		return nil, err
	}
	if c.Seq == 0 || c.Lowest > c.Seq {
		return &applyResult{Status: StatusBadRequest, Msg: fmt.Sprintf("bad sequence numbers %d (lowest %d)", c.Seq, c.Lowest)}, nil
	}
	if c.Seq < s.Lowest {
		return &applyResult{Status: StatusSessionExpired, Msg: fmt.Sprintf("request %d of session %d was answered before and is forgotten", c.Seq, c.Session)}, nil
	}
	res, dup := s.Results[c.Seq]
	if !dup {
		res, err = applyMutation(tx.Bucket(bucketKV), &c.Mutation)
		if err != nil {
			return nil, err
		}
	}
	if c.Lowest > s.Lowest {
		s.Lowest = c.Lowest
	}
	for q := range s.Results {
		if q < s.Lowest {
			delete(s.Results, q)
		}
	}
	s.Results[c.Seq] = res
	if len(s.Results) > maxResultsPerSession {
		seqs := make([]uint64, 0, len(s.Results))
		for q := range s.Results {
			seqs = append(seqs, q)
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		drop := seqs[:len(seqs)-maxResultsPerSession]
		for _, q := range drop {
			delete(s.Results, q)
		}
		s.Lowest = drop[len(drop)-1] + 1
	}
	lru := tx.Bucket(bucketLRU)
	if err := lru.Delete(lruKey(s.LastIndex, c.Session)); err != nil {
		return nil, err
	}
	s.LastIndex = index
	if err := lru.Put(lruKey(index, c.Session), []byte{}); err != nil {
		return nil, err
	}
	return res, sb.Put(sessionKey(c.Session), s.encode())
}

// lookup returns a key's value and whether it exists (a copy-free view,
// valid during the transaction).
func lookup(b *bbolt.Bucket, key []byte) ([]byte, bool) {
	k, v := b.Cursor().Seek(key)
	if k == nil || !bytes.Equal(k, key) {
		return nil, false
	}
	if v == nil {
		v = []byte{}
	}
	return v, true
}

func clone(v []byte) []byte { return append([]byte{}, v...) }

// sameValue compares an existing value (ok) with an expected one (nil =
// absent).
func sameValue(cur []byte, ok bool, expected []byte) bool {
	if expected == nil {
		return !ok
	}
	return ok && bytes.Equal(cur, expected)
}

func keysWithPrefix(b *bbolt.Bucket, prefix []byte) [][]byte {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, clone(k))
	}
	return keys
}

func deletePrefix(b *bbolt.Bucket, prefix []byte) (uint64, error) {
	keys := keysWithPrefix(b, prefix)
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return uint64(len(keys)), nil
}

// applyMutation applies one mutation to the key bucket: all of it or,
// with an error result, none of it.
func applyMutation(b *bbolt.Bucket, m *mutation) (*applyResult, error) {
	if e := m.validate(); e != nil {
		return &applyResult{Status: e.Status, Msg: e.Msg}, nil
	}
	switch m.Op {
	case opSet:
		return &applyResult{}, b.Put(m.Key, clone(m.Value))
	case opDelete:
		if _, ok := lookup(b, m.Key); !ok {
			return &applyResult{Status: StatusNotFound, Msg: fmt.Sprintf("key %q", m.Key)}, nil
		}
		return &applyResult{}, b.Delete(m.Key)
	case opDeletePrefix:
		n, err := deletePrefix(b, m.Key)
		return &applyResult{Count: n}, err
	case opTestAndSet:
		cur, ok := lookup(b, m.Key)
		var old []byte
		if ok {
			old = clone(cur)
		}
		r := &applyResult{Value: old}
		if !sameValue(cur, ok, m.Expected) {
			return r, nil
		}
		switch {
		case m.Wanted != nil:
			return r, b.Put(m.Key, clone(m.Wanted))
		case ok:
			return r, b.Delete(m.Key)
		}
		return r, nil
	case opSequence:
		return applySequence(b, m.Updates)
	}
	return &applyResult{Status: StatusBadRequest, Msg: fmt.Sprintf("%s is not a mutation", m.Op)}, nil
}

// overlay is the view of a sequence's pending changes over the store, so
// that asserts see earlier steps and a failing step leaves no trace.
type overlay struct {
	b        *bbolt.Bucket
	changed  map[string][]byte // nil value = deleted
	prefixes [][]byte          // deleted prefixes (keys in changed win)
}

func (o *overlay) get(k []byte) ([]byte, bool) {
	if v, ok := o.changed[string(k)]; ok {
		return v, v != nil
	}
	for _, p := range o.prefixes {
		if bytes.HasPrefix(k, p) {
			return nil, false
		}
	}
	return lookup(o.b, k)
}

func applySequence(b *bbolt.Bucket, updates []Update) (*applyResult, error) {
	o := &overlay{b: b, changed: map[string][]byte{}}
	for i, u := range updates {
		switch u.Kind {
		case UpdateSet:
			o.changed[string(u.Key)] = nonNil(u.Value)
		case UpdateDelete:
			if _, ok := o.get(u.Key); !ok {
				return &applyResult{Status: StatusNotFound, Msg: fmt.Sprintf("sequence step %d: delete of missing key %q", i, u.Key)}, nil
			}
			o.changed[string(u.Key)] = nil
		case UpdateDeletePrefix:
			for k := range o.changed {
				if bytes.HasPrefix([]byte(k), u.Key) {
					o.changed[k] = nil
				}
			}
			o.prefixes = append(o.prefixes, u.Key)
		case UpdateAssert:
			cur, ok := o.get(u.Key)
			if !sameValue(cur, ok, u.Value) {
				want := "absent"
				if u.Value != nil {
					want = fmt.Sprintf("%d bytes", len(u.Value))
				}
				return &applyResult{Status: StatusAssertionFailed, Msg: fmt.Sprintf("sequence step %d: assert on key %q (expected %s) failed", i, u.Key, want)}, nil
			}
		case UpdateAssertExists:
			if _, ok := o.get(u.Key); !ok {
				return &applyResult{Status: StatusAssertionFailed, Msg: fmt.Sprintf("sequence step %d: assert_exists on missing key %q", i, u.Key)}, nil
			}
		}
	}
	// Every step holds: replay the writes in order.
	for _, u := range updates {
		var err error
		switch u.Kind {
		case UpdateSet:
			err = b.Put(u.Key, clone(u.Value))
		case UpdateDelete:
			err = b.Delete(u.Key)
		case UpdateDeletePrefix:
			_, err = deletePrefix(b, u.Key)
		}
		if err != nil {
			return nil, err
		}
	}
	return &applyResult{}, nil
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// view runs a read transaction on the current store.
func (f *fsm) view(fn func(tx *bbolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.db.View(fn)
}

// maxResultBytes bounds a read's response so that it fits in one frame.
const maxResultBytes = MaxFrameSize - 64<<10

func tooLarge(n int) *Error {
	return errorf(StatusTooLarge, "the result exceeds %d MiB; ask for fewer keys (a smaller limit)", n>>20)
}

func (f *fsm) get(key []byte) ([]byte, error) {
	var out []byte
	err := f.view(func(tx *bbolt.Tx) error {
		v, ok := lookup(tx.Bucket(bucketKV), key)
		if !ok {
			return errorf(StatusNotFound, "key %q", key)
		}
		out = clone(v)
		return nil
	})
	return out, err
}

func (f *fsm) multiGet(keys [][]byte) ([][]byte, error) {
	out := make([][]byte, len(keys))
	err := f.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKV)
		size := 0
		for i, k := range keys {
			if v, ok := lookup(b, k); ok {
				size += len(v) + 8
				if size > maxResultBytes {
					return tooLarge(maxResultBytes)
				}
				out[i] = clone(v)
			}
		}
		return nil
	})
	return out, err
}

func (f *fsm) exists(key []byte) (bool, error) {
	var ok bool
	err := f.view(func(tx *bbolt.Tx) error {
		_, ok = lookup(tx.Bucket(bucketKV), key)
		return nil
	})
	return ok, err
}

// rangeEntries returns keys (and values, if withValues) in key order from
// first to last (nil = unbounded), at most max of them (0 = no limit).
func (f *fsm) rangeEntries(first []byte, firstInc bool, last []byte, lastInc bool, max uint64, withValues bool) ([]KV, error) {
	var out []KV
	err := f.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketKV).Cursor()
		var k, v []byte
		if first == nil {
			k, v = c.First()
		} else {
			k, v = c.Seek(first)
			if k != nil && !firstInc && bytes.Equal(k, first) {
				k, v = c.Next()
			}
		}
		size := 0
		for ; k != nil; k, v = c.Next() {
			if last != nil {
				if cmp := bytes.Compare(k, last); cmp > 0 || cmp == 0 && !lastInc {
					break
				}
			}
			if max > 0 && uint64(len(out)) >= max {
				break
			}
			e := KV{Key: clone(k)}
			size += len(k) + 8
			if withValues {
				e.Value = clone(v)
				size += len(v)
			}
			if size > maxResultBytes {
				return tooLarge(maxResultBytes)
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func (f *fsm) prefixKeys(prefix []byte, max uint64) ([][]byte, error) {
	var out [][]byte
	err := f.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketKV).Cursor()
		size := 0
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if max > 0 && uint64(len(out)) >= max {
				break
			}
			size += len(k) + 8
			if size > maxResultBytes {
				return tooLarge(maxResultBytes)
			}
			out = append(out, clone(k))
		}
		return nil
	})
	return out, err
}

// members returns the client addresses recorded by add-node.
func (f *fsm) members() (map[string]NodeInfo, error) {
	out := map[string]NodeInfo{}
	err := f.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMembers).ForEach(func(k, v []byte) error {
			n, err := decodeMember(v)
			if err != nil {
				return fmt.Errorf("member %q: %w", k, err)
			}
			out[string(k)] = n
			return nil
		})
	})
	return out, err
}

type fsmStats struct {
	Keys     int
	Sessions uint64
	DBBytes  int64
}

func (f *fsm) stats() (fsmStats, error) {
	var s fsmStats
	err := f.view(func(tx *bbolt.Tx) error {
		s.Keys = tx.Bucket(bucketKV).Stats().KeyN
		if v := tx.Bucket(bucketMeta).Get(metaSessions); len(v) == 8 {
			s.Sessions = binary.BigEndian.Uint64(v)
		}
		s.DBBytes = tx.Size()
		return nil
	})
	return s, err
}

// Snapshot implements raft.FSM: a read transaction pins the current state
// while Persist streams it and later batches go on.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{tx: tx}, nil
}

type fsmSnapshot struct {
	tx   *bbolt.Tx
	once sync.Once
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(s.tx, sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.once.Do(func() { s.tx.Rollback() }) }

// Restore implements raft.FSM: it loads the snapshot into a new store
// file and, once the whole stream checked out, swaps it in. On an error
// the current store is left as it was.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp := f.path + ".restore"
	os.Remove(tmp)
	ndb, err := openStore(tmp)
	if err != nil {
		return err
	}
	ndb.NoSync = true
	if err := loadSnapshot(ndb, rc); err != nil {
		ndb.Close()
		os.Remove(tmp)
		return fmt.Errorf("restore snapshot: %w", err)
	}
	ndb.NoSync = false
	err = ndb.Sync()
	if cerr := ndb.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("restore snapshot: %w", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	// The old store is closed only after the new one is in place, and
	// not here: a snapshot being taken (raft's snapshot goroutine) may
	// hold a read transaction on it, and bbolt's Close waits for every
	// transaction to end. Waiting here, inside the FSM, deadlocked with a
	// snapshot that waited on raft's main loop, which waited on this
	// restore. Renaming over the open file is safe: the old store keeps
	// its (now unlinked) file until it is closed.
	old := f.db
	if err := os.Rename(tmp, f.path); err != nil {
		f.fail(err)
		return err
	}
	syncDir(filepath.Dir(f.path))
	db, err := openStore(f.path)
	if err != nil {
		f.fail(err)
		return err
	}
	f.db = db
	go func() {
		if err := old.Close(); err != nil {
			f.log.Warn("closing the old store", "err", err)
		}
	}()
	if err := f.loadApplied(); err != nil {
		f.fail(err)
		return err
	}
	f.restores.Add(1)
	f.log.Info("arakoon state restored from a snapshot", "applied", f.applied.Load())
	return nil
}

// loadSnapshot writes a snapshot stream into db, in transactions of
// bounded size.
func loadSnapshot(db *bbolt.DB, r io.Reader) error {
	tx, err := db.Begin(true)
	if err != nil {
		return err
	}
	defer func() {
		if tx != nil {
			tx.Rollback()
		}
	}()
	pending := 0
	err = readSnapshot(r, func(bucket int, k, v []byte) error {
		if bucket == 0 && bytes.Equal(k, metaApplied) && len(v) != 8 {
			return fmt.Errorf("applied index record of %d bytes", len(v))
		}
		if err := tx.Bucket(snapshotBuckets[bucket]).Put(clone(k), clone(v)); err != nil {
			return fmt.Errorf("bucket %s key %q: %w", snapshotBuckets[bucket], k, err)
		}
		pending += len(k) + len(v)
		if pending < 32<<20 {
			return nil
		}
		pending = 0
		if err := tx.Commit(); err != nil {
			tx = nil
			return err
		}
		tx, err = db.Begin(true)
		return err
	})
	if err != nil {
		return err
	}
	err = tx.Commit()
	tx = nil
	return err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
