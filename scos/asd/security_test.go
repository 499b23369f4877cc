package asd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testPKI is a stand-in for the cluster's credentials (framework/secret,
// which scos does not import): peers present a certificate whose key is on
// a list.
type testPKI struct{ trusted map[string]bool }

func (p *testPKI) cert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p.trusted[string(c.RawSubjectPublicKeyInfo)] = true
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (p *testPKI) verify(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("no certificate")
	}
	c, err := x509.ParseCertificate(raw[0])
	if err != nil || !p.trusted[string(c.RawSubjectPublicKeyInfo)] {
		return errors.New("not a member")
	}
	return nil
}

func (p *testPKI) server(t *testing.T) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.cert(t)},
		ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: p.verify}
}

func (p *testPKI) client(t *testing.T) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.cert(t)},
		InsecureSkipVerify: true, VerifyPeerCertificate: p.verify}
}

// serveTLSASD runs an ASD with TLS on a loopback port.
func serveTLSASD(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, ln.Addr().String()
}

func TestASDRefusesClientsWithoutCredentials(t *testing.T) {
	ctx := context.Background()
	pki := &testPKI{trusted: map[string]bool{}}
	dir := t.TempDir()
	s, addr := serveTLSASD(t, Config{Dir: dir, Node: "n", Site: "s",
		TLS: func(string) (*tls.Config, error) { return pki.server(t), nil }})
	member := NewClient(addr, &http.Client{Transport: NewTransport(pki.client(t))}).For(s.ID())
	if err := member.Put(ctx, "frag", "", []byte("data")); err != nil {
		t.Fatalf("put with credentials: %v", err)
	}
	outsider := &testPKI{trusted: pki.trusted} // trusts the ASD, but is not trusted
	foreignCert := (&testPKI{trusted: map[string]bool{}}).cert(t)
	oc := outsider.client(t)
	oc.Certificates = []tls.Certificate{foreignCert}
	noCert := pki.client(t)
	noCert.Certificates = nil
	for _, tc := range []struct {
		name string
		c    *Client
	}{
		{"plain http", NewClient(addr, nil)},
		{"tls without a certificate", NewClient(addr, &http.Client{Transport: NewTransport(noCert)})},
		{"tls with a foreign certificate", NewClient(addr, &http.Client{Transport: NewTransport(oc)})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.c.Put(ctx, "frag", "", []byte("evil")); err == nil {
				t.Fatal("put accepted")
			}
			if err := tc.c.Delete(ctx, "frag"); err == nil {
				t.Fatal("delete accepted")
			}
			if _, _, err := tc.c.Get(ctx, "frag", 0, -1); err == nil {
				t.Fatal("get accepted")
			}
			got, _, err := member.Get(ctx, "frag", 0, -1)
			if err != nil || !bytes.Equal(got, []byte("data")) {
				t.Fatalf("the fragment after refused calls: %q %v", got, err)
			}
		})
	}
	// A request meant for another ASD is refused and stores nothing.
	if err := member.For("asd-other").Put(ctx, "frag2", "", []byte("x")); err == nil || !strings.Contains(err.Error(), "not asd-other") {
		t.Fatalf("put meant for another ASD: %v", err)
	}
	if _, err := member.Stat(ctx, "frag2"); !errors.Is(err, ErrFragmentNotFound) {
		t.Fatalf("stat of the refused put: %v", err)
	}
	// Modes: data is its owner's alone.
	for _, p := range []string{dir, filepath.Join(dir, asdFragmentsDir), filepath.Dir(FragmentPath(dir, "frag")), FragmentPath(dir, "frag"), filepath.Join(dir, asdIdentityFile)} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %04o", p, st.Mode().Perm())
		}
	}
}

func TestASDKeepsItsCluster(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(Config{Dir: dir, Cluster: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir, Cluster: "c1"}); err != nil {
		t.Fatalf("reopen in its cluster: %v", err)
	}
	if _, err := Open(Config{Dir: dir, Cluster: "c2"}); err == nil || !strings.Contains(err.Error(), "belongs to cluster c1") {
		t.Fatalf("open for another cluster: %v", err)
	}
}

// TestLocalASDPorts: ports come from the range, a port another process
// holds is skipped (the ASD moves and says from where), and with too few
// free ports the ASDs that fit still get one.
func TestLocalASDPorts(t *testing.T) {
	base := 0
	for try := 0; try < 100 && base == 0; try++ {
		b := 20000 + try*97
		ok := true
		for p := b; p < b+8; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			base = b
		}
	}
	if base == 0 {
		t.Skip("no free port range")
	}
	newLocal := func(dir string, n, first, last int) *LocalSet {
		l := &LocalSet{cfg: LocalConfig{Dir: dir, Host: "127.0.0.1", FirstPort: first, LastPort: last}, log: slog.New(slog.DiscardHandler)}
		for i := range n {
			p := &localASD{index: i, dir: filepath.Join(dir, fmt.Sprintf("asd-%d", i))}
			os.MkdirAll(p.dir, 0o700)
			p.addr, _ = readLocalAddr(p.dir)
			l.procs = append(l.procs, p)
		}
		return l
	}
	hold := func(port int) net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	dir := t.TempDir()
	h := hold(base + 1)
	l := newLocal(dir, 3, base, base+3)
	if err := l.bindAll(); err != nil {
		t.Fatal(err)
	}
	want := []int{base, base + 2, base + 3}
	for i, p := range l.procs {
		if p.ln == nil || p.addr != "127.0.0.1:"+strconv.Itoa(want[i]) || p.moved != "" {
			t.Fatalf("ASD %d: addr %s moved %q, want port %d", i, p.addr, p.moved, want[i])
		}
	}
	l.closeListeners()
	h.Close()

	// Restart with ASD 0's port held: it moves to the free port, the
	// others stay.
	h = hold(base)
	defer h.Close()
	l = newLocal(dir, 3, base, base+3)
	if err := l.bindAll(); err != nil {
		t.Fatal(err)
	}
	if p := l.procs[0]; p.ln == nil || p.addr != "127.0.0.1:"+strconv.Itoa(base+1) || p.moved != "127.0.0.1:"+strconv.Itoa(base) {
		t.Fatalf("ASD 0: addr %s moved from %q", p.addr, p.moved)
	}
	if got, _ := readLocalAddr(l.procs[0].dir); got != l.procs[0].addr {
		t.Fatalf("local.json says %s", got)
	}
	for i, p := range l.procs[1:] {
		if p.addr != "127.0.0.1:"+strconv.Itoa(want[i+1]) || p.moved != "" {
			t.Fatalf("ASD %d moved: %s %q", i+1, p.addr, p.moved)
		}
	}
	l.closeListeners()

	// Four ASDs, a range of four ports, one held: three run.
	l = newLocal(t.TempDir(), 4, base, base+3)
	if err := l.bindAll(); err != nil {
		t.Fatal(err)
	}
	running := 0
	for _, p := range l.procs {
		if p.ln != nil {
			running++
			if p.addr == h.Addr().String() {
				t.Fatalf("an ASD got the held port")
			}
		}
	}
	l.closeListeners()
	if running != 3 {
		t.Fatalf("%d ASDs got a port, want 3", running)
	}
}
