package scsi

import (
	"context"
	"encoding/binary"
	"errors"
)

// PERSISTENT RESERVE IN service actions.
const (
	saReadKeys        = 0x00
	saReadReservation = 0x01
	saReportCaps      = 0x02
	saReadFullStatus  = 0x03
)

// PERSISTENT RESERVE OUT service actions.
const (
	saRegister            = 0x00
	saReserve             = 0x01
	saRelease             = 0x02
	saClear               = 0x03
	saPreempt             = 0x04
	saPreemptAndAbort     = 0x05
	saRegisterIgnore      = 0x06
	saRegisterAndMove     = 0x07
	prScopeLU             = 0x0
	protocolISCSI         = 0x5
	transportIDWithISID   = 0x40 // FORMAT CODE 01b: name ",i,0x" ISID
	minTransportIDLength  = 24
	maxTransportIDLength  = 4 + 224 // iSCSI names are at most 223 bytes
	prOutBasicParamLength = 24
)

var ascInvalidRelease = [2]byte{0x26, 0x04} // INVALID RELEASE OF PERSISTENT RESERVATION

func conflict() Result { return Result{Status: StatusReservationConflict} }

// prStoreFailure is the sense of a PERSISTENT RESERVE command that could
// not reach the store: the initiator retries an aborted command.
func prStoreFailure(err error) Result {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return check(senseOf(SenseAbortedCommand, [2]byte{0x00, 0x00}))
	}
	return check(senseOf(SenseAbortedCommand, ascInternalFailure))
}

// persistentReserveIn answers READ KEYS, READ RESERVATION, REPORT
// CAPABILITIES and READ FULL STATUS from the stored state.
func (lu *LU) persistentReserveIn(ctx context.Context, _ Nexus, cdb []byte) Result {
	alloc := int(be16(cdb[7:9]))
	sa := cdb[1] & 0x1F
	if sa == saReportCaps {
		return good(clip(reportCapabilities(), alloc))
	}
	s, err := lu.PR.current(ctx)
	if err != nil {
		return prStoreFailure(err)
	}
	return good(clip(s.readIn(sa), alloc))
}

// reportCapabilities: every type, ALL_TG_PT, and persistence through
// power loss, which is always on (the state is in the cluster's KV).
func reportCapabilities() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:2], 8)
	b[2] = 0x04 | 0x01 // ATP_C, PTPL_C
	b[3] = 0x80 | 0x01 // TMV (the type mask is valid), PTPL_A
	b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02
	b[5] = 0x01
	return b
}

// readIn builds the parameter data of READ KEYS, READ RESERVATION or READ
// FULL STATUS (before the allocation length cuts it).
func (s *prState) readIn(sa uint8) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:4], s.Generation)
	switch sa {
	case saReadKeys:
		for _, r := range s.Regs {
			b = binary.BigEndian.AppendUint64(b, r.Key)
		}
	case saReadReservation:
		if s.Res != nil {
			key, _ := s.holderKey()
			d := make([]byte, 16)
			binary.BigEndian.PutUint64(d[0:8], key)
			d[13] = prScopeLU<<4 | s.Res.Type
			b = append(b, d...)
		}
	case saReadFullStatus:
		for _, r := range s.Regs {
			tid := transportID(r.Initiator)
			d := make([]byte, 24, 24+len(tid))
			binary.BigEndian.PutUint64(d[0:8], r.Key)
			if r.AllTgPt {
				d[12] |= 0x02
			}
			if s.heldBy(r) {
				d[12] |= 0x01
				d[13] = prScopeLU<<4 | s.Res.Type
			}
			binary.BigEndian.PutUint16(d[18:20], r.RelPort)
			binary.BigEndian.PutUint32(d[20:24], uint32(len(tid)))
			b = append(append(b, d...), tid...)
		}
	}
	binary.BigEndian.PutUint32(b[4:8], uint32(len(b)-8))
	return b
}

// transportID is the iSCSI TransportID of an initiator port (SPC-5
// 7.6.4.6): its name ",i,0x" ISID, NUL-terminated and padded to a
// multiple of 4.
func transportID(port string) []byte {
	n := max(len(port)+1, minTransportIDLength-4)
	n = (n + 3) &^ 3
	b := make([]byte, 4+n)
	b[0] = transportIDWithISID | protocolISCSI
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
	copy(b[4:], port)
	return b
}

// parseTransportID returns the initiator port of an iSCSI TransportID
// with an ISID.
func parseTransportID(b []byte) (string, bool) {
	if len(b) < minTransportIDLength || b[0] != transportIDWithISID|protocolISCSI {
		return "", false
	}
	n := int(be16(b[2:4]))
	if n%4 != 0 || 4+n > len(b) {
		return "", false
	}
	name := b[4 : 4+n]
	end := 0
	for end < len(name) && name[end] != 0 {
		end++
	}
	if end == len(name) || end == 0 {
		return "", false
	}
	return string(name[:end]), true
}

// prOut is one PERSISTENT RESERVE OUT, decoded.
type prOut struct {
	sa    uint8
	scope uint8
	typ   uint8
	key   uint64 // RESERVATION KEY
	sark  uint64 // SERVICE ACTION RESERVATION KEY
	all   bool   // ALL_TG_PT
	unreg bool   // REGISTER AND MOVE: UNREG
	// REGISTER AND MOVE's destination I_T nexus.
	moveTo   string
	moveRTPI uint16
}

// parsePROut decodes the CDB and the parameter list.
func parsePROut(cdb, out []byte) (prOut, *Sense) {
	p := prOut{sa: cdb[1] & 0x1F, scope: cdb[2] >> 4, typ: cdb[2] & 0x0F}
	if p.sa > saRegisterAndMove {
		return p, invalidCDB(1, 4)
	}
	plen := int(be32(cdb[5:9]))
	if p.sa != saRegisterAndMove && plen != prOutBasicParamLength ||
		p.sa == saRegisterAndMove && plen < prOutBasicParamLength+minTransportIDLength ||
		len(out) < plen {
		return p, senseOf(SenseIllegalRequest, ascParamListLength)
	}
	p.key, p.sark = be64(out[0:8]), be64(out[8:16])
	if p.sa == saRegisterAndMove {
		p.unreg = out[17]&0x02 != 0
		p.moveRTPI = uint16(be16(out[18:20]))
		tlen := int(be32(out[20:24]))
		if tlen < minTransportIDLength || 24+tlen > plen {
			return p, senseOf(SenseIllegalRequest, ascParamListLength)
		}
		port, ok := parseTransportID(out[24 : 24+tlen])
		if !ok {
			return p, invalidParam(24)
		}
		p.moveTo = port
		return p, nil
	}
	if out[20]&0x08 != 0 { // SPEC_I_PT: not supported (SIP_C 0)
		s := invalidParam(20)
		s.BitValid, s.Bit = true, 3
		return p, s
	}
	p.all = out[20]&0x04 != 0
	// APTPL (out[20] bit 0) is accepted either way: the state always
	// persists.
	return p, nil
}

// persistentReserveOut runs a service action against the stored state.
func (lu *LU) persistentReserveOut(ctx context.Context, nx Nexus, cdb, out []byte) Result {
	p, s := parsePROut(cdb, out)
	if s != nil {
		return check(s)
	}
	res, err := lu.PR.update(ctx, func(st *prState) (Result, bool) { return st.apply(nx, p) })
	if err != nil {
		return prStoreFailure(err)
	}
	return res
}

// checkScopeType refuses a scope other than the LU or an unknown type.
func (p prOut) checkScopeType() *Sense {
	if p.scope != prScopeLU {
		return invalidCDB(2, 7)
	}
	if !validPRType(p.typ) {
		return invalidCDB(2, 3)
	}
	return nil
}

// apply runs service action p from nx on s (SPC-5 5.14): the result, and
// whether s changed.
func (s *prState) apply(nx Nexus, p prOut) (Result, bool) {
	i := s.find(nx)
	switch p.sa {
	case saRegister, saRegisterIgnore:
		if i < 0 {
			if p.sa == saRegister && p.key != 0 {
				return conflict(), false
			}
			if p.sark == 0 {
				return good(nil), false
			}
			s.Regs = append(s.Regs, prReg{Key: p.sark, Initiator: nx.InitiatorPort, Target: nx.TargetPort,
				AllTgPt: p.all, RelPort: nx.RelativePort})
		} else {
			if p.sa == saRegister && p.key != s.Regs[i].Key {
				return conflict(), false
			}
			if p.sark == 0 {
				s.unregister(i)
			} else {
				s.Regs[i].Key = p.sark
			}
		}
		s.Generation++
		return good(nil), true
	}
	// Every other service action needs a registered I_T nexus and its key.
	if i < 0 || p.key != s.Regs[i].Key {
		return conflict(), false
	}
	switch p.sa {
	case saReserve:
		if sense := p.checkScopeType(); sense != nil {
			return check(sense), false
		}
		switch {
		case s.Res == nil:
			s.Res = &prRes{Type: p.typ, Initiator: nx.InitiatorPort, Target: nx.TargetPort}
			if allRegistrants(p.typ) {
				s.Res.Initiator, s.Res.Target = "", ""
			}
			return good(nil), true
		case s.holds(nx) && s.Res.Type == p.typ:
			return good(nil), false
		}
		return conflict(), false
	case saRelease:
		if !s.holds(nx) {
			return good(nil), false
		}
		if p.scope != prScopeLU || p.typ != s.Res.Type {
			return check(senseOf(SenseIllegalRequest, ascInvalidRelease)), false
		}
		s.Res = nil
		return good(nil), true
	case saClear:
		s.Regs, s.Res = nil, nil
		s.Generation++
		return good(nil), true
	case saPreempt, saPreemptAndAbort:
		// Commands run to completion one at a time per session, so
		// PREEMPT AND ABORT has no task of the preempted to abort.
		return s.preempt(nx, p)
	case saRegisterAndMove:
		return s.registerAndMove(nx, p)
	}
	return check(invalidCDB(1, 4)), false
}

// removeKey drops every registration with key except nx's; it returns
// how many went.
func (s *prState) removeKey(nx Nexus, key uint64) int {
	n := 0
	for j := 0; j < len(s.Regs); {
		if r := s.Regs[j]; r.Key == key && !r.matches(nx) {
			s.unregister(j)
			n++
			continue
		}
		j++
	}
	return n
}

// preempt: SPC-5 5.14.11.4.
func (s *prState) preempt(nx Nexus, p prOut) (Result, bool) {
	if sense := p.checkScopeType(); sense != nil {
		return check(sense), false
	}
	newRes := &prRes{Type: p.typ, Initiator: nx.InitiatorPort, Target: nx.TargetPort}
	if allRegistrants(p.typ) {
		newRes.Initiator, newRes.Target = "", ""
	}
	if s.Res != nil && allRegistrants(s.Res.Type) {
		if p.sark == 0 {
			// Every other registrant goes; nx takes a new reservation.
			mine := s.Regs[s.find(nx)]
			s.Regs = []prReg{mine}
			s.Res = newRes
		} else {
			// Registrations with the key go; the reservation stays with
			// the others.
			if s.removeKey(nx, p.sark) == 0 {
				return conflict(), false
			}
		}
		s.Generation++
		return good(nil), true
	}
	if hk, ok := s.holderKey(); ok && hk == p.sark {
		s.Res = nil
		s.removeKey(nx, p.sark)
		s.Res = newRes
		s.Generation++
		return good(nil), true
	}
	if p.sark == 0 {
		return check(invalidParam(8)), false
	}
	if s.removeKey(nx, p.sark) == 0 {
		return conflict(), false
	}
	s.Generation++
	return good(nil), true
}

// registerAndMove registers the destination I_T nexus with the service
// action key and moves nx's reservation to it (SPC-5 5.14.8).
func (s *prState) registerAndMove(nx Nexus, p prOut) (Result, bool) {
	if s.Res == nil || !s.holds(nx) || allRegistrants(s.Res.Type) {
		return conflict(), false
	}
	if sense := p.checkScopeType(); sense != nil {
		return check(sense), false
	}
	if p.sark == 0 {
		return check(invalidParam(8)), false
	}
	// The destination target port, from its relative port identifier:
	// this one, or one a registration was made through.
	target := ""
	if p.moveRTPI == nx.RelativePort {
		target = nx.TargetPort
	} else {
		for _, r := range s.Regs {
			if r.RelPort == p.moveRTPI && !r.AllTgPt {
				target = r.Target
				break
			}
		}
	}
	if target == "" {
		return check(invalidParam(18)), false
	}
	dest := Nexus{InitiatorPort: p.moveTo, TargetPort: target, RelativePort: p.moveRTPI}
	if samePort(dest.InitiatorPort, nx.InitiatorPort) && samePort(dest.TargetPort, nx.TargetPort) {
		return check(invalidParam(24)), false
	}
	if j := s.find(dest); j >= 0 {
		s.Regs[j].Key = p.sark
	} else {
		s.Regs = append(s.Regs, prReg{Key: p.sark, Initiator: dest.InitiatorPort, Target: dest.TargetPort,
			RelPort: dest.RelativePort})
	}
	s.Res = &prRes{Type: p.typ, Initiator: dest.InitiatorPort, Target: dest.TargetPort}
	if p.unreg {
		s.unregister(s.find(nx))
	}
	s.Generation++
	return good(nil), true
}
