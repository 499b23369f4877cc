package ec

import (
	"bytes"
	"context"
	"strings"
	"sync"

	"github.com/ovs-storage/ovs/scos"
)

// cachingKV keeps the values of some key prefixes (manifests, namespace
// records) in memory in front of a KVStore, write-through. Every ranged
// read of the backend needs a manifest; on arakoon each lookup is a
// network round trip, so the cache takes it off the read path.
//
// It is only correct for keys this process is the only writer of: every
// key under the prefixes on a single-host cluster (`ovs up`), or, with
// only set, the keys it accepts (in a cluster: those of the namespaces
// this node holds a fence on). Values are copied in and out, so callers
// may keep or change what they get.
type cachingKV struct {
	KVStore
	prefixes []string
	// only, if set, further restricts what is cached; it is asked under
	// mu, so it must not call back into the cache.
	only     func(key string) bool
	maxBytes int

	mu      sync.Mutex
	entries map[string][]byte
	bytes   int
	order   []string // insertion order, for eviction; may hold stale keys
	// gen grows at every write and every drop, before and after it
	// reaches the store. A value read from the store (or written to it)
	// is cached only if gen did not move meanwhile: a read racing a write
	// could otherwise cache the value the write replaced, for good.
	gen uint64
}

func newCachingKV(inner KVStore, maxBytes int, prefixes ...string) *cachingKV {
	return &cachingKV{KVStore: inner, prefixes: prefixes, maxBytes: maxBytes, entries: map[string][]byte{}}
}

func (c *cachingKV) cached(key string) bool {
	for _, p := range c.prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func (c *cachingKV) Get(ctx context.Context, key string) ([]byte, error) {
	if !c.cached(key) {
		return c.KVStore.Get(ctx, key)
	}
	c.mu.Lock()
	v, ok := c.entries[key]
	gen := c.gen
	c.mu.Unlock()
	if ok {
		return bytes.Clone(v), nil
	}
	v, err := c.KVStore.Get(ctx, key)
	if err == nil {
		c.mu.Lock()
		if c.gen == gen {
			c.put(key, v)
		}
		c.mu.Unlock()
	}
	return v, err
}

// peek returns the cached value of key without asking the store: ok is
// false when the cache does not know the key (not cached, or not a cached
// prefix).
func (c *cachingKV) peek(key string) (v []byte, ok bool) {
	if !c.cached(key) {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok = c.entries[key]
	if !ok {
		return nil, false
	}
	return bytes.Clone(v), true
}

func (c *cachingKV) Set(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	return c.write(key, value, func() error { return c.KVStore.Set(ctx, key, value) })
}

func (c *cachingKV) Delete(ctx context.Context, key string) error {
	return c.write(key, nil, func() error { return c.KVStore.Delete(ctx, key) })
}

func (c *cachingKV) TestAndSet(ctx context.Context, key string, expected, wanted []byte) error {
	return c.write(key, wanted, func() error { return c.KVStore.TestAndSet(ctx, key, expected, wanted) })
}

func (c *cachingKV) GuardedTestAndSet(ctx context.Context, guard scos.Fence, key string, expected, wanted []byte) error {
	return c.write(key, wanted, func() error { return c.KVStore.GuardedTestAndSet(ctx, guard, key, expected, wanted) })
}

// write runs op, which stores wanted (nil: deletes) under key, keeping the
// cache in line: the key is forgotten first and cached again only when op
// succeeded and no other write or drop overlapped it.
func (c *cachingKV) write(key string, wanted []byte, op func() error) error {
	if !c.cached(key) {
		return op()
	}
	c.mu.Lock()
	c.gen++
	gen := c.gen
	c.remove(key)
	c.mu.Unlock()
	err := op()
	c.mu.Lock()
	defer c.mu.Unlock()
	alone := c.gen == gen
	c.gen++
	if err == nil && alone && wanted != nil {
		c.put(key, wanted)
	} else {
		c.remove(key) // a read may have cached what op replaced
	}
	return err
}

// drop forgets every cached key match accepts.
func (c *cachingKV) drop(match func(key string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for k := range c.entries {
		if match(k) {
			c.remove(k)
		}
	}
}

// forget drops one key.
func (c *cachingKV) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.remove(key)
}

// generation returns the write generation: it moves at every write to a
// cached prefix (manifests, namespace records) and every drop.
func (c *cachingKV) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put caches v under key; under mu.
func (c *cachingKV) put(key string, v []byte) {
	if c.only != nil && !c.only(key) {
		return
	}
	if old, ok := c.entries[key]; ok {
		c.bytes -= len(key) + len(old)
	} else {
		c.order = append(c.order, key)
	}
	c.entries[key] = bytes.Clone(v)
	c.bytes += len(key) + len(v)
	for c.bytes > c.maxBytes && len(c.order) > 0 {
		k := c.order[0]
		c.order = c.order[1:]
		c.remove(k)
	}
	if len(c.order) > 4*len(c.entries)+1024 { // drop the stale keys the deletes left
		live := c.order[:0]
		for _, k := range c.order {
			if _, ok := c.entries[k]; ok {
				live = append(live, k)
			}
		}
		c.order = live
	}
}

// remove deletes key from the cache; under mu.
func (c *cachingKV) remove(key string) {
	if old, ok := c.entries[key]; ok {
		c.bytes -= len(key) + len(old)
		delete(c.entries, key)
	}
}
