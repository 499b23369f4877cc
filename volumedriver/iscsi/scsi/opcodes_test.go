package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
)

func rsocCDB(opts byte, op byte, sa uint16, rctd bool) []byte {
	c := make([]byte, 12)
	c[0], c[1], c[2], c[3] = opMaintenanceIn, saReportOpcodes, opts, op
	if rctd {
		c[2] |= 0x80
	}
	binary.BigEndian.PutUint16(c[4:6], sa)
	binary.BigEndian.PutUint32(c[6:10], 65535)
	return c
}

type opDesc struct {
	op    byte
	sa    uint16
	hasSA bool
	cdbN  int
}

func allOpcodes(t *testing.T, lu *LU, rctd bool) []opDesc {
	t.Helper()
	r := lu.Execute(context.Background(), testNexus, rsocCDB(0, 0, 0, rctd), nil)
	if r.Status != StatusGood || int(be32(r.Data[0:4])) != len(r.Data)-4 {
		t.Fatalf("REPORT SUPPORTED OPERATION CODES: %+v", r)
	}
	step := 8
	if rctd {
		step = 20
	}
	var out []opDesc
	for d := r.Data[4:]; len(d) > 0; d = d[step:] {
		if rctd != (d[5]&0x02 != 0) || rctd && be16(d[8:10]) != 0x0A {
			t.Fatalf("descriptor % x with RCTD %v", d[:step], rctd)
		}
		out = append(out, opDesc{d[0], uint16(be16(d[2:4])), d[5]&0x01 != 0, int(be16(d[6:8]))})
	}
	return out
}

// TestReportOpcodesMatchesExecute: every command reported runs (none
// answers INVALID COMMAND OPERATION CODE), one-command queries agree with
// the list, and the PERSISTENT RESERVE commands come and go with LU.PR.
func TestReportOpcodesMatchesExecute(t *testing.T) {
	ctx := context.Background()
	lu, _ := newLU()
	without := allOpcodes(t, lu, false)
	lu.PR = NewReservations(&MemPRStore{})
	with := allOpcodes(t, lu, true)
	if len(with) != len(without)+4+8+4 {
		t.Fatalf("%d commands with PR, %d without: want the 4 PR IN and 8 PR OUT service actions, RESERVE and RELEASE (6, 10) more",
			len(with), len(without))
	}
	for _, d := range with {
		cdb := make([]byte, d.cdbN)
		cdb[0] = d.op
		if d.hasSA {
			cdb[1] = byte(d.sa)
		}
		if r := lu.Execute(ctx, testNexus, cdb, nil); r.Status == StatusCheckCondition && r.Sense.ASC == 0x20 {
			t.Errorf("reported op 0x%02x/0x%02x is an invalid opcode to Execute", d.op, d.sa)
		}
		opts := byte(1)
		if d.hasSA {
			opts = 2
		}
		r := lu.Execute(ctx, testNexus, rsocCDB(opts, d.op, d.sa, true), nil)
		if r.Status != StatusGood || r.Data[1] != 0x83 || int(be16(r.Data[2:4])) != d.cdbN ||
			len(r.Data) != 4+d.cdbN+12 || r.Data[4] != d.op {
			t.Fatalf("one command 0x%02x/0x%02x: %+v", d.op, d.sa, r)
		}
		if d.hasSA && uint16(r.Data[5]&0x1F) != d.sa {
			t.Errorf("one command 0x%02x/0x%02x: usage byte 1 0x%02x lacks the service action", d.op, d.sa, r.Data[5])
		}
		// The other option is refused for it.
		wantSense(t, lu.Execute(ctx, testNexus, rsocCDB(3-opts, d.op, d.sa, false), nil), SenseIllegalRequest, 0x24)
	}
	// Not supported: a one-command answer that says so.
	if r := lu.Execute(ctx, testNexus, rsocCDB(1, 0xC0, 0, false), nil); r.Status != StatusGood || r.Data[1]&0x07 != 0x01 {
		t.Fatalf("unsupported opcode: %+v", r)
	}
	wantSense(t, lu.Execute(ctx, testNexus, rsocCDB(5, 0, 0, false), nil), SenseIllegalRequest, 0x24)
	// READ 10's usage data says DPO and FUA are honoured, as MODE SENSE
	// does.
	r := lu.Execute(ctx, testNexus, rsocCDB(1, opRead10, 0, false), nil)
	if r.Data[5]&0x18 != 0x18 {
		t.Fatalf("READ 10 usage % x", r.Data)
	}
}

// TestLibiscsiFixes: what iscsi-test-cu checked and the LU got wrong.
func TestLibiscsiFixes(t *testing.T) {
	ctx := context.Background()
	lu, _ := newLU()
	// COMPARE AND WRITE of 0 blocks with data: the Data-Out is not what
	// the CDB says.
	caw := cdb16(opCompareAndWrite, 0, 0, 0)
	wantSense(t, lu.Execute(ctx, testNexus, caw, make([]byte, 2*BlockSize)), SenseIllegalRequest, 0x24)
	if r := lu.Execute(ctx, testNexus, caw, nil); r.Status != StatusGood {
		t.Fatalf("COMPARE AND WRITE of 0 blocks: %+v", r)
	}
	// WRITE SAME with ANCHOR is refused (ANC_SUP 0).
	ff := bytes.Repeat([]byte{0xFF}, BlockSize)
	wantSense(t, lu.Execute(ctx, testNexus, cdb10(opWriteSame10, 0x10|0x08, 0, 1), ff), SenseIllegalRequest, 0x24)
	// WRITE SAME with UNMAP deallocates even with a non-zero block: the
	// range reads back as zeros (LBPRZ).
	lu.Execute(ctx, testNexus, cdb10(opWrite10, 0, 8, 1), ff)
	if r := lu.Execute(ctx, testNexus, cdb10(opWriteSame10, 0x08, 8, 1), ff); r.Status != StatusGood {
		t.Fatalf("WRITE SAME UNMAP: %+v", r)
	}
	if r := lu.Execute(ctx, testNexus, cdb10(opRead10, 0, 8, 1), nil); !bytes.Equal(r.Data, make([]byte, BlockSize)) {
		t.Fatal("WRITE SAME UNMAP: the block is not zero")
	}
	// UNMAP beyond MAXIMUM UNMAP LBA COUNT, which VPD 0xB0 keeps at most
	// 1 Mi blocks.
	// 1 GiB LU, sparse: two descriptors of half the maximum and one.
	big := &LU{Dev: &memDev{Pages: memdev.New(1 << 30)}}
	param := make([]byte, 8+3*16)
	binary.BigEndian.PutUint16(param[2:4], 3*16)
	for i, d := range [][2]uint64{{0, maxUnmapBlocks / 2}, {maxUnmapBlocks / 2, maxUnmapBlocks / 2}, {maxUnmapBlocks, 1}} {
		binary.BigEndian.PutUint64(param[8+16*i:], d[0])
		binary.BigEndian.PutUint32(param[8+16*i+8:], uint32(d[1]))
	}
	binary.BigEndian.PutUint16(param[2:4], 2*16)
	if r := big.Execute(ctx, testNexus, cdb10(opUnmap, 0, 0, 8+2*16), param[:8+2*16]); r.Status != StatusGood {
		t.Fatalf("UNMAP of the maximum: %+v", r)
	}
	binary.BigEndian.PutUint16(param[2:4], 3*16)
	wantSense(t, big.Execute(ctx, testNexus, cdb10(opUnmap, 0, 0, 8+3*16), param), SenseIllegalRequest, 0x26)
	r := lu.Execute(ctx, testNexus, []byte{opInquiry, 1, 0xB0, 0, 255, 0}, nil)
	if n := be32(r.Data[20:24]); n == 0 || n > 1<<20 {
		t.Fatalf("MAXIMUM UNMAP LBA COUNT %d", n)
	}
	// PRE-FETCH checks its range.
	if r := lu.Execute(ctx, testNexus, cdb10(opPrefetch10, 0, 0, 8), nil); r.Status != StatusGood {
		t.Fatalf("PRE-FETCH 10: %+v", r)
	}
	wantSense(t, lu.Execute(ctx, testNexus, cdb16(opPrefetch16, 0, testSize/BlockSize, 1), nil), SenseIllegalRequest, 0x21)
}
