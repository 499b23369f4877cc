package scos

import (
	"errors"
	"testing"
)

func TestSCONameRoundTrip(t *testing.T) {
	for _, n := range []SCOName{
		{}, {CloneID: 1, Number: 2, Version: 3},
		{CloneID: 0xff, Number: 0xffffffff, Version: 0xff},
		{CloneID: 0x0a, Number: 0xdeadbeef, Version: 0x10},
	} {
		s := n.String()
		got, err := ParseSCOName(s)
		if err != nil || got != n {
			t.Errorf("ParseSCOName(%q) = %v, %v; want %v", s, got, err, n)
		}
	}
	if s := (SCOName{CloneID: 1, Number: 0x2a, Version: 2}).String(); s != "01_0000002a_02" {
		t.Errorf("String = %q", s)
	}
}

func TestParseSCONameRejects(t *testing.T) {
	for _, s := range []string{"", "00_00000001", "00-00000001-00", "0G_00000001_00",
		"00_0000000A_00", "000_0000001_00", "00_00000001_000", "+0_00000001_00"} {
		if _, err := ParseSCOName(s); !errors.Is(err, ErrBadName) {
			t.Errorf("ParseSCOName(%q) err = %v, want ErrBadName", s, err)
		}
	}
}

func TestClusterLocationPack(t *testing.T) {
	for _, l := range []ClusterLocation{
		{}, {SCO: SCOName{1, 2, 3}, Offset: 4},
		{SCO: SCOName{0xff, 0xffffffff, 0xff}, Offset: 0xffff},
	} {
		if got := UnpackLocation(l.Pack()); got != l {
			t.Errorf("UnpackLocation(Pack(%v)) = %v", l, got)
		}
	}
	if !UnpackLocation(0).IsZero() {
		t.Error("zero does not unpack to the unmapped location")
	}
}

func FuzzParseSCOName(f *testing.F) {
	for _, s := range []string{"00_00000001_00", "ff_ffffffff_ff", "", "zz_00000000_00", "00_0000000A_00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSCOName(s)
		if err != nil {
			return
		}
		if n.String() != s {
			t.Fatalf("accepted %q but formats as %q", s, n.String())
		}
	})
}
