package arakoon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"go.etcd.io/bbolt"
)

// The snapshot format, a stream of every record of the state machine:
//
//	version u8 (1) | magic "ARKSNAP"
//	records: bucket u8 (1..5) | uvarint key length | key | uvarint value length | value
//	trailer: 0 u8 | record count u64 | CRC-32C u32 of every byte before the CRC
//
// A reader refuses an unknown version, an unknown bucket, an oversized
// record, a wrong count or checksum, and bytes after the trailer.
const (
	snapshotVersion = 1
	snapshotMagic   = "ARKSNAP"
	maxRecordKey    = MaxKeySize + 64
	maxRecordValue  = MaxFrameSize + 1<<20 // a session record may cache a large test_and_set result
)

// Buckets of the state machine's store, with their ids in snapshots.
var (
	bucketMeta     = []byte("meta")     // applied index, session count
	bucketKV       = []byte("kv")       // the user's keys
	bucketSessions = []byte("sessions") // session id -> session record
	bucketLRU      = []byte("lru")      // last index | session id -> "" (eviction order)
	bucketMembers  = []byte("members")  // node id -> member record

	snapshotBuckets = [][]byte{bucketMeta, bucketKV, bucketSessions, bucketLRU, bucketMembers}
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// writeSnapshot streams every bucket of tx to w.
func writeSnapshot(tx *bbolt.Tx, w io.Writer) error {
	h := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)
	bw.WriteByte(snapshotVersion)
	bw.WriteString(snapshotMagic)
	var n uint64
	var lenBuf [binary.MaxVarintLen64]byte
	for i, name := range snapshotBuckets {
		b := tx.Bucket(name)
		if b == nil {
			continue
		}
		err := b.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("nested bucket %q in %s", k, name)
			}
			bw.WriteByte(byte(i + 1))
			bw.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(k)))])
			bw.Write(k)
			bw.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(v)))])
			_, err := bw.Write(v)
			n++
			return err
		})
		if err != nil {
			return err
		}
	}
	bw.WriteByte(0)
	var tr [8]byte
	binary.BigEndian.PutUint64(tr[:], n)
	bw.Write(tr[:])
	if err := bw.Flush(); err != nil {
		return err
	}
	var crc [4]byte
	binary.BigEndian.PutUint32(crc[:], h.Sum32())
	_, err := w.Write(crc[:])
	return err
}

// crcReader hashes what it reads.
type crcReader struct {
	r *bufio.Reader
	h hash.Hash32
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.h.Write([]byte{b})
	}
	return b, err
}

func (c *crcReader) full(p []byte) error {
	if _, err := io.ReadFull(c.r, p); err != nil {
		return unexpected(err)
	}
	c.h.Write(p)
	return nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readSnapshot decodes a snapshot stream and calls fn for each record
// (bucket is an index into snapshotBuckets). fn must copy k and v if it
// keeps them. Records are handed out before the checksum is verified: the
// caller must discard what it built when readSnapshot fails.
func readSnapshot(r io.Reader, fn func(bucket int, k, v []byte) error) error {
	cr := &crcReader{r: bufio.NewReaderSize(r, 1<<20), h: crc32.New(castagnoli)}
	head := make([]byte, 1+len(snapshotMagic))
	if err := cr.full(head); err != nil {
		return fmt.Errorf("snapshot header: %w", err)
	}
	if head[0] != snapshotVersion {
		return fmt.Errorf("snapshot format version %d, this node reads %d", head[0], snapshotVersion)
	}
	if string(head[1:]) != snapshotMagic {
		return errors.New("not an arakoon snapshot (bad magic)")
	}
	var n uint64
	var k, v []byte
	for {
		tag, err := cr.ReadByte()
		if err != nil {
			return fmt.Errorf("snapshot record %d: %w", n, unexpected(err))
		}
		if tag == 0 {
			break
		}
		if int(tag) > len(snapshotBuckets) {
			return fmt.Errorf("snapshot record %d: unknown bucket %d", n, tag)
		}
		if k, err = readChunk(cr, k, maxRecordKey); err != nil {
			return fmt.Errorf("snapshot record %d key: %w", n, err)
		}
		if v, err = readChunk(cr, v, maxRecordValue); err != nil {
			return fmt.Errorf("snapshot record %d value: %w", n, err)
		}
		if len(k) == 0 {
			return fmt.Errorf("snapshot record %d: empty key", n)
		}
		if err := fn(int(tag)-1, k, v); err != nil {
			return err
		}
		n++
	}
	var tr [8]byte
	if err := cr.full(tr[:]); err != nil {
		return fmt.Errorf("snapshot trailer: %w", err)
	}
	want := cr.h.Sum32()
	if c := binary.BigEndian.Uint64(tr[:]); c != n {
		return fmt.Errorf("snapshot trailer counts %d records, read %d", c, n)
	}
	var crc [4]byte
	if _, err := io.ReadFull(cr.r, crc[:]); err != nil {
		return fmt.Errorf("snapshot checksum: %w", unexpected(err))
	}
	if got := binary.BigEndian.Uint32(crc[:]); got != want {
		return fmt.Errorf("snapshot checksum mismatch: stored %08x, computed %08x", got, want)
	}
	if _, err := cr.r.ReadByte(); err != io.EOF {
		return errors.New("snapshot: bytes after the trailer")
	}
	return nil
}

// readChunk reads a uvarint-length-prefixed chunk into buf (reused).
func readChunk(cr *crcReader, buf []byte, max int) ([]byte, error) {
	l, err := binary.ReadUvarint(cr)
	if err != nil {
		return nil, unexpected(err)
	}
	if l > uint64(max) {
		return nil, fmt.Errorf("%d bytes exceeds the limit of %d", l, max)
	}
	// Grow in steps so that a forged length on a short stream fails on
	// reading instead of allocating up front.
	buf = buf[:0]
	for uint64(len(buf)) < l {
		step := min(l-uint64(len(buf)), 1<<20)
		start := len(buf)
		buf = append(buf, make([]byte, step)...)
		if err := cr.full(buf[start:]); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
