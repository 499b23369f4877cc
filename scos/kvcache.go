package scos

import (
	"bytes"
	"context"
	"strings"
	"sync"
)

// cachingKV keeps the values of some key prefixes (manifests, namespace
// records) in memory in front of a KVStore, write-through. Every ranged
// read of the backend needs a manifest; on arakoon each lookup is a
// network round trip, so the cache takes it off the read path.
//
// It is only correct while this process is the only writer of those keys:
// a single-host cluster's `ovs up`. Values are copied in and out, so
// callers may keep or change what they get.
type cachingKV struct {
	KVStore
	prefixes []string
	maxBytes int

	mu      sync.Mutex
	entries map[string][]byte
	bytes   int
	order   []string // insertion order, for eviction; may hold stale keys
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
	c.mu.Unlock()
	if ok {
		return bytes.Clone(v), nil
	}
	v, err := c.KVStore.Get(ctx, key)
	if err == nil {
		c.put(key, v)
	}
	return v, err
}

func (c *cachingKV) Set(ctx context.Context, key string, value []byte) error {
	c.forget(key)
	err := c.KVStore.Set(ctx, key, value)
	if err == nil && c.cached(key) {
		c.put(key, value)
	}
	return err
}

func (c *cachingKV) Delete(ctx context.Context, key string) error {
	c.forget(key)
	return c.KVStore.Delete(ctx, key)
}

func (c *cachingKV) TestAndSet(ctx context.Context, key string, expected, wanted []byte) error {
	c.forget(key)
	err := c.KVStore.TestAndSet(ctx, key, expected, wanted)
	if err == nil && wanted != nil && c.cached(key) {
		c.put(key, wanted)
	}
	return err
}

func (c *cachingKV) put(key string, v []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
		if old, ok := c.entries[k]; ok {
			c.bytes -= len(k) + len(old)
			delete(c.entries, k)
		}
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

func (c *cachingKV) forget(key string) {
	if !c.cached(key) {
		return
	}
	c.mu.Lock()
	if old, ok := c.entries[key]; ok {
		c.bytes -= len(key) + len(old)
		delete(c.entries, key)
	}
	c.mu.Unlock()
}
