package fsutil

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// WriteFileDirect stores exactly the bytes given, whatever their length
// and alignment (direct bulk and buffered tail, or all buffered).
func TestWriteFileDirect(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		n       int
		aligned bool
	}{
		{"empty", 0, true},
		{"short", 100, true},
		{"one block", DirectAlign, true},
		{"blocks and tail", 3*DirectAlign + 17, true},
		{"1 MiB and header", 1<<20 + 1046, true},
		{"unaligned buffer", 2*DirectAlign + 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf := AlignedBuf(tc.n + 1)
			if !tc.aligned {
				buf = buf[1:]
			}
			data := buf[:tc.n]
			for i := range data {
				data[i] = byte(i*7 + 3)
			}
			if tc.n > 0 && Aligned(data) != tc.aligned {
				t.Fatalf("Aligned = %v, want %v", Aligned(data), tc.aligned)
			}
			path := filepath.Join(dir, tc.name)
			if err := WriteFileDirect(path, data); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, wrote %d (or different bytes)", len(got), len(data))
			}
			if err := WriteFileDirect(path, data); !os.IsExist(err) {
				t.Fatalf("second write of an existing file: %v, want it to exist", err)
			}
		})
	}
}
