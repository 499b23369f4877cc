package fsutil

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

func TestAligned(t *testing.T) {
	for _, n := range []int{0, 1, 4095, 4096, 4097, 1 << 20, 1<<20 + 1234} {
		buf := make([]byte, n+2*DirectAlign)
		b, ok := Aligned(buf, n)
		if !ok {
			t.Fatalf("Aligned(%d): no room in %d bytes", n, len(buf))
		}
		if len(b) != n || cap(b) < roundUp(n) || cap(b)%DirectAlign != 0 {
			t.Errorf("Aligned(%d): len %d cap %d", n, len(b), cap(b))
		}
		if uintptr(unsafe.Pointer(&b[:1][0]))%DirectAlign != 0 {
			t.Errorf("Aligned(%d): not aligned", n)
		}
	}
	if _, ok := Aligned(nil, 1); ok {
		t.Error("Aligned(nil, 1): ok")
	}
}

// TestWriteFileDirect writes files whose lengths are and are not
// multiples of the alignment and reads them back through the page cache.
func TestWriteFileDirect(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, 511, 4096, 4097, 1<<20 + 77} {
		buf := make([]byte, n+2*DirectAlign)
		for i := range buf {
			buf[i] = 0xee // the padding must not reach the file
		}
		data, _ := Aligned(buf, n)
		for i := range data {
			data[i] = byte(i*31 + n)
		}
		want := bytes.Clone(data)
		path := filepath.Join(dir, "f")
		err := WriteFileDirect(path, data)
		if errors.Is(err, ErrDirectUnsupported) {
			t.Skipf("O_DIRECT not supported in %s", dir)
		}
		if err != nil {
			t.Fatalf("WriteFileDirect(%d bytes): %v", n, err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%d bytes: read back %d bytes, differing", n, len(got))
		}
		if err := WriteFileDirect(path, data); !errors.Is(err, os.ErrExist) {
			t.Errorf("second write of %s: %v, want it to exist", path, err)
		}
		os.Remove(path)
	}
}

func TestWriteFileDirectRefusesUnaligned(t *testing.T) {
	buf := make([]byte, 3*DirectAlign)
	data, _ := Aligned(buf, 100)
	path := filepath.Join(t.TempDir(), "f")
	if err := WriteFileDirect(path, buf[1:101]); err == nil && uintptr(unsafe.Pointer(&buf[1]))%DirectAlign != 0 {
		t.Error("unaligned buffer accepted")
	}
	if _, err := os.Stat(path); err == nil {
		os.Remove(path)
	}
	if err := WriteFileDirect(path, data[:100:100]); err == nil {
		t.Error("buffer without room for the rounded length accepted")
	}
}
