package asd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// testASD runs an ASD in-process on an httptest server.
func testASD(t *testing.T, cfg Config) (*Server, *Client) {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return s, NewClient(srv.URL, srv.Client())
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestASDRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, c := testASD(t, Config{Node: "n1", Site: "s1"})
	sizes := map[string]int{"empty": 0, "one": 1, "block": DefaultFragmentBlockSize, "odd": 3*DefaultFragmentBlockSize + 17, "mib": 1 << 20}
	data := map[string][]byte{}
	for key, n := range sizes {
		data[key] = randBytes(uint64(n), n)
		if err := c.Put(ctx, key, "ns/"+key, data[key]); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
	}
	for key, want := range data {
		got, crc, err := c.Get(ctx, key, 0, -1)
		if err != nil || !bytes.Equal(got, want) || crc != crc32c.Checksum(want) {
			t.Fatalf("get %s: %v (equal %v)", key, err, bytes.Equal(got, want))
		}
		fi, err := c.Stat(ctx, key)
		if err != nil || fi.Size != int64(len(want)) || fi.Tag != "ns/"+key || fi.CRC32C != crc32c.Checksum(want) {
			t.Fatalf("stat %s: %+v %v", key, fi, err)
		}
		if _, err := c.Verify(ctx, key); err != nil {
			t.Fatalf("verify %s: %v", key, err)
		}
	}
	// Ranged reads, including ones across block boundaries.
	want := data["mib"]
	for _, r := range []struct{ off, n int64 }{
		{0, 1}, {0, 4096}, {65535, 2}, {65536, 65536}, {100, 300000}, {1<<20 - 1, 1}, {1 << 20, 0}, {12345, 0},
	} {
		got, _, err := c.Get(ctx, "mib", r.off, r.n)
		if err != nil || !bytes.Equal(got, want[r.off:r.off+r.n]) {
			t.Errorf("get [%d,+%d): %v", r.off, r.n, err)
		}
	}
	// Bad ranges are refused, not clipped.
	for _, r := range []struct{ off, n int64 }{{1 << 20, 1}, {0, 1<<20 + 1}, {2 << 20, 0}} {
		if _, _, err := c.Get(ctx, "mib", r.off, r.n); err == nil || !strings.Contains(err.Error(), "range") {
			t.Errorf("get [%d,+%d) past the end: %v", r.off, r.n, err)
		}
	}
	// Overwrite replaces.
	if err := c.Put(ctx, "one", "", []byte("xy")); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := c.Get(ctx, "one", 0, -1); string(got) != "xy" {
		t.Fatalf("overwrite: %q", got)
	}
	fl, err := c.List(ctx, "", "", 0, true)
	if err != nil || len(fl.Fragments) != len(sizes) || fl.Fragments[0].Key != "block" {
		t.Fatalf("list %+v %v", fl, err)
	}
	if fl, _ := c.List(ctx, "", "block", 2, false); len(fl.Fragments) != 2 || !fl.Truncated || fl.Fragments[0].Key != "empty" {
		t.Fatalf("paged list %+v", fl)
	}
	h, err := c.Health(ctx)
	if err != nil || h.ID != s.ID() || h.Node != "n1" || h.Site != "s1" || h.Fragments != int64(len(sizes)) || h.Capacity.Used <= 1<<20 {
		t.Fatalf("health %+v %v", h, err)
	}
	if err := c.Delete(ctx, "mib"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Get(ctx, "mib", 0, -1); !errors.Is(err, ErrFragmentNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := c.Delete(ctx, "mib"); !errors.Is(err, ErrFragmentNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	// A restart keeps the identity and the counts.
	s2, err := Open(Config{Dir: s.cfg.Dir, Node: "n1", Site: "s1"})
	if err != nil || s2.ID() != s.ID() || s2.count.Load() != s.count.Load() || s2.used.Load() != s.used.Load() {
		t.Fatalf("reopen: %v id %s/%s count %d/%d used %d/%d", err, s2.ID(), s.ID(),
			s2.count.Load(), s.count.Load(), s2.used.Load(), s.used.Load())
	}
}

func TestASDCorruption(t *testing.T) {
	ctx := context.Background()
	s, c := testASD(t, Config{})
	data := randBytes(7, 4*DefaultFragmentBlockSize)
	put := func() string {
		if err := c.Put(ctx, "frag", "", data); err != nil {
			t.Fatal(err)
		}
		return FragmentPath(s.cfg.Dir, "frag")
	}
	flip := func(path string, off int64) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		f.ReadAt(b, off)
		b[0] ^= 0x40
		f.WriteAt(b, off)
	}
	hdrLen := func(path string) int64 {
		b, _ := os.ReadFile(path)
		n, err := FragmentHeaderLen(b)
		if err != nil {
			t.Fatal(err)
		}
		return int64(n)
	}
	tests := []struct {
		name    string
		damage  func(path string)
		statOK  bool
		rangeOK bool // read of block 3 when block 1 is damaged
	}{
		{"data byte", func(p string) { flip(p, hdrLen(p)+DefaultFragmentBlockSize+5) }, true, true},
		{"header byte", func(p string) { flip(p, 30) }, false, false},
		{"magic", func(p string) { flip(p, 0) }, false, false},
		{"truncated", func(p string) { os.Truncate(p, hdrLen(p)+100) }, false, false},
		{"extended", func(p string) {
			f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("junk"))
			f.Close()
		}, false, false},
		{"empty file", func(p string) { os.Truncate(p, 0) }, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.damage(put())
			if _, _, err := c.Get(ctx, "frag", 0, -1); !errors.Is(err, ErrFragmentCorrupt) {
				t.Errorf("whole get: %v", err)
			}
			if _, err := c.Verify(ctx, "frag"); !errors.Is(err, ErrFragmentCorrupt) {
				t.Errorf("verify: %v", err)
			}
			if _, _, err := c.Get(ctx, "frag", DefaultFragmentBlockSize+1, 10); !errors.Is(err, ErrFragmentCorrupt) {
				t.Errorf("ranged get of the damaged block: %v", err)
			}
			got, _, err := c.Get(ctx, "frag", 3*DefaultFragmentBlockSize, 10)
			if tc.rangeOK != (err == nil) || err == nil && !bytes.Equal(got, data[3*DefaultFragmentBlockSize:][:10]) {
				t.Errorf("ranged get of a good block: %v", err)
			}
			if _, err := c.Stat(ctx, "frag"); tc.statOK != (err == nil) {
				t.Errorf("stat: %v", err)
			}
			fl, err := c.List(ctx, "", "", 0, true)
			if err != nil || len(fl.Fragments) != 1 || fl.Fragments[0].Corrupt == tc.statOK {
				t.Errorf("detailed list: %+v %v", fl, err)
			}
		})
	}
}

func TestASDBadRequests(t *testing.T) {
	ctx := context.Background()
	s, c := testASD(t, Config{})
	if err := c.Put(ctx, ".hidden", "", []byte("x")); !errors.Is(err, scos.ErrInvalidName) && !strings.Contains(err.Error(), "invalid") {
		t.Errorf("bad key: %v", err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		hdr    map[string]string
		status int
	}{
		{"no checksum", "PUT", "/v1/fragments/k", "data", nil, 400},
		{"wrong checksum", "PUT", "/v1/fragments/k", "data", map[string]string{"X-Ovs-Crc32c": "00000000"}, 400},
		{"bad checksum syntax", "PUT", "/v1/fragments/k", "data", map[string]string{"X-Ovs-Crc32c": "zz"}, 400},
		{"bad offset", "GET", "/v1/fragments/k?offset=-1", "", nil, 400},
		{"bad length", "GET", "/v1/fragments/k?length=x", "", nil, 400},
		{"missing", "GET", "/v1/fragments/nope", "", nil, 404},
		{"unknown endpoint", "GET", "/v2/whatever", "", nil, 404},
		{"bad key", "GET", "/v1/fragments/..", "", nil, 404},
		{"bad list limit", "GET", "/v1/fragments?limit=-5", "", nil, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	if _, err := c.Stat(ctx, "k"); !errors.Is(err, ErrFragmentNotFound) {
		t.Errorf("a refused put left something: %v", err)
	}
}

func TestASDFillLimit(t *testing.T) {
	ctx := context.Background()
	_, c := testASD(t, Config{Capacity: 1 << 20, FillLimit: 0.5})
	if err := c.Put(ctx, "a", "", make([]byte, 400<<10)); err != nil {
		t.Fatal(err)
	}
	err := c.Put(ctx, "b", "", make([]byte, 200<<10))
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "fill limit") {
		t.Fatalf("put past the fill limit: %v", err)
	}
	t.Logf("refused: %v", err)
	h, _ := c.Health(ctx)
	if h.Capacity.Capacity != 1<<20 || h.Capacity.Free >= 200<<10 {
		t.Fatalf("capacity %+v", h.Capacity)
	}
	if err := c.Put(ctx, "c", "", make([]byte, 50<<10)); err != nil {
		t.Fatalf("a put that fits: %v", err)
	}
	// The default limit (99% of the filesystem) leaves room on a test box.
	if _, err := Open(Config{Dir: t.TempDir(), FillLimit: 1.5}); err == nil {
		t.Fatal("fill limit 1.5 accepted")
	}
}

func TestASDUnavailable(t *testing.T) {
	c := NewClient("127.0.0.1:1", nil)
	if _, err := c.Health(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("dead ASD: %v", err)
	}
}

func TestFragmentHeaderRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 4096, 4097, 1 << 20} {
		data := randBytes(uint64(n), n)
		h, err := NewFragmentHeader("k-01", "ns/obj", data, 4096, 42)
		if err != nil {
			t.Fatal(err)
		}
		b := h.Encode()
		got, err := DecodeFragmentHeader(append(b, data...))
		if err != nil {
			t.Fatalf("%d: %v", n, err)
		}
		if got.Key != h.Key || got.Tag != h.Tag || got.DataLen != h.DataLen || got.DataCRC != h.DataCRC ||
			got.HeaderLen != len(b) || len(got.BlockCRCs) != len(h.BlockCRCs) || got.Created != 42 {
			t.Fatalf("%d: %+v != %+v", n, got, h)
		}
		if err := got.verifyBlocks(0, data); err != nil {
			t.Fatal(err)
		}
		future := append([]byte(nil), b...)
		future[4] = 2
		if _, err := DecodeFragmentHeader(future); !errors.Is(err, scos.ErrUnsupportedFormat) {
			t.Fatalf("version 2: %v", err)
		}
	}
}

func FuzzFragmentHeader(f *testing.F) {
	for _, n := range []int{0, 10, 70000} {
		h, _ := NewFragmentHeader("key", "tag", make([]byte, n), 4096, 1)
		f.Add(h.Encode())
	}
	f.Add([]byte("OVSF\x01"))
	check := func(t *testing.T, b []byte) {
		h, err := DecodeFragmentHeader(b)
		if err != nil {
			if !errors.Is(err, ErrFragmentCorrupt) && !errors.Is(err, scos.ErrUnsupportedFormat) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if enc := h.Encode(); !bytes.Equal(enc, b[:h.HeaderLen]) {
			t.Fatalf("decode/encode not canonical")
		}
		if int64(len(h.BlockCRCs)) != numBlocks(h.DataLen, h.BlockSize) || checkFragmentKey(h.Key) != nil {
			t.Fatalf("an invalid header decoded: %+v", h)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := FragmentHeaderLen(b)
		if err == nil && (n < fragmentFixedLen || n > 1<<30) {
			t.Fatalf("header length %d accepted", n)
		}
		check(t, b)
		// Again with a valid header checksum, to get past it to the fields.
		if err == nil && len(b) >= n {
			fixed := bytes.Clone(b)
			binary.LittleEndian.PutUint32(fixed[n-4:], crc32c.Checksum(fixed[:n-4]))
			check(t, fixed)
		}
	})
}

// PutCRC sends the caller's checksum: a body that does not have it is
// refused and nothing is stored.
func TestPutCRC(t *testing.T) {
	ctx := context.Background()
	_, c := testASD(t, Config{})
	data := randBytes(9, 3*DefaultFragmentBlockSize+17)
	if err := c.PutCRC(ctx, "bad", "", data, crc32c.Checksum(data)^1); err == nil {
		t.Fatal("a body with another checksum than the one sent was stored")
	}
	if _, err := c.Stat(ctx, "bad"); !errors.Is(err, ErrFragmentNotFound) {
		t.Fatalf("after a refused put: %v", err)
	}
	if err := c.PutCRC(ctx, "good", "", data, crc32c.Checksum(data)); err != nil {
		t.Fatal(err)
	}
	got, crc, err := c.Get(ctx, "good", 0, -1)
	if err != nil || !bytes.Equal(got, data) || crc != crc32c.Checksum(data) {
		t.Fatalf("get: %v", err)
	}
}
