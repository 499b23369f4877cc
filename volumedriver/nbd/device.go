package nbd

import (
	"context"
	"errors"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// Device is one export's block device (the same type as remote.Device).
type Device = blockdev.Device

// Extent is a run of bytes with one allocation state (NBD base:allocation).
type Extent = blockdev.Extent

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
