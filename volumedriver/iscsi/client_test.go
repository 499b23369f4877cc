package iscsi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// testInitiator is a minimal iSCSI initiator over the PDU layer, for the
// target's tests: login (CHAP, digests), commands from many goroutines at
// once, Data-Out on R2T, task management, raw PDUs.
type testInitiator struct {
	t      *testing.T
	nc     net.Conn
	br     *bufio.Reader
	hd, dd bool
	name   string
	isid   [6]byte

	wmu sync.Mutex // writes

	mu       sync.Mutex
	window   *sync.Cond // on mu: maxCmdSN moved
	maxCmdSN uint32
	cmdSN    uint32
	itt      uint32
	waiters  map[uint32]chan *pdu
	maxData  int // the target's MaxRecvDataSegmentLength
	immData  bool
	firstBst int
	// other gets what answers no waiter: Reject, Async Message, stray
	// responses.
	other  chan *pdu
	closed chan struct{}
	err    error
}

type loginOpts struct {
	target       string // "" : discovery
	user, secret string
	mutualUser   string
	mutualSecret string
	// mutualChallenge overrides the challenge sent for mutual CHAP.
	mutualChallenge []byte
	// reflect sends the target's own challenge back for mutual CHAP.
	reflect      bool
	headerDigest bool
	dataDigest   bool
	noImmediate  bool
	maxR2T       int
	maxRecv      int // our MaxRecvDataSegmentLength (default 256 KiB)
	isid         [6]byte
	name         string
	// skipSecurity starts at the operational stage even with a user.
	skipSecurity bool
	authMethod   string // overrides AuthMethod offered
}

// loginStatusError is a login the target refused.
type loginStatusError struct{ status uint16 }

func (e *loginStatusError) Error() string { return fmt.Sprintf("login status 0x%04x", e.status) }

func dialInitiator(t *testing.T, addr string, o loginOpts) (*testInitiator, error) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if o.name == "" {
		o.name = "iqn.2026-11.org.test:initiator"
	}
	if o.isid == ([6]byte{}) {
		o.isid = [6]byte{0x80, 0, 0, 0, 0, 1}
	}
	in := &testInitiator{t: t, nc: nc, br: bufio.NewReader(nc), name: o.name, isid: o.isid, itt: 1,
		waiters: map[uint32]chan *pdu{}, other: make(chan *pdu, 64), closed: make(chan struct{}),
		maxData: defaultMaxData, immData: !o.noImmediate, firstBst: 65536}
	in.window = sync.NewCond(&in.mu)
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	if err := in.login(o); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	in.hd, in.dd = o.headerDigest, o.dataDigest
	go in.readLoop()
	return in, nil
}

// loginPDU sends one Login Request and returns the response's keys.
func (in *testInitiator) loginPDU(csg, nsg int, transit bool, pairs ...kv) (map[string]string, *pdu, error) {
	p := &pdu{data: appendText(nil, pairs...)}
	p.bhs[0] = opLoginReq | 0x40
	p.bhs[1] = byte(csg)<<2 | byte(nsg)
	if transit {
		p.bhs[1] |= 0x80
	}
	copy(p.bhs[8:14], in.isid[:])
	p.putU32(16, in.itt)
	p.putU32(24, in.cmdSN)
	if _, err := in.nc.Write(appendPDU(nil, p, false, false)); err != nil {
		return nil, nil, err
	}
	r, err := readPDU(in.br, false, false, 1<<20)
	if err != nil {
		return nil, nil, err
	}
	if r.opcode() != opLoginResp {
		return nil, nil, fmt.Errorf("opcode 0x%x in login", r.opcode())
	}
	if st := binary.BigEndian.Uint16(r.bhs[36:38]); st != 0 {
		return nil, r, &loginStatusError{st}
	}
	got, err := parseText(r.data)
	if err != nil {
		return nil, nil, err
	}
	m := map[string]string{}
	for _, kv := range got {
		m[kv.key] = kv.value
	}
	return m, r, nil
}

func (in *testInitiator) login(o loginOpts) error {
	names := []kv{{"InitiatorName", o.name}}
	if o.target == "" {
		names = append(names, kv{"SessionType", "Discovery"})
	} else {
		names = append(names, kv{"TargetName", o.target}, kv{"SessionType", "Normal"})
	}
	if o.user != "" && !o.skipSecurity || o.authMethod != "" {
		am := o.authMethod
		if am == "" {
			am = "CHAP,None"
		}
		m, r, err := in.loginPDU(loginStageSec, loginStageOp, true, append(names, kv{"AuthMethod", am})...)
		if err != nil {
			return err
		}
		names = nil
		if m["AuthMethod"] == "CHAP" {
			if r.bhs[1]&0x80 != 0 {
				return errors.New("target transits before CHAP")
			}
			m, _, err = in.loginPDU(loginStageSec, loginStageOp, false, kv{"CHAP_A", "5"})
			if err != nil {
				return err
			}
			id, _ := strconv.Atoi(m["CHAP_I"])
			challenge, err := decodeBinary(m["CHAP_C"], 1024)
			if err != nil {
				return fmt.Errorf("target's CHAP_C %q: %w", m["CHAP_C"], err)
			}
			resp := chapResponse(byte(id), o.secret, challenge)
			pairs := []kv{{"CHAP_N", o.user}, {"CHAP_R", encodeHex(resp[:])}}
			mc := o.mutualChallenge
			if o.mutualUser != "" && mc == nil {
				mc = []byte("0123456789abcdef")
			}
			if o.reflect {
				mc = challenge
			}
			if mc != nil {
				pairs = append(pairs, kv{"CHAP_I", "7"}, kv{"CHAP_C", encodeHex(mc)})
			}
			m, r, err = in.loginPDU(loginStageSec, loginStageOp, true, pairs...)
			if err != nil {
				return err
			}
			if r.bhs[1]&0x80 == 0 {
				return errors.New("target does not transit after CHAP")
			}
			if mc != nil {
				want := chapResponse(7, o.mutualSecret, mc)
				got, err := decodeBinary(m["CHAP_R"], 64)
				if err != nil || m["CHAP_N"] != o.mutualUser || string(got) != string(want[:]) {
					return fmt.Errorf("target failed mutual CHAP: N=%q R=%q", m["CHAP_N"], m["CHAP_R"])
				}
			}
		}
	}
	digest := func(on bool) string {
		if on {
			return "CRC32C,None"
		}
		return "None"
	}
	imm := "Yes"
	if o.noImmediate {
		imm = "No"
	}
	maxR2T := max(o.maxR2T, 1)
	maxRecv := o.maxRecv
	if maxRecv == 0 {
		maxRecv = 262144
	}
	ops := append(names,
		kv{"HeaderDigest", digest(o.headerDigest)}, kv{"DataDigest", digest(o.dataDigest)},
		kv{"MaxRecvDataSegmentLength", strconv.Itoa(maxRecv)}, kv{"ImmediateData", imm}, kv{"InitialR2T", "Yes"},
		kv{"MaxOutstandingR2T", strconv.Itoa(maxR2T)}, kv{"MaxBurstLength", "262144"},
		kv{"FirstBurstLength", "65536"}, kv{"ErrorRecoveryLevel", "0"})
	m, r, err := in.loginPDU(loginStageOp, loginStageFull, true, ops...)
	if err != nil {
		return err
	}
	if r.bhs[1]&0x80 == 0 || r.bhs[1]&0x03 != loginStageFull {
		return errors.New("target did not enter the full feature phase")
	}
	if o.headerDigest && m["HeaderDigest"] != "CRC32C" || o.dataDigest && m["DataDigest"] != "CRC32C" {
		return fmt.Errorf("digests not agreed: %v", m)
	}
	if v, err := strconv.Atoi(m["MaxRecvDataSegmentLength"]); err == nil {
		in.maxData = v
	}
	in.immData = m["ImmediateData"] == "Yes"
	in.cmdSN = r.u32(28) // ExpCmdSN
	in.maxCmdSN = r.u32(32)
	in.itt = 100
	return nil
}

func (in *testInitiator) readLoop() {
	defer close(in.closed)
	for {
		p, err := readPDU(in.br, in.hd, in.dd, 1<<24)
		if err != nil {
			in.mu.Lock()
			in.err = err
			in.window.Broadcast()
			for _, w := range in.waiters {
				close(w)
			}
			in.waiters = map[uint32]chan *pdu{}
			in.mu.Unlock()
			return
		}
		in.mu.Lock()
		w := in.waiters[p.itt()]
		if m := p.u32(32); int32(m-in.maxCmdSN) > 0 {
			in.maxCmdSN = m
			in.window.Broadcast()
		}
		in.mu.Unlock()
		if w != nil && p.itt() != reservedTag {
			w <- p
		} else {
			select {
			case in.other <- p:
			default:
			}
		}
	}
}

// newTask allocates an ITT with a channel for its PDUs and, unless
// immediate, a CmdSN, waiting for the target's window to take it.
func (in *testInitiator) newTask(immediate bool) (itt, cmdSN uint32, ch chan *pdu) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for !immediate && int32(in.cmdSN-in.maxCmdSN) > 0 && in.err == nil {
		in.window.Wait()
	}
	in.itt++
	itt = in.itt
	cmdSN = in.cmdSN
	if !immediate {
		in.cmdSN++
	}
	ch = make(chan *pdu, 1024)
	in.waiters[itt] = ch
	return itt, cmdSN, ch
}

func (in *testInitiator) done(itt uint32) {
	in.mu.Lock()
	delete(in.waiters, itt)
	in.mu.Unlock()
}

func (in *testInitiator) send(p *pdu) error {
	in.wmu.Lock()
	defer in.wmu.Unlock()
	_, err := in.nc.Write(appendPDU(nil, p, in.hd, in.dd))
	return err
}

// sendRaw writes bytes as they are (a corrupted PDU).
func (in *testInitiator) sendRaw(b []byte) error {
	in.wmu.Lock()
	defer in.wmu.Unlock()
	_, err := in.nc.Write(b)
	return err
}

// scsiResult is a command's outcome.
type scsiResult struct {
	status byte
	data   []byte
	sense  []byte
	// rflags are the O and U bits of the status (overflow 0x04,
	// underflow 0x02), residual the residual count.
	rflags   byte
	residual uint32
}

// cmdPDU builds a SCSI Command PDU.
func (in *testInitiator) cmdPDU(itt, cmdSN uint32, cdb []byte, out []byte, readLen int) *pdu {
	p := &pdu{}
	p.bhs[0] = opSCSICommand
	p.bhs[1] = 0x80 | 0x01 // final, SIMPLE
	edtl := readLen
	if out != nil {
		p.bhs[1] |= 0x20
		edtl = len(out)
		if in.immData {
			p.data = out[:min(len(out), in.firstBst, in.maxData)]
		}
	}
	if readLen > 0 {
		p.bhs[1] |= 0x40
	}
	p.putU32(16, itt)
	p.putU32(20, uint32(edtl))
	p.putU32(24, cmdSN)
	copy(p.bhs[32:48], cdb)
	return p
}

// command runs one SCSI command: out is its Data-Out (sent as immediate
// data and on R2Ts), readLen what it reads.
func (in *testInitiator) command(cdb []byte, out []byte, readLen int) (scsiResult, error) {
	itt, cmdSN, ch := in.newTask(false)
	defer in.done(itt)
	if err := in.send(in.cmdPDU(itt, cmdSN, cdb, out, readLen)); err != nil {
		return scsiResult{}, err
	}
	return in.await(itt, ch, out)
}

// await collects the answers to command itt: Data-In, R2Ts (answered
// from out), the response.
func (in *testInitiator) await(itt uint32, ch chan *pdu, out []byte) (scsiResult, error) {
	var res scsiResult
	for {
		var p *pdu
		var ok bool
		select {
		case p, ok = <-ch:
		case <-time.After(30 * time.Second):
			return res, errors.New("no answer in 30 s")
		}
		if !ok {
			return res, fmt.Errorf("connection ended: %v", in.err)
		}
		switch p.opcode() {
		case opDataIn:
			off := int(p.u32(40))
			if need := off + len(p.data); need > len(res.data) {
				res.data = append(res.data, make([]byte, need-len(res.data))...)
			}
			copy(res.data[off:], p.data)
			if p.bhs[1]&0x01 != 0 {
				res.status = p.bhs[3]
				res.rflags, res.residual = p.bhs[1]&0x06, p.u32(44)
				return res, nil
			}
		case opR2T:
			if err := in.dataOut(itt, p.u32(20), out, int(p.u32(40)), int(p.u32(44))); err != nil {
				return res, err
			}
		case opSCSIResponse:
			res.status = p.bhs[3]
			res.rflags, res.residual = p.bhs[1]&0x06, p.u32(44)
			if len(p.data) >= 2 {
				n := int(binary.BigEndian.Uint16(p.data))
				res.sense = p.data[2:min(len(p.data), 2+n)]
			}
			return res, nil
		default:
			return res, fmt.Errorf("opcode 0x%x for a command", p.opcode())
		}
	}
}

// dataOut answers an R2T: Data-Out PDUs of at most maxData bytes.
func (in *testInitiator) dataOut(itt, ttt uint32, out []byte, off, n int) error {
	var sn uint32
	for done := 0; done < n; {
		k := min(n-done, in.maxData)
		d := &pdu{data: out[off+done : off+done+k]}
		d.bhs[0] = opDataOut
		if done+k == n {
			d.bhs[1] = 0x80
		}
		d.putU32(16, itt)
		d.putU32(20, ttt)
		d.putU32(36, sn)
		d.putU32(40, uint32(off+done))
		if err := in.send(d); err != nil {
			return err
		}
		sn++
		done += k
	}
	return nil
}

// tmf sends a task management request (immediate) and returns its
// response code.
func (in *testInitiator) tmf(fn byte, refITT, refCmdSN uint32) (byte, error) {
	itt, cmdSN, ch := in.newTask(true)
	defer in.done(itt)
	p := &pdu{}
	p.bhs[0] = opTaskMgmtReq | 0x40
	p.bhs[1] = 0x80 | fn
	p.putU32(16, itt)
	p.putU32(20, refITT)
	p.putU32(24, cmdSN)
	p.putU32(32, refCmdSN)
	if err := in.send(p); err != nil {
		return 0, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return 0, fmt.Errorf("connection ended: %v", in.err)
		}
		if r.opcode() != opTaskMgmtResp {
			return 0, fmt.Errorf("opcode 0x%x for a TMF", r.opcode())
		}
		return r.bhs[2], nil
	case <-time.After(30 * time.Second):
		return 0, errors.New("no TMF response in 30 s")
	}
}

// ping sends a NOP-Out and waits for its NOP-In: every answer the
// target queued before it has been read by then.
func (in *testInitiator) ping() error {
	itt, cmdSN, ch := in.newTask(true)
	defer in.done(itt)
	p := &pdu{data: []byte("ping")}
	p.bhs[0] = opNOPOut | 0x40
	p.bhs[1] = 0x80
	p.putU32(16, itt)
	p.putU32(20, reservedTag)
	p.putU32(24, cmdSN)
	if err := in.send(p); err != nil {
		return err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("connection ended: %v", in.err)
		}
		if r.opcode() != opNOPIn || string(r.data) != "ping" {
			return fmt.Errorf("ping answered by opcode 0x%x %q", r.opcode(), r.data)
		}
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("no NOP-In in 30 s")
	}
}

// logout logs out and waits for the response.
func (in *testInitiator) logout() error {
	itt, cmdSN, ch := in.newTask(true)
	defer in.done(itt)
	p := &pdu{}
	p.bhs[0] = opLogoutReq | 0x40
	p.bhs[1] = 0x80
	p.putU32(16, itt)
	p.putU32(24, cmdSN)
	if err := in.send(p); err != nil {
		return err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("connection ended: %v", in.err)
		}
		if r.opcode() != opLogoutResp || r.bhs[2] != 0 {
			return fmt.Errorf("logout answered by opcode 0x%x response %d", r.opcode(), r.bhs[2])
		}
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("no logout response in 30 s")
	}
}

// text sends a Text Request and gathers the (possibly continued) answer.
func (in *testInitiator) text(pairs ...kv) ([]kv, error) {
	var all []byte
	ttt := uint32(reservedTag)
	data := appendText(nil, pairs...)
	for {
		itt, cmdSN, ch := in.newTask(true)
		p := &pdu{data: data}
		p.bhs[0] = opTextReq | 0x40
		p.bhs[1] = 0x80
		p.putU32(16, itt)
		p.putU32(20, ttt)
		p.putU32(24, cmdSN)
		if err := in.send(p); err != nil {
			return nil, err
		}
		var r *pdu
		var ok bool
		select {
		case r, ok = <-ch:
		case <-time.After(30 * time.Second):
			return nil, errors.New("no text response in 30 s")
		}
		in.done(itt)
		if !ok {
			return nil, fmt.Errorf("connection ended: %v", in.err)
		}
		all = append(all, r.data...)
		if r.bhs[1]&0x80 != 0 {
			// Split here: parseText caps the pairs of one request.
			var out []kv
			for _, f := range bytes.Split(bytes.TrimRight(all, "\x00"), []byte{0}) {
				k, v, ok := bytes.Cut(f, []byte("="))
				if !ok {
					return nil, fmt.Errorf("text %q", f)
				}
				out = append(out, kv{string(k), string(v)})
			}
			return out, nil
		}
		ttt, data = r.u32(20), nil
	}
}

// waitClosed waits for the target to close the connection.
func (in *testInitiator) waitClosed(t *testing.T) {
	t.Helper()
	select {
	case <-in.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the target did not close the connection")
	}
}

// cdb helpers.
func read10(lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = 0x28
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

func write10(lba uint32, blocks uint16) []byte {
	c := read10(lba, blocks)
	c[0] = 0x2A
	return c
}
