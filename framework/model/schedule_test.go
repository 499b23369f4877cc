package model

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSchedules(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	if err := s.SetVPoolSchedule(ctx, Schedule{Snapshots: "hourly"}); !errors.Is(err, ErrNotBootstrap) {
		t.Fatalf("SetVPoolSchedule before init: %v", err)
	}
	if _, err := s.Init(ctx, Cluster{ID: "c", VPool: VPool{Name: "default", DTLMode: "async"}}); err != nil {
		t.Fatal(err)
	}
	want := Schedule{Snapshots: "hourly", Retention: "default", Scrub: "24h"}
	if err := s.SetVPoolSchedule(ctx, want); err != nil {
		t.Fatal(err)
	}
	c, err := s.Cluster(ctx)
	if err != nil || c.VPool.Schedule != want || c.VPool.DTLMode != "async" {
		t.Fatalf("cluster after SetVPoolSchedule: %+v %v", c, err)
	}

	if err := s.SetVDiskSchedule(ctx, "nosuch", Schedule{Scrub: "off"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetVDiskSchedule of an unknown vdisk: %v", err)
	}
	ov, err := s.ReserveVDisk(ctx, "a", "id-a", "n1", 1, VDiskReady)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetVDiskSchedule(ctx, "a", Schedule{Scrub: "off"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.VDisk(ctx, "a")
	if err != nil || got.Schedule != (Schedule{Scrub: "off"}) || got.State != VDiskReady {
		t.Fatalf("vdisk after SetVDiskSchedule: %+v %v", got, err)
	}
	// The owner record is untouched: the backend's fence holds.
	if string(got.OwnerRaw) != string(ov.OwnerRaw) {
		t.Fatal("SetVDiskSchedule changed the owner record")
	}

	at := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	if err := s.SetScrubbed(ctx, "id-a", ov.OwnerRaw, at); err != nil {
		t.Fatal(err)
	}
	if ts, err := s.Scrubbed(ctx, "id-a"); err != nil || !ts.Equal(at) {
		t.Fatalf("Scrubbed: %v %v", ts, err)
	}
	if all, err := s.ScrubbedAll(ctx); err != nil || len(all) != 1 || !all["id-a"].Equal(at) {
		t.Fatalf("ScrubbedAll: %v %v", all, err)
	}
	// A node that lost the vdisk records nothing.
	if _, _, err := s.ChangeOwner(ctx, "id-a", ov.OwnerRaw, "n2", Handover); err != nil {
		t.Fatal(err)
	}
	if err := s.SetScrubbed(ctx, "id-a", ov.OwnerRaw, at.Add(time.Hour)); !errors.Is(err, ErrConflict) {
		t.Fatalf("SetScrubbed by the old owner: %v, want ErrConflict", err)
	}
	if err := s.DeleteVDisk(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if ts, err := s.Scrubbed(ctx, "id-a"); err != nil || !ts.IsZero() {
		t.Fatalf("Scrubbed after the delete: %v %v", ts, err)
	}
}
