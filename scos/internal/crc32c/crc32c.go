// Package crc32c computes CRC-32C (Castagnoli) checksums and combines
// them: the checksum of a concatenation follows from the checksums of its
// parts and the length of the second, with no pass over the bytes. The
// write path checksums the same bytes at several granularities (an
// object, its fragments, a fragment's blocks); combining derives the
// coarse checksums from the fine ones instead of reading the data again.
package crc32c

import "hash/crc32"

var table = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of b.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, table) }

// Update returns the CRC-32C of the bytes whose checksum is crc followed
// by b.
func Update(crc uint32, b []byte) uint32 { return crc32.Update(crc, table, b) }

// The checksum algebra: in the reflected bit order of the CRC, bit 31 is
// the coefficient of x^0. A CRC of A followed by B is CRC(A)·x^(8|B|) mod
// P xor CRC(B), for the pre- and post-inverted CRC too (the inversions of
// A's CRC cancel out in the shift, and B's are in CRC(B)).
const poly = 0x82f63b78 // Castagnoli, reflected

// x2n[i] is x^(2^i) mod P.
var x2n = func() (t [64]uint32) {
	p := uint32(1) << 30 // x^1
	for i := range t {
		t[i] = p
		p = multModP(p, p)
	}
	return t
}()

// multModP returns a·b mod P.
func multModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		if b&1 != 0 {
			b = b>>1 ^ poly
		} else {
			b >>= 1
		}
	}
	return p
}

// Shift is the operator that appends n zero bits' worth of shift to a
// checksum: x^n mod P.
type Shift uint32

// ShiftFor returns the operator for a second part of n bytes.
func ShiftFor(n int64) Shift {
	p := uint32(1) << 31 // x^0
	k := 3               // n bytes = n·2^3 bits
	for u := uint64(n); u != 0; u >>= 1 {
		if u&1 != 0 {
			p = multModP(x2n[k&63], p)
		}
		k++
	}
	return Shift(p)
}

// Combine returns the CRC-32C of A followed by B, given crcA, crcB and
// the length of B.
func Combine(crcA, crcB uint32, lenB int64) uint32 {
	return ShiftFor(lenB).Combine(crcA, crcB)
}

// Combine is Combine for a B of the length s was made for.
func (s Shift) Combine(crcA, crcB uint32) uint32 {
	return multModP(uint32(s), crcA) ^ crcB
}
