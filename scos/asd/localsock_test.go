package asd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shortDir is a temporary directory whose socket paths fit sun_path (a
// test's TempDir can be long).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "asd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serveLocalASD is serveTLSASD that waits until the ASD's local socket
// listens (Serve makes it in the background).
func serveLocalASD(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s, addr := serveTLSASD(t, cfg)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := os.Stat(cfg.LocalSocket); err == nil && st.Mode().Type() == os.ModeSocket {
			return s, addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("no local socket at %s", cfg.LocalSocket)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLocalSocketReads: a client given the ASD's local socket reads over
// it (no TLS), gets the same bytes as over TLS, and falls back to the TLS
// port when the socket is gone.
func TestLocalSocketReads(t *testing.T) {
	ctx := context.Background()
	pki := &testPKI{trusted: map[string]bool{}}
	dir := shortDir(t)
	sock := LocalSocketPath(dir)
	if sock == "" {
		t.Fatalf("no local socket path for %s", dir)
	}
	s, addr := serveLocalASD(t, Config{Dir: dir, Node: "n", Site: "s", LocalSocket: sock,
		TLS: func(string) (*tls.Config, error) { return pki.server(t), nil }})
	hc := &http.Client{Transport: NewTransport(pki.client(t))}
	data := randBytes(7, 2*DefaultFragmentBlockSize+300)
	if err := NewClient(addr, hc).For(s.ID()).Put(ctx, "frag", "ns/o", data); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("local socket %s: %v, %v", sock, st, err)
	}

	read := func(c *Client) {
		t.Helper()
		dst := [][]byte{make([]byte, 5000)}
		res, err := c.ReadBatch(ctx, []ReadItem{{"frag", 1000, 5000}}, dst)
		if err != nil || res[0].Err != nil || !bytes.Equal(dst[0], data[1000:6000]) {
			t.Fatalf("read: %v %+v", err, res)
		}
	}
	// Direct reads off: this test is about the socket (TestDirectReads).
	local := NewClient(addr, hc).For(s.ID()).WithWire(WireConfig{Conns: 1, Socket: sock, NoDirectReads: true})
	defer local.Close()
	read(local)
	if n := s.LocalConns(); n != 1 {
		t.Fatalf("local socket connections: %d, want 1", n)
	}

	// A socket path where no ASD listens: the TLS port serves.
	gone := NewClient(addr, hc).For(s.ID()).WithWire(WireConfig{Conns: 1, Socket: filepath.Join(dir, "nothing.sock"), NoDirectReads: true})
	defer gone.Close()
	read(gone)
	// Another ASD's socket (it says who it is in the hello): the TLS port
	// of the ASD meant serves, nothing is read from the other.
	dir2 := shortDir(t)
	s2, _ := serveLocalASD(t, Config{Dir: dir2, Node: "n", Site: "s", LocalSocket: LocalSocketPath(dir2),
		TLS: func(string) (*tls.Config, error) { return pki.server(t), nil }})
	wrong := NewClient(addr, hc).For(s.ID()).WithWire(WireConfig{Conns: 1, Socket: LocalSocketPath(dir2), NoDirectReads: true})
	defer wrong.Close()
	read(wrong)
	if s.LocalConns() != 1 || s2.LocalConns() != 1 {
		t.Fatalf("local connections: %d and %d, want 1 and 1 (the refused hello)", s.LocalConns(), s2.LocalConns())
	}
}

// TestLocalSocketHTTP: a client given the ASD's local socket sends its
// HTTP requests (fragment writes, deletes) there, with no TLS; it falls
// back to the TLS port when no ASD listens there or another one does,
// which refuses the request.
func TestLocalSocketHTTP(t *testing.T) {
	ctx := context.Background()
	pki := &testPKI{trusted: map[string]bool{}}
	dir := shortDir(t)
	sock := LocalSocketPath(dir)
	tlsConf := func(string) (*tls.Config, error) { return pki.server(t), nil }
	s, addr := serveLocalASD(t, Config{Dir: dir, Node: "n", Site: "s", LocalSocket: sock, TLS: tlsConf})
	member := &http.Client{Transport: NewTransport(pki.client(t))}
	data := randBytes(9, DefaultFragmentBlockSize+77)

	// No credentials: the TLS port would refuse this client, so what it
	// stores went over the socket.
	local := NewClient(addr, &http.Client{Transport: NewTransport()}).For(s.ID()).WithWire(WireConfig{Socket: sock})
	defer local.Close()
	if err := local.Put(ctx, "frag", "ns/o", data); err != nil {
		t.Fatalf("put over the local socket: %v", err)
	}
	if got, _, err := NewClient(addr, member).For(s.ID()).Get(ctx, "frag", 0, -1); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back over TLS: %v", err)
	}
	if err := local.Delete(ctx, "frag"); err != nil {
		t.Fatalf("delete over the local socket: %v", err)
	}
	if s.LocalConns() == 0 {
		t.Fatal("no connection on the local socket")
	}

	tests := []struct {
		name string
		// socket returns the socket path to give the client and the ASD
		// listening there, if any, with a client of its TLS port.
		socket func(t *testing.T) (string, *Server, *Client)
	}{
		{"no ASD listens", func(t *testing.T) (string, *Server, *Client) {
			return filepath.Join(dir, "nothing.sock"), nil, nil
		}},
		{"another ASD", func(t *testing.T) (string, *Server, *Client) {
			d := shortDir(t)
			s2, addr2 := serveLocalASD(t, Config{Dir: d, Node: "n", Site: "s", LocalSocket: LocalSocketPath(d), TLS: tlsConf})
			return LocalSocketPath(d), s2, NewClient(addr2, member)
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock, other, otherTLS := tc.socket(t)
			c := NewClient(addr, member).For(s.ID()).WithWire(WireConfig{Socket: sock})
			defer c.Close()
			key := fmt.Sprintf("frag%d", i)
			for range 2 { // the second goes straight to the TLS port
				if err := c.Put(ctx, key, "ns/o", data); err != nil {
					t.Fatalf("put: %v", err)
				}
			}
			if got, _, err := c.Get(ctx, key, 0, -1); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v", err)
			}
			if other != nil {
				if n := other.LocalConns(); n != 1 {
					t.Errorf("the other ASD's socket: %d connections, want 1 (refused, then left alone)", n)
				}
				if _, err := otherTLS.Stat(ctx, key); !errors.Is(err, ErrFragmentNotFound) {
					t.Errorf("the other ASD has %s: %v", key, err)
				}
			}
		})
	}
}

// TestLocalSocketPath: paths too long for sun_path get no socket; a stale
// socket file is replaced, any other file is left alone and refused.
func TestLocalSocketPath(t *testing.T) {
	if p := LocalSocketPath("/" + strings.Repeat("d", 120)); p != "" {
		t.Errorf("a %d-byte path was accepted", len(p))
	}
	dir := shortDir(t)
	sock := LocalSocketPath(dir)
	l, err := listenLocal(sock)
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // leaves the socket file, as a killed ASD does
	l, err = listenLocal(sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l.Close()
	if err := os.WriteFile(sock, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenLocal(sock); err == nil {
		t.Fatal("a regular file in the way was replaced")
	}
	if b, _ := os.ReadFile(sock); string(b) != "data" {
		t.Fatal("the regular file in the way changed")
	}
}

func TestPeerAllowed(t *testing.T) {
	for _, tc := range []struct {
		uid  uint32
		euid int
		want bool
	}{
		{0, 0, true},
		{0, 1000, true}, // root may read any user's ASD
		{1000, 1000, true},
		{1001, 1000, false},
		{1000, 0, false}, // a user may not read root's ASD
	} {
		if got := peerAllowed(tc.uid, tc.euid); got != tc.want {
			t.Errorf("peerAllowed(%d, %d) = %v", tc.uid, tc.euid, got)
		}
	}
}

// TestLocalSocketRefusesOtherUsers: a connection from another user is
// closed before a byte is read (needs root, to connect as another uid).
func TestLocalSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as another user")
	}
	dir := shortDir(t)
	s, _ := serveLocalASD(t, Config{Dir: dir, Node: "n", Site: "s", LocalSocket: LocalSocketPath(dir)})
	_ = s
	// The socket is 0600 root: another user cannot even connect, which is
	// the first line; the uid check is the second, for a socket made
	// reachable by mistake (a chmod, a bind mount).
	if err := os.Chmod(LocalSocketPath(dir), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := runAsNobody(t, LocalSocketPath(dir))
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	if !strings.Contains(out, "closed") {
		t.Fatalf("a connection as nobody was served: %s", out)
	}
	if s.LocalConns() != 0 {
		t.Fatalf("local connections served: %d", s.LocalConns())
	}
}

// runAsNobody connects to the unix socket path as user nobody, sends a
// few bytes and reports what came back ("closed": the server hung up).
func runAsNobody(t *testing.T, path string) (string, error) {
	t.Helper()
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3 to connect as another user")
	}
	script := `
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
    d = s.recv(64)
    print("closed" if d == b"" else "served %r" % d)
except OSError as e:
    print("closed (%s)" % e)
`
	cmd := exec.Command(py, "-c", script, path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
