package iscsi

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// task is one SCSI command in flight. Its fields after ctx are guarded by
// the connection's mu.
type task struct {
	c         *conn
	cmd       *pdu
	itt       uint32
	immediate bool
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed when the task has ended

	// Data-Out: buf is the whole write (EDTL bytes); the reader copies
	// each Data-Out into it; seqDone gets the TTT of every R2T whose data
	// is complete.
	buf     []byte
	r2ts    map[uint32]*r2tSeq // outstanding, by TTT
	seqDone chan uint32
	dataErr bool // a Data-Out failed its digest or came out of sequence

	executing bool // all data in: in the LU
	responded bool // its response is queued: too late to abort
	aborted   bool // aborted: ends without a response
	accounted bool // taken off the session's counts
	// unitAttention, if set, is reported instead of running the command.
	unitAttention *scsi.Sense
}

// r2tSeq is the data sequence an R2T asked for.
type r2tSeq struct {
	off, n, got int
	dataSN      uint32
	broken      bool // out of sequence: the rest is taken and dropped
}

// command takes a SCSI Command PDU: immediate commands start at once,
// the others in CmdSN order (a command ahead of ExpCmdSN waits for those
// before it). Commands outside the window are dropped (RFC 7143
// 3.2.2.1).
func (c *conn) command(p *pdu) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.immediate() {
		if c.immTasks >= maxImmediateTasks {
			go c.reject(p, rejectTooManyImm)
			return
		}
		c.start(p)
		return
	}
	sn := p.u32(24)
	if !c.inWindow(sn) {
		c.log.Debug("iscsi: command outside the CmdSN window dropped", "cmdsn", sn, "exp", c.expCmdSN)
		return
	}
	if sn != c.expCmdSN {
		if _, ok := c.pending[sn]; !ok {
			c.pending[sn] = p
		}
		return
	}
	c.expCmdSN++
	c.start(p)
	c.deliverPending()
}

// deliverPending starts the commands that waited for ExpCmdSN to reach
// them. c.mu held.
func (c *conn) deliverPending() {
	for {
		p, ok := c.pending[c.expCmdSN]
		if !ok {
			return
		}
		delete(c.pending, c.expCmdSN)
		c.expCmdSN++
		if p != skipPDU {
			c.start(p)
		}
	}
}

// start runs command p in a goroutine of its own. c.mu held.
func (c *conn) start(p *pdu) {
	itt := p.itt()
	if old := c.tasks[itt]; (old != nil && !old.responded) || itt == reservedTag {
		// RFC 7143 11.17.1: a tag still in use is "task in progress".
		// (One that has answered may be sending its last PDUs: the
		// initiator may reuse its tag as soon as it has the status.)
		go c.reject(p, rejectTaskInProgress)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	t := &task{c: c, cmd: p, itt: itt, immediate: p.immediate(), ctx: ctx, cancel: cancel,
		done: make(chan struct{}), r2ts: map[uint32]*r2tSeq{}, unitAttention: c.takeUnitAttention(p.bhs[32])}
	c.tasks[itt] = t
	if t.immediate {
		c.immTasks++
	} else {
		c.running++
	}
	c.tasksDone.Add(1)
	go t.run()
}

// unaccount takes t off the session's counts: its CmdSN slot opens (it
// stays in c.tasks until it has ended). c.mu held.
func (c *conn) unaccount(t *task) {
	if t.accounted {
		return
	}
	t.accounted = true
	if t.immediate {
		c.immTasks--
	} else {
		c.running--
	}
}

func (t *task) run() {
	c := t.c
	defer c.tasksDone.Done()
	defer close(t.done)
	defer t.cancel()
	defer func() {
		c.mu.Lock()
		c.unaccount(t)
		if c.tasks[t.itt] == t {
			delete(c.tasks, t.itt)
		}
		c.mu.Unlock()
	}()
	p := t.cmd
	flags := p.bhs[1]
	write, read := flags&0x20 != 0, flags&0x40 != 0
	edtl := int(p.u32(20))
	cdb := append([]byte(nil), p.bhs[32:48]...)
	if len(p.ahs) >= 4 && p.ahs[2] == 0x01 { // extended CDB AHS
		cdb = append(cdb, p.ahs[4:]...)
	}
	if write && edtl > maxCmdData {
		// Too big to take: refused without asking for its data (what
		// came as immediate data is dropped).
		t.respond(scsi.Result{Status: scsi.StatusCheckCondition, Sense: scsi.InvalidCDB(0)}, 0, 0, nil)
		return
	}
	if t.unitAttention == nil && !exemptFromUA(cdb[0]) && c.lu != nil {
		t.unitAttention = c.remoteResetAttention(t.ctx, cdb[0])
	}
	if t.unitAttention != nil {
		// Reported without asking for the data.
		t.respond(scsi.Result{Status: scsi.StatusCheckCondition, Sense: t.unitAttention}, 0, 0, nil)
		return
	}
	var out []byte
	if write && edtl > 0 {
		if err := c.budget.acquire(t.ctx, int64(edtl)); err != nil {
			return
		}
		defer c.budget.release(int64(edtl))
		var ok bool
		if out, ok = t.collect(edtl); !ok {
			return
		}
	}
	maxIn := 0 // Data-In the initiator takes: what the LU may allocate
	if read {
		maxIn = min(edtl, maxCmdData) // no command reads more
		if err := c.inBudget.acquire(t.ctx, int64(maxIn)); err != nil {
			return
		}
		defer c.inBudget.release(int64(maxIn)) // after the response: it holds the data
	}
	c.mu.Lock()
	t.executing = true
	dataErr := t.dataErr
	c.mu.Unlock()
	var res scsi.Result
	if dataErr {
		// RFC 7143 7.8 b: protocol service CRC error.
		res = scsi.Result{Status: scsi.StatusCheckCondition,
			Sense: &scsi.Sense{Key: scsi.SenseAbortedCommand, ASC: 0x47, ASCQ: 0x05}}
	} else if lun := binary.BigEndian.Uint64(p.bhs[8:16]); lun != 0 {
		res = c.noSuchLUN(t.ctx, cdb)
	} else {
		res = c.lu.ExecuteIn(t.ctx, c.nexus, cdb, out, maxIn)
	}
	var residual uint32
	var rflags byte
	data := res.Data
	if read {
		switch n := max(len(data), res.DataLength); {
		case n > edtl:
			residual, rflags = uint32(n-edtl), 0x04 // overflow
			data = data[:min(len(data), edtl)]
		case n < edtl:
			residual, rflags = uint32(edtl-n), 0x02 // underflow
		}
	} else if write {
		switch want := res.Expected; {
		case want == 0:
		case edtl > want:
			residual, rflags = uint32(edtl-want), 0x02 // underflow: less used than expected
		case edtl < want:
			residual, rflags = uint32(want-edtl), 0x04 // overflow: the CDB wanted more
		}
	}
	if !read {
		data = nil
	}
	t.respond(res, rflags, residual, data)
}

// noSuchLUN answers a command to a LUN other than 0 (SPC-5 4.8):
// REPORT LUNS lists LUN 0, INQUIRY says no device is there (peripheral
// qualifier 011b), REQUEST SENSE tells why, and the rest is refused
// with LOGICAL UNIT NOT SUPPORTED.
func (c *conn) noSuchLUN(ctx context.Context, cdb []byte) scsi.Result {
	notSupported := &scsi.Sense{Key: scsi.SenseIllegalRequest, ASC: 0x25}
	switch cdb[0] {
	case 0xA0: // REPORT LUNS
		return c.lu.Execute(ctx, c.nexus, cdb, nil)
	case 0x12: // INQUIRY
		r := c.lu.Execute(ctx, c.nexus, cdb, nil)
		if r.Status == scsi.StatusGood && len(r.Data) > 0 {
			r.Data = append([]byte(nil), r.Data...)
			r.Data[0] = 0x7F
		}
		return r
	case 0x03: // REQUEST SENSE
		alloc := 252
		if len(cdb) > 4 {
			alloc = int(cdb[4])
		}
		d := notSupported.Fixed()
		return scsi.Result{Status: scsi.StatusGood, Data: d[:min(len(d), alloc)]}
	}
	return scsi.Result{Status: scsi.StatusCheckCondition, Sense: notSupported}
}

// collect gathers the edtl bytes of a write: the immediate data, then
// what R2Ts ask for, up to maxR2T of them outstanding. It reports false
// when the task was aborted or the connection ended.
func (t *task) collect(edtl int) ([]byte, bool) {
	c := t.c
	p := t.cmd
	imm := min(len(p.data), edtl)
	t.buf = make([]byte, edtl)
	copy(t.buf, p.data[:imm])
	t.seqDone = make(chan uint32, c.maxR2T)
	next, outstanding := imm, 0
	var r2tsn uint32
	for next < edtl || outstanding > 0 {
		for next < edtl && outstanding < c.maxR2T {
			n := min(edtl-next, c.maxBurst)
			c.mu.Lock()
			if t.aborted {
				c.mu.Unlock()
				return nil, false
			}
			c.nextTTT++
			if c.nextTTT == reservedTag {
				c.nextTTT = 0
			}
			ttt := c.nextTTT
			t.r2ts[ttt] = &r2tSeq{off: next, n: n}
			c.mu.Unlock()
			r := &pdu{}
			r.bhs[0], r.bhs[1] = opR2T, 0x80
			copy(r.bhs[8:16], p.bhs[8:16])
			r.putU32(16, t.itt)
			r.putU32(20, ttt)
			r.putU32(36, r2tsn)
			r.putU32(40, uint32(next))
			r.putU32(44, uint32(n))
			if c.sendCtx(t.ctx, r, false) != nil {
				return nil, false
			}
			r2tsn++
			next += n
			outstanding++
		}
		select {
		case <-t.seqDone:
			outstanding--
		case <-t.ctx.Done():
			return nil, false
		}
	}
	return t.buf, true
}

// dataOut routes a Data-Out PDU to its command (RFC 7143 11.7). Data for
// no command (one aborted, or done) is discarded. Data out of sequence
// (DataSN, offset or length not what the R2T asked for) implies PDUs lost
// to digest errors (RFC 7143 7.2.2): ErrorRecoveryLevel 0 has no
// recovery R2T, so the command takes the rest of its sequence and ends
// with CHECK CONDITION (7.8 b), and the session goes on. badDigest: the
// data failed its digest and is not taken, but counts.
func (c *conn) dataOut(p *pdu, badDigest bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tasks[p.itt()]
	if t == nil || t.aborted || t.responded {
		c.log.Debug("iscsi: Data-Out for no command in flight discarded", "itt", p.itt())
		return nil
	}
	ttt := p.u32(20)
	seq := t.r2ts[ttt]
	if seq == nil {
		return fmt.Errorf("%w: Data-Out with TTT 0x%x that no R2T of task 0x%x gave", errProtocol, ttt, t.itt)
	}
	off := int(p.u32(40))
	var bad string
	switch {
	case seq.broken:
	case p.u32(36) != seq.dataSN:
		bad = fmt.Sprintf("DataSN %d, expected %d", p.u32(36), seq.dataSN)
	case off != seq.off+seq.got:
		bad = fmt.Sprintf("offset %d, expected %d", off, seq.off+seq.got)
	case len(p.data) > seq.n-seq.got:
		bad = "data beyond its R2T"
	case p.final() && seq.got+len(p.data) != seq.n:
		bad = "sequence ended short"
	}
	if bad != "" {
		c.log.Info("iscsi: Data-Out out of sequence: the command fails", "itt", t.itt, "problem", bad)
		seq.broken = true
	}
	if badDigest || seq.broken {
		t.dataErr = true
	} else {
		// Only the reader writes into buf, the task reads it once every
		// sequence is done (seqDone orders the two).
		copy(t.buf[off:], p.data)
	}
	seq.got += len(p.data)
	seq.dataSN++
	if p.final() {
		delete(t.r2ts, ttt)
		t.seqDone <- ttt // room for every outstanding R2T: never blocks
	}
	return nil
}

// respond sends the outcome of the task: Data-In and status (collapsed
// into the last Data-In when there is no sense), unless the task was
// aborted meanwhile: an aborted task gets no response.
func (t *task) respond(res scsi.Result, rflags byte, residual uint32, data []byte) {
	c := t.c
	c.mu.Lock()
	if t.aborted {
		c.mu.Unlock()
		return
	}
	t.responded = true
	c.unaccount(t) // the response carries the opened window
	c.mu.Unlock()
	p := t.cmd
	collapse := res.Status == scsi.StatusGood
	seg := max(1, min(c.theirMaxData, c.maxBurst))
	var dataSN uint32
	for off := 0; off < len(data); {
		n := min(len(data)-off, seg, c.maxBurst-off%c.maxBurst)
		d := &pdu{data: data[off : off+n]}
		d.bhs[0] = opDataIn
		last := off+n == len(data)
		if last || (off+n)%c.maxBurst == 0 {
			d.bhs[1] = 0x80 // the end of a sequence (MaxBurstLength)
		}
		if last && collapse {
			d.bhs[1] |= 0x01 | rflags
			d.bhs[3] = byte(res.Status)
			d.putU32(44, residual)
		}
		copy(d.bhs[8:16], p.bhs[8:16])
		d.putU32(16, t.itt)
		d.putU32(20, reservedTag)
		d.putU32(36, dataSN)
		d.putU32(40, uint32(off))
		if c.send(d, last && collapse) != nil {
			return
		}
		dataSN++
		off += n
	}
	if collapse && len(data) > 0 {
		return
	}
	r := &pdu{}
	r.bhs[0], r.bhs[1] = opSCSIResponse, 0x80|rflags
	r.bhs[3] = byte(res.Status)
	r.putU32(16, t.itt)
	r.putU32(36, dataSN) // ExpDataSN: the Data-In PDUs sent before

	r.putU32(44, residual)
	if res.Sense != nil {
		sense := res.Sense.Fixed()
		r.data = binary.BigEndian.AppendUint16(nil, uint16(len(sense)))
		r.data = append(r.data, sense...)
	}
	c.send(r, true)
}

// TMF functions and responses (RFC 7143 11.5, 11.6).
const (
	tmfAbortTask           = 1
	tmfAbortTaskSet        = 2
	tmfClearACA            = 3
	tmfClearTaskSet        = 4
	tmfLUNReset            = 5
	tmfTargetWarmReset     = 6
	tmfTargetColdReset     = 7
	tmfTaskReassign        = 8
	tmfComplete            = 0
	tmfNoTask              = 1
	tmfNoLUN               = 2
	tmfNoReassign          = 4
	tmfNotSupported        = 5
	tmfNotAuthorized       = 6
	lunFieldOf         int = 8
)

// taskMgmt serves a Task Management Function Request: the tasks it
// concerns are aborted (their contexts cancelled, no response sent for
// them), and once every one has ended the response goes out.
func (c *conn) taskMgmt(p *pdu) {
	fn := p.bhs[1] & 0x7F
	lun := binary.BigEndian.Uint64(p.bhs[lunFieldOf : lunFieldOf+8])
	resp := byte(tmfComplete)
	var victims []*task
	var cold []*conn
	reset := false // the LU is reset once the victims have ended
	switch fn {
	case tmfAbortTask, tmfAbortTaskSet, tmfClearTaskSet, tmfLUNReset:
		if c.lu == nil || lun != 0 {
			resp = tmfNoLUN
			break
		}
		switch fn {
		case tmfAbortTask:
			victims, resp = c.abortTask(p.u32(20), p.u32(32), p.u32(24))
		case tmfAbortTaskSet:
			victims = c.abortAll(true)
		default:
			// The LU has one task set for every I_T nexus: clearing it
			// or resetting the LU ends the tasks of every session; a
			// reset leaves every nexus a unit attention (SAM-5 6.3).
			for _, s := range c.srv.sessionsOf(c.target) {
				victims = append(victims, s.abortAll(s == c)...)
				if fn == tmfLUNReset {
					s.setUnitAttention(ascBusDeviceReset)
				}
			}
			reset = fn == tmfLUNReset
		}
	case tmfTargetWarmReset, tmfTargetColdReset:
		if c.lu == nil {
			resp = tmfNotAuthorized
			break
		}
		for _, s := range c.srv.sessionsOf(c.target) {
			victims = append(victims, s.abortAll(s == c)...)
			s.setUnitAttention(ascResetOccurred)
			if fn == tmfTargetColdReset {
				cold = append(cold, s)
			}
		}
		reset = true
	case tmfClearACA:
		resp = tmfNotSupported // NACA is not supported: there is no ACA
	case tmfTaskReassign:
		resp = tmfNoReassign // ErrorRecoveryLevel 0
	default:
		resp = tmfNotSupported
	}
	r := &pdu{}
	r.bhs[0], r.bhs[1], r.bhs[2] = opTaskMgmtResp, 0x80, resp
	r.putU32(16, p.itt())
	c.log.Debug("iscsi: task management", "function", fn, "response", resp, "aborted", len(victims))
	c.tasksDone.Add(1)
	go func() {
		defer c.tasksDone.Done()
		for _, t := range victims {
			<-t.done
		}
		if reset {
			// After the victims: a RESERVE that was running
			// cannot outlive the reset. The LU's reset state is
			// shared by every session of the target (the vdisk).
			n := c.lu.Reset(c.ctx)
			for _, s := range c.srv.sessionsOf(c.target) {
				s.noteResets(n) // their unit attention is set already
			}
		}
		if len(cold) == 0 {
			c.send(r, true)
			return
		}
		// TARGET COLD RESET: the response, then every session of the
		// target ends (RFC 7143 11.5.1).
		o := outPDU{p: r, status: true, written: make(chan struct{})}
		select {
		case c.out <- o:
			select {
			case <-o.written:
			case <-c.ctx.Done():
			}
		case <-c.ctx.Done():
		}
		for _, s := range cold {
			s.Close()
		}
	}()
}

// Unit attentions a reset leaves (SPC-5 4.4.8): POWER ON, RESET, OR
// BUS DEVICE RESET OCCURRED, and BUS DEVICE RESET FUNCTION OCCURRED.
var (
	ascResetOccurred  = [2]byte{0x29, 0x00}
	ascBusDeviceReset = [2]byte{0x29, 0x03}
)

// setUnitAttention leaves the session's nexus a unit attention: its next
// command gets it as CHECK CONDITION instead of running. (The reset is
// the transport's; the LU keeps no per-nexus state of its own for it.)
func (c *conn) setUnitAttention(asc [2]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.unitAttention = &scsi.Sense{Key: scsi.SenseUnitAttention, ASC: asc[0], ASCQ: asc[1]}
}

// takeUnitAttention returns the pending unit attention that the command
// with operation code op reports, clearing it: INQUIRY, REPORT LUNS and
// REQUEST SENSE run regardless and leave it (SPC-5 5.14). c.mu held.
func (c *conn) takeUnitAttention(op byte) *scsi.Sense {
	if exemptFromUA(op) {
		return nil
	}
	ua := c.unitAttention
	c.unitAttention = nil
	return ua
}

// exemptFromUA: INQUIRY, REPORT LUNS and REQUEST SENSE run with a unit
// attention pending and leave it (SPC-5 5.14).
func exemptFromUA(op byte) bool {
	return op == 0x12 || op == 0xA0 || op == 0x03
}

// remoteResetAttention returns the unit attention of a reset made
// through another node that this session has not reported yet (nil if
// none). TEST UNIT READY reads the shared state fresh; other commands use
// the LU's cached copy (at most about a second old).
func (c *conn) remoteResetAttention(ctx context.Context, op byte) *scsi.Sense {
	n, err := c.lu.ResetCount(ctx, op == 0x00)
	if err != nil {
		return nil // the reset shows once the state can be read again
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n <= c.seenResets {
		return nil
	}
	c.seenResets = n
	return &scsi.Sense{Key: scsi.SenseUnitAttention, ASC: ascBusDeviceReset[0], ASCQ: ascBusDeviceReset[1]}
}

// noteResets records that the session's unit attention covers the
// vdisk's resets up to n (a reset through this node).
func (c *conn) noteResets(n uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seenResets = max(c.seenResets, n)
}

// abortTask finds the task ABORT TASK names (RFC 7143 11.5.1): running,
// it is aborted; still waiting for its CmdSN, or not arrived though its
// CmdSN is in the window before the request's, it is taken as received
// and never run. A task that has answered, or that never was, "does not
// exist".
func (c *conn) abortTask(rtt, refCmdSN, cmdSN uint32) ([]*task, byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.tasks[rtt]; t != nil {
		if t.responded || t.aborted {
			return nil, tmfNoTask
		}
		t.aborted = true
		t.cancel()
		c.unaccount(t)
		return []*task{t}, tmfComplete
	}
	for sn, q := range c.pending {
		if q != skipPDU && q.itt() == rtt {
			c.pending[sn] = skipPDU
			return nil, tmfComplete
		}
	}
	if c.inWindow(refCmdSN) && refCmdSN-c.expCmdSN < cmdSN-c.expCmdSN {
		if _, ok := c.pending[refCmdSN]; !ok {
			c.pending[refCmdSN] = skipPDU
		}
		if refCmdSN == c.expCmdSN {
			c.deliverPending()
		}
		return nil, tmfComplete
	}
	return nil, tmfNoTask
}

// abortAll aborts every task of the session, those waiting for their
// CmdSN included, and returns those to wait for: the aborted ones and,
// if responding (the session of the TMF: its response must follow
// theirs), those already answering.
func (c *conn) abortAll(responding bool) []*task {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*task
	for _, t := range c.tasks {
		if t.responded || t.aborted {
			if responding {
				out = append(out, t)
			}
			continue
		}
		t.aborted = true
		t.cancel()
		c.unaccount(t)
		out = append(out, t)
	}
	for sn, q := range c.pending {
		if q != skipPDU {
			c.pending[sn] = skipPDU
		}
	}
	return out
}
