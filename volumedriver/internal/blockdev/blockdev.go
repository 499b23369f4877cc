// Package blockdev defines the block device that the volume driver's wire
// servers (NBD and node-to-node forwarding) serve. Both re-export it with
// type aliases (nbd.Device, remote.Device), so that one implementation
// serves either.
package blockdev

import (
	"context"
	"encoding/binary"
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
