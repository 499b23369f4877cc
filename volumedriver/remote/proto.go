package remote

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// Protocol constants shared by both ends.
const (
	// Version is the newest protocol version this package speaks: 2 added
	// CompareAndWrite.
	Version = 2
	// MinVersion is the oldest version it speaks, with peers that predate
	// the newest (a cluster mid-upgrade): a v1 server refuses a v2 hello,
	// and would close a connection on the unknown op rather than refuse
	// just the request, so the version is negotiated in the hello.
	MinVersion = 1
	// MaxData is the largest Read or Write payload of one request. The
	// client splits larger I/O.
	MaxData = 32 << 20
	// MaxNameLen is the longest vdisk name a request may carry.
	MaxNameLen = 64
	// MaxMessageLen caps the error message of a reply.
	MaxMessageLen = 1024
	// MaxExtents caps the extents of one BlockStatus reply.
	MaxExtents = 1 << 16

	helloSize    = 8
	reqHdrSize   = 24
	replyHdrSize = 16
	sizeInfoSize = 16
	cawReplySize = 8
	extentSize   = blockdev.DescriptorSize
)

var helloMagic = [4]byte{'O', 'V', 'S', 'F'}

// Hello statuses (the server's answer to a hello).
const (
	helloOK          = 0
	helloBadVersion  = 1
	helloTooManyConn = 2
)

// op is a request's operation.
type op uint8

const (
	opSize op = iota + 1
	opRead
	opWrite
	opFlush
	opTrim
	opWriteZeroes
	opBlockStatus
	opCompareAndWrite // version 2
	opMax             = opCompareAndWrite
)

// maxOp is the last op of protocol version v.
func maxOp(v uint16) op {
	if v < 2 {
		return opBlockStatus
	}
	return opCompareAndWrite
}

func (o op) String() string {
	switch o {
	case opSize:
		return "size"
	case opRead:
		return "read"
	case opWrite:
		return "write"
	case opFlush:
		return "flush"
	case opTrim:
		return "trim"
	case opWriteZeroes:
		return "write_zeroes"
	case opBlockStatus:
		return "block_status"
	case opCompareAndWrite:
		return "compare_and_write"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Request flags.
const (
	flagFUA    = 1
	flagNoHole = 2
)

// allowedFlags lists the flags each op may carry.
func allowedFlags(o op) uint8 {
	switch o {
	case opWrite, opCompareAndWrite:
		return flagFUA
	case opWriteZeroes:
		return flagFUA | flagNoHole
	}
	return 0
}

// Info flags of a Size reply.
const (
	infoReadOnly = 1
	infoFastZero = 2
)

// Extent flags of a BlockStatus reply.
const (
	extentHole = blockdev.FlagHole
	extentZero = blockdev.FlagZero
)

// Status is the outcome of a request on the wire.
type Status uint8

// Statuses. The client turns each non-OK status into an error wrapping the
// sentinel of the same name.
const (
	StatusOK       Status = 0
	StatusNotOwner Status = 1
	StatusNotFound Status = 2
	StatusInvalid  Status = 3
	StatusNoSpace  Status = 4
	StatusIO       Status = 5
	StatusReadOnly Status = 6
	statusMax             = StatusReadOnly
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNotOwner:
		return "not owner"
	case StatusNotFound:
		return "not found"
	case StatusInvalid:
		return "invalid request"
	case StatusNoSpace:
		return "no space"
	case StatusIO:
		return "I/O error"
	case StatusReadOnly:
		return "read-only"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Sentinel errors. Client methods return errors that wrap one of them
// (test with errors.Is); a Target or Device returns ErrNotOwner or
// ErrNotFound (wrapped or not) for the server to pass them on.
var (
	// ErrNotOwner: the node does not serve this vdisk now. Find the owner
	// again and retry there.
	ErrNotOwner = errors.New("remote: node does not own the vdisk")
	// ErrNotFound: no such vdisk.
	ErrNotFound = errors.New("remote: vdisk not found")
	// ErrInvalid: a request the server (or the client) refused as malformed
	// or out of range.
	ErrInvalid = errors.New("remote: invalid request")
	// ErrNoSpace: a write beyond the end of the vdisk or out of space.
	ErrNoSpace = errors.New("remote: no space")
	// ErrIO: the owner's device failed; the error carries its message.
	ErrIO = errors.New("remote: I/O error")
	// ErrReadOnly: a write to a read-only vdisk (a template).
	ErrReadOnly = errors.New("remote: vdisk is read-only")
	// ErrUnavailable: the connection to the node failed or broke before the
	// reply came. The request may or may not have been carried out; the
	// caller may retry, here later or elsewhere.
	ErrUnavailable = errors.New("remote: node unavailable")
	// ErrVersion: the peer speaks another protocol version. Errors wrapping
	// it also wrap ErrUnavailable.
	ErrVersion = errors.New("remote: protocol version mismatch")
	// errProtocol: a frame that cannot be decoded.
	errProtocol = errors.New("remote: protocol error")
)

func statusErr(s Status) error {
	switch s {
	case StatusNotOwner:
		return ErrNotOwner
	case StatusNotFound:
		return ErrNotFound
	case StatusInvalid:
		return ErrInvalid
	case StatusNoSpace:
		return ErrNoSpace
	case StatusReadOnly:
		return ErrReadOnly
	}
	return ErrIO
}

// StatusError is the error of a request that the server answered with a
// non-OK status. It wraps the status's sentinel error.
type StatusError struct {
	Addr   string // the server's address
	Op     string
	Name   string // the vdisk
	Status Status
	Msg    string // the server's message, if any
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("remote %s %q on %s: %s", e.Op, e.Name, e.Addr, e.Status)
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

func (e *StatusError) Unwrap() error { return statusErr(e.Status) }

// hello is the first frame both ways.
type hello struct {
	version uint16
	status  uint8
}

func appendHello(b []byte, h hello) []byte {
	b = append(b, helloMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, h.version)
	return append(b, h.status, 0)
}

func decodeHello(b []byte) (hello, error) {
	if len(b) < helloSize {
		return hello{}, fmt.Errorf("%w: short hello", errProtocol)
	}
	if [4]byte(b[:4]) != helloMagic {
		return hello{}, fmt.Errorf("%w: bad magic %q: not an OVS forwarding peer", errProtocol, b[:4])
	}
	return hello{version: binary.BigEndian.Uint16(b[4:]), status: b[6]}, nil
}

// reqHdr is a decoded request header.
type reqHdr struct {
	op      op
	flags   uint8
	nameLen uint8
	length  uint32
	handle  uint64
	offset  uint64
}

func appendReqHdr(b []byte, h reqHdr) []byte {
	b = append(b, byte(h.op), h.flags, h.nameLen, 0)
	b = binary.BigEndian.AppendUint32(b, h.length)
	b = binary.BigEndian.AppendUint64(b, h.handle)
	return binary.BigEndian.AppendUint64(b, h.offset)
}

// decodeReqHdr decodes and checks a request header of a connection that
// speaks protocol version v. Every length the rest of the frame depends on
// is checked here, before anything is allocated.
func decodeReqHdr(b []byte, v uint16) (reqHdr, error) {
	if len(b) < reqHdrSize {
		return reqHdr{}, fmt.Errorf("%w: short request header", errProtocol)
	}
	h := reqHdr{
		op:      op(b[0]),
		flags:   b[1],
		nameLen: b[2],
		length:  binary.BigEndian.Uint32(b[4:]),
		handle:  binary.BigEndian.Uint64(b[8:]),
		offset:  binary.BigEndian.Uint64(b[16:]),
	}
	switch {
	case h.op == 0 || h.op > maxOp(v):
		return h, fmt.Errorf("%w: unknown op %d", errProtocol, h.op)
	case b[3] != 0:
		return h, fmt.Errorf("%w: reserved request byte set", errProtocol)
	case h.flags&^allowedFlags(h.op) != 0:
		return h, fmt.Errorf("%w: flags %#x not allowed on %s", errProtocol, h.flags, h.op)
	case h.nameLen == 0 || h.nameLen > MaxNameLen:
		return h, fmt.Errorf("%w: name length %d not in 1..%d", errProtocol, h.nameLen, MaxNameLen)
	case h.offset > math.MaxInt64 || h.offset+uint64(h.length) > math.MaxInt64:
		return h, fmt.Errorf("%w: offset %d + length %d overflows", errProtocol, h.offset, h.length)
	}
	switch h.op {
	case opRead, opWrite:
		if h.length > MaxData {
			return h, fmt.Errorf("%w: %s of %d bytes exceeds the limit of %d", errProtocol, h.op, h.length, MaxData)
		}
	case opSize, opFlush:
		if h.length != 0 || h.offset != 0 {
			return h, fmt.Errorf("%w: %s with an offset or length", errProtocol, h.op)
		}
	case opCompareAndWrite:
		if h.length%2 != 0 || h.length/2 > blockdev.MaxCompareAndWrite {
			return h, fmt.Errorf("%w: %s payload of %d bytes: not two halves of at most %d", errProtocol, h.op, h.length, blockdev.MaxCompareAndWrite)
		}
	}
	return h, nil
}

// replyHdr is a decoded reply header.
type replyHdr struct {
	handle  uint64
	status  Status
	msgLen  uint16
	dataLen uint32
}

func appendReplyHdr(b []byte, h replyHdr) []byte {
	b = binary.BigEndian.AppendUint64(b, h.handle)
	b = append(b, byte(h.status), 0)
	b = binary.BigEndian.AppendUint16(b, h.msgLen)
	return binary.BigEndian.AppendUint32(b, h.dataLen)
}

// decodeReplyHdr decodes a reply header and checks what it can without the
// request: the op-specific data length is checked by the client.
func decodeReplyHdr(b []byte) (replyHdr, error) {
	if len(b) < replyHdrSize {
		return replyHdr{}, fmt.Errorf("%w: short reply header", errProtocol)
	}
	h := replyHdr{
		handle:  binary.BigEndian.Uint64(b),
		status:  Status(b[8]),
		msgLen:  binary.BigEndian.Uint16(b[10:]),
		dataLen: binary.BigEndian.Uint32(b[12:]),
	}
	switch {
	case h.status > statusMax:
		return h, fmt.Errorf("%w: unknown status %d", errProtocol, h.status)
	case b[9] != 0:
		return h, fmt.Errorf("%w: reserved reply byte set", errProtocol)
	case h.msgLen > MaxMessageLen:
		return h, fmt.Errorf("%w: message of %d bytes exceeds %d", errProtocol, h.msgLen, MaxMessageLen)
	case h.dataLen > MaxData:
		return h, fmt.Errorf("%w: reply data of %d bytes exceeds %d", errProtocol, h.dataLen, MaxData)
	case h.status != StatusOK && h.dataLen != 0:
		return h, fmt.Errorf("%w: error reply with data", errProtocol)
	}
	return h, nil
}

// checkReplyData checks a successful reply's data length against its
// request.
func checkReplyData(o op, reqLen uint32, dataLen uint32) error {
	var ok bool
	switch o {
	case opRead:
		ok = dataLen == reqLen
	case opSize:
		ok = dataLen == sizeInfoSize
	case opBlockStatus:
		ok = dataLen > 0 && dataLen%extentSize == 0 && dataLen/extentSize <= MaxExtents
	case opCompareAndWrite:
		ok = dataLen == cawReplySize
	default:
		ok = dataLen == 0
	}
	if !ok {
		return fmt.Errorf("%w: %s reply with %d bytes of data", errProtocol, o, dataLen)
	}
	return nil
}

// Info describes a vdisk as its owner serves it.
type Info struct {
	Size     int64
	ReadOnly bool // writes fail with ErrReadOnly
	FastZero bool // WriteZeroes is much cheaper than writing zeros
}

func appendSizeInfo(b []byte, in Info) []byte {
	var flags uint32
	if in.ReadOnly {
		flags |= infoReadOnly
	}
	if in.FastZero {
		flags |= infoFastZero
	}
	b = binary.BigEndian.AppendUint64(b, uint64(in.Size))
	b = binary.BigEndian.AppendUint32(b, flags)
	return binary.BigEndian.AppendUint32(b, 0)
}

func decodeSizeInfo(b []byte) (Info, error) {
	if len(b) != sizeInfoSize {
		return Info{}, fmt.Errorf("%w: size reply of %d bytes", errProtocol, len(b))
	}
	size := binary.BigEndian.Uint64(b)
	flags := binary.BigEndian.Uint32(b[8:])
	if size > math.MaxInt64 || flags&^(infoReadOnly|infoFastZero) != 0 || binary.BigEndian.Uint32(b[12:]) != 0 {
		return Info{}, fmt.Errorf("%w: bad size reply", errProtocol)
	}
	return Info{Size: int64(size), ReadOnly: flags&infoReadOnly != 0, FastZero: flags&infoFastZero != 0}, nil
}

// Extent is a run of bytes with one allocation state: the same type as
// volumedriver/nbd.Extent.
type Extent = blockdev.Extent

// appendExtents encodes the extents of a BlockStatus reply for a request
// of want bytes; see blockdev.AppendExtents.
func appendExtents(b []byte, exts []Extent, want int64) ([]byte, int) {
	return blockdev.AppendExtents(b, exts, want, MaxExtents)
}

// decodeExtents decodes a BlockStatus reply for a request of want bytes.
func decodeExtents(b []byte, want int64) ([]Extent, error) {
	if len(b) == 0 || len(b)%extentSize != 0 || len(b)/extentSize > MaxExtents {
		return nil, fmt.Errorf("%w: block status reply of %d bytes", errProtocol, len(b))
	}
	exts := make([]Extent, 0, len(b)/extentSize)
	var total int64
	for i := 0; i < len(b); i += extentSize {
		l := int64(binary.BigEndian.Uint32(b[i:]))
		flags := binary.BigEndian.Uint32(b[i+4:])
		if l == 0 || flags&^(extentHole|extentZero) != 0 {
			return nil, fmt.Errorf("%w: bad extent (length %d, flags %#x)", errProtocol, l, flags)
		}
		total += l
		if total > want {
			return nil, fmt.Errorf("%w: extents cover %d bytes of a %d-byte request", errProtocol, total, want)
		}
		exts = append(exts, Extent{Length: l, Hole: flags&extentHole != 0, Zero: flags&extentZero != 0})
	}
	return exts, nil
}

// appendCAWReply encodes a CompareAndWrite reply: the offset of the first
// byte that differed, or -1 when the data was written.
func appendCAWReply(b []byte, miscompare int64) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(miscompare))
}

// decodeCAWReply decodes a CompareAndWrite reply to a request comparing n
// bytes: -1, or an offset within them.
func decodeCAWReply(b []byte, n int64) (int64, error) {
	if len(b) != cawReplySize {
		return 0, fmt.Errorf("%w: compare and write reply of %d bytes", errProtocol, len(b))
	}
	m := int64(binary.BigEndian.Uint64(b))
	if m < -1 || m >= n {
		return 0, fmt.Errorf("%w: miscompare at %d of a %d-byte compare and write", errProtocol, m, n)
	}
	return m, nil
}
