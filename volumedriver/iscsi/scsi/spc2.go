package scsi

import "context"

// SPC-2 RESERVE and RELEASE (6- and 10-byte): a reservation of the whole
// LU by one I_T nexus. Commands from other nexuses then meet RESERVATION
// CONFLICT, but for the few SPC-2 5.5.1 lets through (the table's
// spc2Allowed). It is released by RELEASE from its holder, by the loss of
// the holder's nexus (LU.NexusLost) and by a LUN or target reset
// (LU.Reset). The state is node-local: see localState.
const (
	opReserve6  = 0x16
	opRelease6  = 0x17
	opReserve10 = 0x56
	opRelease10 = 0x57
)

// spc2Reserve runs RESERVE (6) and (10).
func (lu *LU) spc2Reserve(ctx context.Context, nx Nexus, cdb []byte) Result {
	if s := spc2Fields(cdb); s != nil {
		return check(s)
	}
	if r, done := lu.spc2UnderPR(ctx, nx); done {
		return r
	}
	l := lu.local()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spc2 != nil && !sameNexus(*l.spc2, nx) {
		return conflict()
	}
	holder := nx
	l.spc2 = &holder
	return good(nil)
}

// spc2Release runs RELEASE (6) and (10). From another nexus than the
// holder's, or with no reservation, it does nothing and succeeds (SPC-2
// 7.17).
func (lu *LU) spc2Release(ctx context.Context, nx Nexus, cdb []byte) Result {
	if s := spc2Fields(cdb); s != nil {
		return check(s)
	}
	if r, done := lu.spc2UnderPR(ctx, nx); done {
		return r
	}
	l := lu.local()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spc2 != nil && sameNexus(*l.spc2, nx) {
		l.spc2 = nil
	}
	return good(nil)
}

// spc2Fields refuses what is not supported: extent reservations (the
// obsolete bit 0 of RESERVE/RELEASE (6)) and third-party reservations
// (3RDPTY, LONGID of the 10-byte forms).
func spc2Fields(cdb []byte) *Sense {
	switch cdb[0] {
	case opReserve6, opRelease6:
		if cdb[1]&0x01 != 0 {
			return invalidCDB(1, 0)
		}
	default:
		if cdb[1]&0x10 != 0 {
			return invalidCDB(1, 4)
		}
		if cdb[1]&0x02 != 0 {
			return invalidCDB(1, 1)
		}
	}
	return nil
}

// spc2UnderPR applies SPC-4 5.13.3 (exceptions to SPC-2 RESERVE and
// RELEASE behaviour): while any I_T nexus is registered for persistent
// reservations, RESERVE and RELEASE succeed without effect for the
// holder of the persistent reservation (or a registrant, for the
// registrants-only and all-registrants types), and meet RESERVATION
// CONFLICT for everyone else. done: r is the outcome.
func (lu *LU) spc2UnderPR(ctx context.Context, nx Nexus) (r Result, done bool) {
	s, err := lu.PR.current(ctx)
	if err != nil {
		return prStoreFailure(err), true
	}
	if len(s.Regs) == 0 {
		return Result{}, false
	}
	if s.holds(nx) || s.Res != nil && registrantsAccess(s.Res.Type) && s.find(nx) >= 0 {
		return good(nil), true
	}
	return conflict(), true
}
