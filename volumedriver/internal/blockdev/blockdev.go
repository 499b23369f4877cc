// Package blockdev defines the block device that the volume driver's wire
// servers (NBD and node-to-node forwarding) serve. Both re-export it with
// type aliases (nbd.Device, remote.Device), so that one implementation
// serves either.
package blockdev

import "context"

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
