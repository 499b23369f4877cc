package secret

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnsureMakesA0600SecretOnce(t *testing.T) {
	dir := t.TempDir()
	s1, err := Ensure(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %04o, want 0600", st.Mode().Perm())
	}
	s2, err := Ensure(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s1.ClusterID() != s2.ClusterID() || s1.Token("x") != s2.Token("x") {
		t.Fatal("a second Ensure made a different secret")
	}
	if s1.Token("a") == s1.Token("b") {
		t.Fatal("keys of two purposes are equal")
	}
	if !s1.CheckToken("a", s1.Token("a")) || s1.CheckToken("a", s1.Token("b")) {
		t.Fatal("CheckToken")
	}
}

func TestLoadFileRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text string
		mode       os.FileMode
		want       string
	}{
		{"world readable", strings.Repeat("a", 64), 0o644, "chmod 600"},
		{"group readable", strings.Repeat("a", 64), 0o640, "chmod 600"},
		{"too short", "abc", 0o600, "want at least"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(p, []byte(tc.text), tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			if _, err := LoadFile(p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadFile: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestResolveOrder(t *testing.T) {
	dir := t.TempDir()
	data, err := Ensure(dir)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other")
	os.WriteFile(other, []byte(strings.Repeat("b", 64)), 0o600)
	t.Setenv(EnvValue, "")
	t.Setenv(EnvFile, "")
	if s, err := Resolve("", dir); err != nil || s.ClusterID() != data.ClusterID() {
		t.Fatalf("from DATA: %v", err)
	}
	if s, err := Resolve(other, dir); err != nil || s.ClusterID() == data.ClusterID() {
		t.Fatalf("flag must win: %v", err)
	}
	t.Setenv(EnvValue, strings.Repeat("c", 64))
	if s, err := Resolve("", dir); err != nil || s.Source() != "$"+EnvValue {
		t.Fatalf("env must win over DATA: %v", err)
	}
	t.Setenv(EnvValue, "")
	if _, err := Resolve("", t.TempDir()); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("empty DATA: %v, want ErrNoSecret", err)
	}
}

// handshake runs a TLS handshake between a client and a server config and
// returns the client's and the server's error.
func handshake(t *testing.T, client, server *tls.Config) (cerr, serr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		b, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		b.SetDeadline(time.Now().Add(10 * time.Second))
		sc := tls.Server(b, server)
		err = sc.Handshake()
		if err == nil {
			_, err = io.ReadFull(sc, make([]byte, 1))
		}
		b.Close()
		done <- err
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a.SetDeadline(time.Now().Add(10 * time.Second))
	cc := tls.Client(a, client)
	cerr = cc.Handshake()
	if cerr == nil {
		_, cerr = cc.Write([]byte{1})
	}
	if cerr == nil {
		// In TLS 1.3 the client learns of the server's refusal of its
		// certificate on its first read.
		_, cerr = cc.Read(make([]byte, 1))
		if errors.Is(cerr, io.EOF) {
			cerr = nil
		}
	}
	a.Close()
	return cerr, <-done
}

func TestTLSEndorsement(t *testing.T) {
	mine, _ := New(strings.Repeat("m", 64), "test")
	theirs, _ := New(strings.Repeat("t", 64), "test")
	mustServer := func(s *Secret, role string, clientRoles ...string) *tls.Config {
		c, err := s.ServerTLS(role, "s1", clientRoles...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	mustClient := func(s *Secret, role string, serverRoles ...string) *tls.Config {
		c, err := s.ClientTLS(role, "c1", serverRoles...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// A certificate without an endorsement: what anyone can make.
	bare, err := mine.ClientTLS(RoleCLI, "x")
	if err != nil {
		t.Fatal(err)
	}
	plain := bare.Clone()
	plain.Certificates = nil
	for _, tc := range []struct {
		name   string
		client *tls.Config
		server *tls.Config
		ok     bool
	}{
		{"same cluster", mustClient(mine, RoleBackend, RoleASD), mustServer(mine, RoleASD), true},
		{"client of another cluster", mustClient(theirs, RoleBackend), mustServer(mine, RoleASD), false},
		{"server of another cluster", mustClient(mine, RoleBackend, RoleASD), mustServer(theirs, RoleASD), false},
		{"client without a certificate", plain, mustServer(mine, RoleASD), false},
		{"server of the wrong role", mustClient(mine, RoleBackend, RoleASD), mustServer(mine, RoleArakoon), false},
		{"client of the wrong role", mustClient(mine, RoleCLI), mustServer(mine, RoleArakoon, RoleArakoon), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cerr, serr := handshake(t, tc.client, tc.server)
			if tc.ok && (cerr != nil || serr != nil) {
				t.Fatalf("handshake failed: client %v, server %v", cerr, serr)
			}
			if !tc.ok && cerr == nil && serr == nil {
				t.Fatal("handshake succeeded, want it refused")
			}
		})
	}
	// A foreign certificate copied from a member does not help without
	// its key, and a forged endorsement over another key fails.
	cert, err := mine.Certificate(RoleASD, "a1")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := mine.Verify(cert.Certificate[0]); err != nil || e.ID != "a1" || e.Role != RoleASD {
		t.Fatalf("Verify: %+v %v", e, err)
	}
	if _, err := theirs.Verify(cert.Certificate[0]); !errors.Is(err, ErrNotEndorsed) {
		t.Fatalf("Verify with another secret: %v", err)
	}
}
