package iscsi

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestPDURoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		hd, dd     bool
		data, ahs  []byte
		opcode     byte
		final, imm bool
	}{
		{name: "empty", opcode: opNOPIn, final: true},
		{name: "data not a multiple of 4", opcode: opTextResp, data: []byte("TargetName=iqn.x\x00")},
		{name: "digests", hd: true, dd: true, opcode: opDataIn, data: bytes.Repeat([]byte{7}, 8193), final: true},
		{name: "ahs", opcode: opSCSICommand, ahs: make([]byte, 8), imm: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &pdu{data: tc.data, ahs: tc.ahs}
			p.bhs[0] = tc.opcode
			if tc.imm {
				p.bhs[0] |= 0x40
			}
			if tc.final {
				p.bhs[1] = 0x80
			}
			p.putU32(16, 0xdeadbeef)
			b := appendPDU(nil, p, tc.hd, tc.dd)
			if len(b)%4 != 0 {
				t.Fatalf("encoded PDU of %d bytes", len(b))
			}
			got, err := readPDU(bytes.NewReader(b), tc.hd, tc.dd, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if got.opcode() != tc.opcode || got.final() != tc.final || got.immediate() != tc.imm || got.itt() != 0xdeadbeef ||
				!bytes.Equal(got.data, tc.data) || len(got.ahs) != len(tc.ahs) {
				t.Fatalf("read back %+v", got)
			}
			if tc.hd {
				h := append([]byte(nil), b...)
				h[bhsLen+len(tc.ahs)] ^= 1
				if _, err := readPDU(bytes.NewReader(h), tc.hd, tc.dd, 1<<20); !errors.Is(err, errProtocol) {
					t.Fatalf("a corrupt header digest: %v", err)
				}
			}
			if tc.dd {
				b[len(b)-1] ^= 1
				got, err := readPDU(bytes.NewReader(b), tc.hd, tc.dd, 1<<20)
				if !errors.Is(err, errDataDigest) || got == nil || got.itt() != 0xdeadbeef {
					t.Fatalf("a corrupt data digest: %v", err)
				}
			}
		})
	}
}

func TestPDULimits(t *testing.T) {
	p := &pdu{data: make([]byte, 9000)}
	b := appendPDU(nil, p, false, false)
	if _, err := readPDU(bytes.NewReader(b), false, false, 8192); !errors.Is(err, errProtocol) {
		t.Fatalf("a data segment over the negotiated limit: %v", err)
	}
	if _, err := readPDU(bytes.NewReader(b[:60]), false, false, 1<<20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a truncated PDU: %v", err)
	}
}

func TestText(t *testing.T) {
	b := appendText(nil, kv{"InitiatorName", "iqn.2026-11.org.test:x"}, kv{"SessionType", "Normal"})
	got, err := parseText(append(b, 0, 0))
	if err != nil || len(got) != 2 || got[1].value != "Normal" {
		t.Fatalf("parseText: %v %v", got, err)
	}
	for _, bad := range [][]byte{[]byte("noequals\x00"), []byte("=x\x00"), []byte("k=v")} {
		if _, err := parseText(bad); !errors.Is(err, errProtocol) {
			t.Errorf("parseText(%q): %v", bad, err)
		}
	}
}

// FuzzReadPDU: no input makes readPDU panic or allocate past its limit;
// what it accepts encodes back to the same bytes.
func FuzzReadPDU(f *testing.F) {
	f.Add(appendPDU(nil, &pdu{data: []byte("a=b\x00")}, false, false), false, false)
	f.Add(appendPDU(nil, &pdu{data: []byte("xyz")}, true, true), true, true)
	f.Fuzz(func(t *testing.T, b []byte, hd, dd bool) {
		p, err := readPDU(bytes.NewReader(b), hd, dd, 1<<16)
		if err != nil {
			return
		}
		if len(p.data) > 1<<16 {
			t.Fatalf("accepted %d bytes of data", len(p.data))
		}
		out := appendPDU(nil, p, hd, dd)
		if !bytes.Equal(out[:bhsLen], b[:bhsLen]) {
			t.Fatalf("header changed on re-encoding")
		}
	})
}

func FuzzParseText(f *testing.F) {
	f.Add([]byte("a=b\x00c=\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pairs, err := parseText(b)
		if err != nil {
			return
		}
		if len(pairs) > maxTextKeys {
			t.Fatal("too many pairs accepted")
		}
	})
}
