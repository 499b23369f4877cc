// This file is the PDU layer: the 48-byte basic header segment, the
// additional header segments, the data segment padded to 4 bytes, and
// the optional CRC-32C header and data digests.
package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes (RFC 7143 11.2.1.2).
const (
	// Initiator to target.
	opNOPOut      = 0x00
	opSCSICommand = 0x01
	opTaskMgmtReq = 0x02
	opLoginReq    = 0x03
	opTextReq     = 0x04
	opDataOut     = 0x05
	opLogoutReq   = 0x06
	opSNACK       = 0x10
	// Target to initiator.
	opNOPIn        = 0x20
	opSCSIResponse = 0x21
	opTaskMgmtResp = 0x22
	opLoginResp    = 0x23
	opTextResp     = 0x24
	opDataIn       = 0x25
	opLogoutResp   = 0x26
	opR2T          = 0x31
	opAsyncMsg     = 0x32
	opReject       = 0x3F
)

const (
	bhsLen = 48
	// maxAHS caps the additional header segments (TotalAHSLength is in
	// 4-byte words, at most 255 of them).
	maxAHS = 255 * 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errProtocol marks a PDU that cannot be accepted: the connection ends.
var errProtocol = errors.New("iscsi protocol error")

// errDataDigest marks a PDU whose header is sound but whose data segment
// does not match its digest: readPDU returns the PDU with it, for the
// target to reject that PDU and go on (RFC 7143 7.8).
var errDataDigest = errors.New("iscsi data digest mismatch")

// pdu is one PDU.
type pdu struct {
	bhs  [bhsLen]byte
	ahs  []byte
	data []byte
}

func (p *pdu) opcode() byte      { return p.bhs[0] & 0x3F }
func (p *pdu) immediate() bool   { return p.bhs[0]&0x40 != 0 }
func (p *pdu) final() bool       { return p.bhs[1]&0x80 != 0 }
func (p *pdu) itt() uint32       { return binary.BigEndian.Uint32(p.bhs[16:20]) }
func (p *pdu) u32(at int) uint32 { return binary.BigEndian.Uint32(p.bhs[at : at+4]) }
func (p *pdu) putU32(at int, v uint32) {
	binary.BigEndian.PutUint32(p.bhs[at:at+4], v)
}

// dataLen is the DataSegmentLength of the header.
func (p *pdu) dataLen() int {
	return int(p.bhs[5])<<16 | int(p.bhs[6])<<8 | int(p.bhs[7])
}

func (p *pdu) setDataLen(n int) {
	p.bhs[5], p.bhs[6], p.bhs[7] = byte(n>>16), byte(n>>8), byte(n)
}

// pad4 is the padding that makes n a multiple of 4.
func pad4(n int) int { return (4 - n%4) % 4 }

// readPDU reads one PDU. A data segment longer than maxData (the
// negotiated MaxRecvDataSegmentLength; during login, the login limit) or
// a header digest that does not match is a protocol error, found before
// anything the header claims is allocated. A data digest that does not
// match returns the PDU with errDataDigest.
func readPDU(r io.Reader, headerDigest, dataDigest bool, maxData int) (*pdu, error) {
	p := &pdu{}
	if _, err := io.ReadFull(r, p.bhs[:]); err != nil {
		return nil, err
	}
	ahsLen := int(p.bhs[4]) * 4
	n := p.dataLen()
	if n > maxData {
		return nil, fmt.Errorf("%w: data segment of %d bytes, at most %d negotiated", errProtocol, n, maxData)
	}
	if ahsLen > 0 {
		p.ahs = make([]byte, ahsLen)
		if _, err := io.ReadFull(r, p.ahs); err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	if headerDigest {
		var d [4]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return nil, unexpectedEOF(err)
		}
		sum := crc32.Update(crc32.Checksum(p.bhs[:], castagnoli), castagnoli, p.ahs)
		if binary.LittleEndian.Uint32(d[:]) != sum {
			return nil, fmt.Errorf("%w: header digest mismatch", errProtocol)
		}
	}
	if n > 0 {
		buf := make([]byte, n+pad4(n))
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		p.data = buf[:n]
		if dataDigest {
			var d [4]byte
			if _, err := io.ReadFull(r, d[:]); err != nil {
				return nil, unexpectedEOF(err)
			}
			if binary.LittleEndian.Uint32(d[:]) != crc32.Checksum(buf, castagnoli) {
				return p, errDataDigest
			}
		}
	}
	return p, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendPDU encodes p (its DataSegmentLength set from p.data) with the
// digests asked for.
func appendPDU(b []byte, p *pdu, headerDigest, dataDigest bool) []byte {
	p.setDataLen(len(p.data))
	p.bhs[4] = byte(len(p.ahs) / 4)
	start := len(b)
	b = append(b, p.bhs[:]...)
	b = append(b, p.ahs...)
	if headerDigest {
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
	}
	if len(p.data) > 0 {
		ds := len(b)
		b = append(b, p.data...)
		b = append(b, make([]byte, pad4(len(p.data)))...)
		if dataDigest {
			b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[ds:], castagnoli))
		}
	}
	return b
}

// Text parameters (RFC 7143 6): key=value pairs, each ended by a NUL.

// maxTextKeys caps the pairs of one text or login data segment.
const maxTextKeys = 256

type kv struct{ key, value string }

// parseText decodes key=value pairs, refusing malformed ones.
func parseText(b []byte) ([]kv, error) {
	var out []kv
	for len(b) > 0 {
		i := indexByte(b, 0)
		if i < 0 {
			return nil, fmt.Errorf("%w: text parameter without its NUL", errProtocol)
		}
		pair := b[:i]
		b = b[i+1:]
		if len(pair) == 0 {
			continue // padding NULs
		}
		eq := indexByte(pair, '=')
		if eq <= 0 || eq > 63 {
			return nil, fmt.Errorf("%w: text parameter %q is no key=value", errProtocol, clipString(pair))
		}
		if len(out) == maxTextKeys {
			return nil, fmt.Errorf("%w: more than %d text parameters", errProtocol, maxTextKeys)
		}
		out = append(out, kv{string(pair[:eq]), string(pair[eq+1:])})
	}
	return out, nil
}

// appendText encodes pairs.
func appendText(b []byte, pairs ...kv) []byte {
	for _, p := range pairs {
		b = append(b, p.key...)
		b = append(b, '=')
		b = append(b, p.value...)
		b = append(b, 0)
	}
	return b
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func clipString(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// writePDU writes p to w like appendPDU, without copying its data
// segment: Data-In carries the LU's buffer as it is. scratch is reused
// for the header and returned for the next call.
func writePDU(w io.Writer, p *pdu, headerDigest, dataDigest bool, scratch []byte) ([]byte, error) {
	p.setDataLen(len(p.data))
	p.bhs[4] = byte(len(p.ahs) / 4)
	b := append(scratch[:0], p.bhs[:]...)
	b = append(b, p.ahs...)
	if headerDigest {
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	}
	if _, err := w.Write(b); err != nil {
		return b, err
	}
	if len(p.data) == 0 {
		return b, nil
	}
	if _, err := w.Write(p.data); err != nil {
		return b, err
	}
	var tail [8]byte
	pad := tail[:pad4(len(p.data))]
	t := pad
	if dataDigest {
		sum := crc32.Update(crc32.Checksum(p.data, castagnoli), castagnoli, pad)
		t = binary.LittleEndian.AppendUint32(pad, sum)
	}
	if len(t) > 0 {
		if _, err := w.Write(t); err != nil {
			return b, err
		}
	}
	return b, nil
}
