package node

import "testing"

// The NAA id a vdisk's LUN reports must be the same on every node and
// after every restart (initiators key multipath and datastores by it),
// locally assigned (NAA 3), and differ between vdisks.
func TestNAALocal(t *testing.T) {
	a, b := naaLocal("1964d0e281da446dfa703ad912853f0f"), naaLocal("1964d0e281da446dfa703ad912853f10")
	if a != naaLocal("1964d0e281da446dfa703ad912853f0f") {
		t.Fatal("naaLocal is not stable")
	}
	if a == b {
		t.Fatal("two vdisks share an NAA id")
	}
	for _, id := range [][8]byte{a, b} {
		if id[0]>>4 != 3 {
			t.Fatalf("NAA field %d, want 3 (locally assigned): % x", id[0]>>4, id)
		}
	}
}
