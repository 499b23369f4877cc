package asd

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// Errors of the ASD (storage daemon) and its fragments. The client maps the
// daemon's answers back onto them, so callers test with errors.Is whichever
// side of the wire they are on.
var (
	ErrFragmentNotFound = errors.New("fragment not found")
	// ErrFragmentCorrupt: the stored fragment fails its checksum (or its
	// header does not decode). It is never served.
	ErrFragmentCorrupt = errors.New("fragment is corrupt")
	// ErrFull: the ASD refuses a write that would take its disk past
	// its fill limit.
	ErrFull = errors.New("ASD is full")
	// ErrUnavailable: the ASD did not answer (down, stopped, timed out).
	ErrUnavailable = errors.New("ASD unavailable")
)

// Fragment file format, version 1. A fragment file is a header followed by
// the data:
//
//	off len
//	  0   4 magic "OVSF"
//	  4   1 version (1)
//	  5   1 flags (0; reserved)
//	  6   2 reserved (0)
//	  8   4 header length in bytes (everything before the data)
//	 12   8 data length
//	 20   4 block size (a power of two, 4 KiB .. 16 MiB)
//	 24   4 CRC-32C of the whole data
//	 28   8 creation time, Unix nanoseconds
//	 36   2 key length (1..255)
//	 38   2 tag length (0..1024)
//	 40   .. key, tag
//	  .   4*n CRC-32C of each block of the data (n = ceil(length/block))
//	  .   4 CRC-32C of all the header bytes before it
//
// All integers are little-endian. The per-block checksums let a ranged read
// verify only the blocks it touches; the whole-data checksum is what the
// backend's manifest records.
const (
	fragmentMagic        = "OVSF"
	fragmentVersion      = 1
	fragmentFixedLen     = 40
	maxFragmentKeyLen    = 255
	maxFragmentTagLen    = 1024
	minFragmentBlockSize = 4 << 10
	maxFragmentBlockSize = 16 << 20
	// DefaultFragmentBlockSize is the checksum granularity of ranged reads:
	// the volume driver's 4 KiB cluster, so that reading one costs 4 KiB
	// of disk and checksum, not a bigger block (each fragment records its
	// own block size: fragments written with 64 KiB blocks read as ever).
	DefaultFragmentBlockSize = 4 << 10
	// MaxFragmentSize bounds one fragment (a 128 MiB SCO with k=1 fits).
	MaxFragmentSize = 256 << 20
)

// FragmentHeader is the decoded header of a fragment file.
type FragmentHeader struct {
	Key       string
	Tag       string // opaque to the ASD; the backend stores "ns/name"
	DataLen   int64
	BlockSize int
	DataCRC   uint32
	Created   int64 // Unix nanoseconds
	BlockCRCs []uint32
	HeaderLen int // bytes before the data
}

func fragmentHeaderLen(keyLen, tagLen int, nblocks int64) int64 {
	return fragmentFixedLen + int64(keyLen) + int64(tagLen) + 4*nblocks + 4
}

func numBlocks(dataLen int64, blockSize int) int64 {
	return (dataLen + int64(blockSize) - 1) / int64(blockSize)
}

// NewFragmentHeader computes the header of a fragment holding data.
func NewFragmentHeader(key, tag string, data []byte, blockSize int, created int64) (FragmentHeader, error) {
	if err := checkFragmentKey(key); err != nil {
		return FragmentHeader{}, err
	}
	if len(tag) > maxFragmentTagLen {
		return FragmentHeader{}, fmt.Errorf("fragment tag of %d bytes: at most %d allowed", len(tag), maxFragmentTagLen)
	}
	if blockSize < minFragmentBlockSize || blockSize > maxFragmentBlockSize || blockSize&(blockSize-1) != 0 {
		return FragmentHeader{}, fmt.Errorf("fragment block size %d: want a power of two in [%d, %d]",
			blockSize, minFragmentBlockSize, maxFragmentBlockSize)
	}
	if len(data) > MaxFragmentSize {
		return FragmentHeader{}, fmt.Errorf("fragment of %d bytes: at most %d allowed", len(data), MaxFragmentSize)
	}
	h := FragmentHeader{
		Key: key, Tag: tag, DataLen: int64(len(data)), BlockSize: blockSize, Created: created,
	}
	// One pass over the data: the checksum of the whole is combined from
	// those of the blocks.
	n := numBlocks(h.DataLen, blockSize)
	h.BlockCRCs = make([]uint32, n)
	shift := crc32c.ShiftFor(int64(blockSize))
	for i := range h.BlockCRCs {
		lo := i * blockSize
		b := data[lo:min(lo+blockSize, len(data))]
		h.BlockCRCs[i] = crc32c.Checksum(b)
		if len(b) == blockSize {
			h.DataCRC = shift.Combine(h.DataCRC, h.BlockCRCs[i])
		} else {
			h.DataCRC = crc32c.Combine(h.DataCRC, h.BlockCRCs[i], int64(len(b)))
		}
	}
	h.HeaderLen = int(fragmentHeaderLen(len(key), len(tag), n))
	return h, nil
}

// checkFragmentKey accepts the same names as namespaces and objects.
func checkFragmentKey(key string) error {
	if !scos.ValidName(key) || len(key) > maxFragmentKeyLen {
		return fmt.Errorf("%w: fragment key %q", scos.ErrInvalidName, key)
	}
	return nil
}

// Encode returns the header bytes.
func (h FragmentHeader) Encode() []byte {
	n := len(h.BlockCRCs)
	b := make([]byte, fragmentHeaderLen(len(h.Key), len(h.Tag), int64(n)))
	copy(b[0:4], fragmentMagic)
	b[4] = fragmentVersion
	le := binary.LittleEndian
	le.PutUint32(b[8:], uint32(len(b)))
	le.PutUint64(b[12:], uint64(h.DataLen))
	le.PutUint32(b[20:], uint32(h.BlockSize))
	le.PutUint32(b[24:], h.DataCRC)
	le.PutUint64(b[28:], uint64(h.Created))
	le.PutUint16(b[36:], uint16(len(h.Key)))
	le.PutUint16(b[38:], uint16(len(h.Tag)))
	p := fragmentFixedLen
	p += copy(b[p:], h.Key)
	p += copy(b[p:], h.Tag)
	for _, c := range h.BlockCRCs {
		le.PutUint32(b[p:], c)
		p += 4
	}
	le.PutUint32(b[p:], crc32c.Checksum(b[:p]))
	return b
}

// FragmentHeaderLen returns the length of the header that starts b, reading
// only the fixed part (at least 12 bytes), so that a reader knows how much
// to read before calling DecodeFragmentHeader.
func FragmentHeaderLen(b []byte) (int, error) {
	if len(b) < 12 {
		return 0, fmt.Errorf("%w: fragment header truncated (%d bytes)", ErrFragmentCorrupt, len(b))
	}
	if string(b[0:4]) != fragmentMagic {
		return 0, fmt.Errorf("%w: not a fragment file (bad magic %q)", ErrFragmentCorrupt, b[0:4])
	}
	if b[4] != fragmentVersion {
		return 0, fmt.Errorf("%w: fragment file version %d (this build reads version %d)",
			scos.ErrUnsupportedFormat, b[4], fragmentVersion)
	}
	n := binary.LittleEndian.Uint32(b[8:])
	max := fragmentHeaderLen(maxFragmentKeyLen, maxFragmentTagLen, numBlocks(MaxFragmentSize, minFragmentBlockSize))
	if n < fragmentFixedLen+1+4 || int64(n) > max {
		return 0, fmt.Errorf("%w: fragment header length %d out of range", ErrFragmentCorrupt, n)
	}
	return int(n), nil
}

// DecodeFragmentHeader decodes the header at the start of b (b may hold
// data after it). It refuses anything malformed with ErrFragmentCorrupt and
// a newer version with scos.ErrUnsupportedFormat; it never panics.
func DecodeFragmentHeader(b []byte) (FragmentHeader, error) {
	hl, err := FragmentHeaderLen(b)
	if err != nil {
		return FragmentHeader{}, err
	}
	if len(b) < hl {
		return FragmentHeader{}, fmt.Errorf("%w: fragment header truncated (%d of %d bytes)", ErrFragmentCorrupt, len(b), hl)
	}
	le := binary.LittleEndian
	bad := func(format string, args ...any) (FragmentHeader, error) {
		return FragmentHeader{}, fmt.Errorf("%w: fragment header: %s", ErrFragmentCorrupt, fmt.Sprintf(format, args...))
	}
	if got, want := le.Uint32(b[hl-4:]), crc32c.Checksum(b[:hl-4]); got != want {
		return bad("checksum %08x, computed %08x", got, want)
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return bad("reserved bytes set")
	}
	h := FragmentHeader{HeaderLen: hl}
	dataLen := le.Uint64(b[12:])
	if dataLen > MaxFragmentSize {
		return bad("data length %d over the maximum %d", dataLen, MaxFragmentSize)
	}
	h.DataLen = int64(dataLen)
	bs := le.Uint32(b[20:])
	if bs < minFragmentBlockSize || bs > maxFragmentBlockSize || bs&(bs-1) != 0 {
		return bad("block size %d", bs)
	}
	h.BlockSize = int(bs)
	h.DataCRC = le.Uint32(b[24:])
	h.Created = int64(le.Uint64(b[28:]))
	kl, tl := int(le.Uint16(b[36:])), int(le.Uint16(b[38:]))
	if kl == 0 || kl > maxFragmentKeyLen || tl > maxFragmentTagLen {
		return bad("key length %d, tag length %d", kl, tl)
	}
	nb := numBlocks(h.DataLen, h.BlockSize)
	if int64(hl) != fragmentHeaderLen(kl, tl, nb) {
		return bad("length %d does not match its contents", hl)
	}
	p := fragmentFixedLen
	h.Key = string(b[p : p+kl])
	p += kl
	h.Tag = string(b[p : p+tl])
	p += tl
	if checkFragmentKey(h.Key) != nil {
		return bad("invalid key %q", h.Key)
	}
	h.BlockCRCs = make([]uint32, nb)
	for i := range h.BlockCRCs {
		h.BlockCRCs[i] = le.Uint32(b[p:])
		p += 4
	}
	if nb == 0 && h.DataCRC != 0 || nb == 1 && h.BlockCRCs[0] != h.DataCRC {
		return bad("data checksum disagrees with the block checksum")
	}
	return h, nil
}

// verifyBlocks checks data, which holds blocks first.. of the fragment, against
// the header's block checksums.
func (h FragmentHeader) verifyBlocks(first int, data []byte) error {
	for i := 0; len(data) > 0; i++ {
		n := min(len(data), h.BlockSize)
		blk := first + i
		if blk >= len(h.BlockCRCs) {
			return fmt.Errorf("%w: %s: data past the last block", ErrFragmentCorrupt, h.Key)
		}
		if got := crc32c.Checksum(data[:n]); got != h.BlockCRCs[blk] {
			return fmt.Errorf("%w: %s: block %d checksum %08x, header says %08x",
				ErrFragmentCorrupt, h.Key, blk, got, h.BlockCRCs[blk])
		}
		data = data[n:]
	}
	return nil
}
