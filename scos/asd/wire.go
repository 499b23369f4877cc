package asd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The binary read protocol ("OVSB"), spoken on the ASD's own port beside
// its HTTP API: the server tells the two apart by the first bytes a client
// sends (after the TLS handshake when the ASD runs with TLS, so the same
// mutual TLS guards both). It carries only fragment reads, the hot path of
// the volume driver; writes, deletes and administration stay on HTTP.
//
// A connection starts with a hello from the client:
//
//	off len
//	  0   4 magic "OVSB"
//	  4   1 lowest protocol version the client speaks
//	  5   1 highest protocol version the client speaks
//	  6   2 flags (0)
//	  8   2 n: length of the id of the ASD meant (0: any)
//	 10   n id
//	  .   2 "\r\n"
//
// The CRLF makes an ASD that only speaks HTTP answer at once with a 400
// ("HTTP/1.1 400 ..."), which is how a client finds out to fall back to
// HTTP. The server answers:
//
//	0   4 magic "OVSB"
//	4   1 version chosen (0: none)
//	5   1 status: 0 ok, 1 no common version, 2 another ASD
//	6   2 n: message length
//	8   n message (why not)
//
// and closes the connection unless the status is 0. Then both sides send
// frames:
//
//	 0   4 length of the rest of the frame (12 .. maxFrameLen)
//	 4   1 type (frameRead, frameReadReply)
//	 5   1 flags (0)
//	 6   2 reserved (0)
//	 8   8 request id (chosen by the client, echoed by the server)
//	16   .. body
//
// A read request (frameRead) body:
//
//	0   4 timeout in milliseconds (0: none): the server skips a request
//	      that waited longer than its client will
//	4   2 number of items (1 .. maxReadItems)
//	6   .. items: key length (2), key, offset (8), length (8)
//
// and its reply (frameReadReply) has, for each item in order: status (1,
// see readStatus), CRC-32C of the whole fragment (4), size of the whole
// fragment (8), then for status 0 the length bytes asked for, else a
// message length (2) and the message. Replies may come in any order; the
// request id matches them. The server verifies every byte it sends against
// the fragment's block checksums, as the HTTP API does.
//
// All integers are little-endian. A malformed frame is a protocol error:
// the side that reads it closes the connection.
const (
	wireMagic      = "OVSB"
	wireVersion    = 1
	wireMinVersion = 1

	frameHeaderLen = 16
	// maxFrameLen bounds a frame (what follows its length field): a batch
	// of reads answers at most maxReadBytes of data plus its items' heads.
	maxFrameLen  = maxReadBytes + maxReadItems*(16+maxFragmentKeyLen) + 64
	maxReadItems = 1024
	// maxReadBytes bounds the data of one read request; bigger reads go
	// over HTTP.
	maxReadBytes = 64 << 20

	frameRead      = 1
	frameReadReply = 2

	helloOK          = 0
	helloBadVersion  = 1
	helloWrongASD    = 2
	maxHelloIDLen    = 255
	maxHelloMsgLen   = 1024
	readItemHeadLen  = 2 + 8 + 8
	replyItemHeadLen = 1 + 4 + 8
)

// readStatus is the outcome of one item of a read request.
type readStatus uint8

const (
	readOK readStatus = iota
	readNotFound
	readCorrupt
	readBadRange
	readBadRequest
	readInternal
	readExpired
)

// errProtocol marks a malformed frame or hello: the connection is closed.
var errProtocol = errors.New("ASD protocol error")

// ReadItem is one range of one fragment in a batched read.
type ReadItem struct {
	Key    string
	Off    int64
	Length int64
}

type frameHeader struct {
	length uint32 // of the rest of the frame, after the length field
	typ    uint8
	id     uint64
}

func putFrameHeader(b []byte, h frameHeader) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], h.length)
	b[4], b[5], b[6], b[7] = h.typ, 0, 0, 0
	le.PutUint64(b[8:], h.id)
}

// decodeFrameHeader checks the fixed part of a frame; it never panics.
func decodeFrameHeader(b []byte) (frameHeader, error) {
	if len(b) < frameHeaderLen {
		return frameHeader{}, fmt.Errorf("%w: frame header of %d bytes", errProtocol, len(b))
	}
	le := binary.LittleEndian
	h := frameHeader{length: le.Uint32(b[0:]), typ: b[4], id: le.Uint64(b[8:])}
	if h.length < frameHeaderLen-4 || h.length > maxFrameLen {
		return frameHeader{}, fmt.Errorf("%w: frame length %d out of range", errProtocol, h.length)
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return frameHeader{}, fmt.Errorf("%w: reserved frame bytes set", errProtocol)
	}
	if h.typ != frameRead && h.typ != frameReadReply {
		return frameHeader{}, fmt.Errorf("%w: unknown frame type %d", errProtocol, h.typ)
	}
	return h, nil
}

// bodyLen is the length of the frame's body.
func (h frameHeader) bodyLen() int { return int(h.length) - (frameHeaderLen - 4) }

// appendReadRequest appends a whole read request frame to b.
func appendReadRequest(b []byte, id uint64, timeoutMS uint32, items []ReadItem) []byte {
	start := len(b)
	b = append(b, make([]byte, frameHeaderLen+6)...)
	le := binary.LittleEndian
	le.PutUint32(b[start+frameHeaderLen:], timeoutMS)
	le.PutUint16(b[start+frameHeaderLen+4:], uint16(len(items)))
	for _, it := range items {
		b = le.AppendUint16(b, uint16(len(it.Key)))
		b = append(b, it.Key...)
		b = le.AppendUint64(b, uint64(it.Off))
		b = le.AppendUint64(b, uint64(it.Length))
	}
	putFrameHeader(b[start:], frameHeader{length: uint32(len(b) - start - 4), typ: frameRead, id: id})
	return b
}

// readRequest is a decoded read request. Keys point into the frame body.
type readRequest struct {
	timeoutMS uint32
	items     []ReadItem
	total     int64 // bytes asked for
}

// decodeReadRequest decodes the body of a read request, checking every
// length against the body and the protocol's bounds; it never panics.
func decodeReadRequest(body []byte, items []ReadItem) (readRequest, error) {
	bad := func(format string, args ...any) (readRequest, error) {
		return readRequest{}, fmt.Errorf("%w: read request: %s", errProtocol, fmt.Sprintf(format, args...))
	}
	if len(body) < 6 {
		return bad("body of %d bytes", len(body))
	}
	le := binary.LittleEndian
	r := readRequest{timeoutMS: le.Uint32(body), items: items[:0]}
	n := int(le.Uint16(body[4:]))
	if n == 0 || n > maxReadItems {
		return bad("%d items", n)
	}
	p := body[6:]
	for range n {
		if len(p) < 2 {
			return bad("truncated item")
		}
		kl := int(le.Uint16(p))
		if kl == 0 || kl > maxFragmentKeyLen || len(p) < 2+kl+16 {
			return bad("key length %d in %d bytes", kl, len(p))
		}
		it := ReadItem{Key: string(p[2 : 2+kl])}
		off, length := le.Uint64(p[2+kl:]), le.Uint64(p[2+kl+8:])
		if off > MaxFragmentSize || length > maxReadBytes {
			return bad("range [%d,+%d)", off, length)
		}
		it.Off, it.Length = int64(off), int64(length)
		r.total += it.Length
		if r.total > maxReadBytes {
			return bad("more than %d bytes asked for", maxReadBytes)
		}
		r.items = append(r.items, it)
		p = p[2+kl+16:]
	}
	if len(p) != 0 {
		return bad("%d bytes after the last item", len(p))
	}
	return r, nil
}

// appendHello appends the client's hello.
func appendHello(b []byte, id string) []byte {
	b = append(b, wireMagic...)
	b = append(b, wireMinVersion, wireVersion, 0, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(id)))
	b = append(b, id...)
	return append(b, '\r', '\n')
}

// readHello reads a client's hello (the magic already matched by the
// caller is read again here). It returns the versions offered and the id
// of the ASD meant.
func readHello(r io.Reader) (lo, hi uint8, id string, err error) {
	var fixed [10]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return 0, 0, "", fmt.Errorf("hello: %w", err)
	}
	if string(fixed[:4]) != wireMagic {
		return 0, 0, "", fmt.Errorf("%w: hello: bad magic %q", errProtocol, fixed[:4])
	}
	if fixed[6] != 0 || fixed[7] != 0 {
		return 0, 0, "", fmt.Errorf("%w: hello: unknown flags", errProtocol)
	}
	n := int(binary.LittleEndian.Uint16(fixed[8:]))
	if n > maxHelloIDLen {
		return 0, 0, "", fmt.Errorf("%w: hello: id of %d bytes", errProtocol, n)
	}
	rest := make([]byte, n+2)
	if _, err := io.ReadFull(r, rest); err != nil {
		return 0, 0, "", fmt.Errorf("hello: %w", err)
	}
	if rest[n] != '\r' || rest[n+1] != '\n' {
		return 0, 0, "", fmt.Errorf("%w: hello: no CRLF after the id", errProtocol)
	}
	return fixed[4], fixed[5], string(rest[:n]), nil
}

func appendHelloReply(b []byte, version, status uint8, msg string) []byte {
	if len(msg) > maxHelloMsgLen {
		msg = msg[:maxHelloMsgLen]
	}
	b = append(b, wireMagic...)
	b = append(b, version, status)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// errHTTPOnly: the peer answered the hello as an HTTP server would (an ASD
// of a build that only speaks HTTP).
var errHTTPOnly = errors.New("the ASD speaks only HTTP")

// readHelloReply reads the server's answer to the hello.
func readHelloReply(r io.Reader) (version uint8, err error) {
	var fixed [8]byte
	if _, err := io.ReadFull(r, fixed[:4]); err != nil {
		return 0, fmt.Errorf("hello: %w", err)
	}
	if string(fixed[:4]) == "HTTP" {
		return 0, errHTTPOnly
	}
	if string(fixed[:4]) != wireMagic {
		return 0, fmt.Errorf("%w: hello reply: bad magic %q", errProtocol, fixed[:4])
	}
	if _, err := io.ReadFull(r, fixed[4:]); err != nil {
		return 0, fmt.Errorf("hello: %w", err)
	}
	n := int(binary.LittleEndian.Uint16(fixed[6:]))
	if n > maxHelloMsgLen {
		return 0, fmt.Errorf("%w: hello reply: message of %d bytes", errProtocol, n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return 0, fmt.Errorf("hello: %w", err)
	}
	switch fixed[5] {
	case helloOK:
		if fixed[4] < wireMinVersion || fixed[4] > wireVersion {
			return 0, fmt.Errorf("%w: hello reply: version %d not offered", errProtocol, fixed[4])
		}
		return fixed[4], nil
	case helloBadVersion:
		return 0, fmt.Errorf("%w: %s", errNoCommonVersion, msg)
	case helloWrongASD:
		return 0, fmt.Errorf("%w: %s", errWrongASD, msg)
	default:
		return 0, fmt.Errorf("%w: hello reply: status %d", errProtocol, fixed[5])
	}
}

var (
	errNoCommonVersion = errors.New("no common ASD protocol version")
	errWrongASD        = errors.New("wrong ASD")
)

// replyItem is one decoded item of a read reply (its data, for status 0,
// went to the caller's buffer).
type replyItem struct {
	status readStatus
	crc    uint32
	size   int64
	msg    string // status not 0
}

// readReply reads a read reply body of n bytes from r, given the request's
// items: the data of each item read well goes straight into dst[i] (of
// the item's length: no copy through a frame buffer, which cost the node
// a memmove of every byte of a 1 MiB read), the rest of each item into
// out. It reads at most n bytes and never panics; after an error, dst
// may hold part of the reply and the stream is out of step (the caller
// closes the connection).
func readReply(r io.Reader, n int, req []ReadItem, dst [][]byte, out []replyItem) ([]replyItem, error) {
	out = out[:0]
	le := binary.LittleEndian
	var head [replyItemHeadLen]byte
	for i, it := range req {
		if n < replyItemHeadLen {
			return nil, fmt.Errorf("%w: read reply: item %d truncated", errProtocol, i)
		}
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return nil, err
		}
		n -= replyItemHeadLen
		ri := replyItem{status: readStatus(head[0]), crc: le.Uint32(head[1:]), size: int64(le.Uint64(head[5:]))}
		if ri.status == readOK {
			if int64(n) < it.Length || i >= len(dst) || int64(len(dst[i])) != it.Length {
				return nil, fmt.Errorf("%w: read reply: item %d has %d of %d bytes", errProtocol, i, n, it.Length)
			}
			if _, err := io.ReadFull(r, dst[i]); err != nil {
				return nil, err
			}
			n -= int(it.Length)
		} else {
			if ri.status > readExpired || n < 2 {
				return nil, fmt.Errorf("%w: read reply: item %d: status %d", errProtocol, i, ri.status)
			}
			var ml [2]byte
			if _, err := io.ReadFull(r, ml[:]); err != nil {
				return nil, err
			}
			n -= 2
			m := int(le.Uint16(ml[:]))
			if n < m {
				return nil, fmt.Errorf("%w: read reply: item %d: message truncated", errProtocol, i)
			}
			msg := make([]byte, m)
			if _, err := io.ReadFull(r, msg); err != nil {
				return nil, err
			}
			n -= m
			ri.msg = string(msg)
		}
		out = append(out, ri)
	}
	if n != 0 {
		return nil, fmt.Errorf("%w: read reply: %d bytes after the last item", errProtocol, n)
	}
	return out, nil
}
