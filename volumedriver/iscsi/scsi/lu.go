package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"syscall"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// Operation codes this package executes.
const (
	opTestUnitReady   = 0x00
	opRequestSense    = 0x03
	opRead6           = 0x08
	opWrite6          = 0x0A
	opInquiry         = 0x12
	opModeSelect6     = 0x15
	opModeSense6      = 0x1A
	opStartStopUnit   = 0x1B
	opPreventAllow    = 0x1E
	opReadCapacity10  = 0x25
	opRead10          = 0x28
	opWrite10         = 0x2A
	opWriteVerify10   = 0x2E
	opVerify10        = 0x2F
	opSyncCache10     = 0x35
	opWriteSame10     = 0x41
	opUnmap           = 0x42
	opModeSelect10    = 0x55
	opModeSense10     = 0x5A
	opRead16          = 0x88
	opCompareAndWrite = 0x89
	opWrite16         = 0x8A
	opWriteVerify16   = 0x8E
	opVerify16        = 0x8F
	opSyncCache16     = 0x91
	opWriteSame16     = 0x93 // ORWRITE (16) is 0x8B: opcodes.go
	opServiceActionIn = 0x9E // READ CAPACITY 16 (0x10), GET LBA STATUS (0x12)
	opReportLUNs      = 0xA0
	opRead12          = 0xA8
	opWrite12         = 0xAA
	opWriteVerify12   = 0xAE
	opVerify12        = 0xAF
	saReadCapacity16  = 0x10
	saGetLBAStatus    = 0x12
	// maxTransferBlocks: 32 MiB per READ/WRITE. libiscsi's
	// WriteSame16.Unmap writes and reads 65536 blocks in one command
	// whatever the Block Limits say, and the issue wants that suite in
	// full. The initiator's buffer (EDTL) bounds what a read allocates
	// (ExecuteIn), and the transport budgets both directions per
	// session; Linux sizes its I/O by the optimal length.
	maxTransferBlocks  = 1 << 16
	optTransferBlocks  = 1 << 13 // 4 MiB: the OPTIMAL TRANSFER LENGTH
	maxUnmapDescs      = 256
	maxUnmapBlocks     = 1 << 20 // 512 MiB per UNMAP
	maxWriteSameBlocks = 1 << 21 // 1 GiB per WRITE SAME
)

// BlockSize is the logical block size the LU reports; the vdisk's 4 KiB
// clusters are its physical blocks (512e).
const BlockSize = 512

// physExp: 2^physExp logical blocks per physical block (4 KiB).
const physExp = 3

// LU is one logical unit: a vdisk as a SCSI block device.
type LU struct {
	Dev blockdev.Device
	// ReadOnly: a template; writes are refused as write protected.
	ReadOnly bool
	// Product is INQUIRY's product id; Serial the unit serial number
	// (VPD 0x80); ID the 8-byte NAA IEEE registered identifier (VPD
	// 0x83), stable for the vdisk.
	Product string
	Serial  string
	ID      [8]byte
	// PR is the vdisk's persistent reservation state, shared by every
	// LU of the vdisk (every session on every node). Nil: PERSISTENT
	// RESERVE is not supported.
	PR *Reservations

	// own is the node-local shared state when PR is nil (see local).
	own localState
}

// Nexus names the I_T nexus a command arrived on (SAM-5): the initiator
// port and the target port. Persistent reservations are held by nexus.
type Nexus struct {
	// InitiatorName is the iSCSI initiator name; InitiatorPort its
	// port name, InitiatorName + ",i,0x" + ISID in hex (RFC 7143 §4.2.7).
	InitiatorName string
	InitiatorPort string
	// TargetPort is the target port name: TargetName + ",t,0x" + TPGT.
	TargetPort string
	// RelativePort is the relative target port identifier (VPD 0x83).
	RelativePort uint16
}

// Result is the outcome of a command: its status, the data for the
// initiator (Data-In), and sense data when the status is CHECK
// CONDITION.
type Result struct {
	Status Status
	Data   []byte
	Sense  *Sense
	// Expected is the Data-Out the command asked for (its transfer
	// length), when it differs from what the initiator sent: the
	// transport reports the difference as a residual.
	Expected int
	// DataLength, when larger than len(Data), is the Data-In the
	// command asked for: Data was cut to ExecuteIn's maxIn.
	DataLength int
}

func good(data []byte) Result         { return Result{Status: StatusGood, Data: data} }
func check(s *Sense) Result           { return Result{Status: StatusCheckCondition, Sense: s} }
func (lu *LU) blocks() uint64         { return uint64(lu.Dev.Size()) / BlockSize }
func be16(b []byte) uint64            { return uint64(binary.BigEndian.Uint16(b)) }
func be32(b []byte) uint64            { return uint64(binary.BigEndian.Uint32(b)) }
func be64(b []byte) uint64            { return binary.BigEndian.Uint64(b) }
func clip(b []byte, alloc int) []byte { return b[:min(len(b), alloc)] }

// Execute runs one command that arrived on nexus nx. cdb is the command
// descriptor block; out is the data the initiator sent with it
// (Data-Out), already complete.
func (lu *LU) Execute(ctx context.Context, nx Nexus, cdb []byte, out []byte) Result {
	if len(cdb) < 6 {
		return check(invalidCDB(0, -1))
	}
	c, s := lu.lookup(cdb)
	if s != nil {
		return check(s)
	}
	if len(cdb) < len(c.usage) {
		return check(invalidCDB(0, -1))
	}
	if lu.local().spc2Conflict(nx, c) {
		return Result{Status: StatusReservationConflict}
	}
	if lu.PR != nil {
		a := c.access
		if c.accessOf != nil {
			a = c.accessOf(cdb)
		}
		conflict, err := lu.PR.conflict(ctx, nx, a)
		if err != nil {
			return prStoreFailure(err)
		}
		if conflict {
			return Result{Status: StatusReservationConflict}
		}
	}
	return c.run(lu, ctx, nx, cdb, out)
}

// maxInKey keys the Data-In capacity ExecuteIn puts in the context.
type maxInKey struct{}

// ExecuteIn is Execute for a command whose initiator takes at most maxIn
// bytes of Data-In (iSCSI's expected data transfer length; 0 for a
// command without Data-In). A READ asking for more reads only what fits
// and says in Result.DataLength how much it asked for (the transport
// reports the rest as a residual): so the initiator's buffer, which the
// transport budgets, bounds the memory a read takes, not the CDB.
func (lu *LU) ExecuteIn(ctx context.Context, nx Nexus, cdb, out []byte, maxIn int) Result {
	return lu.Execute(context.WithValue(ctx, maxInKey{}, max(maxIn, 0)), nx, cdb, out)
}

// readCmd runs READ (6, 10, 12, 16).
func (lu *LU) readCmd(ctx context.Context, cdb []byte) Result {
	lba, n, s := lu.transferExtent(cdb)
	if s != nil {
		return check(s)
	}
	maxIn, ok := ctx.Value(maxInKey{}).(int)
	if !ok || uint64(maxIn) >= n*BlockSize {
		return lu.read(ctx, lba, n)
	}
	r := lu.read(ctx, lba, (uint64(maxIn)+BlockSize-1)/BlockSize)
	if r.Status == StatusGood {
		r.Data = r.Data[:maxIn]
		r.DataLength = int(n * BlockSize)
	}
	return r
}

// writeCmd runs WRITE (6, 10, 12, 16) and WRITE AND VERIFY (10, 12, 16).
// WRITE AND VERIFY verifies what is on the medium, so it writes through
// (FUA); what is written is what is read back, so that is the verify.
func (lu *LU) writeCmd(ctx context.Context, cdb, out []byte) Result {
	lba, n, s := rwExtent(cdb)
	if s != nil {
		return check(s)
	}
	if s := noProtection(cdb); s != nil {
		return check(s)
	}
	op := cdb[0]
	fua := op == opWriteVerify10 || op == opWriteVerify12 || op == opWriteVerify16 ||
		op != opWrite6 && cdb[1]&0x08 != 0
	return lu.write(ctx, lba, n, out, fua)
}

// transferExtent decodes and checks the extent of a READ or VERIFY of
// any size: no protection information, within the vdisk, within the
// transfer limit.
func (lu *LU) transferExtent(cdb []byte) (lba, n uint64, s *Sense) {
	if lba, n, s = rwExtent(cdb); s != nil {
		return 0, 0, s
	}
	if s = noProtection(cdb); s != nil {
		return 0, 0, s
	}
	if s = lu.inRange(lba, n); s != nil {
		return 0, 0, s
	}
	if n > maxTransferBlocks {
		return 0, 0, invalidCDB(7, -1)
	}
	return lba, n, nil
}

// rwExtent decodes the LBA and transfer length of a READ/WRITE/VERIFY of
// any size.
func rwExtent(cdb []byte) (lba, n uint64, s *Sense) {
	switch cdb[0] {
	case opRead6, opWrite6:
		lba = uint64(cdb[1]&0x1F)<<16 | be16(cdb[2:4])
		n = uint64(cdb[4])
		if n == 0 {
			n = 256 // SBC: 0 means 256 for the 6-byte commands
		}
		return lba, n, nil
	case opRead10, opWrite10, opWriteVerify10, opVerify10:
		if len(cdb) < 10 {
			return 0, 0, invalidCDB(0, -1)
		}
		return be32(cdb[2:6]), be16(cdb[7:9]), nil
	case opRead12, opWrite12, opWriteVerify12, opVerify12:
		if len(cdb) < 12 {
			return 0, 0, invalidCDB(0, -1)
		}
		return be32(cdb[2:6]), be32(cdb[6:10]), nil
	default: // 16-byte
		if len(cdb) < 16 {
			return 0, 0, invalidCDB(0, -1)
		}
		return be64(cdb[2:10]), be32(cdb[10:14]), nil
	}
}

// noProtection refuses a RDPROTECT/WRPROTECT/VRPROTECT field (bits 7-5
// of byte 1 of the 10-, 12- and 16-byte commands): the LU is formatted
// without protection information.
func noProtection(cdb []byte) *Sense {
	switch cdb[0] {
	case opRead6, opWrite6:
		return nil
	}
	if cdb[1]&0xE0 != 0 {
		return invalidCDB(1, 7)
	}
	return nil
}

// inRange checks [lba, lba+n) against the capacity.
func (lu *LU) inRange(lba, n uint64) *Sense {
	if lba > lu.blocks() || n > lu.blocks()-lba {
		return senseOf(SenseIllegalRequest, ascLBAOutOfRange)
	}
	return nil
}

// ioSense maps an error of the vdisk to sense data.
func ioSense(err error, asc [2]byte) *Sense {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return senseOf(SenseDataProtect, ascSpaceAllocFailed)
	case errors.Is(err, syscall.EPERM):
		return senseOf(SenseDataProtect, ascWriteProtected)
	}
	return senseOf(SenseMediumError, asc)
}

func (lu *LU) read(ctx context.Context, lba, n uint64) Result {
	if s := lu.inRange(lba, n); s != nil {
		return check(s)
	}
	if n > maxTransferBlocks {
		return check(invalidCDB(7, -1))
	}
	buf := make([]byte, n*BlockSize)
	if err := lu.Dev.ReadAt(ctx, buf, int64(lba*BlockSize)); err != nil {
		return check(ioSense(err, ascUnrecoveredRead))
	}
	return good(buf)
}

func (lu *LU) write(ctx context.Context, lba, n uint64, out []byte, fua bool) Result {
	if lu.ReadOnly {
		return check(senseOf(SenseDataProtect, ascWriteProtected))
	}
	if s := lu.inRange(lba, n); s != nil {
		return check(s)
	}
	if n > maxTransferBlocks {
		return check(invalidCDB(7, -1))
	}
	// The initiator may send more or less than the CDB asks for (the
	// transport reports the difference as a residual): more, and the
	// CDB rules; less, and only the whole blocks sent are written.
	want := int(n * BlockSize)
	out = out[:min(len(out), want)/BlockSize*BlockSize]
	r := good(nil)
	if len(out) > 0 {
		unlock, err := lu.local().extents.lock(ctx, lba, uint64(len(out))/BlockSize, false)
		if err != nil {
			return abortedBy(err)
		}
		defer unlock()
		if err := lu.Dev.WriteAt(ctx, out, int64(lba*BlockSize), fua); err != nil {
			r = check(ioSense(err, ascWriteError))
		}
	}
	r.Expected = want
	return r
}

// abortedBy is the result of a command whose context ended while it
// waited (it was aborted: the initiator sees no response, or the
// connection is gone).
func abortedBy(error) Result {
	return check(senseOf(SenseAbortedCommand, [2]byte{0x00, 0x00}))
}
