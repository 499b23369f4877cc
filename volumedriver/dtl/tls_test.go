package dtl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"
)

// selfSigned returns a self-signed certificate for 127.0.0.1 usable by
// both ends, and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ovs-node"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

func TestMutualTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	srv, err := NewServer(ServerConfig{Dir: t.TempDir(), Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(context.Background(), tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS13,
		}))
	}()
	defer func() {
		srv.Close()
		<-done
	}()
	addr := ln.Addr().String()
	client := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}

	s := NewShipper(ShipperConfig{Addr: addr, TLS: client, VDisk: "vd", Epoch: 1, Log: testLogger(t)})
	defer s.Close()
	s.Begin("tlog_a", "")
	e := writeEntry(3, 2, 7)
	waitDurable(t, s, s.Append(e))
	if err := Fence(ctx30(t), addr, client, "vd", 2); err != nil {
		t.Fatal(err)
	}
	var got []Entry
	if err := Read(ctx30(t), addr, client, "vd", 2, "", func(_ string, e Entry) error {
		got = append(got, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || equalEntry(got[0], e) != nil {
		t.Fatalf("read %d entries over TLS", len(got))
	}

	// A client without a certificate does not get in.
	anon := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if _, err := Groups(ctx30(t), addr, anon, "vd", 2); !errors.Is(err, ErrBroken) {
		t.Fatalf("Groups without a client certificate: %v", err)
	}
}
