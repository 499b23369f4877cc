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
	for _, p := range ports {
		if seen[net.JoinHostPort("127.0.0.1", strconv.Itoa(p))] {
			t.Fatalf("port %d handed out twice", p)
		}
	}
}

// A range never holds a port handed out before, nor two ranges a port.
func TestRangeAvoidsPortsHandedOut(t *testing.T) {
	addrs, err := Addrs(200)
	if err != nil {
		t.Fatal(err)
	}
	taken := map[int]bool{}
	for _, a := range addrs {
		_, p, _ := net.SplitHostPort(a)
		port, _ := strconv.Atoi(p)
		taken[port] = true
	}
	for range 50 {
		base, err := Range(7)
		if err != nil {
			t.Fatal(err)
		}
		for p := base; p < base+7; p++ {
			if taken[p] || p < low || p > high {
				t.Fatalf("Range gave %d-%d, which holds %d (handed out before or out of %d-%d)", base, base+6, p, low, high)
			}
			taken[p] = true
		}
	}
}
