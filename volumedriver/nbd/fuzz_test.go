package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
	"unicode/utf8"
)

func encodeRequest(flags, typ uint16, cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func TestParseRequest(t *testing.T) {
	r, err := parseRequest(encodeRequest(cmdFlagFUA, cmdWrite, 0x1122334455667788, 4096, 512))
	if err != nil || r != (request{flags: cmdFlagFUA, typ: cmdWrite, cookie: 0x1122334455667788, offset: 4096, length: 512}) {
		t.Fatalf("parse: %+v %v", r, err)
	}
	if r.payloadLen() != 512 {
		t.Fatalf("payload %d", r.payloadLen())
	}
	bad := encodeRequest(0, cmdRead, 1, 0, 512)
	bad[0] ^= 0xff
	if _, err := parseRequest(bad); err == nil {
		t.Fatal("bad magic accepted")
	}
	if _, err := parseRequest(bad[:10]); err == nil {
		t.Fatal("short header accepted")
	}
}

func TestValidateRequest(t *testing.T) {
	base := exportState{size: 1 << 20, structured: true, metaAlloc: true, maxPayload: 1 << 16}
	ro := base
	ro.readOnly = true
	simple := base
	simple.structured, simple.metaAlloc = false, false
	cases := []struct {
		name string
		st   exportState
		r    request
		want uint32
	}{
		{"read ok", base, request{typ: cmdRead, offset: 0, length: 4096}, 0},
		{"read to the end", base, request{typ: cmdRead, offset: 1<<20 - 4096, length: 4096}, 0},
		{"read past end", base, request{typ: cmdRead, offset: 1<<20 - 4096, length: 4097}, errInval},
		{"read too big structured", base, request{typ: cmdRead, length: 1<<16 + 1}, errOverflow},
		{"read too big simple", simple, request{typ: cmdRead, length: 1<<16 + 1}, errInval},
		{"read DF structured", base, request{typ: cmdRead, flags: cmdFlagDF, length: 1}, 0},
		{"read DF simple", simple, request{typ: cmdRead, flags: cmdFlagDF, length: 1}, errInval},
		{"write FUA", base, request{typ: cmdWrite, flags: cmdFlagFUA, length: 1}, 0},
		{"write read-only", ro, request{typ: cmdWrite, length: 1}, errPerm},
		{"write past end", base, request{typ: cmdWrite, offset: 1 << 20, length: 1}, errNoSpc},
		{"write huge offset", base, request{typ: cmdWrite, offset: 1 << 63, length: 1}, errNoSpc},
		{"flush", base, request{typ: cmdFlush}, 0},
		{"flush with length", base, request{typ: cmdFlush, length: 1}, errInval},
		{"trim", base, request{typ: cmdTrim, offset: 0, length: 1 << 20}, 0},
		{"trim read-only", ro, request{typ: cmdTrim, length: 1}, errPerm},
		{"trim past end", base, request{typ: cmdTrim, offset: 1, length: 1 << 20}, errNoSpc},
		{"zeroes all flags", base, request{typ: cmdWriteZeroes, flags: cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero, length: 1 << 20}, 0},
		{"zeroes DF", base, request{typ: cmdWriteZeroes, flags: cmdFlagDF, length: 1}, errInval},
		{"zeroes read-only", ro, request{typ: cmdWriteZeroes, length: 1}, errPerm},
		{"block status", base, request{typ: cmdBlockStatus, flags: cmdFlagReqOne, length: 1 << 20}, 0},
		{"block status simple", simple, request{typ: cmdBlockStatus, length: 1}, errInval},
		{"block status zero", base, request{typ: cmdBlockStatus, length: 0}, errInval},
		{"block status past end", base, request{typ: cmdBlockStatus, offset: 1 << 20, length: 1}, errInval},
		{"cache", base, request{typ: cmdCache, length: 1}, 0},
		{"cache past end", base, request{typ: cmdCache, offset: 1 << 20, length: 1}, errInval},
		{"unknown", base, request{typ: 99}, errInval},
		{"unknown flag", base, request{typ: cmdRead, flags: 1 << 15, length: 1}, errInval},
	}
	for _, tc := range cases {
		if got, msg := validateRequest(&tc.r, &tc.st); got != tc.want || (got != 0) != (msg != "") {
			t.Errorf("%s: errno %d %q, want %d", tc.name, got, msg, tc.want)
		}
	}
}

// FuzzParseRequest checks the request parser and validator on arbitrary
// headers and export states.
func FuzzParseRequest(f *testing.F) {
	for _, typ := range []uint16{cmdRead, cmdWrite, cmdDisc, cmdFlush, cmdTrim, cmdCache, cmdWriteZeroes, cmdBlockStatus, 8, 0xffff} {
		f.Add(encodeRequest(0, typ, 1, 4096, 4096), uint64(1<<20), uint8(0x26))
		f.Add(encodeRequest(0x1f, typ, 2, 1<<20-1, 1), uint64(1<<20), uint8(0x07))
		f.Add(encodeRequest(0, typ, 3, ^uint64(0), ^uint32(0)), uint64(1<<40), uint8(0xff))
	}
	f.Add([]byte{0x25, 0x60, 0x95}, uint64(0), uint8(0))
	f.Add(bytes.Repeat([]byte{0xff}, 28), uint64(1), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, size uint64, bits uint8) {
		r, err := parseRequest(b)
		if err != nil {
			if len(b) >= requestSize && binary.BigEndian.Uint32(b) == requestMagic {
				t.Fatalf("valid header refused: %v", err)
			}
			return
		}
		if !bytes.Equal(encodeRequest(r.flags, r.typ, r.cookie, r.offset, r.length), b[:requestSize]) {
			t.Fatal("parse does not round-trip")
		}
		size &= 1<<62 - 1
		st := exportState{
			size:       size,
			readOnly:   bits&1 != 0,
			structured: bits&2 != 0,
			metaAlloc:  bits&4 != 0,
			maxPayload: 1 << (12 + bits>>4),
		}
		errno, msg := validateRequest(&r, &st)
		if errno == 0 {
			if r.typ == cmdDisc {
				return
			}
			if r.offset+uint64(r.length) > size {
				t.Fatalf("accepted out of range: %+v size %d", r, size)
			}
			if r.offset+uint64(r.length) < r.offset {
				t.Fatalf("accepted overflowing range: %+v", r)
			}
			switch r.typ {
			case cmdRead, cmdWrite:
				if r.length > st.maxPayload {
					t.Fatalf("accepted oversize payload: %+v", r)
				}
			case cmdBlockStatus:
				if !st.structured || !st.metaAlloc || r.length == 0 {
					t.Fatalf("accepted block status: %+v %+v", r, st)
				}
			case cmdDisc, cmdFlush, cmdTrim, cmdCache, cmdWriteZeroes:
			default:
				t.Fatalf("accepted unknown command %d", r.typ)
			}
			if st.readOnly && (r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes) {
				t.Fatalf("accepted a write to a read-only export: %+v", r)
			}
			if r.flags&^(cmdFlagFUA|cmdFlagNoHole|cmdFlagDF|cmdFlagReqOne|cmdFlagFastZero) != 0 && r.typ != cmdDisc {
				t.Fatalf("accepted unknown flags: %+v", r)
			}
			return
		}
		switch errno {
		case errInval, errNoSpc, errPerm, errOverflow:
		default:
			t.Fatalf("unexpected errno %d", errno)
		}
		if msg == "" {
			t.Fatal("error without a message")
		}
	})
}

// FuzzParseOption checks the option header, NBD_OPT_INFO/GO and
// meta-context parsers: they must not panic and must accept only what
// re-encodes to the same bytes.
func FuzzParseOption(f *testing.F) {
	f.Add(infoData("disk", infoName, infoBlockSize))
	f.Add(infoData(""))
	f.Add(infoData("x", 1, 2, 3, 4, 5))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Add(metaData("disk", metaAllocation))
	f.Add(metaData("", "base:", "qemu:dirty-bitmap:a", "x-:"))
	f.Add(metaData("disk", "nocolon"))
	f.Add(append(binary.BigEndian.AppendUint64(nil, optMagic), 0, 0, 0, 7, 0, 0, 0, 4))
	f.Fuzz(func(t *testing.T, data []byte) {
		if h, err := parseOptHeader(data); err == nil {
			b := binary.BigEndian.AppendUint64(nil, optMagic)
			b = binary.BigEndian.AppendUint32(b, h.opt)
			b = binary.BigEndian.AppendUint32(b, h.length)
			if !bytes.Equal(b, data[:optHdrSize]) {
				t.Fatal("option header does not round-trip")
			}
		}
		if ir, err := parseInfoRequest(data); err == nil {
			if len(ir.name) > maxStringLen || !utf8.ValidString(ir.name) {
				t.Fatalf("bad name accepted: %q", ir.name)
			}
			if !bytes.Equal(infoData(ir.name, ir.infos...), data) {
				t.Fatal("info request does not round-trip")
			}
		} else if _, ok := err.(*optError); !ok {
			t.Fatalf("info request error of type %T", err)
		}
		if mr, err := parseMetaRequest(data); err == nil {
			if len(mr.name) > maxStringLen || !utf8.ValidString(mr.name) {
				t.Fatalf("bad name accepted: %q", mr.name)
			}
			if !bytes.Equal(metaData(mr.name, mr.queries...), data) {
				t.Fatal("meta request does not round-trip")
			}
			for _, list := range []bool{false, true} {
				alloc, err := matchMeta(mr.queries, list)
				if err != nil && alloc {
					t.Fatal("error with a selection")
				}
			}
		} else if _, ok := err.(*optError); !ok {
			t.Fatalf("meta request error of type %T", err)
		}
	})
}

// clientStream builds what a well-behaved client sends for a session.
func clientStream(structured bool, reqs ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	opt := func(o uint32, data []byte) {
		b = binary.BigEndian.AppendUint64(b, optMagic)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	opt(optList, nil)
	if structured {
		opt(optStructuredReply, nil)
		opt(optListMetaContext, metaData("disk"))
		opt(optSetMetaContext, metaData("disk", metaAllocation))
	}
	opt(optInfo, infoData("disk", infoBlockSize))
	opt(optGo, infoData("disk", infoName))
	for _, r := range reqs {
		b = append(b, r...)
	}
	return b
}

// FuzzConnection feeds arbitrary client bytes to a whole connection: the
// server must neither panic nor hang, and must release the export.
func FuzzConnection(f *testing.F) {
	w := append(encodeRequest(cmdFlagFUA, cmdWrite, 1, 0, 8), "abcdefgh"...)
	for _, structured := range []bool{false, true} {
		f.Add(clientStream(structured,
			w,
			encodeRequest(0, cmdRead, 2, 0, 4096),
			encodeRequest(0, cmdFlush, 3, 0, 0),
			encodeRequest(0, cmdTrim, 4, 4096, 4096),
			encodeRequest(cmdFlagNoHole, cmdWriteZeroes, 5, 8192, 4096),
			encodeRequest(cmdFlagReqOne, cmdBlockStatus, 6, 0, 65536),
			encodeRequest(0, cmdRead, 7, 65530, 100),
			encodeRequest(0, cmdDisc, 8, 0, 0)))
	}
	f.Add(clientStream(false, encodeRequest(0, cmdWrite, 1, 0, 1<<20)))
	f.Add(clientStream(true, bytes.Repeat([]byte{0x25}, 40)))
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, stream []byte) {
		dev := newFakeDevice(64 << 10)
		exp := newFakeExports(map[string]*fakeDevice{"disk": dev})
		srv := NewServer(exp, Options{MaxRequestSize: 64 << 10, HandshakeTimeout: 5 * time.Second})
		client, server := net.Pipe()
		c := newConn(srv, context.Background(), server)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Serve()
		}()
		go io.Copy(io.Discard, client)
		client.Write(stream)
		client.Close()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("connection did not end")
		}
		if o, r := exp.counts("disk"); o != r {
			t.Fatalf("opened %d, released %d", o, r)
		}
	})
}
