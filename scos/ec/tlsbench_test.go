package ec

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos/asd"
)

// selfSigned returns a throw-away certificate for TLS between the backend
// and in-process ASDs in benchmarks and tests (framework/secret, which
// scos does not import, does this for real clusters).
func selfSigned(tb testing.TB) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// newTLSECEnv starts n ASDs serving over TLS on loopback ports (as `ovs
// asd serve` does) and a backend with a 4+2 preset on them.
func newTLSECEnv(tb testing.TB, n int, cfg Config) *Backend {
	tb.Helper()
	srvTLS := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{selfSigned(tb)},
		ClientAuth: tls.RequireAnyClientCert}
	cliTLS := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{selfSigned(tb)},
		InsecureSkipVerify: true}
	kv, err := OpenBoltKV(tb.TempDir() + "/meta.db")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { kv.Close() })
	cfg.KV, cfg.MaintenanceInterval, cfg.SoleWriter = kv, -1, true
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: asd.NewTransport(cliTLS)}
	}
	cfg.Presets = []Preset{{Name: "p4-2", Policies: []Policy{{4, 2, 6, 1}}}}
	cfg.Preset = "p4-2"
	be, err := New(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { be.Close() })
	for i := range n {
		s, err := asd.Open(asd.Config{Dir: tb.TempDir(), Node: fmt.Sprintf("n%d", i), Site: "s",
			TLS: func(string) (*tls.Config, error) { return srvTLS, nil }})
		if err != nil {
			tb.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Serve(ctx, ln); close(done) }()
		tb.Cleanup(func() { cancel(); <-done })
		if _, err := be.AddASD(context.Background(), ln.Addr().String()); err != nil {
			tb.Fatal(err)
		}
	}
	return be
}

// BenchmarkColdReads4K: 4 KiB ranged reads of objects on ASDs over TLS on
// loopback, 32 in flight, as the volume driver issues them for clusters
// that left its write buffer; over HTTP and over the binary protocol.
func BenchmarkColdReads4K(b *testing.B) {
	for _, proto := range []string{"http", "wire"} {
		b.Run(proto, func(b *testing.B) {
			be := newTLSECEnv(b, 6, Config{HTTPReads: proto == "http"})
			ctx := context.Background()
			if err := be.CreateNamespace(ctx, "bench"); err != nil {
				b.Fatal(err)
			}
			const objs, size = 8, 4 << 20
			for i := range objs {
				if err := be.Put(ctx, "bench", fmt.Sprintf("o%d", i), randBytes(uint64(i), size), false); err != nil {
					b.Fatal(err)
				}
			}
			names := make([]string, objs)
			for i := range names {
				names[i] = fmt.Sprintf("o%d", i)
			}
			var seq atomic.Uint64
			b.SetBytes(4096)
			b.SetParallelism(16) // 2 CPUs: 32 readers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				p := make([]byte, 4096)
				for pb.Next() {
					n := seq.Add(0x9e3779b97f4a7c15)
					off := int64(n>>20) % (size/4096 - 1) * 4096
					if err := be.ReadAt(ctx, "bench", names[n%objs], p, off); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			st, _ := be.Status(ctx)
			if proto == "wire" && st.Counters.WireReads == 0 {
				b.Fatal("no read went over the binary protocol")
			}
		})
	}
}

// TestECBackendWireReads: reads go over the binary protocol (with TLS),
// and over HTTP only when told to.
func TestECBackendWireReads(t *testing.T) {
	ctx := context.Background()
	for _, httpOnly := range []bool{false, true} {
		be := newTLSECEnv(t, 6, Config{HTTPReads: httpOnly})
		if err := be.CreateNamespace(ctx, "ns"); err != nil {
			t.Fatal(err)
		}
		data := randBytes(3, 4<<20)
		mustPut(t, be, "ns", "obj", data)
		for _, r := range [][2]int64{{0, 4096}, {1<<20 - 100, 200}, {4096, 2 << 20}, {4<<20 - 4096, 4096}} {
			p := make([]byte, r[1])
			if err := be.ReadAt(ctx, "ns", "obj", p, r[0]); err != nil || !bytes.Equal(p, data[r[0]:r[0]+r[1]]) {
				t.Fatalf("read [%d,+%d): %v", r[0], r[1], err)
			}
		}
		checkGet(t, be, "ns", "obj", data)
		st, _ := be.Status(ctx)
		if got := st.Counters.WireReads; httpOnly && got != 0 || !httpOnly && got < 4 {
			t.Fatalf("HTTPReads %v: %d binary reads", httpOnly, got)
		}
	}
}

// TestECBackendReadAhead: a sequential run of 4 KiB reads is served from
// read-ahead windows after its first reads; random reads are not; an
// object replaced under its name is read afresh.
func TestECBackendReadAhead(t *testing.T) {
	ctx := context.Background()
	be := newTLSECEnv(t, 6, Config{})
	if err := be.CreateNamespace(ctx, "ns"); err != nil {
		t.Fatal(err)
	}
	data := randBytes(4, 4<<20)
	mustPut(t, be, "ns", "obj", data)
	p := make([]byte, 4096)
	for off := int64(0); off < 2<<20; off += 4096 {
		if err := be.ReadAt(ctx, "ns", "obj", p, off); err != nil || !bytes.Equal(p, data[off:off+4096]) {
			t.Fatalf("sequential read at %d: %v", off, err)
		}
	}
	st, _ := be.Status(ctx)
	if hits := st.Counters.ReadAheadHits; hits < 500 {
		t.Fatalf("%d of 512 sequential reads served by the read-ahead", hits)
	}
	before := st.Counters.ReadAheadHits
	for i := range 64 {
		off := int64(3<<20+128<<10) + int64(i*7919%200)*4096 // past every window kept
		if err := be.ReadAt(ctx, "ns", "obj", p, off); err != nil || !bytes.Equal(p, data[off:off+4096]) {
			t.Fatalf("random read at %d: %v", off, err)
		}
	}
	if st, _ = be.Status(ctx); st.Counters.ReadAheadHits != before {
		t.Fatalf("random reads served by the read-ahead: %d", st.Counters.ReadAheadHits-before)
	}
	// Replaced: the next run reads the new object.
	data2 := randBytes(5, 4<<20)
	if err := be.Put(ctx, "ns", "obj", data2, true); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < 64<<10; off += 4096 {
		if err := be.ReadAt(ctx, "ns", "obj", p, off); err != nil || !bytes.Equal(p, data2[off:off+4096]) {
			t.Fatalf("read of the replaced object at %d: %v", off, err)
		}
	}
}

// BenchmarkGet4M: whole 4 MiB objects (4+2) over TLS on loopback, 4 in
// flight, over HTTP and over the binary protocol.
func BenchmarkGet4M(b *testing.B) {
	for _, proto := range []string{"http", "wire"} {
		b.Run(proto, func(b *testing.B) {
			be := newTLSECEnv(b, 6, Config{HTTPReads: proto == "http"})
			ctx := context.Background()
			if err := be.CreateNamespace(ctx, "bench"); err != nil {
				b.Fatal(err)
			}
			const objs = 8
			for i := range objs {
				if err := be.Put(ctx, "bench", fmt.Sprintf("o%d", i), randBytes(uint64(i), 4<<20), false); err != nil {
					b.Fatal(err)
				}
			}
			var seq atomic.Uint64
			b.SetBytes(4 << 20)
			b.SetParallelism(2)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := be.Get(ctx, "bench", fmt.Sprintf("o%d", seq.Add(1)%objs)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
