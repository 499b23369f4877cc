package ec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/scos"
	bolt "go.etcd.io/bbolt"
)

// KVStore is the consistent key-value store the erasure-coded backend keeps
// its metadata in: object manifests, namespaces, the ASD registry, presets
// and pending fragment deletions. It is what arakoon provides cluster-wide;
// BoltKV is a durable single-node implementation.
//
// Keys are non-empty strings; values are byte slices, where nil stands for
// "absent" (an empty non-nil value is a present key). Every write is
// durable when it returns. Implementations must be safe for concurrent use.
type KVStore interface {
	// Get returns the value of key, or an error wrapping ErrKeyNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value under key.
	Set(ctx context.Context, key string, value []byte) error
	// Delete removes key; removing an absent key is not an error.
	Delete(ctx context.Context, key string) error
	// TestAndSet atomically replaces the value of key with wanted if its
	// current value equals expected (nil expected: the key must be
	// absent; nil wanted: delete the key). On a mismatch it changes
	// nothing and returns an error wrapping ErrKVConflict.
	TestAndSet(ctx context.Context, key string, expected, wanted []byte) error
	// GuardedTestAndSet is TestAndSet that also asserts, in the same
	// atomic step, that guard.Key holds exactly guard.Value (nil: is
	// absent). If the guard does not hold it changes nothing and returns
	// an error wrapping scos.ErrFenced, whatever key holds; if only key's value
	// differs from expected, an error wrapping ErrKVConflict.
	GuardedTestAndSet(ctx context.Context, guard scos.Fence, key string, expected, wanted []byte) error
	// Range returns, in key order, up to limit entries (limit <= 0: no
	// limit) whose keys start with prefix and sort strictly after after
	// ("" for the first page).
	Range(ctx context.Context, prefix, after string, limit int) ([]KV, error)
	Close() error
}

// KV is one entry of a Range.
type KV struct {
	Key   string
	Value []byte
}

var (
	ErrKeyNotFound = errors.New("key not found")
	ErrKVConflict  = errors.New("value changed concurrently")
)

// BoltKV is a KVStore in one bbolt file. Only one process can open it.
type BoltKV struct {
	db   *bolt.DB
	path string

	mu         sync.Mutex
	pending    []*kvWrite
	committing bool
}

var boltBucket = []byte("ovs")

// OpenBoltKV opens (creating if needed) the store at path.
func OpenBoltKV(path string) (*BoltKV, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("kv store %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("kv store %s is in use by another process", path)
		}
		return nil, fmt.Errorf("kv store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(boltBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("kv store %s: %w", path, err)
	}
	return &BoltKV{db: db, path: path}, nil
}

// Path returns the file the store lives in.
func (s *BoltKV) Path() string { return s.path }

func checkKVKey(key string) error {
	if key == "" || len(key) > bolt.MaxKeySize {
		return fmt.Errorf("kv: key of %d bytes: want 1 to %d", len(key), bolt.MaxKeySize)
	}
	return nil
}

func (s *BoltKV) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(boltBucket).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrKeyNotFound, key)
		}
		out = bytes.Clone(v)
		if out == nil {
			out = []byte{}
		}
		return nil
	})
	return out, err
}

func (s *BoltKV) Set(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	return s.write(ctx, nil, key, nil, value, true)
}

func (s *BoltKV) Delete(ctx context.Context, key string) error {
	return s.write(ctx, nil, key, nil, nil, true)
}

func (s *BoltKV) TestAndSet(ctx context.Context, key string, expected, wanted []byte) error {
	return s.write(ctx, nil, key, expected, wanted, false)
}

func (s *BoltKV) GuardedTestAndSet(ctx context.Context, guard scos.Fence, key string, expected, wanted []byte) error {
	if err := checkKVKey(guard.Key); err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	return s.write(ctx, &guard, key, expected, wanted, false)
}

// write sets (or, wanted nil, deletes) key, after checking that its value
// is expected unless force, and that the guard (if any) holds.
func (s *BoltKV) write(ctx context.Context, guard *scos.Fence, key string, expected, wanted []byte, force bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKVKey(key); err != nil {
		return err
	}
	op := &kvWrite{guard: guard, key: []byte(key), expected: expected, wanted: wanted, force: force, done: make(chan struct{})}
	s.mu.Lock()
	s.pending = append(s.pending, op)
	lead := !s.committing
	s.committing = true
	s.mu.Unlock()
	if lead {
		s.commit()
	}
	select {
	case <-op.done:
	case <-ctx.Done():
		// The write may still happen; the caller cannot know.
		return fmt.Errorf("kv %s: %w", key, ctx.Err())
	}
	if op.err != nil {
		return fmt.Errorf("kv %s: %w", key, op.err)
	}
	return op.conflict
}

// kvWrite is one queued write.
type kvWrite struct {
	guard            *scos.Fence
	key              []byte
	expected, wanted []byte
	force            bool
	conflict, err    error
	done             chan struct{}
}

// commit is group commit: the writer that finds no commit running becomes
// the leader and commits everything queued, in one transaction (one fsync)
// per round, until the queue is empty. Writers arriving during a round
// wait for the next one; nobody waits for a timer.
func (s *BoltKV) commit() {
	for {
		s.mu.Lock()
		batch := s.pending
		s.pending = nil
		if len(batch) == 0 {
			s.committing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(boltBucket)
			for _, op := range batch {
				op.conflict = nil
				// The guard first: a fenced writer learns that it is
				// fenced, whatever the key holds.
				if g := op.guard; g != nil && !kvHolds(b.Get([]byte(g.Key)), g.Value) {
					op.conflict = fmt.Errorf("%w: %s (%s changed)", scos.ErrFenced, op.key, g.Key)
					continue
				}
				if !op.force && !kvHolds(b.Get(op.key), op.expected) {
					op.conflict = fmt.Errorf("%w: %s", ErrKVConflict, op.key)
					continue
				}
				var err error
				if op.wanted == nil {
					err = b.Delete(op.key)
				} else {
					err = b.Put(op.key, op.wanted)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		for _, op := range batch {
			op.err = err
			close(op.done)
		}
	}
}

// kvHolds reports whether a stored value (nil: absent) is want (nil:
// absent; an empty non-nil want is a present empty value).
func kvHolds(cur, want []byte) bool {
	return (cur == nil) == (want == nil) && bytes.Equal(cur, want)
}

func (s *BoltKV) Range(ctx context.Context, prefix, after string, limit int) ([]KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []KV
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(boltBucket).Cursor()
		start := prefix
		if after > start {
			start = after
		}
		k, v := c.Seek([]byte(start))
		if k != nil && after != "" && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			if limit > 0 && len(out) >= limit {
				break
			}
			val := bytes.Clone(v)
			if val == nil {
				val = []byte{}
			}
			out = append(out, KV{Key: string(k), Value: val})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kv range %q: %w", prefix, err)
	}
	return out, nil
}

func (s *BoltKV) Close() error { return s.db.Close() }

// kvRangeAll pages through every entry under prefix, calling fn for each;
// fn returning false stops.
func kvRangeAll(ctx context.Context, kv KVStore, prefix string, fn func(KV) (bool, error)) error {
	after := ""
	for {
		page, err := kv.Range(ctx, prefix, after, 1000)
		if err != nil {
			return err
		}
		for _, e := range page {
			more, err := fn(e)
			if err != nil || !more {
				return err
			}
		}
		if len(page) < 1000 {
			return nil
		}
		after = page[len(page)-1].Key
	}
}
