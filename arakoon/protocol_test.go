package arakoon

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// sampleRequests has one request of every op, used by the round-trip
// test and as fuzz seeds.
func sampleRequests() []*request {
	return []*request{
		{Op: opHello, Cluster: "ovsdb"},
		{Op: opGet, Key: b("k"), Consistency: Stale},
		{Op: opMultiGet, Keys: [][]byte{b("a"), b("b")}},
		{Op: opExists, Key: b("k")},
		{Op: opRange, First: b("a"), FirstInc: true, Last: nil, Max: 10},
		{Op: opRangeEntries, First: nil, Last: b("z"), LastInc: true},
		{Op: opPrefixKeys, Key: b("p/"), Max: 3},
		{Op: opWhoMaster},
		{Op: opStatistics},
		{Op: opMembers},
		{Op: opNop},
		{Op: opSet, Session: 7, Seq: 3, Lowest: 2, Mutation: mutation{Op: opSet, Key: b("k"), Value: b("v")}},
		{Op: opSet, Session: 7, Seq: 4, Lowest: 2, Mutation: mutation{Op: opSet, Key: b("k"), Value: []byte{}}},
		{Op: opDelete, Session: 7, Seq: 5, Lowest: 5, Mutation: mutation{Op: opDelete, Key: b("k")}},
		{Op: opDeletePrefix, Session: 7, Seq: 6, Lowest: 5, Mutation: mutation{Op: opDeletePrefix, Key: []byte{}}},
		{Op: opTestAndSet, Session: 7, Seq: 7, Lowest: 7, Mutation: mutation{Op: opTestAndSet, Key: b("k"), Expected: nil, Wanted: b("w")}},
		{Op: opTestAndSet, Session: 7, Seq: 8, Lowest: 7, Mutation: mutation{Op: opTestAndSet, Key: b("k"), Expected: []byte{}, Wanted: nil}},
		{Op: opSequence, Session: 7, Seq: 9, Lowest: 9, Mutation: mutation{Op: opSequence, Updates: []Update{
			{Kind: UpdateSet, Key: b("a"), Value: b("1")},
			{Kind: UpdateDelete, Key: b("b")},
			{Kind: UpdateDeletePrefix, Key: b("c/")},
			{Kind: UpdateAssert, Key: b("d"), Value: nil},
			{Kind: UpdateAssert, Key: b("d"), Value: b("x")},
			{Kind: UpdateAssertExists, Key: b("e")},
		}}},
		{Op: opRegisterSession},
		{Op: opCloseSession, Session: 7},
		{Op: opAddNode, NodeInfo: NodeInfo{ID: "n4", Client: "127.0.0.1:1", Raft: "127.0.0.1:2"}, Learner: true},
		{Op: opRemoveNode, NodeID: "n4"},
	}
}

func sampleResponses() []struct {
	op   op
	resp *response
} {
	return []struct {
		op   op
		resp *response
	}{
		{opHello, &response{Node: NodeInfo{ID: "n1", Client: "c", Raft: "r"}}},
		{opGet, &response{Value: b("v")}},
		{opGet, &response{Value: []byte{}}},
		{opMultiGet, &response{Values: [][]byte{b("a"), nil, {}}}},
		{opExists, &response{Bool: true}},
		{opRange, &response{Keys: [][]byte{b("a"), b("b")}}},
		{opPrefixKeys, &response{Keys: [][]byte{}}},
		{opRangeEntries, &response{Entries: []KV{{b("a"), b("1")}, {b("b"), []byte{}}}}},
		{opWhoMaster, &response{Node: NodeInfo{ID: "n2"}}},
		{opStatistics, &response{JSON: b(`{"node":"n1"}`)}},
		{opMembers, &response{Members: []Member{{NodeInfo{ID: "n1", Client: "c", Raft: "r"}, true}}}},
		{opTestAndSet, &response{Value: nil}},
		{opTestAndSet, &response{Value: b("old")}},
		{opDeletePrefix, &response{Count: 42}},
		{opRegisterSession, &response{Count: 1 << 40}},
		{opSet, &response{}},
		{opSet, &response{Status: StatusNotMaster, Master: NodeInfo{ID: "n3", Client: "127.0.0.1:3"}, Msg: "go there"}},
		{opGet, &response{Status: StatusNotFound, Msg: `key "x"`}},
		{opSequence, &response{Status: StatusAssertionFailed, Msg: "step 2"}},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range sampleRequests() {
		r.ID = 99
		got, err := decodeRequest(99, r.Op, r.encode())
		if err != nil {
			t.Fatalf("%s: %v", r.Op, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%s round trip:\n got %+v\nwant %+v", r.Op, got, r)
		}
	}
}

func TestResponseRoundTrip(t *testing.T) {
	for _, s := range sampleResponses() {
		s.resp.ID = 5
		got, err := decodeResponse(5, s.op, s.resp.Status, s.resp.encode(s.op))
		if err != nil {
			t.Fatalf("%s: %v", s.op, err)
		}
		if !reflect.DeepEqual(got, s.resp) {
			t.Fatalf("%s round trip:\n got %+v\nwant %+v", s.op, got, s.resp)
		}
	}
}

func TestDecodeRejectsBadPayloads(t *testing.T) {
	good := (&request{Op: opGet, Key: b("k")}).encode()
	cases := map[string]struct {
		op      op
		payload []byte
		want    string
	}{
		"unknown op":        {op(99), good, "unknown op"},
		"trailing bytes":    {opGet, append(append([]byte{}, good...), 0), "trailing"},
		"truncated":         {opGet, good[:len(good)-1], "truncated"},
		"bad consistency":   {opGet, append([]byte{7}, good[1:]...), "consistency"},
		"huge key":          {opGet, append([]byte{0}, encodeLen(MaxKeySize+1)...), "exceeds the limit"},
		"huge count":        {opMultiGet, append([]byte{0}, encodeLen(1<<40)...), "count"},
		"mutation mismatch": {opSet, (&request{Op: opDelete, Session: 1, Seq: 1, Lowest: 1, Mutation: mutation{Op: opDelete, Key: b("k")}}).encode(), "carries"},
		"bad bool":          {opRange, []byte{0, 0, 2}, "boolean"},
		"bad step":          {opSequence, append((&request{Op: opSequence, Session: 1, Seq: 1, Lowest: 1, Mutation: mutation{Op: opSequence}}).encode()[:11], 22, 1, 9, 1, 'k'), "step"},
	}
	for name, c := range cases {
		_, err := decodeRequest(1, c.op, c.payload)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", name, err, c.want)
		}
	}
	if _, err := decodeResponse(1, opGet, Status(77), nil); err == nil {
		t.Error("unknown status accepted")
	}
}

func encodeLen(n uint64) []byte { e := &encoder{}; e.uvarint(n); return e.b }

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := writeFrame(w, byte(opGet), 77, b("payload")); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(w, byte(opSet), 78, nil); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	raw := append([]byte{}, buf.Bytes()...)
	f, err := readFrame(&buf)
	if err != nil || f.ID != 77 || f.Kind != byte(opGet) || string(f.Payload) != "payload" {
		t.Fatalf("frame 1: %+v %v", f, err)
	}
	if f, err = readFrame(&buf); err != nil || f.ID != 78 || len(f.Payload) != 0 {
		t.Fatalf("frame 2: %+v %v", f, err)
	}
	if _, err := readFrame(&buf); err != io.EOF {
		t.Fatalf("after the last frame: %v", err)
	}
	// Bad version, oversized length, truncated payload.
	bad := append([]byte{}, raw...)
	bad[0] = 2
	var fe *frameError
	if _, err := readFrame(bytes.NewReader(bad)); !errors.As(err, &fe) || !errors.Is(err, errBadVersion) || fe.ID != 77 {
		t.Fatalf("bad version: %v", err)
	}
	big := appendFrame(nil, byte(opGet), 1, nil)
	big[10], big[11], big[12], big[13] = 0xff, 0xff, 0xff, 0xff
	if _, err := readFrame(bytes.NewReader(big)); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	if _, err := readFrame(bytes.NewReader(raw[:20])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated frame: %v", err)
	}
	if _, err := readFrame(bytes.NewReader(raw[:5])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated header: %v", err)
	}
}

func TestRecordRoundTrips(t *testing.T) {
	for _, c := range sampleCommands() {
		got, err := decodeCommand(c.encode())
		if err != nil {
			t.Fatalf("command %d: %v", c.Type, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("command round trip:\n got %+v\nwant %+v", got, c)
		}
	}
	s := sampleSession()
	got, err := decodeSession(s.encode())
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("session round trip: %+v %v", got, err)
	}
	n := NodeInfo{ID: "n1", Client: "127.0.0.1:1", Raft: "127.0.0.1:2"}
	if got, err := decodeMember(encodeMember(n)); err != nil || got != n {
		t.Fatalf("member round trip: %+v %v", got, err)
	}
	if _, err := decodeCommand([]byte{2, 1}); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("future command version: %v", err)
	}
	if _, err := decodeSession([]byte{9}); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("future session version: %v", err)
	}
}

func sampleCommands() []*command {
	cmds := []*command{
		{Type: cmdNop},
		{Type: cmdRegisterSession},
		{Type: cmdCloseSession, Session: 12},
		{Type: cmdSetMember, Node: NodeInfo{ID: "n4", Client: "c", Raft: "r"}},
		{Type: cmdRemoveMember, Node: NodeInfo{ID: "n4"}},
	}
	for _, r := range sampleRequests() {
		if r.Op.mutating() {
			cmds = append(cmds, &command{Type: cmdClient, Session: r.Session, Seq: r.Seq, Lowest: r.Lowest, Mutation: r.Mutation})
		}
	}
	return cmds
}

func sampleSession() *session {
	return &session{LastIndex: 10, Lowest: 3, Results: map[uint64]*applyResult{
		3: {},
		4: {Status: StatusNotFound, Msg: "key"},
		5: {Value: b("old"), Count: 2},
	}}
}
