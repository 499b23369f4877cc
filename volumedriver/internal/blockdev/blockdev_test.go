package blockdev

import (
	"encoding/binary"
	"errors"
	"slices"
	"syscall"
	"testing"
)

func TestAppendExtents(t *testing.T) {
	const hz = FlagHole | FlagZero
	for _, tc := range []struct {
		name string
		exts []Extent
		want int64
		maxN int
		out  [][2]uint32
	}{
		{"merges equal neighbours", []Extent{{Length: 4096, Hole: true, Zero: true}, {Length: 4096, Hole: true, Zero: true}, {Length: 4096}}, 12288, 8,
			[][2]uint32{{8192, hz}, {4096, 0}}},
		{"drops empty extents", []Extent{{Length: 0}, {Length: -5}, {Length: 4096, Zero: true}}, 4096, 8, [][2]uint32{{4096, FlagZero}}},
		{"clips to the request", []Extent{{Length: 1 << 30, Hole: true, Zero: true}}, 4096, 8, [][2]uint32{{4096, hz}}},
		{"stops at the request", []Extent{{Length: 4096}, {Length: 4096, Hole: true, Zero: true}, {Length: 4096}}, 6000, 8,
			[][2]uint32{{4096, 0}, {1904, hz}}},
		{"caps the count", []Extent{{Length: 4096}, {Length: 4096, Hole: true, Zero: true}}, 8192, 1, [][2]uint32{{4096, 0}}},
		{"merging passes the cap", []Extent{{Length: 4096}, {Length: 4096}}, 8192, 1, [][2]uint32{{8192, 0}}},
		{"none", nil, 4096, 8, nil},
	} {
		b, n := AppendExtents([]byte{0xff}, tc.exts, tc.want, tc.maxN)
		var got [][2]uint32
		for i := 1; i+DescriptorSize <= len(b); i += DescriptorSize {
			got = append(got, [2]uint32{binary.BigEndian.Uint32(b[i:]), binary.BigEndian.Uint32(b[i+4:])})
		}
		if b[0] != 0xff || n != len(got) || (len(b)-1)%DescriptorSize != 0 || !slices.Equal(got, tc.out) {
			t.Errorf("%s: %d descriptors %v (%d bytes), want %v", tc.name, n, got, len(b), tc.out)
		}
	}
}

func TestMismatch(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int64
	}{
		{"", "", -1},
		{"abc", "abc", -1},
		{"abc", "xbc", 0},
		{"abc", "abx", 2},
		{"ab", "abc", 2},
		{"abc", "a", 1},
	} {
		if got := Mismatch([]byte(tc.a), []byte(tc.b)); got != tc.want {
			t.Errorf("Mismatch(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestCheckCompareAndWrite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cmp, wr int
		ok      bool
	}{
		{"one block", 512, 512, true},
		{"empty", 0, 0, true},
		{"the limit", MaxCompareAndWrite, MaxCompareAndWrite, true},
		{"over the limit", MaxCompareAndWrite + 1, MaxCompareAndWrite + 1, false},
		{"lengths differ", 512, 1024, false},
	} {
		err := CheckCompareAndWrite(make([]byte, tc.cmp), make([]byte, tc.wr))
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
