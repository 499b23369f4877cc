package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// Login response status (RFC 7143 11.13.5): class << 8 | detail.
const (
	loginOK              = 0x0000
	loginInitiatorError  = 0x0200
	loginAuthFailed      = 0x0201
	loginNotFound        = 0x0203
	loginBadVersion      = 0x0205
	loginTooManyConns    = 0x0206
	loginMissingParam    = 0x0207
	loginNoSession       = 0x020A
	loginTargetError     = 0x0300
	loginOutOfResources  = 0x0302
	minSecretLen         = 12 // RFC 7143 12.1.3: at least 96 bits
	chapChallengeLen     = 16
	maxPeerChallengeLen  = 1024
	chapAlgorithmMD5     = "5"
	authNone, authCHAP   = "None", "CHAP"
	chapNone, chapSent   = 0, 1 // CHAP steps: nothing yet, challenge sent
	chapDone             = 2    // the initiator proved its secret
	tpgt                 = "1"
	maxInitiatorNameLen  = 223 // RFC 7143 4.2.7.1
	loginDeclaredMaxData = "MaxRecvDataSegmentLength"
)

// loginError ends a login with a status for the initiator.
type loginError struct {
	status uint16
	msg    string
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login refused (status 0x%04x): %s", e.status, e.msg)
}

func refuse(status uint16, format string, args ...any) *loginError {
	return &loginError{status: status, msg: fmt.Sprintf(format, args...)}
}

// loginState is the login phase of a connection (RFC 7143 6).
type loginState struct {
	c         *conn
	ctx       context.Context
	started   bool
	initiator string
	stage     int // the current stage (CSG)
	cont      []byte

	chap       CHAP
	auth       string // the method agreed: "", authNone or authCHAP
	chapStep   int
	chapID     byte
	challenge  []byte
	sentTPGT   bool
	sentMaxRDS bool
}

// login runs the login phase up to the full feature phase.
func (c *conn) login() error {
	ctx := c.ctx
	if to := c.srv.opts.LoginTimeout; to > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, to)
		defer cancel()
	}
	l := &loginState{c: c, ctx: ctx}
	for {
		p, err := readPDU(c.br, false, false, loginMaxData)
		if err != nil {
			return err
		}
		if p.opcode() != opLoginReq {
			return fmt.Errorf("%w: opcode 0x%02x before login", errProtocol, p.opcode())
		}
		reply, final, transit, err := l.step(p)
		status := uint16(loginOK)
		var le *loginError
		if errors.As(err, &le) {
			status = le.status
		} else if err != nil {
			return err
		}
		resp := &pdu{data: appendText(nil, reply...)}
		resp.bhs[0] = opLoginResp
		if status == loginOK {
			csg, nsg := p.bhs[1]>>2&0x03, p.bhs[1]&0x03
			resp.bhs[1] = csg << 2
			if transit {
				resp.bhs[1] |= 0x80 | nsg
			}
		}
		copy(resp.bhs[8:14], c.isid[:])
		if final {
			binary.BigEndian.PutUint16(resp.bhs[14:16], c.tsih)
		}
		resp.putU32(16, p.itt())
		resp.bhs[36], resp.bhs[37] = byte(status>>8), byte(status)
		c.stamp(resp, true)
		if _, err := writePDU(c.bw, resp, false, false, nil); err != nil {
			return err
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
		if le != nil {
			if le.status == loginAuthFailed {
				c.log.Warn("iscsi: login refused", "initiator", l.initiator, "target", c.target, "reason", le.msg)
			}
			return le
		}
		if final {
			c.log.Info("iscsi: logged in", "initiator", l.initiator, "target", c.target, "discovery", c.discovery,
				"tsih", c.tsih, "auth", l.auth, "header_digest", c.headerDigest, "data_digest", c.dataDigest)
			return nil
		}
	}
}

// step takes one Login Request and returns the keys to answer, whether
// the login is complete (final) and whether the target transits to the
// stage asked (transit).
func (l *loginState) step(p *pdu) (reply []kv, final, transit bool, err error) {
	c := l.c
	flags := p.bhs[1]
	wantTransit, cont := flags&0x80 != 0, flags&0x40 != 0
	csg, nsg := int(flags>>2&0x03), int(flags&0x03)
	var isid [6]byte
	copy(isid[:], p.bhs[8:14])
	if !l.started {
		c.isid = isid
		if p.bhs[3] > 0 { // VersionMin
			return nil, false, false, refuse(loginBadVersion, "version %d and up", p.bhs[3])
		}
	} else if isid != c.isid {
		return nil, false, false, refuse(loginInitiatorError, "ISID changed during login")
	}
	c.mu.Lock()
	c.expCmdSN = p.u32(24)
	c.mu.Unlock()
	c.statSN = p.u32(28)
	if len(l.cont)+len(p.data) > loginMaxData {
		return nil, false, false, refuse(loginOutOfResources, "login text over %d bytes", loginMaxData)
	}
	l.cont = append(l.cont, p.data...)
	if cont {
		// More text follows: an empty answer asks for it (RFC 7143 6.1).
		return nil, false, false, nil
	}
	text := l.cont
	l.cont = nil
	pairs, perr := parseText(text)
	if perr != nil {
		return nil, false, false, refuse(loginInitiatorError, "%v", perr)
	}
	if !l.started {
		if err := l.begin(pairs, binary.BigEndian.Uint16(p.bhs[14:16])); err != nil {
			return nil, false, false, err
		}
		l.started = true
	}
	if csg != loginStageSec && csg != loginStageOp || csg < l.stage {
		return nil, false, false, refuse(loginInitiatorError, "login stage %d after %d", csg, l.stage)
	}
	l.stage = csg
	if wantTransit && !(nsg == loginStageOp && csg == loginStageSec || nsg == loginStageFull) {
		return nil, false, false, refuse(loginInitiatorError, "transit from stage %d to %d", csg, nsg)
	}
	if csg == loginStageSec {
		r, err := l.security(pairs)
		if err != nil {
			return nil, false, false, err
		}
		reply = append(reply, r...)
	} else if !l.authenticated() {
		return nil, false, false, refuse(loginAuthFailed, "operational stage without authentication")
	}
	if err := l.open(); err != nil {
		return nil, false, false, err
	}
	reply = append(reply, c.negotiate(pairs)...)
	transit = wantTransit
	if csg == loginStageSec && transit && !l.authenticated() {
		if l.chapRequired() && l.auth == "" {
			return nil, false, false, refuse(loginAuthFailed, "CHAP required, no AuthMethod offered")
		}
		transit = false // CHAP under way
	}
	if !l.sentTPGT && !c.discovery {
		reply = append(reply, kv{"TargetPortalGroupTag", tpgt})
		l.sentTPGT = true
	}
	if !l.sentMaxRDS && (csg == loginStageOp || transit && nsg == loginStageFull) {
		reply = append(reply, kv{loginDeclaredMaxData, strconv.Itoa(ourMaxRecvData)})
		l.sentMaxRDS = true
	}
	if transit && nsg == loginStageFull {
		if !c.discovery && c.lu == nil {
			return nil, false, false, refuse(loginAuthFailed, "full feature phase without authentication")
		}
		if err := l.finish(); err != nil {
			return nil, false, false, err
		}
		final = true
	}
	return reply, final, transit, nil
}

// begin takes the first request's keys: who logs in, to what, and what
// authentication that target asks.
func (l *loginState) begin(pairs []kv, tsih uint16) error {
	c := l.c
	params := map[string]string{}
	for _, p := range pairs {
		params[p.key] = p.value
	}
	l.initiator = params["InitiatorName"]
	if l.initiator == "" {
		return refuse(loginMissingParam, "no InitiatorName")
	}
	if len(l.initiator) > maxInitiatorNameLen {
		return refuse(loginInitiatorError, "InitiatorName of %d bytes", len(l.initiator))
	}
	switch params["SessionType"] {
	case sessionDiscovery:
		c.discovery = true
	case "", "Normal":
		tn := params["TargetName"]
		if tn == "" {
			return refuse(loginMissingParam, "no TargetName")
		}
		name, ok := strings.CutPrefix(tn, c.srv.opts.BaseIQN+":")
		if !ok || name == "" {
			return refuse(loginNotFound, "no target %q", tn)
		}
		c.target = name // opened once the initiator has authenticated
	default:
		return refuse(loginInitiatorError, "SessionType %q", params["SessionType"])
	}
	if tsih != 0 {
		// A connection added to a session: MaxConnections is 1.
		if c.srv.hasSession(tsih) {
			return refuse(loginTooManyConns, "MaxConnections is 1")
		}
		return refuse(loginNoSession, "no session with TSIH %d", tsih)
	}
	cfg, err := c.srv.targets.CHAP(l.ctx, c.target)
	if err != nil {
		c.log.Warn("iscsi: login: the target's CHAP secrets cannot be read", "target", c.target, "err", err)
		return refuse(loginTargetError, "CHAP configuration: %v", err)
	}
	l.chap = cfg
	if cfg.User != "" && len(cfg.Secret) < minSecretLen {
		c.log.Warn("iscsi: CHAP secret shorter than RFC 7143's 12 bytes", "target", c.target)
	}
	if cfg.MutualSecret != "" && len(cfg.MutualSecret) < minSecretLen {
		c.log.Warn("iscsi: mutual CHAP secret shorter than RFC 7143's 12 bytes", "target", c.target)
	}
	return l.open()
}

// open opens the target's LU once the initiator has authenticated (or
// needs not): an initiator without the secret opens no vdisk.
func (l *loginState) open() error {
	c := l.c
	if c.discovery || c.lu != nil || !l.authenticated() {
		return nil
	}
	lu, release, err := c.srv.targets.OpenLU(l.ctx, c.target)
	if err != nil {
		c.log.Debug("iscsi: login to a target that cannot be opened", "target", c.target, "err", err)
		return refuse(loginNotFound, "target %q: %v", c.srv.IQN(c.target), err)
	}
	c.lu, c.release = lu, release
	// Resets before the login are none of this session's business.
	if n, err := lu.ResetCount(l.ctx, true); err == nil {
		c.seenResets = n
	}
	return nil
}

func (l *loginState) chapRequired() bool { return l.chap.User != "" }

// authenticated: the security stage is passed (or needs nothing).
func (l *loginState) authenticated() bool {
	if l.auth == authCHAP {
		return l.chapStep == chapDone
	}
	return !l.chapRequired()
}

// security serves the keys of the security stage: AuthMethod, then
// CHAP (RFC 7143 12.1.3): CHAP_A from the initiator, CHAP_I and CHAP_C
// from the target, CHAP_N and CHAP_R (and, for mutual CHAP, CHAP_I and
// CHAP_C) from the initiator, CHAP_N and CHAP_R of the target last.
func (l *loginState) security(pairs []kv) ([]kv, error) {
	var reply []kv
	got := map[string]string{}
	for _, p := range pairs {
		got[p.key] = p.value
	}
	if m, ok := got["AuthMethod"]; ok && l.auth == "" {
		switch {
		case l.chapRequired() && containsValue(m, authCHAP):
			l.auth = authCHAP
		case l.chapRequired():
			return nil, refuse(loginAuthFailed, "CHAP required, AuthMethod %q offered", m)
		case containsValue(m, authNone):
			l.auth = authNone
		default:
			return nil, refuse(loginAuthFailed, "AuthMethod %q offered, none configured", m)
		}
		reply = append(reply, kv{"AuthMethod", l.auth})
	}
	if a, ok := got["CHAP_A"]; ok {
		if l.auth != authCHAP || l.chapStep != chapNone {
			return nil, refuse(loginInitiatorError, "CHAP_A out of turn")
		}
		if !containsValue(a, chapAlgorithmMD5) {
			return nil, refuse(loginAuthFailed, "CHAP algorithms %q: only MD5 (5)", a)
		}
		id, challenge, err := newChallenge()
		if err != nil {
			return nil, refuse(loginTargetError, "CHAP challenge: %v", err)
		}
		l.chapID, l.challenge, l.chapStep = id, challenge, chapSent
		reply = append(reply, kv{"CHAP_A", chapAlgorithmMD5}, kv{"CHAP_I", strconv.Itoa(int(id))},
			kv{"CHAP_C", encodeHex(challenge)})
	}
	if r, ok := got["CHAP_R"]; ok {
		if l.auth != authCHAP || l.chapStep != chapSent {
			return nil, refuse(loginInitiatorError, "CHAP_R out of turn")
		}
		if err := l.checkResponse(got["CHAP_N"], r); err != nil {
			return nil, err
		}
		l.chapStep = chapDone
		mutual, err := l.mutual(got)
		if err != nil {
			return nil, err
		}
		reply = append(reply, mutual...)
	} else if l.auth == authCHAP && l.chapStep == chapSent {
		if _, ok := got["CHAP_N"]; ok {
			return nil, refuse(loginAuthFailed, "CHAP_N without CHAP_R")
		}
	}
	return reply, nil
}

// checkResponse verifies the initiator's CHAP_N and CHAP_R.
func (l *loginState) checkResponse(name, response string) error {
	r, err := decodeBinary(response, 64)
	if err != nil {
		return refuse(loginAuthFailed, "CHAP_R: %v", err)
	}
	want := chapResponse(l.chapID, l.chap.Secret, l.challenge)
	// Both compared in constant time: nothing tells which was wrong.
	userOK := constantTimeEqual([]byte(name), []byte(l.chap.User))
	respOK := constantTimeEqual(r, want[:])
	if !userOK || !respOK {
		return refuse(loginAuthFailed, "CHAP: wrong user or secret")
	}
	return nil
}

// mutual answers an initiator that asks the target to authenticate too
// (its CHAP_I and CHAP_C): CHAP_N and CHAP_R from the mutual secret.
func (l *loginState) mutual(got map[string]string) ([]kv, error) {
	idS, hasI := got["CHAP_I"]
	cS, hasC := got["CHAP_C"]
	if !hasI && !hasC {
		return nil, nil
	}
	if !hasI || !hasC {
		return nil, refuse(loginAuthFailed, "mutual CHAP needs both CHAP_I and CHAP_C")
	}
	if l.chap.MutualUser == "" || l.chap.MutualSecret == "" {
		return nil, refuse(loginAuthFailed, "mutual CHAP asked, the target has no mutual secret")
	}
	if l.chap.MutualSecret == l.chap.Secret {
		// RFC 7143 12.1.3: a secret for one direction must not serve
		// the other (a reflection attack would need no secret at all).
		return nil, refuse(loginAuthFailed, "mutual CHAP secret equals the initiator's secret")
	}
	id, err := parseNumber(idS)
	if err != nil || id > 255 {
		return nil, refuse(loginAuthFailed, "CHAP_I %q", idS)
	}
	challenge, err := decodeBinary(cS, maxPeerChallengeLen)
	if err != nil || len(challenge) == 0 {
		return nil, refuse(loginAuthFailed, "CHAP_C: %v", err)
	}
	if constantTimeEqual(challenge, l.challenge) {
		return nil, refuse(loginAuthFailed, "CHAP_C reflects the target's challenge")
	}
	r := chapResponse(byte(id), l.chap.MutualSecret, challenge)
	return []kv{{"CHAP_N", l.chap.MutualUser}, {"CHAP_R", encodeHex(r[:])}}, nil
}

// finish enters the full feature phase: the session gets its TSIH and
// replaces (reinstates) an older session of the same initiator port.
func (l *loginState) finish() error {
	c := l.c
	c.tsih = c.srv.nextTSIH()
	c.key = sessionKey{initiator: l.initiator, isid: c.isid, target: c.target, discovery: c.discovery}
	if old := c.srv.register(c); old != nil {
		c.log.Info("iscsi: session reinstated: the old one ends", "initiator", l.initiator, "target", c.target,
			"old_tsih", old.tsih)
		old.Close()
		select {
		case <-old.done:
		case <-l.ctx.Done():
			return refuse(loginTargetError, "the session reinstated did not end in time")
		}
	}
	c.nexus = scsi.Nexus{InitiatorName: l.initiator,
		InitiatorPort: fmt.Sprintf("%s,i,0x%x", l.initiator, c.isid[:]),
		TargetPort:    c.srv.IQN(c.target) + ",t,0x" + tpgt, RelativePort: 1}
	return nil
}

func containsValue(list, v string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == v {
			return true
		}
	}
	return false
}

// parseNumber reads a numerical value: decimal, or hex with 0x (RFC
// 7143 6.1).
func parseNumber(s string) (uint64, error) {
	if h, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		return strconv.ParseUint(h, 16, 64)
	}
	return strconv.ParseUint(s, 10, 64)
}

// negotiate answers the operational keys of a login request (RFC 7143
// 13) and applies them.
func (c *conn) negotiate(pairs []kv) []kv {
	var out []kv
	num := func(v string, def int) int {
		n, err := parseNumber(v)
		if err != nil || n > 1<<24 {
			return def
		}
		return int(n)
	}
	for _, p := range pairs {
		switch p.key {
		case "HeaderDigest", "DataDigest":
			// The first value of the initiator's list this target takes.
			choice := "Reject"
			for _, v := range strings.Split(p.value, ",") {
				if v == "CRC32C" || v == "None" {
					choice = v
					break
				}
			}
			if p.key == "HeaderDigest" {
				c.headerDigest = choice == "CRC32C"
			} else {
				c.dataDigest = choice == "CRC32C"
			}
			out = append(out, kv{p.key, choice})
		case "MaxRecvDataSegmentLength":
			// Declarative: ours is sent once on its own.
			c.theirMaxData = max(512, min(num(p.value, defaultMaxData), 1<<24-1))
		case "MaxBurstLength":
			c.maxBurst = max(512, min(num(p.value, ourMaxBurst), ourMaxBurst))
			c.firstBurst = min(c.firstBurst, c.maxBurst)
			out = append(out, kv{p.key, strconv.Itoa(c.maxBurst)})
		case "FirstBurstLength":
			c.firstBurst = max(512, min(num(p.value, ourFirstBurst), ourFirstBurst, c.maxBurst))
			out = append(out, kv{p.key, strconv.Itoa(c.firstBurst)})
		case "MaxOutstandingR2T":
			c.maxR2T = max(1, min(num(p.value, 1), ourMaxR2T))
			out = append(out, kv{p.key, strconv.Itoa(c.maxR2T)})
		case "InitialR2T":
			out = append(out, kv{p.key, "Yes"}) // OR: unsolicited Data-Out is not taken
		case "ImmediateData":
			c.immediate = p.value == "Yes"
			out = append(out, kv{p.key, map[bool]string{true: "Yes", false: "No"}[c.immediate]})
		case "MaxConnections":
			out = append(out, kv{p.key, "1"})
		case "DataPDUInOrder", "DataSequenceInOrder":
			out = append(out, kv{p.key, "Yes"})
		case "ErrorRecoveryLevel":
			out = append(out, kv{p.key, "0"})
		case "DefaultTime2Wait":
			out = append(out, kv{p.key, strconv.Itoa(min(num(p.value, 2), 3600))}) // max(theirs, 0)
		case "DefaultTime2Retain":
			out = append(out, kv{p.key, "0"}) // min(theirs, 0)
		case "IFMarker", "OFMarker":
			out = append(out, kv{p.key, "No"})
		case "InitiatorName", "InitiatorAlias", "TargetName", "SessionType", "AuthMethod",
			"CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R":
		default:
			out = append(out, kv{p.key, "NotUnderstood"})
		}
	}
	return out
}
