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
//
// Within one process no port is handed out twice (Addrs, Ports and Range
// share a record): a test that picks a range for a server's children
// after picking the server's own ports would otherwise get them back,
// since a picked port is free again until the server binds it.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

// given records the ports handed out in this process: a record shared by
// every caller is the point (see the package comment).
var given = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

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
	given.Lock()
	defer given.Unlock()
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000+10*n {
			return nil, fmt.Errorf("freeport: no free port in %d-%d after %d tries", low, high, tries)
		}
		port := low + rand.IntN(high-low+1)
		if given.ports[port] {
			continue
		}
		l, err := listen(port)
		if err != nil {
			continue // in use (held by us or someone else): pick another
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, a := range out {
		_, p, _ := net.SplitHostPort(a)
		port, _ := strconv.Atoi(p)
		given.ports[port] = true
	}
	return out, nil
}

// Range returns the first of n consecutive ports that were free a moment
// ago and were not handed out before in this process.
func Range(n int) (int, error) {
	given.Lock()
	defer given.Unlock()
	for range 1000 {
		base := low + rand.IntN(high-low+2-n)
		var ls []net.Listener
		ok := true
		for p := base; p < base+n && ok; p++ {
			l, err := listen(p)
			if given.ports[p] || err != nil {
				ok = false
			}
			if l != nil {
				ls = append(ls, l)
			}
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			for p := base; p < base+n; p++ {
				given.ports[p] = true
			}
			return base, nil
		}
	}
	return 0, fmt.Errorf("freeport: no %d consecutive free ports in %d-%d", n, low, high)
}

func listen(port int) (net.Listener, error) {
	return net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
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
