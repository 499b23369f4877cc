package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Wire constants of the NBD protocol (doc/proto.md of the reference
// implementation). All integers on the wire are big-endian.
const (
	nbdMagic             = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic             = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic        = 0x0003e889045565a9
	requestMagic         = 0x25609513
	simpleReplyMagic     = 0x67446698
	structuredReplyMagic = 0x668e33ef

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// Transmission flags.
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagSendDF          = 1 << 7
	tflagCanMultiConn    = 1 << 8
	tflagSendCache       = 1 << 10
	tflagSendFastZero    = 1 << 11

	// Options.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	// Option reply types.
	repAck             = 1
	repServer          = 2
	repInfo            = 3
	repMetaContext     = 4
	repErrUnsup        = 1<<31 + 1
	repErrPolicy       = 1<<31 + 2
	repErrInvalid      = 1<<31 + 3
	repErrUnknown      = 1<<31 + 6
	repErrShutdown     = 1<<31 + 7
	repErrTooBig       = 1<<31 + 9
	repErrBlockSizeReq = 1<<31 + 8

	// NBD_INFO types.
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4

	// Structured replies.
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1

	// base:allocation state flags.
	stateHole = 1 << 0
	stateZero = 1 << 1

	// Error values.
	errPerm      = 1
	errIO        = 5
	errNoMem     = 12
	errInval     = 22
	errNoSpc     = 28
	errOverflow  = 75
	errNotSup    = 95
	errShutdown  = 108
	requestSize  = 28 // bytes in a request header
	optHdrSize   = 16 // bytes in an option header
	maxStringLen = 4096

	// metaAllocationID is the context ID we hand out for base:allocation.
	metaAllocationID = 1
	metaAllocation   = "base:allocation"

	// maxExtents caps the descriptors in one NBD_REPLY_TYPE_BLOCK_STATUS chunk.
	maxExtents = 1 << 20
)

// request is a parsed transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	offset uint64
	length uint32
}

// errBadMagic is returned by parseRequest for a header with a wrong magic;
// the connection cannot be resynchronised and must be closed.
var errBadMagic = errors.New("bad request magic")

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) < requestSize {
		return request{}, fmt.Errorf("short request header: %d bytes", len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != requestMagic {
		return request{}, fmt.Errorf("%w 0x%08x", errBadMagic, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		cookie: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// payloadLen is how many bytes of data follow the request header.
func (r *request) payloadLen() uint32 {
	if r.typ == cmdWrite {
		return r.length
	}
	return 0
}

// exportState is what request validation needs to know about the
// negotiated export.
type exportState struct {
	size       uint64
	readOnly   bool
	structured bool
	metaAlloc  bool // base:allocation selected for this export
	maxPayload uint32
}

// validateRequest checks a request against the export and the negotiated
// features. It returns 0 or the NBD error to reply with, and a short
// message for structured error chunks. It never looks at device state.
func validateRequest(r *request, st *exportState) (uint32, string) {
	var allowed uint16
	switch r.typ {
	case cmdRead:
		allowed = cmdFlagFUA
		if st.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim, cmdCache:
		allowed = cmdFlagFUA
	case cmdFlush:
		allowed = cmdFlagFUA
	case cmdWriteZeroes:
		allowed = cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		allowed = cmdFlagFUA | cmdFlagReqOne
	case cmdDisc:
		return 0, ""
	default:
		return errInval, "unknown command"
	}
	if r.flags&^allowed != 0 {
		return errInval, "invalid command flags"
	}
	inRange := r.offset <= st.size && uint64(r.length) <= st.size-r.offset
	switch r.typ {
	case cmdRead:
		if r.length > st.maxPayload {
			if st.structured {
				return errOverflow, "read request too large"
			}
			return errInval, "read request too large"
		}
		if !inRange {
			return errInval, "read beyond the end of the export"
		}
	case cmdWrite:
		if st.readOnly {
			return errPerm, "export is read-only"
		}
		if r.length > st.maxPayload {
			return errInval, "write request too large"
		}
		if !inRange {
			return errNoSpc, "write beyond the end of the export"
		}
	case cmdFlush:
		if r.offset != 0 || r.length != 0 {
			return errInval, "flush with nonzero offset or length"
		}
	case cmdTrim, cmdWriteZeroes:
		if st.readOnly {
			return errPerm, "export is read-only"
		}
		if !inRange {
			return errNoSpc, "request beyond the end of the export"
		}
	case cmdCache:
		if !inRange {
			return errInval, "cache beyond the end of the export"
		}
	case cmdBlockStatus:
		if !st.structured || !st.metaAlloc {
			return errInval, "block status without a negotiated metadata context"
		}
		if r.length == 0 {
			return errInval, "block status of zero length"
		}
		if !inRange {
			return errInval, "block status beyond the end of the export"
		}
	}
	return 0, ""
}

// optHeader is a parsed option header of the handshake phase.
type optHeader struct {
	opt    uint32
	length uint32
}

var errBadOptMagic = errors.New("bad option magic")

func parseOptHeader(b []byte) (optHeader, error) {
	if len(b) < optHdrSize {
		return optHeader{}, fmt.Errorf("short option header: %d bytes", len(b))
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != optMagic {
		return optHeader{}, fmt.Errorf("%w 0x%016x", errBadOptMagic, m)
	}
	return optHeader{
		opt:    binary.BigEndian.Uint32(b[8:12]),
		length: binary.BigEndian.Uint32(b[12:16]),
	}, nil
}

// optError is a handshake-option failure answered with an error reply; the
// negotiation goes on.
type optError struct {
	rep uint32
	msg string
}

func (e *optError) Error() string { return e.msg }

func invalidOpt(format string, args ...any) *optError {
	return &optError{rep: repErrInvalid, msg: fmt.Sprintf(format, args...)}
}

// checkName validates an export name or query string as the protocol's
// strings: at most 4096 bytes, valid UTF-8, no NUL.
func checkName(s string) error {
	if len(s) > maxStringLen {
		return fmt.Errorf("string of %d bytes is longer than %d", len(s), maxStringLen)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("string contains NUL")
	}
	if !utf8.ValidString(s) {
		return errors.New("string is not valid UTF-8")
	}
	return nil
}

// infoRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 6 {
		return infoRequest{}, invalidOpt("option data of %d bytes is too short", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data))-6 {
		return infoRequest{}, invalidOpt("export name length %d exceeds option data", nameLen)
	}
	name := string(data[4 : 4+nameLen])
	if err := checkName(name); err != nil {
		return infoRequest{}, invalidOpt("export name: %v", err)
	}
	rest := data[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, invalidOpt("%d information requests need %d bytes, got %d", n, 2*n, len(rest))
	}
	infos := make([]uint16, n)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return infoRequest{name: name, infos: infos}, nil
}

// metaRequest is the payload of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	name    string
	queries []string
}

// maxMetaQueries bounds the queries we accept in one meta-context option.
const maxMetaQueries = 1024

// parseMetaRequest decodes the data of the meta-context options.
func parseMetaRequest(data []byte) (metaRequest, error) {
	if len(data) < 8 {
		return metaRequest{}, invalidOpt("option data of %d bytes is too short", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data))-8 {
		return metaRequest{}, invalidOpt("export name length %d exceeds option data", nameLen)
	}
	name := string(data[4 : 4+nameLen])
	if err := checkName(name); err != nil {
		return metaRequest{}, invalidOpt("export name: %v", err)
	}
	rest := data[4+nameLen:]
	n := binary.BigEndian.Uint32(rest[0:4])
	rest = rest[4:]
	if n > maxMetaQueries {
		return metaRequest{}, &optError{rep: repErrTooBig, msg: fmt.Sprintf("%d queries exceed the limit of %d", n, maxMetaQueries)}
	}
	// Each query needs at least its 4-byte length.
	if uint64(n)*4 > uint64(len(rest)) {
		return metaRequest{}, invalidOpt("%d queries do not fit in option data", n)
	}
	queries := make([]string, 0, n)
	for i := uint32(0); i < n; i++ {
		if len(rest) < 4 {
			return metaRequest{}, invalidOpt("query %d: truncated length", i)
		}
		ql := binary.BigEndian.Uint32(rest[0:4])
		rest = rest[4:]
		if uint64(ql) > uint64(len(rest)) {
			return metaRequest{}, invalidOpt("query %d: length %d exceeds option data", i, ql)
		}
		q := string(rest[:ql])
		rest = rest[ql:]
		if err := checkName(q); err != nil {
			return metaRequest{}, invalidOpt("query %d: %v", i, err)
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return metaRequest{}, invalidOpt("%d trailing bytes after queries", len(rest))
	}
	return metaRequest{name: name, queries: queries}, nil
}

// matchMeta reports which of our contexts a query selects. For LIST, "base:"
// is a wildcard and no queries list everything; for SET only the exact
// context name selects it. Unknown namespaces and leaves are ignored.
func matchMeta(queries []string, list bool) (alloc bool, err error) {
	if list && len(queries) == 0 {
		return true, nil
	}
	for _, q := range queries {
		ns, _, ok := strings.Cut(q, ":")
		if !ok || ns == "" {
			return false, invalidOpt("query %q has no namespace", q)
		}
		switch {
		case q == metaAllocation:
			alloc = true
		case list && q == "base:":
			alloc = true
		}
	}
	return alloc, nil
}
