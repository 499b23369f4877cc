package nbd

import (
	"context"
	"errors"
)

// Device is one export's block device.
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
	Hole   bool // NBD_STATE_HOLE
	Zero   bool // NBD_STATE_ZERO
}

// ReadOnlyDevice is optionally implemented by devices that refuse writes.
type ReadOnlyDevice interface{ ReadOnly() bool }

// FastZeroDevice is optionally implemented by devices whose WriteZeroes is
// much cheaper than writing zero-filled data (for example a metadata-only
// operation). When FastZero reports true, NBD_CMD_WRITE_ZEROES requests with
// NBD_CMD_FLAG_FAST_ZERO are carried out; otherwise they fail at once with
// NBD_ENOTSUP, as the protocol asks, and the client falls back to writing.
type FastZeroDevice interface{ FastZero() bool }

// Exports resolves export names to devices.
type Exports interface {
	// OpenExport returns the device and a release func the server calls once when
	// the client disconnects. Unknown names return an error wrapping ErrUnknownExport.
	OpenExport(ctx context.Context, name string) (Device, func(), error)
	ListExports(ctx context.Context) ([]string, error)
}

// ErrUnknownExport is wrapped by Exports.OpenExport errors for names that do
// not exist.
var ErrUnknownExport = errors.New("nbd: unknown export")
