package nbd

import (
	"context"
	"errors"
	"syscall"
)

// errnoOf maps a device error onto an NBD error value. Devices report
// conditions with errors that match syscall errnos under errors.Is.
func errnoOf(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EINVAL):
		return errInval
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EACCES):
		return errPerm
	case errors.Is(err, syscall.ESHUTDOWN):
		return errShutdown
	default:
		return errIO
	}
}

// errnoFor is errnoOf for a request served under ctx: a device call that
// failed because the connection is being torn down reports NBD_ESHUTDOWN.
func errnoFor(ctx context.Context, err error) uint32 {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return errShutdown
	}
	return errnoOf(err)
}

// errnoText is the message sent with a structured error chunk.
func errnoText(e uint32) string {
	switch e {
	case errPerm:
		return "operation not permitted"
	case errIO:
		return "input/output error"
	case errNoMem:
		return "cannot allocate memory"
	case errInval:
		return "invalid argument"
	case errNoSpc:
		return "no space left on device"
	case errOverflow:
		return "value too large"
	case errNotSup:
		return "operation not supported"
	case errShutdown:
		return "server is shutting down"
	default:
		return "error"
	}
}
