package dtl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/bits"
)

// Protocol and format constants.
const (
	// Version is the wire protocol version this package speaks.
	Version = 1
	// MaxVDiskLen is the longest vdisk id.
	MaxVDiskLen = 64
	// MaxGroupLen is the longest group (TLog) name.
	MaxGroupLen = 128
	// MaxEntryData is the most data one entry carries on the wire and on
	// disk; Shipper.Append splits longer writes.
	MaxEntryData = 1 << 20
	// MinClusterSize and MaxClusterSize bound the cluster size (a power
	// of two).
	MinClusterSize = 512
	MaxClusterSize = 64 << 10
	// MaxMessageLen caps the error message of a result.
	MaxMessageLen = 1024

	helloSize    = 8
	frameHdrSize = 8
	// entryFixed is the fixed part of an entry body: u64 addr, u32 count.
	entryFixed = 12
	// maxWriteClusters is the most clusters of one Write entry.
	maxWriteClusters = MaxEntryData / MinClusterSize
	// maxEntryBody is the largest entry body.
	maxEntryBody = entryFixed + 4*maxWriteClusters + MaxEntryData
)

var (
	helloMagic = [4]byte{'O', 'V', 'S', 'D'}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// Hello statuses (the server's answer to a hello).
const (
	helloOK          = 0
	helloBadVersion  = 1
	helloTooManyConn = 2
)

// frameType is the first byte of a frame header.
type frameType uint8

// Frame types. Begin, Write and Trim travel both ways (the server streams
// them back on Read); the others one way.
const (
	ftShip   frameType = 1 // client: open a shipping session
	ftBegin  frameType = 2
	ftWrite  frameType = 3
	ftTrim   frameType = 4
	ftSync   frameType = 5 // client: fdatasync up to here
	ftDrop   frameType = 6 // client: drop groups up to a name
	ftFence  frameType = 7 // client admin requests
	ftGroups frameType = 8
	ftRead   frameType = 9
	ftForget frameType = 10

	ftResult  frameType = 64 // server: outcome of a request
	ftSyncAck frameType = 65 // server: durable up to a position
	ftGroup   frameType = 66 // server: one group (Groups, and before its entries on Read)
	ftRecvAck frameType = 67 // server: in the server's files (its kernel) up to a position
)

func (t frameType) String() string {
	switch t {
	case ftShip:
		return "ship"
	case ftBegin:
		return "begin"
	case ftWrite:
		return "write"
	case ftTrim:
		return "trim"
	case ftSync:
		return "sync"
	case ftDrop:
		return "drop"
	case ftFence:
		return "fence"
	case ftGroups:
		return "groups"
	case ftRead:
		return "read"
	case ftForget:
		return "forget"
	case ftResult:
		return "result"
	case ftSyncAck:
		return "sync-ack"
	case ftGroup:
		return "group"
	case ftRecvAck:
		return "recv-ack"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// maxBody is the longest body a frame of type t may have, 0 for an
// unknown type. Every length is checked against it before anything is
// allocated.
func maxBody(t frameType) int {
	switch t {
	case ftShip, ftFence, ftGroups, ftForget:
		return 8 + 4 + 1 + MaxVDiskLen
	case ftRead:
		return 8 + 1 + MaxVDiskLen + 1 + MaxGroupLen
	case ftBegin:
		return 2 + 2*MaxGroupLen
	case ftWrite:
		return maxEntryBody
	case ftTrim:
		return entryFixed
	case ftSync, ftSyncAck, ftRecvAck:
		return 8
	case ftDrop:
		return 1 + MaxGroupLen
	case ftResult:
		return 4 + MaxMessageLen
	case ftGroup:
		return 8 + 4 + 8 + 2 + 2*MaxGroupLen
	}
	return 0
}

// Status is the outcome of a request on the wire.
type status uint8

const (
	statusOK       status = 0
	statusFenced   status = 1
	statusInvalid  status = 2
	statusIO       status = 3
	statusNotFound status = 4
	statusGone     status = 5 // the session was ended by another one or by Forget
	statusMax             = statusGone
)

// Sentinel errors; the package's errors wrap them (test with errors.Is).
var (
	// ErrBroken: the shipper (or an admin call) lost its connection, its
	// queue overflowed or the server refused something. What was not
	// acknowledged durable may be lost.
	ErrBroken = errors.New("dtl: broken")
	// ErrFenced: the server refused the epoch: a newer owner has fenced
	// the vdisk.
	ErrFenced = errors.New("dtl: fenced by a newer epoch")
	// ErrNotFound: Read from a group the server does not have.
	ErrNotFound = errors.New("dtl: group not found")
	// ErrVersion: the peer speaks another protocol version, or a file has
	// a format version this code does not know. Errors wrapping it on the
	// wire also wrap ErrBroken.
	ErrVersion = errors.New("dtl: version mismatch")
	// errProtocol: a frame that cannot be decoded.
	errProtocol = errors.New("dtl: protocol error")
)

func statusErr(s status) error {
	switch s {
	case statusFenced:
		return ErrFenced
	case statusNotFound:
		return ErrNotFound
	}
	return ErrBroken
}

// resultError is a non-OK result from the server.
type resultError struct {
	op     string
	status status
	msg    string
}

func (e *resultError) Error() string {
	return fmt.Sprintf("dtl %s: server: %s", e.op, e.msg)
}

func (e *resultError) Unwrap() error { return statusErr(e.status) }

// hello is the first frame both ways.
func appendHello(b []byte, version uint16, st uint8) []byte {
	b = append(b, helloMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, version)
	return append(b, st, 0)
}

func decodeHello(b []byte) (version uint16, st uint8, err error) {
	if len(b) < helloSize {
		return 0, 0, fmt.Errorf("%w: short hello", errProtocol)
	}
	if [4]byte(b[:4]) != helloMagic {
		return 0, 0, fmt.Errorf("%w: bad magic %q: not an OVS DTL peer", errProtocol, b[:4])
	}
	if b[7] != 0 {
		return 0, 0, fmt.Errorf("%w: reserved hello byte set", errProtocol)
	}
	return binary.BigEndian.Uint16(b[4:]), b[6], nil
}

// frameHdr is a decoded frame header.
type frameHdr struct {
	typ    frameType
	length int
}

func appendFrameHdr(b []byte, t frameType, length int) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(length))
	return append(b, byte(t), 0, 0, 0)
}

// decodeFrameHdr decodes a frame header and checks its length against the
// type's limit; allowed tells which types the reader accepts.
func decodeFrameHdr(b []byte, allowed func(frameType) bool) (frameHdr, error) {
	if len(b) < frameHdrSize {
		return frameHdr{}, fmt.Errorf("%w: short frame header", errProtocol)
	}
	n := binary.BigEndian.Uint32(b)
	h := frameHdr{typ: frameType(b[4])}
	switch {
	case maxBody(h.typ) == 0 || !allowed(h.typ):
		return h, fmt.Errorf("%w: unexpected frame type %d", errProtocol, b[4])
	case b[5] != 0 || b[6] != 0 || b[7] != 0:
		return h, fmt.Errorf("%w: reserved bytes set in a %s frame", errProtocol, h.typ)
	case int64(n) > int64(maxBody(h.typ)):
		return h, fmt.Errorf("%w: %s frame of %d bytes exceeds %d", errProtocol, h.typ, n, maxBody(h.typ))
	}
	h.length = int(n)
	return h, nil
}

func clientFrame(t frameType) bool { return t >= ftShip && t <= ftForget }
func serverFrame(t frameType) bool {
	return t == ftResult || t == ftSyncAck || t == ftRecvAck || t == ftGroup || t == ftWrite || t == ftTrim
}

// Names. vdisk ids and group names become file and directory names, so
// their alphabet is narrow.

func validVDisk(s string) error {
	if len(s) == 0 || len(s) > MaxVDiskLen {
		return fmt.Errorf("vdisk id %q: length not in 1..%d", s, MaxVDiskLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("vdisk id %q: only a-z, 0-9 and '-' allowed", s)
		}
	}
	return nil
}

// validGroup checks a group name; empty is allowed only when canBeEmpty
// (prev of the first group, Read's "from").
func validGroup(s string, canBeEmpty bool) error {
	if s == "" && canBeEmpty {
		return nil
	}
	if len(s) == 0 || len(s) > MaxGroupLen {
		return fmt.Errorf("group name %q: length not in 1..%d", s, MaxGroupLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("group name %q: only letters, digits, '-' and '_' allowed", s)
		}
	}
	return nil
}

func validClusterSize(n int) error {
	if n < MinClusterSize || n > MaxClusterSize || bits.OnesCount(uint(n)) != 1 {
		return fmt.Errorf("cluster size %d: not a power of two in %d..%d", n, MinClusterSize, MaxClusterSize)
	}
	return nil
}

// A small cursor over a body: every read checks the remaining length, so
// that a short body is an error, not a panic.
type cursor struct {
	b   []byte
	err error
}

func (c *cursor) take(n int) []byte {
	if c.err != nil {
		return nil
	}
	if n < 0 || n > len(c.b) {
		c.err = fmt.Errorf("%w: short body", errProtocol)
		return nil
	}
	p := c.b[:n]
	c.b = c.b[n:]
	return p
}

func (c *cursor) u8() uint8 {
	if p := c.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (c *cursor) u16() uint16 {
	if p := c.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (c *cursor) u32() uint32 {
	if p := c.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (c *cursor) u64() uint64 {
	if p := c.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// str reads a u8 length and that many bytes.
func (c *cursor) str() string {
	n := int(c.u8())
	return string(c.take(n))
}

// end checks that the whole body was used.
func (c *cursor) end() error {
	if c.err == nil && len(c.b) != 0 {
		c.err = fmt.Errorf("%w: %d trailing bytes", errProtocol, len(c.b))
	}
	return c.err
}

func appendStr(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// shipReq opens a shipping session: Ship (with the cluster size) and the
// admin requests (without it) share it.
type vdiskReq struct {
	epoch       uint64
	clusterSize uint32 // Ship only
	vdisk       string
	from        string // Read only
}

func appendVDiskReq(b []byte, t frameType, r vdiskReq) []byte {
	n := 8 + 1 + len(r.vdisk)
	if t == ftShip {
		n += 4
	}
	if t == ftRead {
		n += 1 + len(r.from)
	}
	b = appendFrameHdr(b, t, n)
	b = binary.BigEndian.AppendUint64(b, r.epoch)
	if t == ftShip {
		b = binary.BigEndian.AppendUint32(b, r.clusterSize)
	}
	b = appendStr(b, r.vdisk)
	if t == ftRead {
		b = appendStr(b, r.from)
	}
	return b
}

func decodeVDiskReq(t frameType, body []byte) (vdiskReq, error) {
	c := cursor{b: body}
	var r vdiskReq
	r.epoch = c.u64()
	if t == ftShip {
		r.clusterSize = c.u32()
	}
	r.vdisk = c.str()
	if t == ftRead {
		r.from = c.str()
	}
	if err := c.end(); err != nil {
		return r, err
	}
	if err := validVDisk(r.vdisk); err != nil {
		return r, fmt.Errorf("%w: %v", errProtocol, err)
	}
	if t == ftShip {
		if err := validClusterSize(int(r.clusterSize)); err != nil {
			return r, fmt.Errorf("%w: %v", errProtocol, err)
		}
	}
	if err := validGroup(r.from, true); err != nil {
		return r, fmt.Errorf("%w: %v", errProtocol, err)
	}
	return r, nil
}

func appendBegin(b []byte, tlog, prev string) []byte {
	b = appendFrameHdr(b, ftBegin, 2+len(tlog)+len(prev))
	b = appendStr(b, tlog)
	return appendStr(b, prev)
}

func decodeBegin(body []byte) (tlog, prev string, err error) {
	c := cursor{b: body}
	tlog, prev = c.str(), c.str()
	if err := c.end(); err != nil {
		return "", "", err
	}
	if err := validGroup(tlog, false); err != nil {
		return "", "", fmt.Errorf("%w: %v", errProtocol, err)
	}
	if err := validGroup(prev, true); err != nil {
		return "", "", fmt.Errorf("%w: %v", errProtocol, err)
	}
	return tlog, prev, nil
}

func appendName(b []byte, t frameType, name string) []byte {
	b = appendFrameHdr(b, t, 1+len(name))
	return appendStr(b, name)
}

func decodeDrop(body []byte) (string, error) {
	c := cursor{b: body}
	name := c.str()
	if err := c.end(); err != nil {
		return "", err
	}
	if err := validGroup(name, false); err != nil {
		return "", fmt.Errorf("%w: %v", errProtocol, err)
	}
	return name, nil
}

func appendU64Frame(b []byte, t frameType, v uint64) []byte {
	b = appendFrameHdr(b, t, 8)
	return binary.BigEndian.AppendUint64(b, v)
}

func decodeU64(body []byte) (uint64, error) {
	c := cursor{b: body}
	v := c.u64()
	return v, c.end()
}

func appendResult(b []byte, st status, msg string) []byte {
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
	}
	b = appendFrameHdr(b, ftResult, 4+len(msg))
	b = append(b, byte(st), 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

func decodeResult(body []byte) (status, string, error) {
	c := cursor{b: body}
	st := status(c.u8())
	reserved := c.u8()
	n := int(c.u16())
	msg := string(c.take(n))
	if err := c.end(); err != nil {
		return 0, "", err
	}
	if reserved != 0 || st > statusMax {
		return 0, "", fmt.Errorf("%w: bad result status %d", errProtocol, st)
	}
	return st, msg, nil
}

func appendGroupInfo(b []byte, g GroupInfo) []byte {
	b = appendFrameHdr(b, ftGroup, 8+4+8+2+len(g.TLog)+len(g.Prev))
	b = binary.BigEndian.AppendUint64(b, g.Epoch)
	b = binary.BigEndian.AppendUint32(b, uint32(g.Entries))
	b = binary.BigEndian.AppendUint64(b, uint64(g.Bytes))
	b = appendStr(b, g.TLog)
	return appendStr(b, g.Prev)
}

func decodeGroupInfo(body []byte) (GroupInfo, error) {
	c := cursor{b: body}
	var g GroupInfo
	g.Epoch = c.u64()
	g.Entries = int(c.u32())
	bytes := c.u64()
	g.TLog, g.Prev = c.str(), c.str()
	if err := c.end(); err != nil {
		return g, err
	}
	if bytes > math.MaxInt64 {
		return g, fmt.Errorf("%w: group of %d bytes", errProtocol, bytes)
	}
	g.Bytes = int64(bytes)
	if err := validGroup(g.TLog, false); err != nil {
		return g, fmt.Errorf("%w: %v", errProtocol, err)
	}
	if err := validGroup(g.Prev, true); err != nil {
		return g, fmt.Errorf("%w: %v", errProtocol, err)
	}
	return g, nil
}

// Entries. The body of a Write or Trim frame, and of a record on disk
// after its kind byte:
//
//	u64 addr | u32 count | Write only: count x u32 CRC-32C | data

// entryBodyLen is the encoded body length of e.
func entryBodyLen(e *Entry) int {
	if e.Kind == Write {
		return entryFixed + 4*int(e.Count) + len(e.Data)
	}
	return entryFixed
}

// appendEntryBody appends e's body; e must have passed checkEntry.
func appendEntryBody(b []byte, e *Entry) []byte {
	return append(appendEntryHead(b, e), e.Data...)
}

// appendEntryHead appends e's body but for the data.
func appendEntryHead(b []byte, e *Entry) []byte {
	b = binary.BigEndian.AppendUint64(b, e.Addr)
	b = binary.BigEndian.AppendUint32(b, e.Count)
	if e.Kind == Write {
		for _, c := range e.CRCs {
			b = binary.BigEndian.AppendUint32(b, c)
		}
	}
	return b
}

// checkEntry checks an entry the caller built against the cluster size,
// without verifying its CRCs (the server does that).
func checkEntry(e *Entry, clusterSize int) error {
	switch e.Kind {
	case Write:
		switch {
		case e.Count == 0:
			return errors.New("write entry of 0 clusters")
		case len(e.CRCs) != int(e.Count):
			return fmt.Errorf("write entry of %d clusters with %d CRCs", e.Count, len(e.CRCs))
		case int64(len(e.Data)) != int64(e.Count)*int64(clusterSize):
			return fmt.Errorf("write entry of %d clusters with %d bytes of data (cluster size %d)", e.Count, len(e.Data), clusterSize)
		}
	case Trim:
		if e.Count == 0 {
			return errors.New("trim entry of 0 clusters")
		}
		if len(e.Data) != 0 || len(e.CRCs) != 0 {
			return errors.New("trim entry with data")
		}
	default:
		return fmt.Errorf("entry of unknown kind %d", e.Kind)
	}
	if e.Addr > math.MaxUint64-uint64(e.Count) {
		return fmt.Errorf("entry at cluster %d + %d overflows", e.Addr, e.Count)
	}
	return nil
}

// verifyEntryBody checks an entry body of kind k read off the wire or a
// disk, and for a Write verifies each cluster's CRC, without allocating.
// clusterSize 0 means "whatever the body implies" (the reader of a Read
// stream does not know the vdisk's); it returns the cluster size found.
func verifyEntryBody(k Kind, body []byte, clusterSize int) (int, error) {
	if len(body) < entryFixed {
		return 0, fmt.Errorf("%w: short %s entry", errProtocol, k)
	}
	addr := binary.BigEndian.Uint64(body)
	count := binary.BigEndian.Uint32(body[8:])
	if count == 0 {
		return 0, fmt.Errorf("%w: %s entry of 0 clusters", errProtocol, k)
	}
	if addr > math.MaxUint64-uint64(count) {
		return 0, fmt.Errorf("%w: %s entry at cluster %d + %d overflows", errProtocol, k, addr, count)
	}
	switch k {
	case Trim:
		if len(body) != entryFixed {
			return 0, fmt.Errorf("%w: trim entry with %d trailing bytes", errProtocol, len(body)-entryFixed)
		}
		return clusterSize, nil
	case Write:
	default:
		return 0, fmt.Errorf("%w: entry of unknown kind %d", errProtocol, k)
	}
	if count > maxWriteClusters {
		return 0, fmt.Errorf("%w: write entry of %d clusters exceeds %d", errProtocol, count, maxWriteClusters)
	}
	crcs := body[entryFixed:]
	if len(crcs) < 4*int(count) {
		return 0, fmt.Errorf("%w: write entry of %d clusters is short of CRCs", errProtocol, count)
	}
	data := crcs[4*count:]
	crcs = crcs[:4*count]
	cs := len(data) / int(count)
	if cs*int(count) != len(data) {
		return 0, fmt.Errorf("%w: write entry of %d clusters with %d bytes of data", errProtocol, count, len(data))
	}
	if clusterSize != 0 && cs != clusterSize {
		return 0, fmt.Errorf("%w: write entry with %d-byte clusters, the session's are %d bytes", errProtocol, cs, clusterSize)
	}
	if err := validClusterSize(cs); err != nil {
		return 0, fmt.Errorf("%w: write entry: %v", errProtocol, err)
	}
	for i := 0; i < int(count); i++ {
		want := binary.BigEndian.Uint32(crcs[4*i:])
		if got := crc32.Checksum(data[i*cs:(i+1)*cs], castagnoli); got != want {
			return 0, fmt.Errorf("%w: write entry at cluster %d: CRC mismatch in cluster %d (%08x, expected %08x)",
				ErrCorrupt, addr, addr+uint64(i), got, want)
		}
	}
	return cs, nil
}

// ErrCorrupt: data whose CRC does not match, on the wire or on disk.
var ErrCorrupt = errors.New("dtl: corrupt data")

// decodeEntry builds an Entry from a body that passed verifyEntryBody; the
// Entry owns fresh memory.
func decodeEntry(k Kind, body []byte) Entry {
	e := Entry{Kind: k, Addr: binary.BigEndian.Uint64(body), Count: binary.BigEndian.Uint32(body[8:])}
	if k == Write {
		e.CRCs = make([]uint32, e.Count)
		for i := range e.CRCs {
			e.CRCs[i] = binary.BigEndian.Uint32(body[entryFixed+4*i:])
		}
		e.Data = append([]byte(nil), body[entryFixed+4*int(e.Count):]...)
	}
	return e
}
