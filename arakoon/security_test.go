package arakoon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// testPKI stands in for the cluster's credentials (framework/secret, which
// arakoon does not import): peers present a certificate whose key is on a
// list.
type testPKI struct{ trusted map[string]bool }

func (p *testPKI) cert(t testing.TB, trust bool) tls.Certificate {
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
	if trust {
		c, _ := x509.ParseCertificate(der)
		p.trusted[string(c.RawSubjectPublicKeyInfo)] = true
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (p *testPKI) verify(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return errors.New("no certificate")
	}
	c, err := x509.ParseCertificate(raw[0])
	if err != nil || !p.trusted[string(c.RawSubjectPublicKeyInfo)] {
		return errors.New("not a member of this cluster")
	}
	return nil
}

func (p *testPKI) server(t testing.TB) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.cert(t, true)},
		ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: p.verify}
}

func (p *testPKI) client(t testing.TB, trust bool) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{p.cert(t, trust)},
		InsecureSkipVerify: true, VerifyPeerCertificate: p.verify}
}

// TestTLSClusterRefusesOutsiders: a 3-node cluster whose clients and raft
// run over TLS serves its members and refuses, quickly and without any
// change, clients without credentials or with foreign ones, and raw frames
// of the plain protocol.
func TestTLSClusterRefusesOutsiders(t *testing.T) {
	pki := &testPKI{trusted: map[string]bool{}}
	tc := &testCluster{t: t, cfg: testConfig(t, 3), srv: map[string]*Server{},
		tls: &TLSConfig{Client: pki.server(t), Raft: pki.server(t), Peer: pki.client(t, true)},
		ctl: pki.client(t, true)}
	t.Cleanup(tc.stopAll)
	for _, nd := range tc.cfg.Nodes {
		tc.start(nd.ID)
	}
	tc.waitMaster()
	c := tc.client()
	ctx := ctxT(t, 60*time.Second)
	if err := c.Set(ctx, b("k"), b("v")); err != nil {
		t.Fatalf("set over TLS: %v", err)
	}
	for _, o := range []struct {
		name string
		tls  *tls.Config
	}{
		{"plain", nil},
		{"foreign certificate", pki.client(t, false)},
	} {
		t.Run(o.name, func(t *testing.T) {
			cc := tc.cfg.ClientConfig()
			cc.TLS = o.tls
			oc, err := NewClient(cc)
			if err != nil {
				t.Fatal(err)
			}
			defer oc.Close()
			start := time.Now()
			err = oc.Set(ctxT(t, 20*time.Second), b("k"), b("evil"))
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("set: %v, want ErrUnauthorized", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("refusal took %v: an unauthorized client must not retry", d)
			}
			err = oc.AddNode(ctxT(t, 20*time.Second), NodeInfo{ID: "evil", Client: "127.0.0.1:1", Raft: "127.0.0.1:2"}, false)
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("add_node: %v, want ErrUnauthorized", err)
			}
		})
	}
	// A raw add_node frame of the plain protocol is answered "unauthorized".
	nc, err := net.Dial("tcp", tc.cfg.Nodes[0].Client)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	req := &request{Op: opAddNode, NodeInfo: NodeInfo{ID: "evil", Client: "127.0.0.1:1", Raft: "127.0.0.1:2"}}
	frame := appendFrame(nil, byte(opAddNode), 9, req.encode())
	if _, err := nc.Write(frame); err != nil {
		t.Fatal(err)
	}
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(nc, h[:]); err != nil {
		t.Fatalf("no answer to a plain frame: %v", err)
	}
	if Status(h[1]) != StatusUnauthorized || binary.BigEndian.Uint64(h[2:10]) != 9 {
		t.Fatalf("answer to a plain frame: status %v id %d", Status(h[1]), binary.BigEndian.Uint64(h[2:10]))
	}
	if v, err := c.Get(ctx, b("k")); err != nil || string(v) != "v" {
		t.Fatalf("k after the refused calls: %q %v", v, err)
	}
	ms, err := c.Members(ctx)
	if err != nil || len(ms) != 3 {
		t.Fatalf("members after the refused calls: %v %v", ms, err)
	}
}

// TestAddNodeRefusesVoterThatDoesNotAnswer: adding a voter that does not
// run would leave a 1-node cluster without quorum for good; it is refused
// at once and the cluster keeps working.
func TestAddNodeRefusesVoterThatDoesNotAnswer(t *testing.T) {
	tc := startCluster(t, 1)
	c := tc.client()
	ctx := ctxT(t, 60*time.Second)
	addrs := freeAddrs(t, 2)
	start := time.Now()
	err := c.AddNode(ctx, NodeInfo{ID: "ghost", Client: addrs[0], Raft: addrs[1]}, false)
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "quorum") {
		t.Fatalf("add_node of a node that does not run: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("refusal took %v", d)
	}
	ms, err := c.Members(ctx)
	if err != nil || len(ms) != 1 {
		t.Fatalf("members: %v %v", ms, err)
	}
	if err := c.Set(ctx, b("still"), b("ok")); err != nil {
		t.Fatalf("the cluster after the refused add_node: %v", err)
	}
}
