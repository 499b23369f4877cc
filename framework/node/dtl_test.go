package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver/dtl"
)

func TestLiveness(t *testing.T) {
	const timeout = 80 * time.Millisecond
	l := newLiveness(timeout)
	t0 := time.Unix(1000, 0)
	beats := func(at map[string]time.Time) map[string]model.Heartbeat {
		m := map[string]model.Heartbeat{}
		for id, a := range at {
			m[id] = model.Heartbeat{Node: id, At: a}
		}
		return m
	}
	l.observe(beats(map[string]time.Time{"a": t0, "b": t0}), 10*time.Millisecond)
	if !l.alive("a") || l.dead("a") || l.alive("nobody") || l.dead("nobody") {
		t.Fatal("a node seen just now must be alive, an unknown one neither")
	}
	// a keeps beating, b stops; both are read every 10ms.
	for i := 1; i <= 12; i++ {
		time.Sleep(10 * time.Millisecond)
		l.observe(beats(map[string]time.Time{"a": t0.Add(time.Duration(i) * time.Second), "b": t0}), 10*time.Millisecond)
	}
	if !l.alive("a") || l.dead("a") {
		t.Fatal("a beats and is not alive")
	}
	if l.alive("b") || !l.dead("b") {
		t.Fatal("b stopped beating and is not dead")
	}
	// The watcher could not read the model for a long while: it knows
	// nothing about that time, so b gets a new timeout.
	time.Sleep(200 * time.Millisecond)
	l.observe(beats(map[string]time.Time{"a": t0.Add(time.Hour), "b": t0}), 10*time.Millisecond)
	if l.dead("b") {
		t.Fatal("a node was taken for dead over time the watcher was blind")
	}
}

func TestLease(t *testing.T) {
	l := newLiveness(100 * time.Millisecond)
	ctx := context.Background()
	if err := l.lease(ctx); err == nil {
		t.Fatal("a lease with no heartbeat yet")
	}
	l.beat(time.Now())
	if err := l.lease(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	// Past half the timeout: the lease waits for the next heartbeat.
	go func() {
		time.Sleep(10 * time.Millisecond)
		l.beat(time.Now())
	}()
	if err := l.lease(ctx); err != nil {
		t.Fatalf("a late heartbeat did not renew the lease: %v", err)
	}
	time.Sleep(60 * time.Millisecond)
	if err := l.lease(ctx); err == nil {
		t.Fatal("a lease without a recent heartbeat")
	}
}

func TestChooseDTLNodes(t *testing.T) {
	nodes := []model.Node{
		{ID: "a", Site: "s1", DTL: "a:8810"},
		{ID: "b", Site: "s1", DTL: "b:8810"},
		{ID: "c", Site: "s2", DTL: "c:8810"},
		{ID: "d", Site: "s2", DTL: "d:8810"},
		{ID: "e", Site: "s2"}, // no DTL server
		{ID: "f", Site: "s3", DTL: "f:8810"},
	}
	alive := func(id string) bool { return id != "f" }
	ids := func(ns []model.Node) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		self  string
		site  string
		avoid []string
		load  map[string]int
		first []string // the acceptable first choices
		none  []string // never chosen
	}{
		{name: "another site first", self: "a", site: "s1", first: []string{"c", "d"}, none: []string{"a", "e", "f"}},
		{name: "fewest DTLs", self: "a", site: "s1", load: map[string]int{"c": 3, "d": 1}, first: []string{"d"}},
		{name: "avoid a failed node", self: "a", site: "s1", avoid: []string{"c"}, load: map[string]int{"d": 5}, first: []string{"d"}},
		{name: "same site when it is all there is", self: "c", site: "s2", avoid: nil, load: map[string]int{"a": 0, "b": 9}, first: []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ids(chooseDTLNodes(nodes, tc.self, tc.site, tc.avoid, alive, tc.load, "vd1"))
			if len(got) == 0 {
				t.Fatal("no candidate")
			}
			ok := false
			for _, f := range tc.first {
				ok = ok || got[0] == f
			}
			if !ok {
				t.Errorf("chose %v, want first one of %v", got, tc.first)
			}
			for _, n := range got {
				for _, bad := range append(tc.none, tc.self) {
					if n == bad {
						t.Errorf("%s is a candidate: %v", n, got)
					}
				}
			}
		})
	}
}

func TestTakeover(t *testing.T) {
	alive := func(id string) bool { return id != "a" && id != "x" }
	live := []string{"b", "c", "d"}
	ov := model.OwnedVDisk{VDisk: model.VDisk{ID: "v1"}, Owner: model.Owner{Node: "a"}, DTL: model.DTLPlacement{Node: "c"}}
	if got := takeover(ov, live, alive); got != "c" {
		t.Fatalf("takeover by %s, want the DTL's node c", got)
	}
	ov.DTL.Node = "x" // dead too
	got := takeover(ov, live, alive)
	if got == "" || got == "a" || got == "x" {
		t.Fatalf("takeover by %q", got)
	}
	if again := takeover(ov, live, alive); again != got {
		t.Fatal("the choice is not the same every time")
	}
	if got := takeover(ov, nil, alive); got != "" {
		t.Fatalf("takeover with no live node: %q", got)
	}
}

func TestStaleDTLs(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Hour)
	vdisks := []model.OwnedVDisk{
		{VDisk: model.VDisk{ID: "here"}, DTL: model.DTLPlacement{Node: "me"}},
		{VDisk: model.VDisk{ID: "moved"}, DTL: model.DTLPlacement{Node: "other"}},
		{VDisk: model.VDisk{ID: "busy"}, DTL: model.DTLPlacement{Node: "other"}},
		{VDisk: model.VDisk{ID: "fresh"}, DTL: model.DTLPlacement{Node: "other"}},
	}
	held := []dtl.VDiskInfo{
		{VDisk: "here", Changed: old},                    // the model names this node: kept
		{VDisk: "moved", Changed: old},                   // another node's now: dropped
		{VDisk: "busy", Changed: old, Session: true},     // an owner ships to it: kept
		{VDisk: "fresh", Changed: now.Add(-time.Minute)}, // changed lately: kept
		{VDisk: "deleted", Changed: old},                 // no such vdisk: dropped
	}
	var got []string
	for _, h := range staleDTLs(held, vdisks, "me", now) {
		got = append(got, h.VDisk)
	}
	if strings.Join(got, ",") != "moved,deleted" {
		t.Fatalf("stale: %v, want moved, deleted", got)
	}
}
