package ec

import (
	"context"
	"hash/fnv"
	"maps"
	"slices"
	"sync"
	"time"
)

// statusScanMaxAge bounds how stale the object counts of Status may be:
// another node's writes to the shared store are not seen by this node's
// generation counter, so a scan older than this is repeated anyway.
const statusScanMaxAge = 10 * time.Second

// objectScan is the part of Status that needs a scan of every manifest.
type objectScan struct {
	Objects, Bytes, StoredBytes, Degraded, Unavailable int64
}

// statusCache keeps the last manifest scan of Status. Health checks and
// the dashboard ask every few seconds, and the scan reads every manifest
// of the cluster; its result only changes when an ASD's state, the set of
// objects flagged for repair or a manifest changes. The first two are
// part of the key, so an ASD that stops is counted against at once; this
// node's own manifest writes move the cache's generation; other nodes'
// writes are seen within statusScanMaxAge.
type statusCache struct {
	mu   sync.Mutex // held across a scan: callers that arrive together share it
	key  uint64
	gen  uint64
	at   time.Time
	scan objectScan
	// scans counts the manifest scans done (for tests).
	scans int
}

// objectScan returns the counts over every manifest, from the cache when
// nothing they depend on changed.
func (b *Backend) objectScan(ctx context.Context, views map[string]asdView, flagged map[string]bool) (objectScan, error) {
	key := statusKey(views, flagged)
	gen := b.cache.generation()
	c := &b.statusCache
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && c.key == key && c.gen == gen && time.Since(c.at) < statusScanMaxAge {
		return c.scan, nil
	}
	var s objectScan
	err := b.forEachManifest(ctx, func(ns, name string, m *Manifest, _ []byte) error {
		s.Objects++
		s.Bytes += m.Size
		s.StoredBytes += m.FragmentSize * int64(len(m.Fragments))
		readable, up := 0, 0
		for _, f := range m.Fragments {
			if v, ok := views[f.ASD]; ok && v.up {
				up++
				if v.rec.State == ASDActive {
					readable++
				}
			}
		}
		if readable < len(m.Fragments) || flagged[ns+"/"+name] {
			s.Degraded++
		}
		if m.Size > 0 && up < m.Policy.K {
			s.Unavailable++
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	c.key, c.gen, c.at, c.scan = key, gen, time.Now(), s
	c.scans++
	return s, nil
}

// statusKey fingerprints what the degraded and unavailable counts depend
// on besides the manifests: each ASD's state and whether it is up, and
// the objects flagged for repair.
func statusKey(views map[string]asdView, flagged map[string]bool) uint64 {
	h := fnv.New64a()
	for _, id := range slices.Sorted(maps.Keys(views)) {
		v := views[id]
		up := "0"
		if v.up {
			up = "1"
		}
		h.Write([]byte(id + "\x00" + v.rec.State + "\x00" + up + "\x00"))
	}
	h.Write([]byte{0xff})
	for _, k := range slices.Sorted(maps.Keys(flagged)) {
		h.Write([]byte(k + "\x00"))
	}
	return h.Sum64()
}
