package model

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/internal/freeport"

	"github.com/ovs-storage/ovs/arakoon"
)

// startArakoon runs a 1-node arakoon (plain TCP) for the test and returns
// the model's KV over it.
func startArakoon(t *testing.T) KV {
	t.Helper()
	addrs, err := freeport.Addrs(2)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &arakoon.Config{Cluster: "test", Nodes: []arakoon.NodeConfig{{ID: "n1", Client: addrs[0], Raft: addrs[1], Data: filepath.Join(t.TempDir(), "n1")}},
		Tuning: arakoon.Tuning{HeartbeatTimeout: arakoon.Duration(200 * time.Millisecond), ElectionTimeout: arakoon.Duration(200 * time.Millisecond),
			LeaderLeaseTimeout: arakoon.Duration(100 * time.Millisecond), CommitTimeout: arakoon.Duration(5 * time.Millisecond)}}
	srv, err := arakoon.Start(cfg, "n1", arakoon.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	c, err := arakoon.NewClient(cfg.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		<-done
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	if err := c.Nop(wctx); err != nil {
		t.Fatal(err)
	}
	return Arakoon(c)
}

func TestClusterAndNodes(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	if _, err := s.Cluster(ctx); !errors.Is(err, ErrNotBootstrap) {
		t.Fatalf("Cluster before init: %v, want ErrNotBootstrap", err)
	}
	if _, err := s.Init(ctx, Cluster{ID: "bad id"}); err == nil {
		t.Fatal("Init accepted an invalid id")
	}
	c, err := s.Init(ctx, Cluster{ID: "prod", Preset: "default", Policies: []string{"4,2,6,2"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Init(ctx, Cluster{ID: "other"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Init: %v, want ErrExists", err)
	}
	if got, _ := s.Cluster(ctx); got.ID != c.ID || len(got.Policies) != 1 {
		t.Fatalf("Cluster = %+v", got)
	}
	n, err := s.PutNode(ctx, Node{ID: "a", Site: "dc1", API: "10.0.0.1:8800"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // joined times are in seconds
	n2, err := s.PutNode(ctx, Node{ID: "a", Site: "dc1", API: "10.0.0.1:8801", ASDs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if !n2.Joined.Equal(n.Joined) || n2.API != "10.0.0.1:8801" {
		t.Fatalf("update of a node: %+v (joined first %v)", n2, n.Joined)
	}
	if _, err := s.PutNode(ctx, Node{ID: "b"}); err == nil {
		t.Fatal("PutNode without an API address accepted")
	}
	if _, err := s.Node(ctx, "zz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Node(zz): %v", err)
	}
	if err := s.Beat(ctx, "a", time.Now()); err != nil {
		t.Fatal(err)
	}
	hb, err := s.Heartbeats(ctx)
	if err != nil || hb["a"].Node != "a" {
		t.Fatalf("heartbeats %v %v", hb, err)
	}
}

func TestOwnership(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	ov, err := s.ReserveVDisk(ctx, "vm1", "id1", "a", 1, VDiskCreating)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReserveVDisk(ctx, "vm1", "id2", "b", 1, VDiskCreating); !errors.Is(err, ErrExists) {
		t.Fatalf("second reserve of a name: %v, want ErrExists", err)
	}
	if err := s.SetVDiskState(ctx, "vm1", VDiskReady); err != nil {
		t.Fatal(err)
	}
	got, err := s.VDisk(ctx, "vm1")
	if err != nil || got.State != VDiskReady || got.Owner.Node != "a" || got.Owner.Epoch != 1 || string(got.OwnerRaw) != string(ov.OwnerRaw) {
		t.Fatalf("VDisk = %+v, %v", got, err)
	}
	// Each change of owner bumps the epoch; a change from a stale record
	// is refused (two nodes racing to take a vdisk: one wins).
	o2, raw2, err := s.ChangeOwner(ctx, "id1", ov.OwnerRaw, "b", Handover)
	if err != nil || o2.Epoch != 2 || o2.Node != "b" {
		t.Fatalf("ChangeOwner: %+v %v", o2, err)
	}
	if _, _, err := s.ChangeOwner(ctx, "id1", ov.OwnerRaw, "c", Handover); !errors.Is(err, ErrConflict) {
		t.Fatalf("ChangeOwner from a stale record: %v, want ErrConflict", err)
	}
	o3, _, err := s.ChangeOwner(ctx, "id1", raw2, "c", ForcedTakeover)
	if err != nil || o3.Epoch != 3 || !o3.Forced || !o3.Takeover {
		t.Fatalf("third owner: %+v %v", o3, err)
	}
	if _, err := s.ReserveVDisk(ctx, "vm0", "id0", "a", 0, VDiskReady); err != nil {
		t.Fatal(err)
	}
	all, err := s.VDisks(ctx)
	if err != nil || len(all) != 2 || all[0].Name != "vm0" || all[1].Owner.Node != "c" || all[0].Owner.Epoch != 0 {
		t.Fatalf("VDisks = %+v, %v", all, err)
	}
	if err := s.DeleteVDisk(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVDisk(ctx, "vm1"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, _, err := s.Owner(ctx, "id1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("owner after delete: %v", err)
	}
	// A delete of keys of which some are gone (arakoon refuses a delete
	// of an absent key in a sequence) still removes the others.
	kv := s.kv
	if err := kv.Apply(ctx, set("ovs/test/x", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	if err := kv.Apply(ctx, del("ovs/test/absent"), del("ovs/test/x")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "ovs/test/x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("x after delete: %v", err)
	}
}

// TestChangeOwnerRace: of many nodes changing the owner from the same
// record at once, exactly one wins.
func TestChangeOwnerRace(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	ov, err := s.ReserveVDisk(ctx, "vm", "id", "a", 1, VDiskReady)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, _, err := s.ChangeOwner(ctx, "id", ov.OwnerRaw, fmt.Sprintf("n%d", i), Handover)
			errs <- err
		}()
	}
	won := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Fatal(err)
		}
	}
	o, _, _ := s.Owner(ctx, "id")
	if won != 1 || o.Epoch != 2 {
		t.Fatalf("%d winners, epoch %d", won, o.Epoch)
	}
}

// TestDTLPlacement: the owner records where its DTL is, under its owner
// record: a stale owner cannot move the DTL; the placement shows in
// VDisk and VDisks and goes with the vdisk.
func TestDTLPlacement(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	ov, err := s.ReserveVDisk(ctx, "vm1", "id1", "a", 1, VDiskReady)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := s.DTL(ctx, "id1"); err != nil || p.Node != "" {
		t.Fatalf("no placement yet: %+v %v", p, err)
	}
	if p, err := s.PlaceDTL(ctx, "id1", ov.OwnerRaw, "b", true); err != nil || p.Node != "b" || p.Epoch != 1 {
		t.Fatalf("PlaceDTL: %+v %v", p, err)
	}
	if _, _, err := s.ChangeOwner(ctx, "id1", ov.OwnerRaw, "c", Takeover); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PlaceDTL(ctx, "id1", ov.OwnerRaw, "d", false); !errors.Is(err, ErrConflict) {
		t.Fatalf("PlaceDTL by a stale owner: %v, want ErrConflict", err)
	}
	if err := s.SetVDiskDTLMode(ctx, "vm1", "async"); err != nil {
		t.Fatal(err)
	}
	got, err := s.VDisk(ctx, "vm1")
	if err != nil || got.DTL.Node != "b" || got.DTL.Epoch != 1 || !got.DTL.Complete || got.DTLMode != "async" || got.Owner.Node != "c" {
		t.Fatalf("VDisk = %+v, %v", got, err)
	}
	all, err := s.VDisks(ctx)
	if err != nil || len(all) != 1 || all[0].DTL.Node != "b" {
		t.Fatalf("VDisks = %+v, %v", all, err)
	}
	if err := s.SetVDiskDTLMode(ctx, "nosuch", "sync"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("mode of a missing vdisk: %v", err)
	}
	if err := s.DeleteVDisk(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if p, err := s.DTL(ctx, "id1"); err != nil || p.Node != "" {
		t.Fatalf("placement after delete: %+v %v", p, err)
	}
}
