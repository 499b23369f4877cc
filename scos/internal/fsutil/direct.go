package fsutil

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// DirectAlign is the alignment O_DIRECT asks of a buffer's address, the
// file offset and the length: the logical block size of the devices we
// run on is at most 4 KiB.
const DirectAlign = 4096

// AlignedBuf returns a buffer of length n whose first byte sits on a
// DirectAlign boundary, for WriteFileDirect.
func AlignedBuf(n int) []byte {
	b := make([]byte, n+DirectAlign)
	return b[alignOffset(b):][:n]
}

func alignOffset(b []byte) int {
	if cap(b) == 0 {
		return 0
	}
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % DirectAlign)
	if off == 0 {
		return 0
	}
	return DirectAlign - off
}

// Aligned reports whether b starts on a DirectAlign boundary.
func Aligned(b []byte) bool { return len(b) > 0 && alignOffset(b) == 0 }

// WriteFileDirect creates path (which must not exist), writes data and
// fsyncs it, as WriteFileSync does, but writes the DirectAlign-aligned
// bulk of data with O_DIRECT when data starts on a DirectAlign boundary;
// the short tail goes through the page cache. A write-once file that is
// fsynced at once gains nothing from the page cache: copying into it was
// the largest single cost of an ASD's fragment puts (12% of a node's CPU
// on sequential writes), the copies must then be written back and
// reclaimed, and they push out pages that are read again. Where O_DIRECT
// is refused (a file system without it) the whole file is written
// buffered.
func WriteFileDirect(path string, data []byte) error {
	bulk := len(data) &^ (DirectAlign - 1)
	if bulk == 0 || !Aligned(data) {
		return WriteFileSync(path, data)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
	if errors.Is(err, syscall.EINVAL) {
		return WriteFileSync(path, data)
	}
	if err != nil {
		return err
	}
	err = writeDirect(f, data, bulk)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeDirect writes data to f, opened with O_DIRECT: bulk bytes direct,
// the rest after turning O_DIRECT off.
func writeDirect(f *os.File, data []byte, bulk int) error {
	n, err := f.Write(data[:bulk])
	if errors.Is(err, syscall.EINVAL) && n == 0 {
		// The file system takes O_DIRECT at open but not this write
		// (a larger logical block size): write it all buffered.
		bulk = 0
	} else if err != nil {
		return err
	}
	if bulk == len(data) {
		return nil
	}
	if err := clearDirect(f); err != nil {
		return err
	}
	_, err = f.Write(data[bulk:])
	return err
}

func clearDirect(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("clear O_DIRECT: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		flags, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		if e != 0 {
			serr = e
			return
		}
		if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_SETFL, flags&^syscall.O_DIRECT); e != 0 {
			serr = e
		}
	}); err != nil {
		return fmt.Errorf("clear O_DIRECT: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("clear O_DIRECT: %w", serr)
	}
	return nil
}
