package asd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"os"
	"testing"

	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// TestDirectReads: a client given the local socket of an ASD of its host
// reads the fragment files itself (nothing goes to the ASD), with the
// ASD's checks: ranges that do not start on a block, whole fragments,
// missing fragments and ranges past the end answer as the ASD would; a
// flipped byte is ErrFragmentCorrupt for the ranges that cover it; a
// directory that holds another ASD is not read.
func TestDirectReads(t *testing.T) {
	ctx := context.Background()
	pki := &testPKI{trusted: map[string]bool{}}
	tlsConf := func(string) (*tls.Config, error) { return pki.server(t), nil }
	dir := shortDir(t)
	s, addr := serveLocalASD(t, Config{Dir: dir, Node: "n", Site: "s", LocalSocket: LocalSocketPath(dir), TLS: tlsConf})
	hc := &http.Client{Transport: NewTransport(pki.client(t))}
	bs := DefaultFragmentBlockSize
	data := randBytes(11, 3*bs+300)
	if err := NewClient(addr, hc).For(s.ID()).Put(ctx, "frag", "ns/o", data); err != nil {
		t.Fatal(err)
	}
	c := NewClient(addr, hc).For(s.ID()).WithWire(WireConfig{Socket: LocalSocketPath(dir)})
	defer c.Close()

	// read reads [off,+n) of key into the middle of a guarded buffer.
	read := func(key string, off, n int64) ([]byte, ItemResult) {
		t.Helper()
		buf := bytes.Repeat([]byte{0xAA}, int(n)+2*bs)
		dst := buf[bs : bs+int(n)]
		res, err := c.ReadBatch(ctx, []ReadItem{{key, off, n}}, [][]byte{dst})
		if err != nil {
			t.Fatalf("read %s [%d,+%d): %v", key, off, n, err)
		}
		for i, b := range buf {
			if (i < bs || i >= bs+int(n)) && b != 0xAA {
				t.Fatalf("read %s [%d,+%d) wrote outside its buffer at %d", key, off, n, i-bs)
			}
		}
		return dst, res[0]
	}
	tests := []struct {
		name    string
		off, n  int64
		wantErr error
	}{
		{"whole", 0, int64(len(data)), nil},
		{"one block", int64(bs), int64(bs), nil},
		{"unaligned across blocks", 1000, int64(2*bs + 17), nil},
		{"tail", int64(3 * bs), 300, nil},
		{"past the end", int64(3 * bs), 301, errBadRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, r := read("frag", tc.off, tc.n)
			if tc.wantErr != nil {
				if !errors.Is(r.Err, tc.wantErr) {
					t.Fatalf("error %v, want %v", r.Err, tc.wantErr)
				}
				return
			}
			if r.Err != nil || !bytes.Equal(got, data[tc.off:tc.off+tc.n]) {
				t.Fatalf("read: %v (bytes equal: %v)", r.Err, bytes.Equal(got, data[tc.off:tc.off+tc.n]))
			}
			if r.Size != int64(len(data)) || r.CRC != crc32c.Checksum(data) {
				t.Fatalf("fragment size %d crc %08x, want %d %08x", r.Size, r.CRC, len(data), crc32c.Checksum(data))
			}
		})
	}
	if _, r := read("nothing", 0, 10); !errors.Is(r.Err, ErrFragmentNotFound) {
		t.Fatalf("missing fragment: %v", r.Err)
	}
	if n := c.DirectReads(); n < int64(len(tests)) {
		t.Fatalf("%d direct reads, want at least %d", n, len(tests))
	}
	if n := s.LocalConns(); n != 0 {
		t.Fatalf("%d connections to the ASD's socket, want none: reads were direct", n)
	}

	// A flipped byte in the second block.
	f, h, err := openFragment(dir, s.ID(), "frag")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	path := FragmentPath(dir, "frag")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[h.HeaderLen+bs+5] ^= 0x10
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, r := read("frag", int64(bs), 10); !errors.Is(r.Err, ErrFragmentCorrupt) {
		t.Fatalf("read of a flipped byte: %v", r.Err)
	}
	if _, r := read("frag", 0, int64(len(data))); !errors.Is(r.Err, ErrFragmentCorrupt) {
		t.Fatalf("whole read of a flipped byte: %v", r.Err)
	}
	if got, r := read("frag", int64(2*bs), 100); r.Err != nil || !bytes.Equal(got, data[2*bs:2*bs+100]) {
		t.Fatalf("read of an intact block: %v", r.Err)
	}

	// The directory of another ASD: not read directly; the ASD meant
	// answers (over TLS: the other ASD refuses the socket's hello).
	dir2 := shortDir(t)
	serveLocalASD(t, Config{Dir: dir2, Node: "n", Site: "s", LocalSocket: LocalSocketPath(dir2), TLS: tlsConf})
	if err := NewClient(addr, hc).For(s.ID()).Put(ctx, "frag2", "ns/o", data); err != nil {
		t.Fatal(err)
	}
	wrong := NewClient(addr, hc).For(s.ID()).WithWire(WireConfig{Socket: LocalSocketPath(dir2)})
	defer wrong.Close()
	dst := make([]byte, 100)
	res, err := wrong.ReadBatch(ctx, []ReadItem{{"frag2", 0, 100}}, [][]byte{dst})
	if err != nil || res[0].Err != nil || !bytes.Equal(dst, data[:100]) {
		t.Fatalf("read through another ASD's directory: %v %+v", err, res)
	}
	if wrong.DirectReads() != 0 {
		t.Fatal("another ASD's directory was read directly")
	}
}
