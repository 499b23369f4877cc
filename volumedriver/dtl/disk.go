package dtl

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// On-disk format (see doc.go).
const (
	// FormatVersion is the version of the group and fence files.
	FormatVersion = 1

	fenceName    = "fence"
	fenceTmpName = "fence.tmp"
	groupExt     = ".dtl"
	corruptExt   = ".corrupt"
	seqDigits    = 12

	magicLen      = 7
	fenceFileSize = magicLen + 1 + 8 + 4
	recHdrSize    = 9 // u32 length | u32 crc | u8 kind
	maxRecord     = 1 + maxEntryBody
	maxFileHeader = magicLen + 1 + 8 + 2 + 2*MaxGroupLen + 4
)

var (
	groupMagic = [magicLen]byte{'O', 'V', 'S', 'D', 'T', 'L', 'G'}
	fenceMagic = [magicLen]byte{'O', 'V', 'S', 'D', 'T', 'L', 'F'}

	// errBadHeader: a group file whose header is torn or corrupt.
	errBadHeader = errors.New("dtl: bad group file header")
)

func groupFileName(seq uint64, tlog string) string {
	return fmt.Sprintf("%0*d-%s%s", seqDigits, seq, tlog, groupExt)
}

// parseGroupFileName splits "<seq>-<tlog>.dtl"; ok is false for any other
// name.
func parseGroupFileName(name string) (seq uint64, tlog string, ok bool) {
	base, found := strings.CutSuffix(name, groupExt)
	if !found || len(base) < seqDigits+2 || base[seqDigits] != '-' {
		return 0, "", false
	}
	seq, err := strconv.ParseUint(base[:seqDigits], 10, 64)
	if err != nil {
		return 0, "", false
	}
	tlog = base[seqDigits+1:]
	if validGroup(tlog, false) != nil {
		return 0, "", false
	}
	return seq, tlog, true
}

// appendFileHeader encodes a group file's header:
//
//	magic "OVSDTLG" | u8 version | u64 epoch | u8 len, tlog | u8 len, prev | u32 CRC-32C of all before
func appendFileHeader(b []byte, epoch uint64, tlog, prev string) []byte {
	start := len(b)
	b = append(b, groupMagic[:]...)
	b = append(b, FormatVersion)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = appendStr(b, tlog)
	b = appendStr(b, prev)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

// readFileHeader reads and checks a group file header. It returns an error
// wrapping ErrVersion for a version it does not know, errBadHeader for a
// torn or corrupt one.
func readFileHeader(r io.Reader) (epoch uint64, tlog, prev string, n int, err error) {
	buf := make([]byte, 0, maxFileHeader)
	read := func(k int) ([]byte, error) {
		start := len(buf)
		buf = buf[:start+k]
		if _, err := io.ReadFull(r, buf[start:]); err != nil {
			return nil, fmt.Errorf("%w: %v", errBadHeader, err)
		}
		return buf[start:], nil
	}
	p, err := read(magicLen + 1 + 8 + 1)
	if err != nil {
		return 0, "", "", 0, err
	}
	if [magicLen]byte(p[:magicLen]) != groupMagic {
		return 0, "", "", 0, fmt.Errorf("%w: bad magic %q", errBadHeader, p[:magicLen])
	}
	if v := p[magicLen]; v != FormatVersion {
		return 0, "", "", 0, fmt.Errorf("%w: group file format version %d, this code reads %d", ErrVersion, v, FormatVersion)
	}
	epoch = binary.BigEndian.Uint64(p[magicLen+1:])
	tlen := int(p[magicLen+9])
	if tlen > MaxGroupLen {
		return 0, "", "", 0, fmt.Errorf("%w: tlog name of %d bytes", errBadHeader, tlen)
	}
	if p, err = read(tlen + 1); err != nil {
		return 0, "", "", 0, err
	}
	tlog = string(p[:tlen])
	plen := int(p[tlen])
	if plen > MaxGroupLen {
		return 0, "", "", 0, fmt.Errorf("%w: prev name of %d bytes", errBadHeader, plen)
	}
	if p, err = read(plen + 4); err != nil {
		return 0, "", "", 0, err
	}
	prev = string(p[:plen])
	body := buf[:len(buf)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(p[plen:]); got != want {
		return 0, "", "", 0, fmt.Errorf("%w: header CRC %08x, expected %08x", errBadHeader, got, want)
	}
	if validGroup(tlog, false) != nil || validGroup(prev, true) != nil {
		return 0, "", "", 0, fmt.Errorf("%w: bad group names %q, %q", errBadHeader, tlog, prev)
	}
	return epoch, tlog, prev, len(buf), nil
}

// appendRecordHdr encodes the header of a record holding an entry body of
// kind k:
//
//	u32 length (kind + body) | u32 CRC-32C of (length, kind, body) | u8 kind
func appendRecordHdr(b []byte, k Kind, body []byte) []byte {
	var lk [5]byte
	binary.BigEndian.PutUint32(lk[:], uint32(1+len(body)))
	lk[4] = byte(k)
	crc := crc32.Update(crc32.Checksum(lk[:], castagnoli), castagnoli, body)
	b = append(b, lk[:4]...)
	b = binary.BigEndian.AppendUint32(b, crc)
	return append(b, byte(k))
}

// Outcomes of readRecord besides success.
var (
	errTorn        = errors.New("record runs past the end of the file")
	errBadRecord   = errors.New("corrupt record")
	errCleanEOF    = io.EOF
	errRecordLimit = fmt.Errorf("%w: record length out of range", errBadRecord)
)

// readRecord reads one record into *buf (grown as needed, never beyond
// maxRecord) and returns its kind and body, verified: the record CRC and,
// for a Write, every cluster CRC. It returns io.EOF at a clean end,
// errTorn when the file ends inside the record and errBadRecord (wrapped)
// when the record is corrupt.
func readRecord(r io.Reader, buf *[]byte) (Kind, []byte, error) {
	var hdr [recHdrSize]byte
	n, err := io.ReadFull(r, hdr[:])
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return 0, nil, errCleanEOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		return 0, nil, errTorn
	case err != nil:
		return 0, nil, err
	}
	length := binary.BigEndian.Uint32(hdr[:])
	if length < 1 || length > maxRecord {
		return 0, nil, errRecordLimit
	}
	k := Kind(hdr[8])
	if cap(*buf) < int(length)-1 {
		*buf = make([]byte, length-1)
	}
	body := (*buf)[:length-1]
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, errTorn
		}
		return 0, nil, err
	}
	lk := [5]byte{hdr[0], hdr[1], hdr[2], hdr[3], hdr[8]}
	crc := crc32.Update(crc32.Checksum(lk[:], castagnoli), castagnoli, body)
	if want := binary.BigEndian.Uint32(hdr[4:]); crc != want {
		return 0, nil, fmt.Errorf("%w: CRC %08x, expected %08x", errBadRecord, crc, want)
	}
	if _, err := verifyEntryBody(k, body, 0); err != nil {
		return 0, nil, fmt.Errorf("%w: %v", errBadRecord, err)
	}
	return k, body, nil
}

// scanned is what scanGroupFile found in a group file.
type scanned struct {
	epoch      uint64
	tlog, prev string
	hdrLen     int
	size       int64 // valid bytes, header included
	entries    int
	cut        bool  // a torn tail was cut off
	corruptAt  int64 // offset of a corrupt record ending the valid part, -1 if none
	corruptErr error
}

// scanGroupFile reads a group file and verifies every record. A torn
// tail (a crash during a write) is truncated away; a corrupt record
// before the tail ends the valid part without changing the file.
func scanGroupFile(path string) (scanned, error) {
	sc := scanned{corruptAt: -1}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return sc, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return sc, fmt.Errorf("stat %s: %w", path, err)
	}
	fileSize := st.Size()
	br := bufio.NewReaderSize(f, 256<<10)
	sc.epoch, sc.tlog, sc.prev, sc.hdrLen, err = readFileHeader(br)
	if err != nil {
		return sc, err
	}
	off := int64(sc.hdrLen)
	var buf []byte
	for {
		_, body, err := readRecord(br, &buf)
		if err == nil {
			off += int64(recHdrSize + len(body))
			sc.entries++
			continue
		}
		if errors.Is(err, io.EOF) {
			break
		}
		torn := errors.Is(err, errTorn)
		if !torn && errors.Is(err, errBadRecord) {
			// A record that is bad and last, or followed only by
			// zeros, is what a crash leaves behind (a file extended
			// before its data reached the disk): a torn tail too.
			rest, rerr := zerosFrom(f, off, fileSize)
			if rerr != nil {
				return sc, rerr
			}
			torn = rest
		} else if !torn {
			return sc, fmt.Errorf("read %s at offset %d: %w", path, off, err)
		}
		if torn {
			if err := f.Truncate(off); err != nil {
				return sc, fmt.Errorf("cut the torn tail of %s at %d: %w", path, off, err)
			}
			if err := f.Sync(); err != nil {
				return sc, fmt.Errorf("sync %s: %w", path, err)
			}
			sc.cut = true
		} else {
			sc.corruptAt, sc.corruptErr = off, err
		}
		break
	}
	sc.size = off
	return sc, nil
}

// zerosFrom reports whether the bytes of f from the record at off to the
// end are that record alone or zeros after its header.
func zerosFrom(f *os.File, off, size int64) (bool, error) {
	var hdr [recHdrSize]byte
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		return false, fmt.Errorf("reread %s at %d: %w", f.Name(), off, err)
	}
	if end := off + recHdrSize + int64(binary.BigEndian.Uint32(hdr[:])) - 1; end == size {
		return true, nil
	}
	buf := make([]byte, 64<<10)
	for pos := off; pos < size; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-pos)], pos)
		if !allZero(buf[:n]) {
			return false, nil
		}
		pos += int64(n)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return false, fmt.Errorf("reread %s at %d: %w", f.Name(), pos, err)
		}
	}
	return true, nil
}

func allZero(b []byte) bool {
	return len(bytes.TrimLeft(b, "\x00")) == 0
}

// The fence file:
//
//	magic "OVSDTLF" | u8 version | u64 epoch | u32 CRC-32C of all before

func encodeFence(epoch uint64) []byte {
	b := make([]byte, 0, fenceFileSize)
	b = append(b, fenceMagic[:]...)
	b = append(b, FormatVersion)
	b = binary.BigEndian.AppendUint64(b, epoch)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeFence(b []byte) (uint64, error) {
	if len(b) < magicLen+1 || [magicLen]byte(b[:magicLen]) != fenceMagic {
		return 0, errors.New("not a DTL fence file")
	}
	if v := b[magicLen]; v != FormatVersion {
		return 0, fmt.Errorf("%w: fence file format version %d, this code reads %d", ErrVersion, v, FormatVersion)
	}
	if len(b) != fenceFileSize {
		return 0, fmt.Errorf("fence file of %d bytes, expected %d", len(b), fenceFileSize)
	}
	if got, want := crc32.Checksum(b[:fenceFileSize-4], castagnoli), binary.BigEndian.Uint32(b[fenceFileSize-4:]); got != want {
		return 0, fmt.Errorf("fence file CRC %08x, expected %08x", got, want)
	}
	return binary.BigEndian.Uint64(b[magicLen+1:]), nil
}

// readFence returns the fence of the vdisk in dir, 0 when it has none.
func readFence(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, fenceName))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read fence: %w", err)
	}
	epoch, err := decodeFence(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", filepath.Join(dir, fenceName), err)
	}
	return epoch, nil
}

// writeFence replaces the fence atomically and durably: a temporary file,
// fsynced, renamed over the old one, and the directory fsynced.
func writeFence(dir string, epoch uint64) error {
	tmp := filepath.Join(dir, fenceTmpName)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write fence: %w", err)
	}
	_, err = f.Write(encodeFence(epoch))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write fence %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, fenceName)); err != nil {
		return fmt.Errorf("write fence: %w", err)
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory, making the creation, renaming and removal of
// its entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
