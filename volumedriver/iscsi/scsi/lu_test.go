package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
)

// memDev is an in-memory block device (the LU's unit tests; the iSCSI
// target's end-to-end tests run libiscsi against a real vdisk).
type memDev struct {
	*memdev.Pages
	flushes int
}

func (d *memDev) ReadAt(_ context.Context, p []byte, off int64) error { d.Read(p, off); return nil }
func (d *memDev) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.Write(p, off)
	return nil
}
func (d *memDev) Flush(context.Context) error { d.flushes++; return nil }
func (d *memDev) Trim(_ context.Context, off, n int64) error {
	d.Zero(off, n, false)
	return nil
}
func (d *memDev) WriteZeroes(_ context.Context, off, n int64, noHole, _ bool) error {
	d.Zero(off, n, noHole)
	return nil
}
func (d *memDev) BlockStatus(_ context.Context, off, n int64) ([]blockdev.Extent, error) {
	return d.Extents(off, n, false), nil
}

const testSize = 8 << 20

// testNexus is the I_T nexus of the tests' commands.
var testNexus = Nexus{InitiatorName: "iqn.2026-12.test:init", InitiatorPort: "iqn.2026-12.test:init,i,0x400001370000",
	TargetPort: "iqn.2026-11.io.ovs:test,t,0x1", RelativePort: 1}

func newLU() (*LU, *memDev) {
	d := &memDev{Pages: memdev.New(testSize)}
	return &LU{Dev: d, Product: "vdisk", Serial: "abc123", ID: [8]byte{0x60, 1, 2, 3, 4, 5, 6, 7}}, d
}

func cdb10(op byte, flags byte, lba uint32, n uint16) []byte {
	c := make([]byte, 10)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:6], lba)
	binary.BigEndian.PutUint16(c[7:9], n)
	return c
}

func cdb16(op byte, flags byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint64(c[2:10], lba)
	binary.BigEndian.PutUint32(c[10:14], n)
	return c
}

func wantSense(t *testing.T, r Result, key, asc uint8) {
	t.Helper()
	if r.Status != StatusCheckCondition || r.Sense == nil || r.Sense.Key != key || r.Sense.ASC != asc {
		t.Fatalf("result %+v (sense %+v), want CHECK CONDITION key 0x%x asc 0x%02x", r, r.Sense, key, asc)
	}
}

func TestReadWrite(t *testing.T) {
	ctx := context.Background()
	lu, d := newLU()
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*BlockSize/16)
	for _, tc := range []struct {
		name  string
		write []byte
		read  []byte
	}{
		{"10", cdb10(opWrite10, 0x08, 5, 3), cdb10(opRead10, 0, 5, 3)},
		{"16", cdb16(opWrite16, 0, 100, 3), cdb16(opRead16, 0, 100, 3)},
		{"6", []byte{opWrite6, 0, 0, 9, 3, 0}, []byte{opRead6, 0, 0, 9, 3, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := lu.Execute(ctx, testNexus, tc.write, data); r.Status != StatusGood {
				t.Fatalf("write: %+v", r)
			}
			r := lu.Execute(ctx, testNexus, tc.read, nil)
			if r.Status != StatusGood || !bytes.Equal(r.Data, data) {
				t.Fatalf("read back: status %v, %d bytes", r.Status, len(r.Data))
			}
		})
	}
	// Beyond the end, wrong data length, read-only.
	wantSense(t, lu.Execute(ctx, testNexus, cdb16(opRead16, 0, testSize/BlockSize-1, 2), nil), SenseIllegalRequest, 0x21)
	// Less data than the CDB asks for: the whole blocks sent are
	// written, and the transport is told what was expected.
	if r := lu.Execute(ctx, testNexus, cdb10(opWrite10, 0, 0, 2), data[:BlockSize]); r.Status != StatusGood || r.Expected != 2*BlockSize {
		t.Fatalf("short write: %+v", r)
	}
	if r := lu.Execute(ctx, testNexus, cdb10(opSyncCache10, 0, 0, 0), nil); r.Status != StatusGood || d.flushes != 1 {
		t.Fatalf("SYNCHRONIZE CACHE: %+v, %d flushes", r, d.flushes)
	}
	lu.ReadOnly = true
	wantSense(t, lu.Execute(ctx, testNexus, cdb10(opWrite10, 0, 0, 1), data[:BlockSize]), SenseDataProtect, 0x27)
	wantSense(t, lu.Execute(ctx, testNexus, []byte{0xFF, 0, 0, 0, 0, 0}, nil), SenseIllegalRequest, 0x20)
}

func TestInquiryAndCapacity(t *testing.T) {
	ctx := context.Background()
	lu, _ := newLU()
	r := lu.Execute(ctx, testNexus, []byte{opInquiry, 0, 0, 0, 96, 0}, nil)
	if r.Status != StatusGood || len(r.Data) != 66 || string(r.Data[8:16]) != vendorID || r.Data[0] != 0 {
		t.Fatalf("standard INQUIRY: %+v", r)
	}
	for _, page := range []byte{0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} {
		r := lu.Execute(ctx, testNexus, []byte{opInquiry, 1, page, 0, 255, 0}, nil)
		if r.Status != StatusGood || r.Data[1] != page || int(binary.BigEndian.Uint16(r.Data[2:4])) != len(r.Data)-4 {
			t.Fatalf("VPD 0x%02x: %+v", page, r)
		}
	}
	r = lu.Execute(ctx, testNexus, []byte{opInquiry, 1, 0x83, 0, 255, 0}, nil)
	if !bytes.Contains(r.Data, lu.ID[:]) {
		t.Fatalf("VPD 0x83 lacks the NAA id: %x", r.Data)
	}
	wantSense(t, lu.Execute(ctx, testNexus, []byte{opInquiry, 1, 0x42, 0, 255, 0}, nil), SenseIllegalRequest, 0x24)
	// The allocation length clips.
	if r := lu.Execute(ctx, testNexus, []byte{opInquiry, 0, 0, 0, 5, 0}, nil); len(r.Data) != 5 {
		t.Fatalf("INQUIRY clipped to 5: %d bytes", len(r.Data))
	}
	r = lu.Execute(ctx, testNexus, cdb10(opReadCapacity10, 0, 0, 0), nil)
	if be32(r.Data[0:4]) != testSize/BlockSize-1 || be32(r.Data[4:8]) != BlockSize {
		t.Fatalf("READ CAPACITY 10: %x", r.Data)
	}
	c := cdb16(opServiceActionIn, saReadCapacity16, 0, 32)
	r = lu.Execute(ctx, testNexus, c, nil)
	if be64(r.Data[0:8]) != testSize/BlockSize-1 || r.Data[13] != physExp || r.Data[14]&0x80 == 0 {
		t.Fatalf("READ CAPACITY 16: %x", r.Data)
	}
	for _, page := range []byte{0x08, 0x0A, 0x3F} {
		r := lu.Execute(ctx, testNexus, []byte{opModeSense6, 0, page, 0, 255, 0}, nil)
		if r.Status != StatusGood || int(r.Data[0]) != len(r.Data)-1 {
			t.Fatalf("MODE SENSE 6 page 0x%02x: %+v", page, r)
		}
	}
}

func TestUnmapWriteSameCompareAndWrite(t *testing.T) {
	ctx := context.Background()
	lu, _ := newLU()
	ones := bytes.Repeat([]byte{0xAB}, BlockSize)
	// WRITE SAME of a non-zero block over 16 blocks.
	if r := lu.Execute(ctx, testNexus, cdb16(opWriteSame16, 0, 32, 16), ones); r.Status != StatusGood {
		t.Fatalf("WRITE SAME: %+v", r)
	}
	r := lu.Execute(ctx, testNexus, cdb16(opRead16, 0, 32, 16), nil)
	if !bytes.Equal(r.Data, bytes.Repeat(ones, 16)) {
		t.Fatal("WRITE SAME did not write every block")
	}
	// UNMAP 8 of them.
	param := make([]byte, 24)
	binary.BigEndian.PutUint16(param[0:2], 22)
	binary.BigEndian.PutUint16(param[2:4], 16)
	binary.BigEndian.PutUint64(param[8:16], 32)
	binary.BigEndian.PutUint32(param[16:20], 8)
	if r := lu.Execute(ctx, testNexus, cdb10(opUnmap, 0, 0, 24), param); r.Status != StatusGood {
		t.Fatalf("UNMAP: %+v", r)
	}
	r = lu.Execute(ctx, testNexus, cdb16(opRead16, 0, 32, 16), nil)
	if !bytes.Equal(r.Data, append(make([]byte, 8*BlockSize), bytes.Repeat(ones, 8)...)) {
		t.Fatal("UNMAP did not zero the range")
	}
	// A malformed parameter list is refused.
	wantSense(t, lu.Execute(ctx, testNexus, cdb10(opUnmap, 0, 0, 10), param[:10]), SenseIllegalRequest, 0x1A)
	// COMPARE AND WRITE: a match writes, a miscompare does not.
	caw := cdb16(opCompareAndWrite, 0, 40, 0)
	caw[13] = 1
	newer := bytes.Repeat([]byte{0xCD}, BlockSize)
	if r := lu.Execute(ctx, testNexus, caw, append(append([]byte{}, ones...), newer...)); r.Status != StatusGood {
		t.Fatalf("COMPARE AND WRITE (match): %+v", r)
	}
	wantSense(t, lu.Execute(ctx, testNexus, caw, append(append([]byte{}, ones...), ones...)), SenseMiscompare, 0x1D)
	r = lu.Execute(ctx, testNexus, cdb16(opRead16, 0, 40, 1), nil)
	if !bytes.Equal(r.Data, newer) {
		t.Fatal("COMPARE AND WRITE: the block is not the new data")
	}
}

func TestSenseFixedFormat(t *testing.T) {
	s := invalidCDB(7, 3)
	b := s.Fixed()
	if b[0] != 0x70 || b[2] != SenseIllegalRequest || b[7] != 10 || b[12] != 0x24 || b[15] != 0xCB || b[17] != 7 {
		t.Fatalf("sense % x", b)
	}
}

// TestORWrite: ORWRITE (16) writes the OR of the medium and the data, and
// checks its CDB like WRITE (16).
func TestORWrite(t *testing.T) {
	ctx := context.Background()
	last := uint64(testSize/BlockSize - 1)
	lo, hi := bytes.Repeat([]byte{0x0F}, 2*BlockSize), bytes.Repeat([]byte{0xA0}, 2*BlockSize)
	for _, tc := range []struct {
		name     string
		cdb      []byte
		out      []byte
		readOnly bool
		key, asc uint8 // 0: GOOD
		expected int
	}{
		{"or", cdb16(opORWrite16, 0, 10, 2), hi, false, 0, 0, 2 * BlockSize},
		{"fua and dpo", cdb16(opORWrite16, 0x18, 10, 2), hi, false, 0, 0, 2 * BlockSize},
		{"at the end", cdb16(opORWrite16, 0, last-1, 2), hi, false, 0, 0, 2 * BlockSize},
		{"no blocks", cdb16(opORWrite16, 0, 0, 0), nil, false, 0, 0, 0},
		{"short data: the whole blocks sent", cdb16(opORWrite16, 0, 10, 4), hi, false, 0, 0, 4 * BlockSize},
		{"beyond the end", cdb16(opORWrite16, 0, last, 2), hi, false, SenseIllegalRequest, 0x21, 0},
		{"no blocks beyond the end", cdb16(opORWrite16, 0, last+2, 0), nil, false, SenseIllegalRequest, 0x21, 0},
		{"LBA 2^63", cdb16(opORWrite16, 0, 1<<63, 1), hi[:BlockSize], false, SenseIllegalRequest, 0x21, 0},
		{"ORPROTECT", cdb16(opORWrite16, 0x20, 10, 1), hi[:BlockSize], false, SenseIllegalRequest, 0x24, 0},
		{"read-only", cdb16(opORWrite16, 0, 10, 2), hi, true, SenseDataProtect, 0x27, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lu, d := newLU()
			lu.ReadOnly = tc.readOnly
			lba := be64(tc.cdb[2:10])
			if tc.key == 0 && len(tc.out) > 0 {
				d.Write(lo, int64(lba*BlockSize))
			}
			r := lu.Execute(ctx, testNexus, tc.cdb, tc.out)
			if tc.key != 0 {
				wantSense(t, r, tc.key, tc.asc)
				return
			}
			if r.Status != StatusGood || r.Expected != tc.expected {
				t.Fatalf("ORWRITE: %+v", r)
			}
			if len(tc.out) == 0 {
				return
			}
			got := make([]byte, len(tc.out))
			d.Read(got, int64(lba*BlockSize))
			if !bytes.Equal(got, bytes.Repeat([]byte{0xAF}, len(tc.out))) {
				t.Fatalf("blocks hold % x..., want af", got[:4])
			}
		})
	}
	// REPORT SUPPORTED OPERATION CODES has it, with DPO and FUA.
	lu, _ := newLU()
	r := lu.Execute(ctx, testNexus, rsocCDB(1, opORWrite16, 0, false), nil)
	if r.Status != StatusGood || r.Data[1]&0x07 != 0x03 || len(r.Data) < 6 || r.Data[5]&0x18 != 0x18 {
		t.Fatalf("REPORT SUPPORTED OPERATION CODES for ORWRITE: %+v", r)
	}
}

// TestTransferLimits: READ/WRITE/ORWRITE up to MAXIMUM TRANSFER LENGTH
// (which the Block Limits page reports, with a smaller optimal length),
// a READ cut to the initiator's buffer (ExecuteIn), and a long VERIFY.
func TestTransferLimits(t *testing.T) {
	ctx := context.Background()
	const size = 64 << 20
	d := &memDev{Pages: memdev.New(size)}
	lu := &LU{Dev: d}
	r := lu.Execute(ctx, testNexus, []byte{opInquiry, 1, 0xB0, 0, 255, 0}, nil)
	if be32(r.Data[8:12]) != maxTransferBlocks || be32(r.Data[12:16]) != optTransferBlocks || optTransferBlocks >= maxTransferBlocks {
		t.Fatalf("Block Limits: maximum %d optimal %d", be32(r.Data[8:12]), be32(r.Data[12:16]))
	}
	big := pattern(maxTransferBlocks * BlockSize)
	if r := lu.Execute(ctx, testNexus, cdb16(opWrite16, 0, 0, maxTransferBlocks), big); r.Status != StatusGood {
		t.Fatalf("WRITE of the maximum: %+v", r)
	}
	if r := lu.Execute(ctx, testNexus, cdb16(opRead16, 0, 0, maxTransferBlocks), nil); r.Status != StatusGood || !bytes.Equal(r.Data, big) {
		t.Fatalf("READ of the maximum: status %v, %d bytes", r.Status, len(r.Data))
	}
	for _, op := range []byte{opRead16, opWrite16, opORWrite16, opVerify16} {
		wantSense(t, lu.Execute(ctx, testNexus, cdb16(op, 0, 0, maxTransferBlocks+1), nil), SenseIllegalRequest, 0x24)
	}
	// The initiator's buffer bounds a READ; the CDB's length is told.
	for _, maxIn := range []int{0, 1000, 2048, 4096} {
		r := lu.ExecuteIn(ctx, testNexus, cdb10(opRead10, 0, 0, 4), nil, maxIn)
		want := min(maxIn, 4*BlockSize)
		if r.Status != StatusGood || !bytes.Equal(r.Data, big[:want]) {
			t.Fatalf("READ of 4 blocks into %d bytes: status %v, %d bytes", maxIn, r.Status, len(r.Data))
		}
		if wantLen := 4 * BlockSize; maxIn < wantLen && r.DataLength != wantLen {
			t.Fatalf("READ into %d bytes: DataLength %d, want %d", maxIn, r.DataLength, wantLen)
		}
	}
	// VERIFY in pieces finds a difference past the first piece.
	n := uint32(optTransferBlocks + 100)
	out := bytes.Clone(big[:n*BlockSize])
	if r := lu.Execute(ctx, testNexus, cdb16(opVerify16, 0x02, 0, n), out); r.Status != StatusGood {
		t.Fatalf("VERIFY of equal data: %+v", r)
	}
	at := (optTransferBlocks+50)*BlockSize + 7
	out[at] ^= 0xFF
	r = lu.Execute(ctx, testNexus, cdb16(opVerify16, 0x02, 0, n), out)
	wantSense(t, r, SenseMiscompare, 0x1D)
	if !r.Sense.InfoValid || r.Sense.Info != uint32(at) {
		t.Fatalf("miscompare at %d, want %d", r.Sense.Info, at)
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return b
}
