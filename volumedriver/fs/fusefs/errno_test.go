package fusefs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"syscall"
	"testing"
)

func TestErrno(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("x: %w", iofs.ErrNotExist), syscall.ENOENT},
		{fmt.Errorf("x: %w", iofs.ErrExist), syscall.EEXIST},
		{fmt.Errorf("x: %w", iofs.ErrInvalid), syscall.EINVAL},
		{fmt.Errorf("x: %w", iofs.ErrPermission), syscall.EPERM},
		{fmt.Errorf("vdisk has clones: %w", syscall.EBUSY), syscall.EBUSY},
		{fmt.Errorf("%w: %w", syscall.EROFS, iofs.ErrInvalid), syscall.EROFS},
		{fmt.Errorf("x: %w", syscall.EFBIG), syscall.EFBIG},
		{fmt.Errorf("x: %w", syscall.EXDEV), syscall.EXDEV},
		{context.DeadlineExceeded, syscall.EINTR},
		{errors.New("backend down"), syscall.EIO},
	} {
		if got := Errno(tc.err); got != tc.want {
			t.Errorf("Errno(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
