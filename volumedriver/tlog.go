package volumedriver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// A TLog (transaction log) records, in order, every change to a volume's
// LBA map: which cluster went where, which clusters were trimmed, and where
// a flush made everything before it durable. Together with the SCOs it is
// enough to rebuild the metadata store from nothing.
//
// Format (version 1): an 8-byte header "OVSTLOG" + version byte, then
// fixed-size 32-byte records:
//
//	[0]     record type
//	[1:4]   zero
//	[4:8]   CRC-32C of the cluster data (write records)
//	[8:16]  cluster address (LBA / sectors per cluster)
//	[16:24] packed ClusterLocation (write) or cluster count (trim)
//	[24:28] zero
//	[28:32] CRC-32C of bytes [0:28]
//
// Fixed-size records make a torn tail easy to find and cut off: the reader
// stops at the first record whose CRC does not match.

const (
	tlogMagic      = "OVSTLOG"
	tlogVersion    = 1
	tlogHeaderSize = 8
	tlogRecordSize = 32
)

type recordType uint8

const (
	recWrite recordType = 1 // cluster address -> location, with data CRC
	recTrim  recordType = 2 // count clusters from address read as zeros
	recSync  recordType = 3 // everything before is durable
)

// tlogRecord is one decoded record.
type tlogRecord struct {
	Type    recordType
	DataCRC uint32
	Addr    uint64
	// Loc is the packed ClusterLocation of a write; Count the number of
	// clusters of a trim.
	Loc   uint64
	Count uint64
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// ErrCorruptTLog is wrapped by every TLog decoding error.
var ErrCorruptTLog = errors.New("corrupt tlog")

func tlogHeader() []byte {
	h := make([]byte, tlogHeaderSize)
	copy(h, tlogMagic)
	h[7] = tlogVersion
	return h
}

func checkTLogHeader(b []byte) error {
	if len(b) < tlogHeaderSize {
		return fmt.Errorf("%w: %d bytes is shorter than the header", ErrCorruptTLog, len(b))
	}
	if string(b[:7]) != tlogMagic {
		return fmt.Errorf("%w: bad magic %q", ErrCorruptTLog, b[:7])
	}
	if b[7] != tlogVersion {
		return fmt.Errorf("%w: format version %d is not supported (this build reads %d)", ErrCorruptTLog, b[7], tlogVersion)
	}
	return nil
}

// appendRecord encodes r at the end of buf.
func appendRecord(buf []byte, r tlogRecord) []byte {
	var b [tlogRecordSize]byte
	b[0] = byte(r.Type)
	binary.LittleEndian.PutUint32(b[4:8], r.DataCRC)
	binary.LittleEndian.PutUint64(b[8:16], r.Addr)
	if r.Type == recTrim {
		binary.LittleEndian.PutUint64(b[16:24], r.Count)
	} else {
		binary.LittleEndian.PutUint64(b[16:24], r.Loc)
	}
	binary.LittleEndian.PutUint32(b[28:32], crc32c(b[:28]))
	return append(buf, b[:]...)
}

// decodeRecord decodes one record; it refuses bad CRCs and unknown types.
func decodeRecord(b []byte) (tlogRecord, error) {
	if len(b) < tlogRecordSize {
		return tlogRecord{}, fmt.Errorf("%w: truncated record", ErrCorruptTLog)
	}
	if got, want := crc32c(b[:28]), binary.LittleEndian.Uint32(b[28:32]); got != want {
		return tlogRecord{}, fmt.Errorf("%w: record checksum %08x, stored %08x", ErrCorruptTLog, got, want)
	}
	if b[1]|b[2]|b[3]|b[24]|b[25]|b[26]|b[27] != 0 {
		return tlogRecord{}, fmt.Errorf("%w: reserved bytes are not zero", ErrCorruptTLog)
	}
	r := tlogRecord{
		Type:    recordType(b[0]),
		DataCRC: binary.LittleEndian.Uint32(b[4:8]),
		Addr:    binary.LittleEndian.Uint64(b[8:16]),
	}
	v := binary.LittleEndian.Uint64(b[16:24])
	switch r.Type {
	case recWrite:
		r.Loc = v
		if v == 0 {
			return tlogRecord{}, fmt.Errorf("%w: write record without a location", ErrCorruptTLog)
		}
	case recTrim:
		r.Count = v
	case recSync:
		if r.DataCRC != 0 || r.Addr != 0 || v != 0 {
			return tlogRecord{}, fmt.Errorf("%w: sync record with a payload", ErrCorruptTLog)
		}
	default:
		return tlogRecord{}, fmt.Errorf("%w: unknown record type %d", ErrCorruptTLog, b[0])
	}
	return r, nil
}

// decodeTLog decodes a whole TLog. It returns the records of the longest
// valid prefix and, when the tail is not valid (a torn write), the error
// that stopped it; valid is the byte length of that prefix.
func decodeTLog(b []byte) (recs []tlogRecord, valid int, err error) {
	if err := checkTLogHeader(b); err != nil {
		return nil, 0, err
	}
	off := tlogHeaderSize
	for off+tlogRecordSize <= len(b) {
		r, err := decodeRecord(b[off : off+tlogRecordSize])
		if err != nil {
			return recs, off, fmt.Errorf("record at byte %d: %w", off, err)
		}
		recs = append(recs, r)
		off += tlogRecordSize
	}
	if off != len(b) {
		return recs, off, fmt.Errorf("%w: %d trailing bytes", ErrCorruptTLog, len(b)-off)
	}
	return recs, off, nil
}
