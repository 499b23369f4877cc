package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// Identification strings of INQUIRY.
const (
	vendorID        = "OVS     " // 8 bytes
	productRevision = "0001"     // 4 bytes
)

func padded(s string, n int) []byte {
	b := bytes.Repeat([]byte{' '}, n)
	copy(b, s)
	return b
}

// inquiry answers the standard INQUIRY data or a VPD page.
func (lu *LU) inquiry(cdb []byte) Result {
	alloc := int(be16(cdb[3:5]))
	evpd := cdb[1]&0x01 != 0
	if !evpd {
		if cdb[2] != 0 {
			return check(invalidCDB(2, -1))
		}
		b := make([]byte, 66)
		b[0] = 0x00 // connected direct-access block device
		b[2] = 0x06 // SPC-4
		b[3] = 0x02 // response data format 2
		b[4] = byte(len(b) - 5)
		// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
		for i, v := range []uint16{0x00A0, 0x0960, 0x0460, 0x04C0} {
			binary.BigEndian.PutUint16(b[58+2*i:], v)
		}
		b[5] = 0x00 // no 3PC, PROTECT or TPGS
		b[7] = 0x02 // CMDQUE
		copy(b[8:16], vendorID)
		copy(b[16:32], padded(lu.Product, 16))
		copy(b[32:36], productRevision)
		return good(clip(b, alloc))
	}
	var page []byte
	switch code := cdb[2]; code {
	case 0x00: // supported VPD pages
		page = []byte{0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2}
	case 0x80: // unit serial number
		page = []byte(lu.Serial)
	case 0x83: // device identification: NAA and a T10 vendor id
		naa := append([]byte{0x01, 0x03, 0x00, 8}, lu.ID[:]...)
		t10 := append([]byte{0x02, 0x01, 0x00, 0}, append([]byte(vendorID), []byte(lu.Serial)...)...)
		t10[3] = byte(len(t10) - 4)
		page = append(naa, t10...)
	case 0xB0: // block limits
		page = make([]byte, 60)
		page[1] = 1 // COMPARE AND WRITE: one block at a time
		binary.BigEndian.PutUint16(page[2:4], 1<<physExp)
		binary.BigEndian.PutUint32(page[4:8], maxTransferBlocks)
		binary.BigEndian.PutUint32(page[8:12], optTransferBlocks)
		binary.BigEndian.PutUint32(page[16:20], maxUnmapBlocks) // max unmap LBA count
		binary.BigEndian.PutUint32(page[20:24], maxUnmapDescs)
		binary.BigEndian.PutUint32(page[24:28], 1<<physExp) // unmap granularity
		binary.BigEndian.PutUint64(page[32:40], maxWriteSameBlocks)
	case 0xB1: // block device characteristics
		page = make([]byte, 60)
		page[1] = 0x01 // non-rotating medium
	case 0xB2: // logical block provisioning
		page = make([]byte, 4)
		page[1] = 0xE0 // LBPU, LBPWS, LBPWS10
		page[2] = 0x02 // provisioning type: thin
	default:
		return check(invalidCDB(2, -1))
	}
	b := make([]byte, 4, 4+len(page))
	b[1] = cdb[2]
	binary.BigEndian.PutUint16(b[2:4], uint16(len(page)))
	return good(clip(append(b, page...), alloc))
}

// reportLUNs: LUN 0 only.
func (lu *LU) reportLUNs(cdb []byte) Result {
	if len(cdb) < 12 {
		return check(invalidCDB(0, -1))
	}
	alloc := int(be32(cdb[6:10]))
	if alloc < 16 {
		return check(invalidCDB(6, -1))
	}
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b[0:4], 8)
	return good(clip(b, alloc))
}

func (lu *LU) readCapacity10() Result {
	b := make([]byte, 8)
	last := lu.blocks() - 1
	if last > 0xFFFFFFFF {
		last = 0xFFFFFFFF // the initiator must use READ CAPACITY 16
	}
	binary.BigEndian.PutUint32(b[0:4], uint32(last))
	binary.BigEndian.PutUint32(b[4:8], BlockSize)
	return good(b)
}

func (lu *LU) readCapacity16(cdb []byte) Result {
	if len(cdb) < 16 {
		return check(invalidCDB(0, -1))
	}
	alloc := int(be32(cdb[10:14]))
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b[0:8], lu.blocks()-1)
	binary.BigEndian.PutUint32(b[8:12], BlockSize)
	b[13] = physExp
	b[14] = 0x80 | 0x40 // LBPME (thin, unmap), LBPRZ (unmapped reads as zeros)
	return good(clip(b, alloc))
}

// getLBAStatus describes allocation from an LBA on (mapped or
// deallocated), from the vdisk's extents.
func (lu *LU) getLBAStatus(ctx context.Context, cdb []byte) Result {
	if len(cdb) < 16 {
		return check(invalidCDB(0, -1))
	}
	lba := be64(cdb[2:10])
	alloc := int(be32(cdb[10:14]))
	if lba >= lu.blocks() {
		return check(senseOf(SenseIllegalRequest, ascLBAOutOfRange))
	}
	const maxDescs = 64
	off := int64(lba * BlockSize)
	exts, err := lu.Dev.BlockStatus(ctx, off, lu.Dev.Size()-off)
	if err != nil {
		return check(ioSense(err, ascUnrecoveredRead))
	}
	b := make([]byte, 8, 8+16*maxDescs)
	at := lba
	for _, e := range exts {
		if len(b) == 8+16*maxDescs || e.Length <= 0 {
			break
		}
		n := uint64(e.Length) / BlockSize
		if n == 0 {
			break
		}
		d := make([]byte, 16)
		binary.BigEndian.PutUint64(d[0:8], at)
		binary.BigEndian.PutUint32(d[8:12], uint32(min(n, 0xFFFFFFFF)))
		if e.Hole {
			d[12] = 0x01 // deallocated
		}
		b = append(b, d...)
		at += n
	}
	binary.BigEndian.PutUint32(b[0:4], uint32(len(b)-4))
	return good(clip(b, alloc))
}

// modeSense answers the caching (0x08) and control (0x0A) pages, or all
// of them (0x3F).
func (lu *LU) modeSense(cdb []byte) Result {
	ten := cdb[0] == opModeSense10
	if ten && len(cdb) < 10 {
		return check(invalidCDB(0, -1))
	}
	pc := cdb[2] >> 6
	if pc == 3 {
		return check(senseOf(SenseIllegalRequest, ascSavingUnsupported))
	}
	caching := make([]byte, 20)
	caching[0], caching[1] = 0x08, 18
	if pc != 1 { // changeable values: none
		caching[2] = 0x04 // WCE: writes are cached until a flush
	}
	control := make([]byte, 12)
	control[0], control[1] = 0x0A, 10
	if pc != 1 {
		control[2] = 0x00
		control[3] = 0x10 // QUEUE ALGORITHM MODIFIER 1: unrestricted
	}
	var pages []byte
	switch code := cdb[2] & 0x3F; code {
	case 0x08:
		pages = caching
	case 0x0A:
		pages = control
	case 0x3F:
		pages = append(caching, control...)
	default:
		return check(invalidCDB(2, 5))
	}
	// Device-specific parameter: DPOFUA (DPO and FUA are honoured), WP.
	wp := byte(0x10)
	if lu.ReadOnly {
		wp |= 0x80
	}
	var b []byte
	var alloc int
	if ten {
		alloc = int(be16(cdb[7:9]))
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:2], uint16(6+len(pages)))
		b[3] = wp
	} else {
		alloc = int(cdb[4])
		b = make([]byte, 4)
		b[0] = byte(3 + len(pages))
		b[2] = wp
	}
	return good(clip(append(b, pages...), alloc))
}

// verify checks a range: with BYTCHK the initiator's data is compared
// with what is stored, else the range is only read.
func (lu *LU) verify(ctx context.Context, cdb []byte, out []byte) Result {
	lba, n, s := lu.transferExtent(cdb)
	if s != nil {
		return check(s)
	}
	bytchk := cdb[1] >> 1 & 0x03
	switch {
	case bytchk > 1:
		return check(invalidCDB(1, 2))
	case bytchk == 1 && uint64(len(out)) != n*BlockSize:
		return check(invalidCDB(1, 2))
	}
	// In pieces: a VERIFY has no Data-In, so nothing budgets a buffer
	// of its whole range.
	for done := uint64(0); done < n; {
		m := min(n-done, optTransferBlocks)
		r := lu.read(ctx, lba+done, m)
		if r.Status != StatusGood {
			return r
		}
		if bytchk == 1 {
			if i := mismatch(r.Data, out[done*BlockSize:]); i >= 0 {
				s := senseOf(SenseMiscompare, ascMiscompareVerify)
				s.InfoValid, s.Info = true, uint32(done*BlockSize)+uint32(i)
				return check(s)
			}
		}
		done += m
	}
	return good(nil)
}

// mismatch returns the first offset where a and b differ, or -1.
func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// unmap trims the ranges of the parameter list.
func (lu *LU) unmap(ctx context.Context, cdb []byte, out []byte) Result {
	if lu.ReadOnly {
		return check(senseOf(SenseDataProtect, ascWriteProtected))
	}
	if len(cdb) < 10 {
		return check(invalidCDB(0, -1))
	}
	if len(out) == 0 {
		return good(nil)
	}
	if len(out) < 8 {
		return check(senseOf(SenseIllegalRequest, ascParamListLength))
	}
	bdl := int(be16(out[2:4]))
	if bdl%16 != 0 || 8+bdl > len(out) {
		return check(senseOf(SenseIllegalRequest, ascParamListLength))
	}
	if bdl/16 > maxUnmapDescs {
		return check(invalidParam(2))
	}
	descs := out[8 : 8+bdl]
	total := uint64(0)
	for i := 0; i < len(descs); i += 16 {
		lba, n := be64(descs[i:i+8]), be32(descs[i+8:i+12])
		if s := lu.inRange(lba, n); s != nil {
			return check(s)
		}
		if total += n; total > maxUnmapBlocks {
			return check(invalidParam(8 + i + 8))
		}
	}
	for i := 0; i < len(descs); i += 16 {
		lba, n := be64(descs[i:i+8]), be32(descs[i+8:i+12])
		if n == 0 {
			continue
		}
		if r, ok := lu.locked(ctx, lba, n, false, func() Result {
			if err := lu.Dev.Trim(ctx, int64(lba*BlockSize), int64(n*BlockSize)); err != nil {
				return check(ioSense(err, ascWriteError))
			}
			return good(nil)
		}); !ok || r.Status != StatusGood {
			return r
		}
	}
	return good(nil)
}

// locked runs fn with blocks [lba, lba+n) locked (see extentLocks),
// exclusively or not. ok is false when ctx ended while it waited.
func (lu *LU) locked(ctx context.Context, lba, n uint64, exclusive bool, fn func() Result) (r Result, ok bool) {
	unlock, err := lu.local().extents.lock(ctx, lba, n, exclusive)
	if err != nil {
		return abortedBy(err), false
	}
	defer unlock()
	return fn(), true
}

// writeSame writes one block over a range; with UNMAP and a block of
// zeros, the range is trimmed instead.
func (lu *LU) writeSame(ctx context.Context, cdb []byte, out []byte) Result {
	if lu.ReadOnly {
		return check(senseOf(SenseDataProtect, ascWriteProtected))
	}
	if s := noProtection(cdb); s != nil {
		return check(s)
	}
	var lba, n uint64
	if cdb[0] == opWriteSame10 {
		if len(cdb) < 10 {
			return check(invalidCDB(0, -1))
		}
		lba, n = be32(cdb[2:6]), be16(cdb[7:9])
	} else {
		if len(cdb) < 16 {
			return check(invalidCDB(0, -1))
		}
		lba, n = be64(cdb[2:10]), be32(cdb[10:14])
	}
	if cdb[1]&0x10 != 0 { // ANCHOR: anchored blocks are not supported (ANC_SUP 0)
		return check(invalidCDB(1, 4))
	}
	unmap, ndob := cdb[1]&0x08 != 0, cdb[0] == opWriteSame16 && cdb[1]&0x01 != 0
	if n == 0 {
		n = lu.blocks() - min(lba, lu.blocks()) // 0: to the end (SBC-4, WSNZ=0)
	}
	if s := lu.inRange(lba, n); s != nil {
		return check(s)
	}
	if n > maxWriteSameBlocks {
		return check(invalidCDB(7, -1))
	}
	block := make([]byte, BlockSize)
	if !ndob {
		if len(out) != BlockSize {
			return check(invalidCDB(0, -1))
		}
		copy(block, out)
	}
	r, _ := lu.locked(ctx, lba, n, false, func() Result { return lu.writeSameLocked(ctx, lba, n, block, unmap) })
	return r
}

// writeSameLocked writes block over [lba, lba+n), or trims the range
// (unmap); the caller holds the range locked.
func (lu *LU) writeSameLocked(ctx context.Context, lba, n uint64, block []byte, unmap bool) Result {
	off, length := int64(lba*BlockSize), int64(n*BlockSize)
	// UNMAP: the range is deallocated whatever the block holds; it
	// then reads as zeros (LBPRZ), as libiscsi and Linux expect.
	if unmap {
		if err := lu.Dev.Trim(ctx, off, length); err != nil {
			return check(ioSense(err, ascWriteError))
		}
		return good(nil)
	}
	if mismatch(block, make([]byte, BlockSize)) < 0 {
		if err := lu.Dev.WriteZeroes(ctx, off, length, true, false); err != nil {
			return check(ioSense(err, ascWriteError))
		}
		return good(nil)
	}
	const chunk = 1 << 20
	buf := bytes.Repeat(block, int(min(uint64(chunk/BlockSize), n)))
	for off < int64((lba+n)*BlockSize) {
		m := min(int64(len(buf)), int64((lba+n)*BlockSize)-off)
		if err := lu.Dev.WriteAt(ctx, buf[:m], off, false); err != nil {
			return check(ioSense(err, ascWriteError))
		}
		off += m
	}
	return good(nil)
}

// compareAndWrite compares NUMBER OF LOGICAL BLOCKS blocks with the
// first half of the data and, if equal, writes the second half (VMware's
// ATS locking). The blocks are locked exclusively meanwhile: no other
// write to them through this node comes between the compare and the
// write (see localState for other nodes).
func (lu *LU) compareAndWrite(ctx context.Context, cdb []byte, out []byte) Result {
	if lu.ReadOnly {
		return check(senseOf(SenseDataProtect, ascWriteProtected))
	}
	if len(cdb) < 16 {
		return check(invalidCDB(0, -1))
	}
	if s := noProtection(cdb); s != nil {
		return check(s)
	}
	lba, n := be64(cdb[2:10]), uint64(cdb[13])
	if n > 1 {
		return check(invalidCDB(13, -1))
	}
	// The Data-Out must be what the CDB says (LIO refuses a mismatch
	// the same way): libiscsi asks for 256 blocks, which a one-byte
	// field wraps to 0, with 256 blocks of data.
	if uint64(len(out)) != 2*n*BlockSize {
		return check(invalidCDB(13, -1))
	}
	if n == 0 {
		return good(nil)
	}
	if s := lu.inRange(lba, n); s != nil {
		return check(s)
	}
	fua := cdb[1]&0x08 != 0
	cmp, data, off := out[:n*BlockSize], out[n*BlockSize:], int64(lba*BlockSize)
	r, _ := lu.locked(ctx, lba, n, true, func() Result {
		i, err := lu.compareAndWrite1(ctx, off, cmp, data, fua)
		if err != nil {
			return check(ioSense(err, ascWriteError))
		}
		if i >= 0 {
			s := senseOf(SenseMiscompare, ascMiscompareVerify)
			s.InfoValid, s.Info = true, uint32(i)
			return check(s)
		}
		return good(nil)
	})
	return r
}

// compareAndWrite1 writes data at off if the vdisk holds cmp there, and
// returns -1, or the offset of the first byte that differs. The device
// does it at the vdisk's owner, serialised with every other node's
// (blockdev.CompareAndWriter): the extent lock the caller holds covers
// this node's sessions only. Every device the node serves, and the test
// devices, implement it.
func (lu *LU) compareAndWrite1(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error) {
	cw, ok := lu.Dev.(blockdev.CompareAndWriter)
	if !ok {
		return 0, fmt.Errorf("scsi: the device cannot compare and write: %w", errors.ErrUnsupported)
	}
	return cw.CompareAndWrite(ctx, off, cmp, data, fua)
}

// orWrite runs ORWRITE (16) (SBC-4 5.9): what is written is the bitwise
// OR of the blocks on the medium and the Data-Out. Like COMPARE AND
// WRITE, its read and write are one atomic step: the blocks are locked
// exclusively between them. As for WRITE, a Data-Out short of the
// transfer length updates the whole blocks sent (the residual says so).
func (lu *LU) orWrite(ctx context.Context, cdb, out []byte) Result {
	if lu.ReadOnly {
		return check(senseOf(SenseDataProtect, ascWriteProtected))
	}
	if s := noProtection(cdb); s != nil { // ORPROTECT
		return check(s)
	}
	lba, n := be64(cdb[2:10]), be32(cdb[10:14])
	if s := lu.inRange(lba, n); s != nil {
		return check(s)
	}
	if n > maxTransferBlocks {
		return check(invalidCDB(10, -1))
	}
	want := int(n * BlockSize)
	out = out[:min(len(out), want)/BlockSize*BlockSize]
	fua := cdb[1]&0x08 != 0
	r, _ := lu.locked(ctx, lba, uint64(len(out))/BlockSize, true, func() Result {
		// Piece by piece, each an atomic compare-and-write of what was
		// read with its OR (again if another node wrote in between).
		for done := 0; done < len(out); {
			piece := out[done:min(len(out), done+blockdev.MaxCompareAndWrite)]
			off := int64(lba*BlockSize) + int64(done)
			cur, next := make([]byte, len(piece)), make([]byte, len(piece))
			for attempt := 0; ; attempt++ {
				if err := lu.Dev.ReadAt(ctx, cur, off); err != nil {
					return check(ioSense(err, ascUnrecoveredRead))
				}
				for i := range next {
					next[i] = cur[i] | piece[i]
				}
				i, err := lu.compareAndWrite1(ctx, off, cur, next, fua)
				if err != nil {
					return check(ioSense(err, ascWriteError))
				}
				if i < 0 {
					break
				}
				if attempt == 100 || ctx.Err() != nil {
					return check(senseOf(SenseAbortedCommand, ascWriteError))
				}
			}
			done += len(piece)
		}
		return good(nil)
	})
	r.Expected = want
	return r
}
