package arakoon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits of the data model and of the client protocol.
const (
	// MaxKeySize is the largest key in bytes. Keys are never empty.
	MaxKeySize = 4 << 10
	// MaxValueSize is the largest value in bytes (8 MiB).
	MaxValueSize = 8 << 20
	// MaxFrameSize is the largest frame payload of the client protocol. A
	// request or response that does not fit is refused with ErrTooLarge.
	MaxFrameSize = 32 << 20

	// ProtocolVersion is the first byte of every frame.
	ProtocolVersion = 1

	frameHeaderSize = 14 // version, kind, request id (8), payload length (4)
	maxNameSize     = 256
	maxMessageSize  = 64 << 10
)

// The client protocol. Every frame, in both directions, is
//
//	version u8 | kind u8 | request id u64 | payload length u32 | payload
//
// (big-endian). A request's kind is its op, a response's kind its status;
// a response carries the id of its request, and responses on a connection
// may come in any order. Payload fields are uvarint-length-prefixed byte
// strings, uvarints, booleans (one byte) and optional byte strings (a
// presence byte, then the string): see request.encode and response.encode.

// op is a request kind.
type op byte

const (
	opHello        op = 1
	opGet          op = 2
	opMultiGet     op = 3
	opExists       op = 4
	opRange        op = 5
	opRangeEntries op = 6
	opPrefixKeys   op = 7
	opWhoMaster    op = 8
	opStatistics   op = 9
	opMembers      op = 10

	opNop             op = 16
	opSet             op = 17
	opDelete          op = 18
	opDeletePrefix    op = 19
	opTestAndSet      op = 20
	opSequence        op = 21
	opRegisterSession op = 22
	opCloseSession    op = 23

	opAddNode    op = 32
	opRemoveNode op = 33
)

var opNames = map[op]string{
	opHello: "hello", opGet: "get", opMultiGet: "multi_get", opExists: "exists",
	opRange: "range", opRangeEntries: "range_entries", opPrefixKeys: "prefix_keys",
	opWhoMaster: "who_master", opStatistics: "statistics", opMembers: "members",
	opNop: "nop", opSet: "set", opDelete: "delete", opDeletePrefix: "delete_prefix",
	opTestAndSet: "test_and_set", opSequence: "sequence",
	opRegisterSession: "register_session", opCloseSession: "close_session",
	opAddNode: "add_node", opRemoveNode: "remove_node",
}

func (o op) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("op(%d)", byte(o))
}

func (o op) valid() bool { _, ok := opNames[o]; return ok }

// mutating ops go through the raft log under the client's session.
func (o op) mutating() bool {
	switch o {
	case opSet, opDelete, opDeletePrefix, opTestAndSet, opSequence:
		return true
	}
	return false
}

// reads take a consistency byte.
func (o op) read() bool {
	switch o {
	case opGet, opMultiGet, opExists, opRange, opRangeEntries, opPrefixKeys, opWhoMaster:
		return true
	}
	return false
}

// Status is the outcome of a request, the kind of a response frame.
type Status byte

// Statuses. Every status but StatusOK comes with a message.
const (
	StatusOK              Status = 0
	StatusNotFound        Status = 1  // the key does not exist
	StatusAssertionFailed Status = 2  // a sequence's assert or test_and_set precondition did not hold
	StatusNotMaster       Status = 3  // this node is not the master; the payload names it
	StatusNoMaster        Status = 4  // there is no master right now
	StatusBadRequest      Status = 5  // the request is malformed
	StatusTooLarge        Status = 6  // a key, value, request or response exceeds a limit
	StatusSessionExpired  Status = 7  // the client session is unknown (evicted or closed)
	StatusUnavailable     Status = 8  // the node cannot serve now (shutting down, leadership lost); retry
	StatusInternal        Status = 9  // the node failed; see its log
	StatusWrongCluster    Status = 10 // the node belongs to another cluster
	StatusOutcomeUnknown  Status = 11 // client side only: a retried mutation may or may not have applied
	StatusUnauthorized    Status = 12 // the client did not authenticate (the node requires TLS with the cluster's credentials)
)

var statusNames = map[Status]string{
	StatusOK: "ok", StatusNotFound: "not found", StatusAssertionFailed: "assertion failed",
	StatusNotMaster: "not master", StatusNoMaster: "no master", StatusBadRequest: "bad request",
	StatusTooLarge: "too large", StatusSessionExpired: "session expired",
	StatusUnavailable: "unavailable", StatusInternal: "internal error",
	StatusWrongCluster: "wrong cluster", StatusOutcomeUnknown: "outcome unknown",
	StatusUnauthorized: "unauthorized",
}

func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

// Error is an error reported by an arakoon node (or by the client for a
// request it refuses to send). Compare with errors.Is against the Err*
// values, which match any Error of the same Status.
type Error struct {
	Status Status
	Msg    string
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return "arakoon: " + e.Status.String()
	}
	return "arakoon: " + e.Status.String() + ": " + e.Msg
}

// Is matches the sentinel of the same status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrNotFound        = &Error{Status: StatusNotFound}
	ErrAssertionFailed = &Error{Status: StatusAssertionFailed}
	ErrNoMaster        = &Error{Status: StatusNoMaster}
	ErrBadRequest      = &Error{Status: StatusBadRequest}
	ErrTooLarge        = &Error{Status: StatusTooLarge}
	ErrSessionExpired  = &Error{Status: StatusSessionExpired}
	ErrUnavailable     = &Error{Status: StatusUnavailable}
	ErrWrongCluster    = &Error{Status: StatusWrongCluster}
	ErrOutcomeUnknown  = &Error{Status: StatusOutcomeUnknown}
	ErrUnauthorized    = &Error{Status: StatusUnauthorized}
)

func errorf(s Status, format string, args ...any) *Error {
	return &Error{Status: s, Msg: fmt.Sprintf(format, args...)}
}

// Consistency selects how a read is served.
type Consistency byte

const (
	// Linearizable reads are served by the master after it confirmed that it
	// still is the master: they see every write acknowledged before them.
	Linearizable Consistency = 0
	// Stale reads are served from the local state of whichever node is
	// asked, master or not, without contacting the others: for monitoring.
	Stale Consistency = 1
)

// UpdateKind is the kind of one step of a sequence.
type UpdateKind byte

const (
	UpdateSet          UpdateKind = 1
	UpdateDelete       UpdateKind = 2 // fails the sequence if the key is missing
	UpdateDeletePrefix UpdateKind = 3
	UpdateAssert       UpdateKind = 4 // Value nil: assert the key is absent
	UpdateAssertExists UpdateKind = 5
)

func (k UpdateKind) String() string {
	switch k {
	case UpdateSet:
		return "set"
	case UpdateDelete:
		return "delete"
	case UpdateDeletePrefix:
		return "delete_prefix"
	case UpdateAssert:
		return "assert"
	case UpdateAssertExists:
		return "assert_exists"
	}
	return fmt.Sprintf("update(%d)", byte(k))
}

// Update is one step of a sequence.
type Update struct {
	Kind  UpdateKind
	Key   []byte // the key, or the prefix of UpdateDeletePrefix
	Value []byte // UpdateSet: the value; UpdateAssert: the expected value, nil for absent
}

// KV is one entry of range_entries.
type KV struct {
	Key, Value []byte
}

// NodeInfo names a node and where clients and peers reach it.
type NodeInfo struct {
	ID     string
	Client string // host:port of the client protocol
	Raft   string // host:port of the raft transport (empty where unknown)
}

// Member is one server of the raft configuration.
type Member struct {
	NodeInfo
	Voter bool // false for a learner (non-voter)
}

// mutation is the state change a mutating request asks for; it is also
// what a log command carries.
type mutation struct {
	Op       op
	Key      []byte   // set, delete, delete_prefix (the prefix), test_and_set
	Value    []byte   // set
	Expected []byte   // test_and_set: nil = expect absent
	Wanted   []byte   // test_and_set: nil = delete
	Updates  []Update // sequence
}

// request is a decoded request frame; which fields matter depends on Op.
type request struct {
	ID          uint64
	Op          op
	Consistency Consistency // reads
	Node        string      // stale reads: unused on the wire, chosen by the client

	Cluster string // hello

	Key      []byte   // get, exists, prefix_keys (prefix)
	Keys     [][]byte // multi_get
	First    []byte   // range: nil = from the first key
	FirstInc bool
	Last     []byte // range: nil = to the last key
	LastInc  bool
	Max      uint64 // range, range_entries, prefix_keys: 0 = no limit

	// Mutating requests: the client session, this request's sequence
	// number, and the lowest sequence number the client still waits for.
	Session, Seq, Lowest uint64
	Mutation             mutation

	NodeInfo NodeInfo // add_node
	Learner  bool     // add_node
	NodeID   string   // remove_node

	ambiguous bool // client side: an earlier try may have reached a node
}

// response is a decoded response frame.
type response struct {
	ID     uint64
	Status Status
	Msg    string   // any status but OK
	Master NodeInfo // not master: the master as the node knows it (ID may be empty)

	Value   []byte   // get; test_and_set: the old value (nil = was absent)
	Values  [][]byte // multi_get: nil entries are missing keys
	Keys    [][]byte // range, prefix_keys
	Entries []KV     // range_entries
	Bool    bool     // exists
	Count   uint64   // delete_prefix: keys deleted; register_session: the session id
	Node    NodeInfo // hello: the node answering; who_master: the master
	Members []Member // members
	JSON    []byte   // statistics
}

func validKey(what string, k []byte) *Error {
	switch {
	case len(k) == 0:
		return errorf(StatusBadRequest, "empty %s", what)
	case len(k) > MaxKeySize:
		return errorf(StatusTooLarge, "%s of %d bytes exceeds the %d-byte limit", what, len(k), MaxKeySize)
	}
	return nil
}

func validValue(v []byte) *Error {
	if len(v) > MaxValueSize {
		return errorf(StatusTooLarge, "value of %d bytes exceeds the %d MiB limit", len(v), MaxValueSize>>20)
	}
	return nil
}

// validate checks a mutation's keys and values (the same rules on the
// client, the server and in the state machine).
func (m *mutation) validate() *Error {
	switch m.Op {
	case opSet:
		if e := validKey("key", m.Key); e != nil {
			return e
		}
		return validValue(m.Value)
	case opDelete:
		return validKey("key", m.Key)
	case opDeletePrefix:
		if len(m.Key) > MaxKeySize {
			return validKey("prefix", m.Key)
		}
		return nil
	case opTestAndSet:
		if e := validKey("key", m.Key); e != nil {
			return e
		}
		if e := validValue(m.Expected); e != nil {
			return e
		}
		return validValue(m.Wanted)
	case opSequence:
		for i, u := range m.Updates {
			var e *Error
			switch u.Kind {
			case UpdateSet:
				if e = validKey("key", u.Key); e == nil {
					e = validValue(u.Value)
				}
			case UpdateDelete, UpdateAssertExists:
				e = validKey("key", u.Key)
			case UpdateDeletePrefix:
				if len(u.Key) > MaxKeySize {
					e = validKey("prefix", u.Key)
				}
			case UpdateAssert:
				if e = validKey("key", u.Key); e == nil {
					e = validValue(u.Value)
				}
			default:
				e = errorf(StatusBadRequest, "unknown update kind %d", u.Kind)
			}
			if e != nil {
				return &Error{Status: e.Status, Msg: fmt.Sprintf("sequence step %d (%s): %s", i, u.Kind, e.Msg)}
			}
		}
		return nil
	}
	return errorf(StatusBadRequest, "%s is not a mutation", m.Op)
}

func (m *mutation) encode(e *encoder) {
	e.u8(byte(m.Op))
	switch m.Op {
	case opSet:
		e.bytes(m.Key)
		e.bytes(m.Value)
	case opDelete, opDeletePrefix:
		e.bytes(m.Key)
	case opTestAndSet:
		e.bytes(m.Key)
		e.optBytes(m.Expected)
		e.optBytes(m.Wanted)
	case opSequence:
		e.uvarint(uint64(len(m.Updates)))
		for _, u := range m.Updates {
			e.u8(byte(u.Kind))
			e.bytes(u.Key)
			switch u.Kind {
			case UpdateSet:
				e.bytes(u.Value)
			case UpdateAssert:
				e.optBytes(u.Value)
			}
		}
	}
}

func (m *mutation) decode(d *decoder) {
	m.Op = op(d.u8())
	switch m.Op {
	case opSet:
		m.Key = d.bytes("key", MaxKeySize)
		m.Value = d.bytes("value", MaxValueSize)
	case opDelete, opDeletePrefix:
		m.Key = d.bytes("key", MaxKeySize)
	case opTestAndSet:
		m.Key = d.bytes("key", MaxKeySize)
		m.Expected = d.optBytes("expected value", MaxValueSize)
		m.Wanted = d.optBytes("wanted value", MaxValueSize)
	case opSequence:
		n := d.count("sequence step", 2)
		m.Updates = make([]Update, 0, n)
		for range n {
			var u Update
			u.Kind = UpdateKind(d.u8())
			u.Key = d.bytes("key", MaxKeySize)
			switch u.Kind {
			case UpdateSet:
				u.Value = d.bytes("value", MaxValueSize)
			case UpdateAssert:
				u.Value = d.optBytes("value", MaxValueSize)
			case UpdateDelete, UpdateDeletePrefix, UpdateAssertExists:
			default:
				d.fail("unknown sequence step kind %d", u.Kind)
			}
			if d.err() != nil {
				return
			}
			m.Updates = append(m.Updates, u)
		}
	default:
		d.fail("%s is not a mutation", m.Op)
	}
}

func encodeNodeInfo(e *encoder, n NodeInfo) {
	e.str(n.ID)
	e.str(n.Client)
	e.str(n.Raft)
}

func decodeNodeInfo(d *decoder) NodeInfo {
	return NodeInfo{
		ID:     d.str("node id", maxNameSize),
		Client: d.str("client address", maxNameSize),
		Raft:   d.str("raft address", maxNameSize),
	}
}

// encode returns the request's payload.
func (r *request) encode() []byte {
	e := &encoder{}
	if r.Op.read() {
		e.u8(byte(r.Consistency))
	}
	switch r.Op {
	case opHello:
		e.str(r.Cluster)
	case opGet, opExists, opPrefixKeys:
		e.bytes(r.Key)
		if r.Op == opPrefixKeys {
			e.uvarint(r.Max)
		}
	case opMultiGet:
		e.uvarint(uint64(len(r.Keys)))
		for _, k := range r.Keys {
			e.bytes(k)
		}
	case opRange, opRangeEntries:
		e.optBytes(r.First)
		e.boolean(r.FirstInc)
		e.optBytes(r.Last)
		e.boolean(r.LastInc)
		e.uvarint(r.Max)
	case opWhoMaster, opStatistics, opMembers, opRegisterSession, opNop:
	case opCloseSession:
		e.u64(r.Session)
	case opAddNode:
		encodeNodeInfo(e, r.NodeInfo)
		e.boolean(r.Learner)
	case opRemoveNode:
		e.str(r.NodeID)
	default:
		if r.Op.mutating() {
			e.u64(r.Session)
			e.uvarint(r.Seq)
			e.uvarint(r.Lowest)
			r.Mutation.encode(e)
		}
	}
	return e.b
}

// decodeRequest parses a request payload of kind o. It never panics; a
// malformed payload is an error.
func decodeRequest(id uint64, o op, payload []byte) (*request, error) {
	if !o.valid() {
		return nil, fmt.Errorf("unknown op %d", byte(o))
	}
	r := &request{ID: id, Op: o}
	d := newDecoder(payload)
	if o.read() {
		switch c := Consistency(d.u8()); c {
		case Linearizable, Stale:
			r.Consistency = c
		default:
			d.fail("unknown consistency %d", c)
		}
	}
	switch o {
	case opHello:
		r.Cluster = d.str("cluster name", maxNameSize)
	case opGet, opExists, opPrefixKeys:
		r.Key = d.bytes("key", MaxKeySize)
		if o == opPrefixKeys {
			r.Max = d.uvarint()
		}
	case opMultiGet:
		n := d.count("key", 1)
		r.Keys = make([][]byte, 0, n)
		for range n {
			r.Keys = append(r.Keys, d.bytes("key", MaxKeySize))
		}
	case opRange, opRangeEntries:
		r.First = d.optBytes("first key", MaxKeySize)
		r.FirstInc = d.boolean()
		r.Last = d.optBytes("last key", MaxKeySize)
		r.LastInc = d.boolean()
		r.Max = d.uvarint()
	case opWhoMaster, opStatistics, opMembers, opRegisterSession, opNop:
	case opCloseSession:
		r.Session = d.u64()
	case opAddNode:
		r.NodeInfo = decodeNodeInfo(d)
		r.Learner = d.boolean()
	case opRemoveNode:
		r.NodeID = d.str("node id", maxNameSize)
	default: // mutating
		r.Session = d.u64()
		r.Seq = d.uvarint()
		r.Lowest = d.uvarint()
		r.Mutation.decode(d)
		if d.err() == nil && r.Mutation.Op != o {
			d.fail("frame kind %s carries a %s mutation", o, r.Mutation.Op)
		}
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("%s request: %w", o, err)
	}
	return r, nil
}

// encode returns the response's payload; o is the op of the request.
func (r *response) encode(o op) []byte {
	e := &encoder{}
	switch r.Status {
	case StatusOK:
	case StatusNotMaster:
		encodeNodeInfo(e, r.Master)
		e.str(r.Msg)
		return e.b
	default:
		e.str(r.Msg)
		return e.b
	}
	switch o {
	case opHello, opWhoMaster:
		encodeNodeInfo(e, r.Node)
	case opGet:
		e.bytes(r.Value)
	case opTestAndSet:
		e.optBytes(r.Value)
	case opMultiGet:
		e.uvarint(uint64(len(r.Values)))
		for _, v := range r.Values {
			e.optBytes(v)
		}
	case opExists:
		e.boolean(r.Bool)
	case opRange, opPrefixKeys:
		e.uvarint(uint64(len(r.Keys)))
		for _, k := range r.Keys {
			e.bytes(k)
		}
	case opRangeEntries:
		e.uvarint(uint64(len(r.Entries)))
		for _, kv := range r.Entries {
			e.bytes(kv.Key)
			e.bytes(kv.Value)
		}
	case opDeletePrefix, opRegisterSession:
		e.uvarint(r.Count)
	case opMembers:
		e.uvarint(uint64(len(r.Members)))
		for _, m := range r.Members {
			encodeNodeInfo(e, m.NodeInfo)
			e.boolean(m.Voter)
		}
	case opStatistics:
		e.bytes(r.JSON)
	}
	return e.b
}

// decodeResponse parses a response payload to a request of kind o.
func decodeResponse(id uint64, o op, s Status, payload []byte) (*response, error) {
	if _, ok := statusNames[s]; !ok || s == StatusOutcomeUnknown {
		return nil, fmt.Errorf("unknown status %d", byte(s))
	}
	r := &response{ID: id, Status: s}
	d := newDecoder(payload)
	switch s {
	case StatusOK:
		switch o {
		case opHello, opWhoMaster:
			r.Node = decodeNodeInfo(d)
		case opGet:
			r.Value = d.bytes("value", MaxValueSize)
		case opTestAndSet:
			r.Value = d.optBytes("value", MaxValueSize)
		case opMultiGet:
			n := d.count("value", 1)
			r.Values = make([][]byte, 0, n)
			for range n {
				r.Values = append(r.Values, d.optBytes("value", MaxValueSize))
			}
		case opExists:
			r.Bool = d.boolean()
		case opRange, opPrefixKeys:
			n := d.count("key", 2)
			r.Keys = make([][]byte, 0, n)
			for range n {
				r.Keys = append(r.Keys, d.bytes("key", MaxKeySize))
			}
		case opRangeEntries:
			n := d.count("entry", 3)
			r.Entries = make([]KV, 0, n)
			for range n {
				k := d.bytes("key", MaxKeySize)
				v := d.bytes("value", MaxValueSize)
				r.Entries = append(r.Entries, KV{k, v})
			}
		case opDeletePrefix, opRegisterSession:
			r.Count = d.uvarint()
		case opMembers:
			n := d.count("member", 4)
			r.Members = make([]Member, 0, n)
			for range n {
				ni := decodeNodeInfo(d)
				r.Members = append(r.Members, Member{NodeInfo: ni, Voter: d.boolean()})
			}
		case opStatistics:
			r.JSON = d.bytes("statistics", MaxFrameSize)
		}
	case StatusNotMaster:
		r.Master = decodeNodeInfo(d)
		r.Msg = d.str("message", maxMessageSize)
	default:
		r.Msg = d.str("message", maxMessageSize)
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("%s response: %w", o, err)
	}
	return r, nil
}

// frame is one frame of the client protocol.
type frame struct {
	Kind    byte
	ID      uint64
	Payload []byte
}

// errFrameTooLarge and errBadVersion are fatal to a connection: the
// reader cannot find the next frame.
var (
	errFrameTooLarge = errors.New("frame exceeds the maximum frame size")
	errBadVersion    = errors.New("unsupported protocol version")
)

// frameError is a frame that could not be read. ID is the request id when
// the header was readable, so that the peer can be told why.
type frameError struct {
	ID  uint64
	Err error
}

func (e *frameError) Error() string { return e.Err.Error() }
func (e *frameError) Unwrap() error { return e.Err }

// appendFrame appends a frame with the given header fields and payload.
func appendFrame(b []byte, kind byte, id uint64, payload []byte) []byte {
	b = append(b, ProtocolVersion, kind)
	b = binary.BigEndian.AppendUint64(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// writeFrame writes one frame to w (not flushed).
func writeFrame(w *bufio.Writer, kind byte, id uint64, payload []byte) error {
	if len(payload) > MaxFrameSize {
		return errFrameTooLarge
	}
	var h [frameHeaderSize]byte
	h[0], h[1] = ProtocolVersion, kind
	binary.BigEndian.PutUint64(h[2:10], id)
	binary.BigEndian.PutUint32(h[10:14], uint32(len(payload)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// readFrame reads one frame. io.EOF means a clean end between frames; a
// *frameError wraps errBadVersion or errFrameTooLarge.
func readFrame(r io.Reader) (frame, error) {
	var h [frameHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return frame{}, fmt.Errorf("frame header: %w", err)
		}
		return frame{}, err
	}
	f := frame{Kind: h[1], ID: binary.BigEndian.Uint64(h[2:10])}
	if h[0] != ProtocolVersion {
		return f, &frameError{ID: f.ID, Err: fmt.Errorf("%w %d (this node speaks %d)", errBadVersion, h[0], ProtocolVersion)}
	}
	n := binary.BigEndian.Uint32(h[10:14])
	if n > MaxFrameSize {
		return f, &frameError{ID: f.ID, Err: fmt.Errorf("%w: %d bytes > %d", errFrameTooLarge, n, MaxFrameSize)}
	}
	f.Payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return f, fmt.Errorf("frame payload: %w", err)
	}
	return f, nil
}
