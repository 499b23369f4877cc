package arakoon

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"testing"
)

// Fuzz targets for every decoder of network frames and stored records.
// Their seed corpora run as part of go test.

func FuzzReadFrame(f *testing.F) {
	for _, r := range sampleRequests() {
		f.Add(appendFrame(nil, byte(r.Op), 1, r.encode()))
	}
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			fr, err := readFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxFrameSize {
				t.Fatalf("frame of %d bytes", len(fr.Payload))
			}
			decodeRequest(fr.ID, op(fr.Kind), fr.Payload)
			for o := range opNames {
				decodeResponse(fr.ID, o, Status(fr.Kind), fr.Payload)
			}
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	for _, r := range sampleRequests() {
		f.Add(byte(r.Op), r.encode())
	}
	f.Fuzz(func(t *testing.T, kind byte, payload []byte) {
		r, err := decodeRequest(3, op(kind), payload)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes.
		if again := r.encode(); !bytes.Equal(again, payload) {
			t.Fatalf("%s: re-encoded %x, decoded from %x", r.Op, again, payload)
		}
		if r.Op.mutating() {
			r.Mutation.validate()
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	for _, s := range sampleResponses() {
		f.Add(byte(s.op), byte(s.resp.Status), s.resp.encode(s.op))
	}
	f.Fuzz(func(t *testing.T, kind, status byte, payload []byte) {
		r, err := decodeResponse(3, op(kind), Status(status), payload)
		if err != nil {
			return
		}
		if again := r.encode(op(kind)); !bytes.Equal(again, payload) {
			t.Fatalf("%s/%s: re-encoded %x, decoded from %x", op(kind), r.Status, again, payload)
		}
	})
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range sampleCommands() {
		f.Add(c.encode())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeCommand(data)
		if err != nil {
			return
		}
		if again := c.encode(); !bytes.Equal(again, data) {
			t.Fatalf("re-encoded %x, decoded from %x", again, data)
		}
	})
}

func FuzzDecodeSession(f *testing.F) {
	f.Add(sampleSession().encode())
	f.Add((&session{Results: map[uint64]*applyResult{}}).encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeSession(data)
		if err != nil {
			return
		}
		if _, err := decodeSession(s.encode()); err != nil {
			t.Fatalf("re-encoded session does not decode: %v", err)
		}
	})
}

func FuzzDecodeMember(f *testing.F) {
	f.Add(encodeMember(NodeInfo{ID: "n1", Client: "127.0.0.1:1", Raft: "127.0.0.1:2"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := decodeMember(data)
		if err != nil {
			return
		}
		if again := encodeMember(n); !bytes.Equal(again, data) {
			t.Fatalf("re-encoded %x, decoded from %x", again, data)
		}
	})
}

func FuzzReadSnapshot(f *testing.F) {
	// A small valid snapshot, built by hand so the corpus needs no store.
	var body bytes.Buffer
	body.WriteByte(snapshotVersion)
	body.WriteString(snapshotMagic)
	recs := []struct {
		bucket byte
		k, v   string
	}{{1, "applied", "\x00\x00\x00\x00\x00\x00\x00\x07"}, {2, "key", "value"}, {2, "k2", ""}, {5, "n1", string(encodeMember(NodeInfo{ID: "n1"}))}}
	for _, r := range recs {
		body.WriteByte(r.bucket)
		body.Write(binary.AppendUvarint(nil, uint64(len(r.k))))
		body.WriteString(r.k)
		body.Write(binary.AppendUvarint(nil, uint64(len(r.v))))
		body.WriteString(r.v)
	}
	body.WriteByte(0)
	body.Write(binary.BigEndian.AppendUint64(nil, uint64(len(recs))))
	good := binary.BigEndian.AppendUint32(append([]byte{}, body.Bytes()...), crc32c(body.Bytes()))
	if err := readSnapshot(bytes.NewReader(good), func(int, []byte, []byte) error { return nil }); err != nil {
		f.Fatalf("seed snapshot: %v", err)
	}
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Fuzz(func(t *testing.T, data []byte) {
		n := 0
		readSnapshot(bytes.NewReader(data), func(bucket int, k, v []byte) error {
			if bucket < 0 || bucket >= len(snapshotBuckets) || len(k) == 0 || len(k) > maxRecordKey || len(v) > maxRecordValue {
				t.Fatalf("bad record handed out: bucket %d, key %d bytes, value %d bytes", bucket, len(k), len(v))
			}
			n++
			return nil
		})
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("cluster: x\nnodes: []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config fails validation: %v", err)
		}
	})
}
