package scsi

import (
	"context"
	"encoding/binary"
)

// handler runs one command.
type handler func(lu *LU, ctx context.Context, nx Nexus, cdb, out []byte) Result

// command is one command the LU executes. The table of them drives both
// Execute and REPORT SUPPORTED OPERATION CODES, so what is reported is
// what runs.
type command struct {
	op    byte
	sa    uint16
	hasSA bool
	// usage is the CDB usage data (SPC-5 6.34.3): one byte per CDB
	// byte, the operation code and service action, then a bit set for
	// each bit of the CDB the LU looks at. Its length is the CDB's.
	usage []byte
	// access: how the command fares under a persistent reservation of
	// another I_T nexus; accessOf, if set, decides from the CDB.
	access   prAccess
	accessOf func(cdb []byte) prAccess
	// spc2Allowed: the command runs under an SPC-2 reservation of
	// another I_T nexus (SPC-2 5.5.1); the others meet RESERVATION
	// CONFLICT.
	spc2Allowed bool
	// pr: the command needs LU.PR (PERSISTENT RESERVE, and RESERVE and
	// RELEASE, whose state lives there); offered when the LU has one.
	pr  bool
	run handler
}

// Operation codes and service actions beyond lu.go's.
const (
	opPersistentReserveIn  = 0x5E
	opPersistentReserveOut = 0x5F
	opPrefetch10           = 0x34
	opPrefetch16           = 0x90
	opMaintenanceIn        = 0xA3
	opORWrite16            = 0x8B
	saReportOpcodes        = 0x0C
)

// commands is the table of the commands the LU executes, built once by
// init (its handlers refer to it: a variable initializer cannot).
var commands []command

// cdbUsage builds usage data: the operation code, then the masks.
func cdbUsage(op byte, masks ...byte) []byte { return append([]byte{op}, masks...) }

// Usage of the LBA and transfer length fields of the 10-, 12- and
// 16-byte READ/WRITE family, after byte 1.
var (
	rw10 = []byte{0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x00}
	rw12 = []byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00}
	rw16 = []byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00}
)

func init() {
	read := func(lu *LU, ctx context.Context, _ Nexus, cdb, _ []byte) Result { return lu.readCmd(ctx, cdb) }
	write := func(lu *LU, ctx context.Context, _ Nexus, cdb, out []byte) Result { return lu.writeCmd(ctx, cdb, out) }
	verify := func(lu *LU, ctx context.Context, _ Nexus, cdb, out []byte) Result { return lu.verify(ctx, cdb, out) }
	prefetch := func(lu *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result { return lu.prefetch(cdb) }
	syncCache := func(lu *LU, ctx context.Context, _ Nexus, _, _ []byte) Result {
		if err := lu.Dev.Flush(ctx); err != nil {
			return check(ioSense(err, ascWriteError))
		}
		return good(nil)
	}
	writeSame := func(lu *LU, ctx context.Context, _ Nexus, cdb, out []byte) Result { return lu.writeSame(ctx, cdb, out) }
	modeSense := func(lu *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result { return lu.modeSense(cdb) }
	modeSelect := func(_ *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result {
		// The caching page is accepted as it is; saving is not.
		if cdb[1]&0x01 != 0 {
			return check(senseOf(SenseIllegalRequest, ascSavingUnsupported))
		}
		return good(nil)
	}
	nothing := func(*LU, context.Context, Nexus, []byte, []byte) Result { return good(nil) }
	prIn := func(lu *LU, ctx context.Context, nx Nexus, cdb, _ []byte) Result {
		return lu.persistentReserveIn(ctx, nx, cdb)
	}
	prOut := func(lu *LU, ctx context.Context, nx Nexus, cdb, out []byte) Result {
		return lu.persistentReserveOut(ctx, nx, cdb, out)
	}
	reserve := func(lu *LU, ctx context.Context, nx Nexus, cdb, _ []byte) Result { return lu.spc2Reserve(ctx, nx, cdb) }
	release := func(lu *LU, ctx context.Context, nx Nexus, cdb, _ []byte) Result { return lu.spc2Release(ctx, nx, cdb) }
	prInUsage := cdbUsage(opPersistentReserveIn, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x00)
	prOutUsage := cdbUsage(opPersistentReserveOut, 0, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x00)

	commands = []command{
		{op: opTestUnitReady, usage: cdbUsage(opTestUnitReady, 0, 0, 0, 0, 0), run: nothing},
		{op: opRequestSense, usage: cdbUsage(opRequestSense, 0, 0, 0, 0xFF, 0), spc2Allowed: true,
			run: func(_ *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result {
				return good(clip(Sense{}.Fixed(), int(cdb[4])))
			}},
		{op: opInquiry, usage: cdbUsage(opInquiry, 0x01, 0xFF, 0xFF, 0xFF, 0), spc2Allowed: true,
			run: func(lu *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result { return lu.inquiry(cdb) }},
		{op: opReportLUNs, usage: cdbUsage(opReportLUNs, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0), spc2Allowed: true,
			run: func(lu *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result { return lu.reportLUNs(cdb) }},
		{op: opMaintenanceIn, sa: saReportOpcodes, hasSA: true,
			usage: cdbUsage(opMaintenanceIn, saReportOpcodes, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0),
			run:   func(lu *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result { return lu.reportOpcodes(cdb) }},
		{op: opModeSense6, usage: cdbUsage(opModeSense6, 0, 0xFF, 0, 0xFF, 0), access: prWrite, run: modeSense},
		{op: opModeSense10, usage: cdbUsage(opModeSense10, 0, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF, 0), access: prWrite, run: modeSense},
		{op: opModeSelect6, usage: cdbUsage(opModeSelect6, 0x11, 0, 0, 0xFF, 0), access: prWrite, run: modeSelect},
		{op: opModeSelect10, usage: cdbUsage(opModeSelect10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0), access: prWrite, run: modeSelect},
		// START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL change
		// nothing here; SBC-4 table 13 still says when they conflict.
		{op: opStartStopUnit, usage: cdbUsage(opStartStopUnit, 0, 0, 0, 0xF3, 0), run: nothing,
			accessOf: func(cdb []byte) prAccess {
				if cdb[4]&0xF3 == 0x01 { // START, power condition 0
					return prAllowed
				}
				return prWrite
			}},
		{op: opPreventAllow, usage: cdbUsage(opPreventAllow, 0, 0, 0, 0x03, 0), run: nothing,
			accessOf: func(cdb []byte) prAccess {
				if cdb[4]&0x03 == 0 {
					return prAllowed
				}
				return prWrite
			}},
		{op: opReadCapacity10, usage: cdbUsage(opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0),
			run: func(lu *LU, _ context.Context, _ Nexus, _, _ []byte) Result { return lu.readCapacity10() }},
		{op: opServiceActionIn, sa: saReadCapacity16, hasSA: true,
			usage: cdbUsage(opServiceActionIn, saReadCapacity16, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0),
			run:   func(lu *LU, _ context.Context, _ Nexus, cdb, _ []byte) Result { return lu.readCapacity16(cdb) }},
		{op: opServiceActionIn, sa: saGetLBAStatus, hasSA: true, access: prRead,
			usage: cdbUsage(opServiceActionIn, saGetLBAStatus, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0),
			run:   func(lu *LU, ctx context.Context, _ Nexus, cdb, _ []byte) Result { return lu.getLBAStatus(ctx, cdb) }},
		{op: opRead6, usage: cdbUsage(opRead6, 0x1F, 0xFF, 0xFF, 0xFF, 0), access: prRead, run: read},
		{op: opRead10, usage: cdbUsage(opRead10, append([]byte{0x18}, rw10...)...), access: prRead, run: read},
		{op: opRead12, usage: cdbUsage(opRead12, append([]byte{0x18}, rw12...)...), access: prRead, run: read},
		{op: opRead16, usage: cdbUsage(opRead16, append([]byte{0x18}, rw16...)...), access: prRead, run: read},
		{op: opWrite6, usage: cdbUsage(opWrite6, 0x1F, 0xFF, 0xFF, 0xFF, 0), access: prWrite, run: write},
		{op: opWrite10, usage: cdbUsage(opWrite10, append([]byte{0x18}, rw10...)...), access: prWrite, run: write},
		{op: opWrite12, usage: cdbUsage(opWrite12, append([]byte{0x18}, rw12...)...), access: prWrite, run: write},
		{op: opWrite16, usage: cdbUsage(opWrite16, append([]byte{0x18}, rw16...)...), access: prWrite, run: write},
		{op: opWriteVerify10, usage: cdbUsage(opWriteVerify10, append([]byte{0x12}, rw10...)...), access: prWrite, run: write},
		{op: opWriteVerify12, usage: cdbUsage(opWriteVerify12, append([]byte{0x12}, rw12...)...), access: prWrite, run: write},
		{op: opWriteVerify16, usage: cdbUsage(opWriteVerify16, append([]byte{0x12}, rw16...)...), access: prWrite, run: write},
		{op: opVerify10, usage: cdbUsage(opVerify10, append([]byte{0x16}, rw10...)...), access: prRead, run: verify},
		{op: opVerify12, usage: cdbUsage(opVerify12, append([]byte{0x16}, rw12...)...), access: prRead, run: verify},
		{op: opVerify16, usage: cdbUsage(opVerify16, append([]byte{0x16}, rw16...)...), access: prRead, run: verify},
		{op: opPrefetch10, usage: cdbUsage(opPrefetch10, append([]byte{0x02}, rw10...)...), access: prRead, run: prefetch},
		{op: opPrefetch16, usage: cdbUsage(opPrefetch16, append([]byte{0x02}, rw16...)...), access: prRead, run: prefetch},
		{op: opSyncCache10, usage: cdbUsage(opSyncCache10, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0), access: prWrite, run: syncCache},
		{op: opSyncCache16, usage: cdbUsage(opSyncCache16, append([]byte{0x02}, rw16...)...), access: prWrite, run: syncCache},
		{op: opUnmap, usage: cdbUsage(opUnmap, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0), access: prWrite,
			run: func(lu *LU, ctx context.Context, _ Nexus, cdb, out []byte) Result { return lu.unmap(ctx, cdb, out) }},
		{op: opWriteSame10, usage: cdbUsage(opWriteSame10, append([]byte{0x08}, rw10...)...), access: prWrite, run: writeSame},
		{op: opWriteSame16, usage: cdbUsage(opWriteSame16, append([]byte{0x09}, rw16...)...), access: prWrite, run: writeSame},
		{op: opCompareAndWrite, access: prWrite,
			usage: cdbUsage(opCompareAndWrite, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0),
			run: func(lu *LU, ctx context.Context, _ Nexus, cdb, out []byte) Result {
				return lu.compareAndWrite(ctx, cdb, out)
			}},
		{op: opORWrite16, usage: cdbUsage(opORWrite16, append([]byte{0x18}, rw16...)...), access: prWrite,
			run: func(lu *LU, ctx context.Context, _ Nexus, cdb, out []byte) Result { return lu.orWrite(ctx, cdb, out) }},
		{op: opReserve6, usage: cdbUsage(opReserve6, 0, 0, 0, 0, 0), pr: true, run: reserve},
		{op: opRelease6, usage: cdbUsage(opRelease6, 0, 0, 0, 0, 0), pr: true, spc2Allowed: true, run: release},
		{op: opReserve10, usage: cdbUsage(opReserve10, 0, 0, 0, 0, 0, 0, 0, 0, 0), pr: true, run: reserve},
		{op: opRelease10, usage: cdbUsage(opRelease10, 0, 0, 0, 0, 0, 0, 0, 0, 0), pr: true, spc2Allowed: true, run: release},
	}
	for sa := byte(saReadKeys); sa <= saReadFullStatus; sa++ {
		u := append([]byte(nil), prInUsage...)
		u[1] = sa
		commands = append(commands, command{op: opPersistentReserveIn, sa: uint16(sa), hasSA: true, pr: true, usage: u, run: prIn})
	}
	for sa := byte(saRegister); sa <= saRegisterAndMove; sa++ {
		u := append([]byte(nil), prOutUsage...)
		u[1] = sa
		commands = append(commands, command{op: opPersistentReserveOut, sa: uint16(sa), hasSA: true, pr: true, usage: u, run: prOut})
	}
}

// offered reports whether the LU runs c.
func (lu *LU) offered(c *command) bool { return !c.pr || lu.PR != nil }

// lookup finds the command of a CDB; the sense when there is none.
func (lu *LU) lookup(cdb []byte) (*command, *Sense) {
	known := false
	for i := range commands {
		c := &commands[i]
		if c.op != cdb[0] || !lu.offered(c) {
			continue
		}
		known = true
		if !c.hasSA || uint16(cdb[1]&0x1F) == c.sa {
			return c, nil
		}
	}
	if known { // the operation code is, its service action is not
		return nil, invalidCDB(1, 4)
	}
	return nil, senseOf(SenseIllegalRequest, ascInvalidOpcode)
}

// reportOpcodes answers REPORT SUPPORTED OPERATION CODES from the table.
func (lu *LU) reportOpcodes(cdb []byte) Result {
	rctd := cdb[2]&0x80 != 0
	reqOp, reqSA := cdb[3], uint16(be16(cdb[4:6]))
	alloc := int(be32(cdb[6:10]))
	timeouts := func(b []byte) []byte {
		if !rctd {
			return b
		}
		// Command timeouts descriptor: no nominal or recommended
		// timeout is specified.
		return append(b, 0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	switch opts := cdb[2] & 0x07; opts {
	case 0: // all commands
		b := make([]byte, 4)
		for i := range commands {
			c := &commands[i]
			if !lu.offered(c) {
				continue
			}
			d := make([]byte, 8)
			d[0] = c.op
			binary.BigEndian.PutUint16(d[2:4], c.sa)
			if c.hasSA {
				d[5] |= 0x01 // SERVACTV
			}
			if rctd {
				d[5] |= 0x02 // CTDP
			}
			binary.BigEndian.PutUint16(d[6:8], uint16(len(c.usage)))
			b = append(b, timeouts(d)...)
		}
		binary.BigEndian.PutUint32(b[0:4], uint32(len(b)-4))
		return good(clip(b, alloc))
	case 1, 2, 3: // one command: without, with, with or without a service action
		var found *command
		hasSA := false
		for i := range commands {
			c := &commands[i]
			if c.op != reqOp || !lu.offered(c) {
				continue
			}
			hasSA = c.hasSA
			if !c.hasSA || c.sa == reqSA {
				found = c
			}
		}
		if opts == 1 && hasSA || opts == 2 && found != nil && !hasSA {
			return check(invalidCDB(2, 2))
		}
		b := make([]byte, 4)
		if found == nil {
			b[1] = 0x01 // not supported
			return good(clip(b, alloc))
		}
		b[1] = 0x03 // supported as the standard says
		if rctd {
			b[1] |= 0x80 // CTDP
		}
		binary.BigEndian.PutUint16(b[2:4], uint16(len(found.usage)))
		b = timeouts(append(b, found.usage...))
		return good(clip(b, alloc))
	}
	return check(invalidCDB(2, 2))
}

// prefetch: the vdisk has no cache to fill; the range is checked.
func (lu *LU) prefetch(cdb []byte) Result {
	var lba, n uint64
	if cdb[0] == opPrefetch10 {
		lba, n = be32(cdb[2:6]), be16(cdb[7:9])
	} else {
		lba, n = be64(cdb[2:10]), be32(cdb[10:14])
	}
	if s := lu.inRange(lba, n); s != nil {
		return check(s)
	}
	return good(nil)
}
