package model

import (
	"context"
	"testing"
)

func TestPersistentReservationsAndCHAP(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	if _, err := s.ReserveVDisk(ctx, "vm1", "id1", "a", 1, VDiskReady); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PR(ctx, "id1"); err != nil || got != nil {
		t.Fatalf("PR before any: %q %v", got, err)
	}
	swaps := []struct {
		name     string
		old, new string // "" = nil
		ok       bool
	}{
		{"create", "", "v1", true},
		{"create again loses", "", "v9", false},
		{"replace", "v1", "v2", true},
		{"stale replace loses", "v1", "v3", false},
		{"remove", "v2", "", true},
		{"create after remove", "", "v4", true},
	}
	b := func(s string) []byte {
		if s == "" {
			return nil
		}
		return []byte(s)
	}
	for _, c := range swaps {
		ok, err := s.SwapPR(ctx, "id1", b(c.old), b(c.new))
		if err != nil || ok != c.ok {
			t.Fatalf("%s: SwapPR = %v, %v; want %v", c.name, ok, err, c.ok)
		}
	}
	if got, _ := s.PR(ctx, "id1"); string(got) != "v4" {
		t.Fatalf("PR = %q, want v4", got)
	}

	if err := s.SetCHAP(ctx, "id1", CHAP{MutualUser: "t", MutualSecret: "0123456789ab"}); err == nil {
		t.Fatal("mutual CHAP without initiator CHAP accepted")
	}
	want := CHAP{User: "u", Secret: "0123456789ab", MutualUser: "t", MutualSecret: "ba9876543210"}
	if err := s.SetCHAP(ctx, "id1", want); err != nil {
		t.Fatal(err)
	}
	disc := CHAP{User: "d", Secret: "discovery-secret"}
	if err := s.SetCHAP(ctx, "", disc); err != nil {
		t.Fatal(err)
	}
	if got, err := s.CHAP(ctx, "id1"); err != nil || got != want || !got.Mutual() {
		t.Fatalf("CHAP = %+v %v", got, err)
	}
	if got, err := s.CHAP(ctx, ""); err != nil || got != disc {
		t.Fatalf("discovery CHAP = %+v %v", got, err)
	}

	if err := s.DeleteVDisk(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PR(ctx, "id1"); err != nil || got != nil {
		t.Fatalf("PR after delete: %q %v", got, err)
	}
	if got, err := s.CHAP(ctx, "id1"); err != nil || got.Enabled() {
		t.Fatalf("CHAP after delete: %+v %v", got, err)
	}
	if got, _ := s.CHAP(ctx, ""); got != disc {
		t.Fatalf("discovery CHAP after a vdisk's delete: %+v", got)
	}
	if err := s.SetCHAP(ctx, "", CHAP{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.CHAP(ctx, ""); got.Enabled() {
		t.Fatalf("discovery CHAP after removal: %+v", got)
	}
}
