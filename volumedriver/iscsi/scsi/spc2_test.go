package scsi

import (
	"context"
	"testing"
)

// spc2Step is one command (or, with do, an event of the transport) and
// the status it must get; lu picks which of two LUs of the vdisk (two
// sessions' LUs sharing one Reservations) runs it.
type spc2Step struct {
	nx   Nexus
	lu   int
	cdb  []byte
	out  []byte
	want Status
	asc  uint8 // for CHECK CONDITION
	do   func(lu *LU)
}

var (
	reserve6CDB  = []byte{opReserve6, 0, 0, 0, 0, 0}
	release6CDB  = []byte{opRelease6, 0, 0, 0, 0, 0}
	reserve10CDB = []byte{opReserve10, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	release10CDB = []byte{opRelease10, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	turCDB       = []byte{opTestUnitReady, 0, 0, 0, 0, 0}
	inquiryCDB   = []byte{opInquiry, 0, 0, 0, 96, 0}
	modeSenseCDB = []byte{opModeSense6, 0, 0x3F, 0, 255, 0}
)

func TestSPC2Reservations(t *testing.T) {
	block := make([]byte, BlockSize)
	read := cdb10(opRead10, 0, 0, 1)
	write := cdb10(opWrite10, 0, 0, 1)
	regB, regBOut := prOutCDB(saRegisterIgnore, 0, 0, 2, 0)
	resB, resBOut := prOutCDB(saReserve, prWriteExclusive, 2, 0, 0)
	regA, regAOut := prOutCDB(saRegisterIgnore, 0, 0, 1, 0)
	for _, tc := range []struct {
		name  string
		steps []spc2Step
	}{
		{"held by one nexus, through every LU of the vdisk", []spc2Step{
			{nx: nxA, cdb: reserve6CDB, want: sGood},
			{nx: nxA, cdb: reserve6CDB, want: sGood}, // again: still its own
			{nx: nxB, lu: 1, cdb: reserve6CDB, want: sConflict},
			{nx: nxB, cdb: reserve10CDB, want: sConflict},
			{nx: nxB, lu: 1, cdb: read, want: sConflict},
			{nx: nxB, lu: 1, cdb: write, out: block, want: sConflict},
			{nx: nxB, lu: 1, cdb: modeSenseCDB, want: sConflict},
			{nx: nxB, lu: 1, cdb: turCDB, want: sConflict},
			{nx: nxA2, cdb: read, want: sConflict}, // the same initiator through another target port
			{nx: nxB, lu: 1, cdb: inquiryCDB, want: sGood},
			{nx: nxB, lu: 1, cdb: []byte{opReportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}, want: sGood},
			{nx: nxB, lu: 1, cdb: []byte{opRequestSense, 0, 0, 0, 18, 0}, want: sGood},
			{nx: nxB, lu: 1, cdb: release6CDB, want: sGood}, // not the holder: nothing happens
			{nx: nxB, lu: 1, cdb: read, want: sConflict},
			{nx: nxA, lu: 1, cdb: read, want: sGood},
			{nx: nxA, cdb: write, out: block, want: sGood},
			{nx: nxA, cdb: release10CDB, want: sGood},
			{nx: nxB, lu: 1, cdb: reserve10CDB, want: sGood},
			{nx: nxA, cdb: read, want: sConflict},
			{nx: nxB, lu: 1, cdb: release6CDB, want: sGood},
			{nx: nxA, cdb: read, want: sGood},
		}},
		{"released on the holder's nexus loss only", []spc2Step{
			{nx: nxA, cdb: reserve6CDB, want: sGood},
			{do: func(lu *LU) { lu.NexusLost(nxB) }},
			{nx: nxB, lu: 1, cdb: reserve6CDB, want: sConflict},
			{do: func(lu *LU) { lu.NexusLost(nxA) }},
			{nx: nxB, lu: 1, cdb: reserve6CDB, want: sGood},
			{nx: nxA, cdb: read, want: sConflict},
		}},
		{"released by a reset", []spc2Step{
			{nx: nxA, cdb: reserve6CDB, want: sGood},
			{do: func(lu *LU) { lu.Reset(context.Background()) }},
			{nx: nxB, lu: 1, cdb: reserve6CDB, want: sGood},
		}},
		{"keeps PERSISTENT RESERVE out, even the holder's (SPC-2 5.5.1)", []spc2Step{
			{nx: nxA, cdb: reserve6CDB, want: sGood},
			{nx: nxB, cdb: regB, out: regBOut, want: sConflict},
			{nx: nxB, cdb: prInCDB(saReadKeys), want: sConflict},
			{nx: nxA, cdb: regA, out: regAOut, want: sConflict},
			{nx: nxA, cdb: prInCDB(saReadKeys), want: sConflict},
			{nx: nxA, cdb: release6CDB, want: sGood},
			{nx: nxB, cdb: regB, out: regBOut, want: sGood},
		}},
		{"under persistent reservations (SPC-4 5.13.3)", []spc2Step{
			{nx: nxB, cdb: regB, out: regBOut, want: sGood},
			{nx: nxA, cdb: reserve6CDB, want: sConflict},    // not registered
			{nx: nxB, cdb: reserve6CDB, want: sConflict},    // registered, no reservation held
			{nx: nxB, cdb: release6CDB, want: sConflict},    // likewise
			{nx: nxB, cdb: resB, out: resBOut, want: sGood}, // B holds WRITE EXCLUSIVE
			{nx: nxB, cdb: reserve6CDB, want: sGood},        // the holder: no effect
			{nx: nxA, cdb: read, want: sGood},               // so no SPC-2 reservation of B
			{nx: nxA, cdb: regA, out: regAOut, want: sGood},
			{nx: nxA, cdb: reserve10CDB, want: sConflict}, // registered, not the holder
			{nx: nxB, cdb: release10CDB, want: sGood},     // no effect on the PR either
			{nx: nxA, cdb: write, out: block, want: sConflict},
		}},
		{"extents and third parties are refused", []spc2Step{
			{nx: nxA, cdb: []byte{opReserve6, 0x01, 0, 0, 0, 0}, want: sCheck, asc: 0x24},
			{nx: nxA, cdb: []byte{opRelease6, 0x01, 0, 0, 0, 0}, want: sCheck, asc: 0x24},
			{nx: nxA, cdb: []byte{opReserve10, 0x10, 0, 0, 0, 0, 0, 0, 0, 0}, want: sCheck, asc: 0x24},
			{nx: nxA, cdb: []byte{opReserve10, 0x02, 0, 0, 0, 0, 0, 0, 0, 0}, want: sCheck, asc: 0x24},
			{nx: nxB, cdb: reserve6CDB, want: sGood}, // nothing was reserved
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			lu0, _ := newLU()
			lu0.PR = NewReservations(&MemPRStore{})
			lus := []*LU{lu0, {Dev: lu0.Dev, PR: lu0.PR}}
			for i, s := range tc.steps {
				if s.do != nil {
					s.do(lus[s.lu])
					continue
				}
				r := lus[s.lu].Execute(ctx, s.nx, s.cdb, s.out)
				if r.Status != s.want || s.want == sCheck && r.Sense.ASC != s.asc {
					t.Fatalf("step %d (op 0x%02x from %s): %+v, want status 0x%x asc 0x%02x",
						i, s.cdb[0], s.nx.InitiatorPort, r, s.want, s.asc)
				}
			}
		})
	}
	// Without PR (no shared state to keep it in), RESERVE is not offered.
	lu, _ := newLU()
	wantSense(t, lu.Execute(context.Background(), nxA, reserve6CDB, nil), SenseIllegalRequest, 0x20)
}
