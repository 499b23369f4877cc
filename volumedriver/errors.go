package volumedriver

import (
	"errors"
	"syscall"

	"github.com/ovs-storage/ovs/scos"
)

// Errors returned by the volume driver. Callers test them with errors.Is;
// the frontends map them onto their protocol's error codes.
var (
	// ErrNotFound: no vdisk by that name.
	ErrNotFound = errors.New("vdisk not found")
	// ErrExists: a vdisk by that name exists already.
	ErrExists = errors.New("vdisk already exists")
	// ErrInvalidArgument: a bad name, an impossible size, a shrink.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrBusy: the vdisk is in use (a frontend client has it open).
	ErrBusy = errors.New("vdisk is in use")
	// ErrClosed: the volume was stopped or deleted under the caller.
	ErrClosed = errors.New("vdisk is closed")
	// ErrOutOfRange: an I/O past the end of the vdisk. It matches
	// syscall.ENOSPC so that block frontends can map it directly.
	ErrOutOfRange = errorWithErrno{"I/O beyond the end of the vdisk", syscall.ENOSPC}
	// ErrReadOnly: a change to a template. It matches syscall.EPERM.
	ErrReadOnly = errorWithErrno{"vdisk is a read-only template", syscall.EPERM}
	// ErrDataLost: the cluster's data is gone from this host and never
	// reached the backend. It matches syscall.EIO.
	ErrDataLost = errorWithErrno{"cluster data lost", syscall.EIO}
	// ErrReleased: the vdisk is being (or was) handed over to another
	// host (Release); the caller retries the operation at its new owner.
	ErrReleased = errors.New("vdisk was handed over to another host")
	// ErrFenced: another host owns the vdisk now; this one may neither
	// write its backend namespace nor serve it (stale or split data). It
	// also matches scos.ErrFenced.
	ErrFenced error = fencedError{}
)

type fencedError struct{}

func (fencedError) Error() string { return "vdisk is fenced: another host owns it now" }

func (fencedError) Is(target error) bool { return target == scos.ErrFenced }

// errorWithErrno is a sentinel that also matches an errno under errors.Is.
type errorWithErrno struct {
	msg   string
	errno syscall.Errno
}

func (e errorWithErrno) Error() string { return e.msg }

func (e errorWithErrno) Is(target error) bool { return target == e.errno }
