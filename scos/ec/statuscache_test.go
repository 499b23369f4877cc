package ec

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestStatusScanCache: Status scans the manifests again exactly when what
// its counts depend on changed, and otherwise reuses the last scan.
func TestStatusScanCache(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	for i := range 3 {
		mustPut(t, b, "ns", fmt.Sprintf("o%d", i), randBytes(uint64(i), 100000))
	}
	e.waitHealth()
	scans := func() int {
		b.statusCache.mu.Lock()
		defer b.statusCache.mu.Unlock()
		return b.statusCache.scans
	}
	status := func(step string, objects, degraded int64, wantScans int) {
		t.Helper()
		st, err := b.Status(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if st.Objects != objects || st.Degraded != degraded || scans() != wantScans {
			t.Fatalf("%s: objects %d degraded %d after %d scans, want %d %d after %d", step, st.Objects, st.Degraded, scans(), objects, degraded, wantScans)
		}
	}
	status("first", 3, 0, 1)
	status("nothing changed", 3, 0, 1)
	mustPut(t, b, "ns", "o3", randBytes(3, 100000))
	status("after a put here", 4, 0, 2)

	e.asds[0].set(asdDown)
	e.waitHealth()
	status("an ASD went down", 4, 4, 3)
	status("still down", 4, 4, 3)
	e.asds[0].set(asdUp)
	e.waitHealth()
	status("back up", 4, 0, 4)

	// Another node's write is not seen by this node's generation: it
	// shows once the scan is older than statusScanMaxAge.
	m, err := e.kv.Get(ctx, objKey("ns", "o0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.kv.Set(ctx, objKey("ns", "elsewhere"), m); err != nil {
		t.Fatal(err)
	}
	status("another node's write, fresh scan", 4, 0, 4)
	b.statusCache.mu.Lock()
	b.statusCache.at = b.statusCache.at.Add(-statusScanMaxAge - time.Second)
	b.statusCache.mu.Unlock()
	status("another node's write, old scan", 5, 0, 5)
}
