// Package fsutil holds the durable-file helpers that the local-directory
// backend (scos) and the ASD daemon (scos/asd) share: both write a
// temporary file, fsync it, rename it into place and fsync the directory.
package fsutil

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// TmpPrefix marks in-flight writes; names starting with '.' are not valid
// object, namespace or fragment names, so they never collide and listings
// skip them.
const TmpPrefix = ".tmp-"

// WriteFileSync creates path (which must not exist), writes data and
// fsyncs it.
func WriteFileSync(path string, data []byte) error {
	return WriteFileWith(path, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// WriteFileWith creates path, lets fill write it, and fsyncs it.
func WriteFileWith(path string, fill func(*os.File) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// SyncDir fsyncs a directory so that renames and creates in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// RandomSuffix returns 16 random hex digits for temporary names.
func RandomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
