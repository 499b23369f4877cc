package arakoon

import (
	"fmt"
	"sort"
)

// Stored formats: raft log commands and the state machine's records.
// Each starts with its format version.
const recordVersion = 1

// cmdType is the kind of a raft log command.
type cmdType byte

const (
	cmdClient          cmdType = 1 // a client mutation under a session
	cmdNop             cmdType = 2
	cmdRegisterSession cmdType = 3
	cmdCloseSession    cmdType = 4
	cmdSetMember       cmdType = 5 // remember a node's client address
	cmdRemoveMember    cmdType = 6
)

// command is one raft log entry of the state machine.
type command struct {
	Type                 cmdType
	Session, Seq, Lowest uint64   // cmdClient; Session also cmdCloseSession
	Mutation             mutation // cmdClient
	Node                 NodeInfo // cmdSetMember; ID also cmdRemoveMember
}

func (c *command) encode() []byte {
	e := &encoder{}
	e.u8(recordVersion)
	e.u8(byte(c.Type))
	switch c.Type {
	case cmdClient:
		e.u64(c.Session)
		e.uvarint(c.Seq)
		e.uvarint(c.Lowest)
		c.Mutation.encode(e)
	case cmdCloseSession:
		e.u64(c.Session)
	case cmdSetMember:
		encodeNodeInfo(e, c.Node)
	case cmdRemoveMember:
		e.str(c.Node.ID)
	}
	return e.b
}

func decodeCommand(b []byte) (*command, error) {
	d := newDecoder(b)
	if v := d.u8(); d.err() == nil && v != recordVersion {
		return nil, fmt.Errorf("log command format version %d, this node reads %d", v, recordVersion)
	}
	c := &command{Type: cmdType(d.u8())}
	switch c.Type {
	case cmdClient:
		c.Session = d.u64()
		c.Seq = d.uvarint()
		c.Lowest = d.uvarint()
		c.Mutation.decode(d)
	case cmdNop, cmdRegisterSession:
	case cmdCloseSession:
		c.Session = d.u64()
	case cmdSetMember:
		c.Node = decodeNodeInfo(d)
	case cmdRemoveMember:
		c.Node.ID = d.str("node id", maxNameSize)
	default:
		d.fail("unknown log command type %d", c.Type)
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("log command: %w", err)
	}
	return c, nil
}

// applyResult is the outcome of one command, returned through raft to the
// node that proposed it, and kept in the session for retries.
type applyResult struct {
	Status Status
	Msg    string
	Value  []byte // test_and_set: the old value (nil = was absent)
	Count  uint64 // delete_prefix: keys deleted; register_session: the session id
}

func encodeResult(e *encoder, r *applyResult) {
	e.u8(byte(r.Status))
	e.optBytes(r.Value)
	e.uvarint(r.Count)
	e.str(r.Msg)
}

func decodeResult(d *decoder) *applyResult {
	r := &applyResult{Status: Status(d.u8())}
	if _, ok := statusNames[r.Status]; !ok && d.err() == nil {
		d.fail("unknown status %d", r.Status)
	}
	r.Value = d.optBytes("value", MaxValueSize)
	r.Count = d.uvarint()
	r.Msg = d.str("message", maxMessageSize)
	return r
}

// session is the stored state of one client session: the results of the
// requests the client may still retry, so that a retry is answered from
// here instead of being applied twice.
type session struct {
	LastIndex uint64 // log index of the last command of the session (for LRU eviction)
	Lowest    uint64 // every request below this was answered; a retry of one is refused
	Results   map[uint64]*applyResult
}

func (s *session) encode() []byte {
	e := &encoder{}
	e.u8(recordVersion)
	e.u64(s.LastIndex)
	e.uvarint(s.Lowest)
	seqs := make([]uint64, 0, len(s.Results))
	for q := range s.Results {
		seqs = append(seqs, q)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	e.uvarint(uint64(len(seqs)))
	for _, q := range seqs {
		e.uvarint(q)
		encodeResult(e, s.Results[q])
	}
	return e.b
}

func decodeSession(b []byte) (*session, error) {
	d := newDecoder(b)
	if v := d.u8(); d.err() == nil && v != recordVersion {
		return nil, fmt.Errorf("session record format version %d, this node reads %d", v, recordVersion)
	}
	s := &session{LastIndex: d.u64(), Lowest: d.uvarint()}
	n := d.count("session result", 5)
	s.Results = make(map[uint64]*applyResult, n)
	for range n {
		q := d.uvarint()
		r := decodeResult(d)
		if d.err() != nil {
			break
		}
		if _, dup := s.Results[q]; dup {
			d.fail("result of request %d appears twice", q)
			break
		}
		s.Results[q] = r
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("session record: %w", err)
	}
	return s, nil
}

func encodeMember(n NodeInfo) []byte {
	e := &encoder{}
	e.u8(recordVersion)
	encodeNodeInfo(e, n)
	return e.b
}

func decodeMember(b []byte) (NodeInfo, error) {
	d := newDecoder(b)
	if v := d.u8(); d.err() == nil && v != recordVersion {
		return NodeInfo{}, fmt.Errorf("member record format version %d, this node reads %d", v, recordVersion)
	}
	n := decodeNodeInfo(d)
	if err := d.finish(); err != nil {
		return NodeInfo{}, fmt.Errorf("member record: %w", err)
	}
	return n, nil
}
