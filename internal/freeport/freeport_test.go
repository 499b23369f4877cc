package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestAddrsDistinctBindableOutsideEphemeralRange(t *testing.T) {
	addrs, err := Addrs(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("address %s handed out twice", a)
		}
		seen[a] = true
		_, p, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if port < low || port > high {
			t.Fatalf("port %d outside %d-%d", port, low, high)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("address %s not bindable: %v", a, err)
		}
		l.Close()
	}
	ports, err := Ports(3)
	if err != nil || len(ports) != 3 {
		t.Fatalf("Ports(3) = %v, %v", ports, err)
	}
}
