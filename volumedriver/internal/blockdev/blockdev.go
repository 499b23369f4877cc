// Package blockdev defines the block device that the volume driver's wire
// servers (NBD and node-to-node forwarding) serve. Both re-export it with
// type aliases (nbd.Device, remote.Device), so that one implementation
// serves either.
package blockdev

import (
	"context"
	"encoding/binary"
	"fmt"
	"syscall"
)

// Device is one vdisk as a server sees it.
type Device interface {
	Size() int64
	// ReadAt fills p from offset off. off/len are within Size (the server checks).
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off; with fua the data is durable when it returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every write completed before the call durable (across all connections).
	Flush(ctx context.Context) error
	// Trim discards the range; it then reads as zeros.
	Trim(ctx context.Context, off, length int64) error
	// WriteZeroes makes the range read as zeros; noHole asks that it stay allocated.
	WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error
	// BlockStatus describes allocation from off on: extents in order, the first
	// starting at off, covering at most length bytes (may cover less, never 0).
	BlockStatus(ctx context.Context, off, length int64) ([]Extent, error)
}

// CompareAndWriter is a Device that compares and writes as one operation,
// serialised with every other CompareAndWrite on the vdisk (at its owner):
// SCSI COMPARE AND WRITE, which VMware's ATS locking is built on. Two
// initiators racing for one lock block must not both see their compare
// succeed, which a read, compare and write done by the frontend cannot
// promise once several connections (or nodes) serve the vdisk.
type CompareAndWriter interface {
	// CompareAndWrite writes data at off if the device holds cmp there
	// (len(cmp) == len(data) <= MaxCompareAndWrite); otherwise it writes
	// nothing and returns the offset, from off, of the first byte that
	// differs. It returns -1 when it wrote (also for empty slices). With
	// fua the data is durable when it returns. Range errors are those of
	// WriteAt; bad lengths fail with an error matching syscall.EINVAL.
	CompareAndWrite(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error)
}

// MaxCompareAndWrite bounds the bytes one CompareAndWrite compares (and
// writes). ATS uses one 512-byte block; SCSI allows 255 blocks, and the
// operation is held under a per-vdisk lock, so it stays small.
const MaxCompareAndWrite = 1 << 20

// CheckCompareAndWrite reports lengths that CompareAndWrite refuses: cmp
// and data of different lengths, or longer than MaxCompareAndWrite. The
// error matches syscall.EINVAL.
func CheckCompareAndWrite(cmp, data []byte) error {
	switch {
	case len(cmp) != len(data):
		return fmt.Errorf("compare and write: %d bytes to compare, %d to write: %w", len(cmp), len(data), syscall.EINVAL)
	case len(cmp) > MaxCompareAndWrite:
		return fmt.Errorf("compare and write of %d bytes exceeds the limit of %d: %w", len(cmp), MaxCompareAndWrite, syscall.EINVAL)
	}
	return nil
}

// Mismatch returns the offset of the first byte where a and b differ (the
// shorter one's length if one is a prefix of the other), or -1 when they
// are equal.
func Mismatch(a, b []byte) int64 {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return int64(i)
		}
	}
	if len(a) != len(b) {
		return int64(n)
	}
	return -1
}

// Extent is a run of bytes with one allocation state (NBD base:allocation).
type Extent struct {
	Length int64
	Hole   bool // not allocated (NBD_STATE_HOLE); reads as zeros
	Zero   bool // reads as zeros (NBD_STATE_ZERO)
}

// Descriptor flags of AppendExtents: NBD_STATE_HOLE and NBD_STATE_ZERO.
const (
	FlagHole = 1
	FlagZero = 2
)

// DescriptorSize is the encoded size of one extent.
const DescriptorSize = 8

// AppendExtents encodes exts, an answer to a request of want bytes, as
// descriptors of a u32 length and u32 flags, big-endian: the NBD
// base:allocation encoding, which the forwarding protocol uses too. Empty
// extents are dropped, neighbours with the same flags merged, the total
// clipped to want and the count to maxN. It returns the buffer and the
// number of descriptors appended.
func AppendExtents(b []byte, exts []Extent, want int64, maxN int) ([]byte, int) {
	n := 0
	var last uint32
	for _, e := range exts {
		if want == 0 {
			break
		}
		if e.Length <= 0 {
			continue
		}
		var flags uint32
		if e.Hole {
			flags |= FlagHole
		}
		if e.Zero {
			flags |= FlagZero
		}
		l := min(e.Length, want)
		if n > 0 && flags == last {
			// Sums stay <= want, which the callers keep below 2^32.
			i := len(b) - DescriptorSize
			binary.BigEndian.PutUint32(b[i:], binary.BigEndian.Uint32(b[i:])+uint32(l))
		} else {
			if n == maxN {
				break
			}
			b = binary.BigEndian.AppendUint32(b, uint32(l))
			b = binary.BigEndian.AppendUint32(b, flags)
			n++
			last = flags
		}
		want -= l
	}
	return b, n
}
