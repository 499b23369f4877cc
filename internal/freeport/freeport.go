// Package freeport hands out 127.0.0.1 TCP addresses for servers that
// tests and benches start with a configured address rather than a
// listener of their own.
//
// "Listen on :0, close, reuse the port" races: Linux gives :0 listeners and
// the source ports of outgoing connections from the same ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), so between the
// close and the server's own bind, any connection made by a test running
// in parallel can take the port. CI saw exactly that (arakoon: bind:
// address already in use). Ports below the ephemeral range are never
// handed out by the kernel, so only another caller of this package could
// take one, and each port is picked at random from about 12000.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// The range sits below Linux's default ephemeral range and above the
// ports that services on a test machine commonly listen on.
const (
	low  = 20000
	high = 32767
)

// Addrs returns n distinct 127.0.0.1 addresses that were free a moment
// ago, none of them in the kernel's ephemeral range.
func Addrs(n int) ([]string, error) {
	var (
		out []string
		ls  []net.Listener
	)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000+10*n {
			return nil, fmt.Errorf("freeport: no free port in %d-%d after %d tries", low, high, tries)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(low+rand.IntN(high-low+1)))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // in use (held by us or someone else): pick another
		}
		ls = append(ls, l)
		out = append(out, addr)
	}
	return out, nil
}

// Ports is Addrs returning the port numbers.
func Ports(n int) ([]int, error) {
	addrs, err := Addrs(n)
	if err != nil {
		return nil, err
	}
	ports := make([]int, len(addrs))
	for i, a := range addrs {
		_, p, _ := net.SplitHostPort(a)
		ports[i], _ = strconv.Atoi(p)
	}
	return ports, nil
}
