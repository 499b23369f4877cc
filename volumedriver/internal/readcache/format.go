package readcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
)

// On-disk formats. Every structure starts with a magic and a version byte
// and ends with a CRC-32C over what comes before it; a reader refuses what
// it does not understand, and the cache drops (never trusts) what fails.
//
// A segment file:
//
//	[0, segHeaderRegion)        segment header (segHeaderSize bytes used)
//	[segHeaderRegion, dataEnd)  entries: cluster data, back to back, 4 KiB aligned
//	[summaryOff, +n*recSize)    summary of a sealed segment (its index:
//	                            key, offset, length, CRC-32C of each entry)
//
// An entry's key and CRC live in the summary and, while the cache runs, in
// RAM (the index and each segment's CRC per slot), not beside the data: a
// hit reads exactly the data's pages and checks them against that CRC.
//
// The namespaces file maps each backend namespace to a random 64-bit token
// that is part of every entry's key (see Cache.Invalidate).

const (
	formatVersion   = 1
	segMagic        = "OVSRCSEG"
	tableMagic      = "OVSRCNS1"
	segHeaderSize   = 60
	segHeaderRegion = 4096
	// slotSize: entries are whole multiples of it, placed at multiples
	// of it, so that a hit is one aligned read of the page(s) it needs.
	slotSize    = 4096
	recSize     = 28
	maxEntryLen = 1 << 20

	stateEmpty  = 0
	stateOpen   = 1
	stateSealed = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// errFormat marks a structure that fails its checks.
var errFormat = errors.New("read cache: bad format")

// segHeader is the first bytes of a segment file.
type segHeader struct {
	state      uint8
	segSize    uint64
	seq        uint64 // write order of the segment; 0 while empty
	summaryOff uint64
	summaryN   uint32
	summaryCRC uint32
	dataEnd    uint64
}

func (h *segHeader) encode() []byte {
	b := make([]byte, segHeaderSize)
	copy(b, segMagic)
	b[8] = formatVersion
	b[9] = h.state
	binary.LittleEndian.PutUint64(b[16:], h.segSize)
	binary.LittleEndian.PutUint64(b[24:], h.seq)
	binary.LittleEndian.PutUint64(b[32:], h.summaryOff)
	binary.LittleEndian.PutUint32(b[40:], h.summaryN)
	binary.LittleEndian.PutUint32(b[44:], h.summaryCRC)
	binary.LittleEndian.PutUint64(b[48:], h.dataEnd)
	binary.LittleEndian.PutUint32(b[56:], crc(b[:56]))
	return b
}

func decodeSegHeader(b []byte) (segHeader, error) {
	var h segHeader
	if len(b) < segHeaderSize || string(b[:8]) != segMagic {
		return h, fmt.Errorf("%w: segment header magic", errFormat)
	}
	if b[8] != formatVersion {
		return h, fmt.Errorf("%w: segment format version %d (this build reads %d)", errFormat, b[8], formatVersion)
	}
	if crc(b[:56]) != binary.LittleEndian.Uint32(b[56:]) {
		return h, fmt.Errorf("%w: segment header checksum", errFormat)
	}
	if b[10]|b[11]|b[12]|b[13]|b[14]|b[15] != 0 {
		return h, fmt.Errorf("%w: segment header reserved bytes set", errFormat)
	}
	h.state = b[9]
	h.segSize = binary.LittleEndian.Uint64(b[16:])
	h.seq = binary.LittleEndian.Uint64(b[24:])
	h.summaryOff = binary.LittleEndian.Uint64(b[32:])
	h.summaryN = binary.LittleEndian.Uint32(b[40:])
	h.summaryCRC = binary.LittleEndian.Uint32(b[44:])
	h.dataEnd = binary.LittleEndian.Uint64(b[48:])
	if h.state > stateSealed {
		return h, fmt.Errorf("%w: segment state %d", errFormat, h.state)
	}
	if h.state == stateSealed {
		end := h.summaryOff + uint64(h.summaryN)*recSize
		if h.dataEnd < segHeaderRegion || h.dataEnd > h.summaryOff || end < h.summaryOff || end > h.segSize {
			return h, fmt.Errorf("%w: segment layout (data end %d, summary %d+%d, size %d)", errFormat, h.dataEnd, h.summaryOff, h.summaryN, h.segSize)
		}
	}
	return h, nil
}

// record is one entry in a segment's summary (and in memory while the
// segment is open).
type record struct {
	token   uint64
	loc     uint64
	off     uint32
	length  uint32
	dataCRC uint32
}

func encodeSummary(recs []record) []byte {
	b := make([]byte, len(recs)*recSize)
	for i, r := range recs {
		p := b[i*recSize:]
		binary.LittleEndian.PutUint64(p[0:], r.token)
		binary.LittleEndian.PutUint64(p[8:], r.loc)
		binary.LittleEndian.PutUint32(p[16:], r.off)
		binary.LittleEndian.PutUint32(p[20:], r.length)
		binary.LittleEndian.PutUint32(p[24:], r.dataCRC)
	}
	return b
}

// decodeSummary parses the summary of a sealed segment whose header said
// sum and dataEnd: every record must lie within the data part.
func decodeSummary(b []byte, sum uint32, dataEnd uint64) ([]record, error) {
	if len(b)%recSize != 0 {
		return nil, fmt.Errorf("%w: summary length %d", errFormat, len(b))
	}
	if crc(b) != sum {
		return nil, fmt.Errorf("%w: summary checksum", errFormat)
	}
	recs := make([]record, len(b)/recSize)
	for i := range recs {
		p := b[i*recSize:]
		r := record{
			token:   binary.LittleEndian.Uint64(p[0:]),
			loc:     binary.LittleEndian.Uint64(p[8:]),
			off:     binary.LittleEndian.Uint32(p[16:]),
			length:  binary.LittleEndian.Uint32(p[20:]),
			dataCRC: binary.LittleEndian.Uint32(p[24:]),
		}
		if r.length == 0 || r.length > maxEntryLen || r.length%slotSize != 0 || r.off%slotSize != 0 ||
			uint64(r.off) < segHeaderRegion || uint64(r.off)+uint64(r.length) > dataEnd {
			return nil, fmt.Errorf("%w: summary record %d out of the segment's data", errFormat, i)
		}
		recs[i] = r
	}
	return recs, nil
}

// encodeTable: magic, version, count, then per namespace its token and
// name; a CRC-32C of all that last.
func encodeTable(tokens map[string]uint64) []byte {
	names := make([]string, 0, len(tokens))
	for n := range tokens {
		names = append(names, n)
	}
	sort.Strings(names)
	b := append([]byte(tableMagic), formatVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(names)))
	for _, n := range names {
		b = binary.LittleEndian.AppendUint64(b, tokens[n])
		b = binary.LittleEndian.AppendUint16(b, uint16(len(n)))
		b = append(b, n...)
	}
	return binary.LittleEndian.AppendUint32(b, crc(b))
}

func decodeTable(b []byte) (map[string]uint64, error) {
	if len(b) < len(tableMagic)+1+4+4 || string(b[:len(tableMagic)]) != tableMagic {
		return nil, fmt.Errorf("%w: namespace table magic", errFormat)
	}
	if v := b[len(tableMagic)]; v != formatVersion {
		return nil, fmt.Errorf("%w: namespace table version %d (this build reads %d)", errFormat, v, formatVersion)
	}
	body := b[:len(b)-4]
	if crc(body) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("%w: namespace table checksum", errFormat)
	}
	p := body[len(tableMagic)+1:]
	n := binary.LittleEndian.Uint32(p)
	p = p[4:]
	out := make(map[string]uint64, min(int(n), 1<<16))
	for i := uint32(0); i < n; i++ {
		if len(p) < 10 {
			return nil, fmt.Errorf("%w: namespace table truncated", errFormat)
		}
		tok := binary.LittleEndian.Uint64(p)
		l := int(binary.LittleEndian.Uint16(p[8:]))
		p = p[10:]
		if len(p) < l || l == 0 || tok == 0 {
			return nil, fmt.Errorf("%w: namespace table entry %d", errFormat, i)
		}
		out[string(p[:l])] = tok
		p = p[l:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%w: namespace table has %d trailing bytes", errFormat, len(p))
	}
	return out, nil
}
