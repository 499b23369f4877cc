package nfs

import (
	"context"
	"errors"
	"io/fs"
	"syscall"
)

// nfsstat3 values (RFC 1813 2.6).
const (
	nfsOK             = 0
	nfsErrPerm        = 1
	nfsErrNoEnt       = 2
	nfsErrIO          = 5
	nfsErrAcces       = 13
	nfsErrExist       = 17
	nfsErrXDev        = 18
	nfsErrNotDir      = 20
	nfsErrIsDir       = 21
	nfsErrInval       = 22
	nfsErrFBig        = 27
	nfsErrNoSpc       = 28
	nfsErrROFS        = 30
	nfsErrNameTooLong = 63
	nfsErrNotEmpty    = 66
	nfsErrDQuot       = 69
	nfsErrStale       = 70
	nfsErrBadHandle   = 10001
	nfsErrNotSync     = 10002
	nfsErrBadCookie   = 10003
	nfsErrNotSupp     = 10004
	nfsErrTooSmall    = 10005
	nfsErrServerFault = 10006
	nfsErrJukebox     = 10008
)

// errnoStatus maps the errnos the fs.Tree contract names (and a few more a
// Tree may pass through) onto NFS statuses. EBUSY (a vdisk that still has
// clones) has no NFSv3 status of its own; ACCES says "refused" without
// inviting the retry JUKEBOX would.
var errnoStatus = map[syscall.Errno]uint32{
	syscall.EPERM:        nfsErrPerm,
	syscall.ENOENT:       nfsErrNoEnt,
	syscall.EIO:          nfsErrIO,
	syscall.EACCES:       nfsErrAcces,
	syscall.EBUSY:        nfsErrAcces,
	syscall.EEXIST:       nfsErrExist,
	syscall.EXDEV:        nfsErrXDev,
	syscall.ENOTDIR:      nfsErrNotDir,
	syscall.EISDIR:       nfsErrIsDir,
	syscall.EINVAL:       nfsErrInval,
	syscall.EFBIG:        nfsErrFBig,
	syscall.ENOSPC:       nfsErrNoSpc,
	syscall.EROFS:        nfsErrROFS,
	syscall.ENAMETOOLONG: nfsErrNameTooLong,
	syscall.ENOTEMPTY:    nfsErrNotEmpty,
	syscall.EDQUOT:       nfsErrDQuot,
	syscall.ESTALE:       nfsErrStale,
	syscall.ENOTSUP:      nfsErrNotSupp,
	syscall.EAGAIN:       nfsErrJukebox,
}

// status maps a Tree error onto an nfsstat3. An errno wins over the io/fs
// sentinel it also matches (EACCES is ErrPermission but is ACCES, not
// PERM); anything unknown is an I/O error.
func status(err error) uint32 {
	if err == nil {
		return nfsOK
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if st, ok := errnoStatus[errno]; ok {
			return st
		}
		return nfsErrIO
	}
	switch {
	case errors.Is(err, errBadHandle):
		return nfsErrBadHandle
	case errors.Is(err, errStale):
		return nfsErrStale
	case errors.Is(err, fs.ErrNotExist):
		return nfsErrNoEnt
	case errors.Is(err, fs.ErrExist):
		return nfsErrExist
	case errors.Is(err, fs.ErrPermission):
		return nfsErrAcces
	case errors.Is(err, fs.ErrInvalid):
		return nfsErrInval
	case errors.Is(err, context.DeadlineExceeded):
		return nfsErrJukebox
	}
	return nfsErrIO
}
