package nfs

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestAllowList: a client outside the allowed networks is disconnected at
// accept without an answer; one inside is served.
func TestAllowList(t *testing.T) {
	tests := []struct {
		name   string
		allow  []string
		served bool
	}{
		{"no list serves all", nil, true},
		{"loopback allowed", []string{"127.0.0.0/8"}, true},
		{"the client's /32 among others", []string{"192.0.2.0/24", "127.0.0.1/32"}, true},
		{"another network only", []string{"192.0.2.0/24"}, false},
		{"IPv6 loopback only", []string{"::1/128"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var allow []netip.Prefix
			for _, s := range tc.allow {
				allow = append(allow, netip.MustParsePrefix(s))
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := NewServer(newMemTree(), Options{Logger: testLogger(), Allow: allow})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, ln) }()
			defer func() {
				cancel()
				srv.Close()
				if err := <-done; err != nil {
					t.Errorf("Serve: %v", err)
				}
			}()

			c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			// NFS NULL: answered by any server that serves the client.
			call := append([]byte{0, 0, 0, 0}, header(7, rpcCall, 2, progNFS, 3, 0, authSys)...)
			err = writeRecord(c, call)
			var reply []byte
			if err == nil {
				reply, err = readRecord(bufio.NewReader(c), maxRecord)
			}
			switch {
			case tc.served && err != nil:
				t.Fatalf("an allowed client got no answer to NULL: %v", err)
			case tc.served:
				if ok, st := replyStatus(t, append([]byte{0, 0, 0, 0}, reply...)); !ok || st != acceptSuccess {
					t.Fatalf("NULL from an allowed client: accepted %v status %d", ok, st)
				}
			case err == nil:
				t.Fatalf("a client outside %v was answered", tc.allow)
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err):
				t.Fatalf("a refused client: %v, want the connection closed", err)
			}
		})
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// TestAllowedAddresses: IPv4 clients on a dual-stack listener come as
// IPv4-mapped IPv6 addresses and match IPv4 networks.
func TestAllowedAddresses(t *testing.T) {
	srv := NewServer(newMemTree(), Options{Logger: testLogger(), Allow: []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00::/8"),
	}})
	defer srv.Close()
	tests := []struct {
		addr string
		want bool
	}{
		{"10.1.2.3:700", true},
		{"[::ffff:10.1.2.3]:700", true},
		{"10.2.0.1:700", false},
		{"[fd12::1]:2049", true},
		{"[fe80::1]:2049", false},
		{"127.0.0.1:111", false},
	}
	for _, tc := range tests {
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := srv.allowed(a); got != tc.want {
			t.Errorf("%s: allowed %v, want %v", tc.addr, got, tc.want)
		}
	}
}

// TestConnectionCap: connections beyond MaxConns are closed at accept;
// those under it are served, and a slot frees when one ends.
func TestConnectionCap(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(newMemTree(), Options{Logger: testLogger(), MaxConns: 2})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		srv.Close()
		<-done
	}()
	null := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		call := append([]byte{0, 0, 0, 0}, header(7, rpcCall, 2, progNFS, 3, 0, authSys)...)
		if err := writeRecord(c, call); err != nil {
			return err
		}
		_, err := readRecord(bufio.NewReader(c), maxRecord)
		return err
	}
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := dial(), dial()
	defer a.Close()
	for i, c := range []net.Conn{a, b} {
		if err := null(c); err != nil {
			t.Fatalf("connection %d under the cap: %v", i, err)
		}
	}
	over := dial()
	defer over.Close()
	if err := null(over); err == nil {
		t.Fatal("a connection over the cap was served")
	}
	b.Close()
	// The server notices b's end asynchronously: retry until a new
	// connection is served (bounded).
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := dial()
		err := null(c)
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one under the cap ended: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
