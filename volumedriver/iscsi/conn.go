package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// Negotiated limits (this target's side) and protocol constants.
const (
	ourMaxRecvData = 256 << 10
	loginMaxData   = 64 << 10
	defaultMaxData = 8192 // RFC 7143 default MaxRecvDataSegmentLength
	ourMaxBurst    = 1 << 20
	ourFirstBurst  = 64 << 10
	// ourMaxR2T is the R2Ts a write may have outstanding at once
	// (MaxOutstandingR2T, at most what the initiator offers).
	ourMaxR2T = 4
	// cmdWindow is the commands a session may have in flight: MaxCmdSN
	// stays ExpCmdSN+cmdWindow-1 less the commands running.
	cmdWindow = 32
	// maxImmediateTasks caps immediate commands (outside the window).
	maxImmediateTasks = 8
	maxCmdData        = 32 << 20 // the largest command data either way (scsi's transfer limit)
	// writeBudget caps the write buffers a session holds at once,
	// readBudget the read buffers (a single larger one still passes
	// alone); the LU allocates no more for a read than its EDTL.
	writeBudget      = 64 << 20
	readBudget       = 64 << 20
	reservedTag      = 0xFFFFFFFF
	loginStageSec    = 0
	loginStageOp     = 1
	loginStageFull   = 3
	sessionDiscovery = "Discovery"
	// logoutWait is Parameter3 of the Async Message asking a logout on
	// Shutdown: the initiator must log out within it, or is dropped.
	logoutWait = 5 * time.Second
	outQueue   = 256
)

// conn is one TCP connection and (ErrorRecoveryLevel 0, MaxConnections 1)
// its session. One goroutine reads PDUs, one writes them; every SCSI
// command runs in a goroutine of its own.
type conn struct {
	srv    *Server
	nc     net.Conn
	ctx    context.Context // cancelled when the connection is torn down
	cancel context.CancelFunc
	log    *slog.Logger
	br     *bufio.Reader
	// bw is written by the login alone, then by the writer goroutine.
	bw   *bufio.Writer
	done chan struct{} // closed when Serve has returned

	draining    atomic.Bool // Shutdown: log out
	inFFP       atomic.Bool // logged in
	logoutAsked sync.Once

	// Set by the login, read-only after it.
	discovery    bool
	target       string
	key          sessionKey
	nexus        scsi.Nexus
	lu           *scsi.LU
	release      func()
	theirMaxData int // what we may send in one PDU
	maxBurst     int
	firstBurst   int
	maxR2T       int
	immediate    bool
	headerDigest bool
	dataDigest   bool
	isid         [6]byte
	tsih         uint16

	// statSN: the login's, then the writer's alone.
	statSN     uint32
	out        chan outPDU
	writerDone chan struct{}

	// Reader's alone: a text response sent in pieces (SendTargets of
	// many targets), and a text request arriving in pieces.
	textRest []byte
	textTTT  uint32
	textReq  []byte

	mu       sync.Mutex
	expCmdSN uint32
	running  int              // commands taken in CmdSN order and not answered
	immTasks int              // immediate commands running
	pending  map[uint32]*pdu  // commands ahead of ExpCmdSN, by CmdSN; skipPDU: a CmdSN taken without a command
	tasks    map[uint32]*task // by ITT
	nextTTT  uint32
	budget   byteBudget // write buffers
	inBudget byteBudget // read buffers
	// unitAttention is the nexus's pending unit attention (a reset).
	unitAttention *scsi.Sense
	// seenResets is the vdisk's reset count (scsi.LU.ResetCount) this
	// session has reported: a larger count is a reset through another
	// node, reported as a unit attention.
	seenResets uint64
	tasksDone  sync.WaitGroup // task and task management goroutines
}

// skipPDU marks a CmdSN in pending that is taken without running a
// command (a task aborted before it arrived, a non-command PDU).
var skipPDU = &pdu{}

// outPDU is a PDU for the writer. status: it carries status (StatSN
// advances). last: the connection ends once it is written (logout).
// written, if not nil, is closed once it is flushed.
type outPDU struct {
	p       *pdu
	status  bool
	last    bool
	written chan struct{}
}

func newConn(ctx context.Context, s *Server, nc net.Conn) *conn {
	cctx, cancel := context.WithCancel(ctx)
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	c := &conn{srv: s, nc: nc, ctx: cctx, cancel: cancel,
		log: s.log.With("remote", remote),
		br:  bufio.NewReaderSize(nc, 256<<10), bw: bufio.NewWriterSize(nc, 256<<10),
		done: make(chan struct{}), out: make(chan outPDU, outQueue), writerDone: make(chan struct{}),
		pending: map[uint32]*pdu{}, tasks: map[uint32]*task{},
		theirMaxData: defaultMaxData, maxBurst: 256 << 10, firstBurst: ourFirstBurst, maxR2T: 1, immediate: true,
	}
	c.budget.max = writeBudget
	c.inBudget.max = readBudget
	return c
}

// Serve runs the connection to its end.
func (c *conn) Serve() {
	defer close(c.done)
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer func() {
		stop()
		c.cancel()
		c.nc.Close()
		c.tasksDone.Wait()
		if c.lu != nil {
			// Logout, connection loss and reinstatement (which
			// waits for this) all end the I_T nexus: the LU drops
			// what it held for it (an SPC-2 reservation).
			c.lu.NexusLost(c.nexus)
		}
		if c.key != (sessionKey{}) {
			c.srv.unregister(c)
		}
		if c.release != nil {
			c.release()
		}
	}()
	if to := c.srv.opts.LoginTimeout; to > 0 {
		c.nc.SetDeadline(time.Now().Add(to))
	}
	if c.draining.Load() {
		return
	}
	if err := c.login(); err != nil {
		level := connsrv.HandshakeEndLevel(c.ctx, err)
		c.log.Log(context.Background(), level, "iscsi: login ended", "err", err)
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.inFFP.Store(true)
	go c.writer()
	if c.draining.Load() {
		c.askLogout()
	}
	err := c.readLoop()
	switch {
	case err == nil: // logged out: the writer ends after the response
		select {
		case <-c.writerDone:
		case <-c.ctx.Done():
		}
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil:
		c.log.Debug("iscsi: connection ended", "err", err)
	default:
		c.log.Info("iscsi: connection ended", "err", err)
	}
}

// Drain asks the connection to end gracefully: one still logging in is
// closed; a session is asked to log out and dropped if it has not within
// logoutWait.
func (c *conn) Drain() {
	c.draining.Store(true)
	if c.inFFP.Load() {
		c.askLogout()
		return
	}
	// Still logging in: the login's read ends at once.
	c.nc.SetReadDeadline(time.Now())
}

// Close tears the connection down at once.
func (c *conn) Close() {
	c.cancel()
	c.nc.Close()
}

// askLogout sends the Async Message asking the initiator to log out
// (AsyncEvent 1), once, and drops the connection if it has not logged
// out in time.
func (c *conn) askLogout() {
	c.logoutAsked.Do(func() {
		p := &pdu{}
		p.bhs[0], p.bhs[1] = opAsyncMsg, 0x80
		p.putU32(16, reservedTag)
		p.bhs[36] = 1 // target requests logout
		binary.BigEndian.PutUint16(p.bhs[42:44], uint16(logoutWait/time.Second))
		go func() {
			if c.send(p, true) != nil {
				return
			}
			t := time.NewTimer(logoutWait + time.Second)
			defer t.Stop()
			select {
			case <-t.C:
				c.log.Info("iscsi: initiator did not log out in time; closing")
				c.Close()
			case <-c.ctx.Done():
			case <-c.writerDone:
			}
		}()
	})
}

// send queues p for the writer.
func (c *conn) send(p *pdu, status bool) error { return c.sendCtx(c.ctx, p, status) }

// sendCtx queues p for the writer unless ctx (a task's: it may be
// aborted while the writer is stuck) ends first.
func (c *conn) sendCtx(ctx context.Context, p *pdu, status bool) error {
	select {
	case c.out <- outPDU{p: p, status: status}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendLast queues p as the connection's last PDU.
func (c *conn) sendLast(p *pdu) {
	select {
	case c.out <- outPDU{p: p, status: true, last: true}:
	case <-c.ctx.Done():
	}
}

// writer writes the queued PDUs in order, stamping StatSN in send order
// and the current ExpCmdSN/MaxCmdSN, and flushes when the queue is empty.
func (c *conn) writer() {
	defer close(c.writerDone)
	var scratch []byte
	for {
		var o outPDU
		select {
		case o = <-c.out:
		case <-c.ctx.Done():
			return
		}
		c.stamp(o.p, o.status)
		var err error
		scratch, err = writePDU(c.bw, o.p, c.headerDigest, c.dataDigest, scratch)
		if err == nil && (o.last || o.written != nil || len(c.out) == 0) {
			err = c.bw.Flush()
		}
		if err != nil {
			if c.ctx.Err() == nil {
				c.log.Debug("iscsi: write failed; closing connection", "err", err)
			}
			c.cancel()
			return
		}
		if o.written != nil {
			close(o.written)
		}
		if o.last {
			return
		}
	}
}

// stamp fills the StatSN/ExpCmdSN/MaxCmdSN fields (24..36) every
// target PDU has.
func (c *conn) stamp(p *pdu, status bool) {
	p.putU32(24, c.statSN)
	if status {
		c.statSN++
	}
	c.mu.Lock()
	exp, maxSN := c.expCmdSN, c.maxCmdSN()
	c.mu.Unlock()
	p.putU32(28, exp)
	p.putU32(32, maxSN)
}

// maxCmdSN: the window closes by the commands running, so that the
// initiator cannot have more than cmdWindow in flight. c.mu held.
func (c *conn) maxCmdSN() uint32 {
	return c.expCmdSN + uint32(cmdWindow-c.running) - 1
}

// inWindow: sn is in [ExpCmdSN, MaxCmdSN] (serial number arithmetic).
// c.mu held.
func (c *conn) inWindow(sn uint32) bool {
	return sn-c.expCmdSN < uint32(cmdWindow-c.running)
}

// readLoop serves the full feature phase until logout (nil) or an error.
func (c *conn) readLoop() error {
	for {
		p, err := readPDU(c.br, c.headerDigest, c.dataDigest, ourMaxRecvData)
		if errors.Is(err, errDataDigest) {
			if err := c.dataDigestError(p); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		done, err := c.handle(p)
		if err != nil || done {
			return err
		}
	}
}

// handle serves one PDU of the full feature phase; done: logged out.
func (c *conn) handle(p *pdu) (done bool, err error) {
	switch p.opcode() {
	case opSCSICommand:
		if c.lu == nil {
			return false, fmt.Errorf("%w: a SCSI command in a discovery session", errProtocol)
		}
		c.command(p)
		return false, nil
	case opDataOut:
		return false, c.dataOut(p, false)
	case opNOPOut:
		c.takeCmdSN(p)
		if p.itt() == reservedTag {
			return false, nil // a reply to our NOP-In, or a ping asking none
		}
		r := &pdu{data: p.data}
		r.bhs[0], r.bhs[1] = opNOPIn, 0x80
		copy(r.bhs[8:16], p.bhs[8:16])
		r.putU32(16, p.itt())
		r.putU32(20, reservedTag)
		return false, c.send(r, true)
	case opTextReq:
		c.takeCmdSN(p)
		return false, c.text(p)
	case opTaskMgmtReq:
		c.takeCmdSN(p)
		c.taskMgmt(p)
		return false, nil
	case opLogoutReq:
		c.takeCmdSN(p)
		c.logout(p)
		return true, nil
	case opSNACK:
		return false, c.reject(p, rejectProtocolError) // ErrorRecoveryLevel 0: no SNACK
	}
	return false, c.reject(p, rejectNotSupported)
}

// Reject reasons (RFC 7143 11.17.1).
const (
	rejectDataDigest     = 0x02
	rejectProtocolError  = 0x04
	rejectNotSupported   = 0x05
	rejectTooManyImm     = 0x06
	rejectTaskInProgress = 0x07
)

// reject answers a PDU this target does not take (RFC 7143 11.17).
func (c *conn) reject(p *pdu, reason byte) error {
	r := &pdu{data: append([]byte(nil), p.bhs[:]...)}
	r.bhs[0], r.bhs[1], r.bhs[2] = opReject, 0x80, reason
	r.putU32(16, reservedTag)
	return c.send(r, true)
}

// dataDigestError handles a PDU whose data segment failed its digest
// (RFC 7143 7.8): it is rejected; a Data-Out still counts for its
// command, which ends with CHECK CONDITION (ErrorRecoveryLevel 0 has no
// recovery R2T); any other PDU is discarded (a command's CmdSN is not
// taken, so that the initiator may send it again).
func (c *conn) dataDigestError(p *pdu) error {
	c.log.Warn("iscsi: data digest error", "opcode", p.opcode(), "itt", p.itt())
	if err := c.reject(p, rejectDataDigest); err != nil {
		return err
	}
	if p.opcode() == opDataOut {
		return c.dataOut(p, true)
	}
	return nil
}

// takeCmdSN accounts the CmdSN of a non-command PDU that is not
// immediate: it advances ExpCmdSN like a command would (or is noted
// ahead of it), but the PDU is served at once.
func (c *conn) takeCmdSN(p *pdu) {
	if p.immediate() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	sn := p.u32(24)
	if !c.inWindow(sn) {
		return
	}
	if sn != c.expCmdSN {
		if _, ok := c.pending[sn]; !ok {
			c.pending[sn] = skipPDU
		}
		return
	}
	c.expCmdSN++
	c.deliverPending()
}

// logout answers a Logout Request (RFC 7143 11.14): the tasks still
// waiting for data are aborted, those running finish, then the response
// goes out and the connection ends.
func (c *conn) logout(p *pdu) {
	c.mu.Lock()
	for _, t := range c.tasks {
		if !t.executing && !t.responded {
			t.aborted = true
			t.cancel()
		}
	}
	c.mu.Unlock()
	r := &pdu{}
	r.bhs[0], r.bhs[1] = opLogoutResp, 0x80
	r.putU32(16, p.itt())
	if reason := p.bhs[1] & 0x7F; reason == 2 {
		r.bhs[2] = 2 // connection recovery is not supported (ErrorRecoveryLevel 0)
	}
	go func() {
		c.tasksDone.Wait()
		c.sendLast(r)
	}()
	c.log.Debug("iscsi: logout", "initiator", c.nexus.InitiatorName, "target", c.target)
}

// text answers a Text Request: SendTargets, sent in pieces when it does
// not fit in one PDU (RFC 7143 6.1, 11.10).
func (c *conn) text(p *pdu) error {
	cont := p.bhs[1]&0x40 != 0
	if ttt := p.u32(20); ttt != reservedTag && ttt == c.textTTT && len(c.textRest) > 0 {
		return c.sendText(p, nil)
	}
	c.textRest = nil
	if len(c.textReq)+len(p.data) > loginMaxData {
		return fmt.Errorf("%w: text request over %d bytes", errProtocol, loginMaxData)
	}
	c.textReq = append(c.textReq, p.data...)
	if cont {
		// More of the request follows: an empty answer asks for it.
		c.textTTT++
		r := &pdu{}
		r.bhs[0] = opTextResp
		r.putU32(16, p.itt())
		r.putU32(20, c.textTTT)
		return c.send(r, true)
	}
	req := c.textReq
	c.textReq = nil
	pairs, err := parseText(req)
	if err != nil {
		return err
	}
	var reply []kv
	for _, kv0 := range pairs {
		if kv0.key != "SendTargets" {
			reply = append(reply, kv{kv0.key, "NotUnderstood"})
			continue
		}
		names, err := c.srv.targets.ListTargets(c.ctx)
		if err != nil {
			c.log.Warn("iscsi: SendTargets: listing the targets failed", "err", err)
			continue
		}
		addr := c.srv.opts.Portal
		if addr == "" {
			addr = c.nc.LocalAddr().String() + ",1"
		}
		for _, n := range names {
			iqn := c.srv.IQN(n)
			switch {
			case kv0.value == "All" && c.discovery:
			case kv0.value == iqn:
			case kv0.value == "" && !c.discovery && n == c.target:
			default:
				continue
			}
			reply = append(reply, kv{"TargetName", iqn}, kv{"TargetAddress", addr})
		}
	}
	return c.sendText(p, appendText(nil, reply...))
}

// sendText sends data (nil: the rest of the last answer) in a Text
// Response, continued (C bit) when it does not fit.
func (c *conn) sendText(p *pdu, data []byte) error {
	if data == nil {
		data = c.textRest
	}
	r := &pdu{}
	r.bhs[0] = opTextResp
	r.putU32(16, p.itt())
	if len(data) > c.theirMaxData {
		c.textRest = data[c.theirMaxData:]
		data = data[:c.theirMaxData]
		c.textTTT++
		if c.textTTT == reservedTag {
			c.textTTT = 1
		}
		r.bhs[1] = 0x40
		r.putU32(20, c.textTTT)
	} else {
		c.textRest = nil
		r.bhs[1] = 0x80
		r.putU32(20, reservedTag)
	}
	r.data = data
	return c.send(r, true)
}

// byteBudget bounds the bytes of buffers a session holds.
type byteBudget struct {
	mu   sync.Mutex
	used int64
	max  int64
	wake chan struct{}
}

// acquire takes n bytes, waiting while others hold the budget (a single
// request over it passes alone).
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		w := b.wake
		b.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
}
