package fsutil

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// DirectAlign is the alignment O_DIRECT asks of buffers, file offsets and
// lengths: the largest logical block size of the disks we run on.
const DirectAlign = 4096

// ErrDirectUnsupported: the file system refused O_DIRECT (tmpfs on older
// kernels, some FUSE and network file systems) or the alignment; write
// through the page cache instead.
var ErrDirectUnsupported = errors.New("O_DIRECT not supported here")

// Aligned returns buf[off:off+n] for the first off at which the slice
// starts on a DirectAlign boundary, with its capacity cut to a multiple of
// DirectAlign (at least n rounded up). ok is false when buf has not the
// room (n + 2*DirectAlign is always enough).
func Aligned(buf []byte, n int) (b []byte, ok bool) {
	if cap(buf) == 0 {
		return nil, false
	}
	buf = buf[:cap(buf)]
	off := int((DirectAlign - uintptr(unsafe.Pointer(&buf[0]))%DirectAlign) % DirectAlign)
	end := off + (len(buf)-off)/DirectAlign*DirectAlign
	if end-off < roundUp(n) {
		return nil, false
	}
	return buf[off : off+n : end], true
}

func roundUp(n int) int { return (n + DirectAlign - 1) / DirectAlign * DirectAlign }

// WriteFileDirect creates path (which must not exist) holding data and
// fsyncs it, writing with O_DIRECT: from data's memory to the disk, with
// no copy into the page cache. Data written once and read seldom (an
// ASD's fragments: the volume driver caches what it reads) gains nothing
// from the page cache, and in a VM every page the cache grows by costs a
// fault on the host: writing fragments through it took 3.4 ms of CPU per
// MiB against 0.7 ms direct (measured in this project's test VM).
//
// data must come from Aligned: it starts on a DirectAlign boundary and its
// capacity reaches len(data) rounded up to DirectAlign; the bytes past
// len(data) are zeroed and written, then cut off by a truncate. When the
// file system refuses O_DIRECT, the error is ErrDirectUnsupported and path
// does not exist.
func WriteFileDirect(path string, data []byte) (err error) {
	n := roundUp(len(data))
	if n > cap(data) || len(data) > 0 && uintptr(unsafe.Pointer(&data[:1][0]))%DirectAlign != 0 {
		return fmt.Errorf("write %s: buffer not aligned for O_DIRECT", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_DIRECT, 0o600)
	if errors.Is(err, syscall.EINVAL) {
		// Some file systems create the file before refusing the flag.
		os.Remove(path)
		return ErrDirectUnsupported
	}
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if n > 0 {
		whole := data[:n]
		clear(whole[len(data):])
		if _, err := f.Write(whole); err != nil {
			if errors.Is(err, syscall.EINVAL) {
				return ErrDirectUnsupported
			}
			return err
		}
	}
	if n != len(data) {
		if err := f.Truncate(int64(len(data))); err != nil {
			return err
		}
	}
	return f.Sync()
}
