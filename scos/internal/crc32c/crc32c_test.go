package crc32c

import (
	"math/rand/v2"
	"testing"
)

func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 1<<20+77)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	cases := []struct{ a, b int }{
		{0, 0}, {0, 1}, {1, 0}, {1, 1}, {3, 4096}, {4096, 4096}, {4096, 13},
		{1 << 19, 1 << 19}, {1, 1<<20 + 76}, {12345, 678}, {1<<20 + 77, 0},
	}
	for _, c := range cases {
		a, b := data[:c.a], data[c.a:c.a+c.b]
		want := Checksum(data[:c.a+c.b])
		if got := Combine(Checksum(a), Checksum(b), int64(len(b))); got != want {
			t.Errorf("Combine(%d bytes, %d bytes) = %08x, want %08x", c.a, c.b, got, want)
		}
	}
}

func TestShiftCombineBlocks(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const block = 4096
	data := make([]byte, 37*block+100)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	s := ShiftFor(block)
	var crc uint32
	for lo := 0; lo < len(data); lo += block {
		b := data[lo:min(lo+block, len(data))]
		if len(b) == block {
			crc = s.Combine(crc, Checksum(b))
		} else {
			crc = Combine(crc, Checksum(b), int64(len(b)))
		}
	}
	if want := Checksum(data); crc != want {
		t.Fatalf("combined %08x, want %08x", crc, want)
	}
	if got := Update(Checksum(data[:5]), data[5:]); got != Checksum(data) {
		t.Fatalf("Update: %08x, want %08x", got, Checksum(data))
	}
}

func FuzzCombine(f *testing.F) {
	f.Add([]byte("hello, world"), 5)
	f.Fuzz(func(t *testing.T, data []byte, cut int) {
		if cut < 0 || cut > len(data) {
			return
		}
		if got, want := Combine(Checksum(data[:cut]), Checksum(data[cut:]), int64(len(data)-cut)), Checksum(data); got != want {
			t.Fatalf("cut %d of %d: %08x, want %08x", cut, len(data), got, want)
		}
	})
}
