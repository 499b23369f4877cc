package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// Targets is what the server serves: a target per vdisk.
type Targets interface {
	// ListTargets names the vdisks (discovery).
	ListTargets(ctx context.Context) ([]string, error)
	// OpenLU opens vdisk name as a logical unit; release ends its use.
	OpenLU(ctx context.Context, name string) (lu *scsi.LU, release func(), err error)
}

// Options tune a Server.
type Options struct {
	// BaseIQN prefixes every target name: BaseIQN:vdisk.
	BaseIQN string
	Logger  *slog.Logger
}

// Server is an iSCSI target serving every vdisk as target BaseIQN:name,
// LUN 0.
type Server struct {
	targets Targets
	opts    Options
	log     *slog.Logger

	mu    sync.Mutex
	tsih  uint16
	conns map[net.Conn]struct{}
}

// NewServer returns a server of targets.
func NewServer(targets Targets, opts Options) *Server {
	if opts.BaseIQN == "" {
		opts.BaseIQN = "iqn.2026-11.io.ovs"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Server{targets: targets, opts: opts, log: opts.Logger, conns: map[net.Conn]struct{}{}}
}

// IQN is the target name of vdisk name.
func (s *Server) IQN(name string) string { return s.opts.BaseIQN + ":" + name }

// Serve accepts connections on ln until ctx ends or ln fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	}()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("iscsi: accept: %w", err)
		}
		s.mu.Lock()
		s.conns[nc] = struct{}{}
		s.mu.Unlock()
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, nc)
				s.mu.Unlock()
				nc.Close()
			}()
			c := &conn{srv: s, nc: nc, br: bufio.NewReaderSize(nc, 256<<10), bw: bufio.NewWriterSize(nc, 256<<10),
				log: s.log.With("remote", nc.RemoteAddr().String())}
			if err := c.serve(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
				c.log.Info("iscsi: connection ended", "err", err)
			}
		}()
	}
}

// Negotiated limits (this target's side).
const (
	ourMaxRecvData   = 256 << 10
	loginMaxData     = 64 << 10
	defaultMaxData   = 8192 // RFC 7143 default MaxRecvDataSegmentLength
	maxBurst         = 1 << 20
	cmdWindow        = 64
	maxWriteData     = 8 << 20 // the largest write taken (scsi's transfer limit is 4 MiB)
	reservedTag      = 0xFFFFFFFF
	statusGood       = 0x00
	loginStageSec    = 0
	loginStageOp     = 1
	loginStageFull   = 3
	sessionDiscovery = "Discovery"
)

// conn is one TCP connection and (ErrorRecoveryLevel 0, MaxConnections 1)
// its session.
type conn struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader
	bw  *bufio.Writer
	log *slog.Logger

	discovery bool
	target    string
	nexus     scsi.Nexus
	lu        *scsi.LU
	release   func()
	// Negotiated.
	theirMaxData int // what we may send in one PDU
	headerDigest bool
	dataDigest   bool
	firstBurst   int
	immediate    bool
	initialR2T   bool
	// Sequence numbers.
	statSN    uint32
	expCmdSN  uint32
	ttt       uint32
	isid      [6]byte
	tsih      uint16
	loggedOut bool
}

func (c *conn) serve(ctx context.Context) error {
	defer func() {
		if c.release != nil {
			c.release()
		}
	}()
	c.theirMaxData = defaultMaxData
	c.firstBurst, c.immediate, c.initialR2T = 65536, true, true
	if err := c.login(ctx); err != nil {
		return err
	}
	for !c.loggedOut {
		p, err := readPDU(c.br, c.headerDigest, c.dataDigest, ourMaxRecvData)
		if err != nil {
			return err
		}
		if err := c.handle(ctx, p); err != nil {
			return err
		}
		if c.br.Buffered() == 0 {
			if err := c.bw.Flush(); err != nil {
				return err
			}
		}
	}
	return c.bw.Flush()
}

// send queues p (the caller flushes).
func (c *conn) send(p *pdu) error {
	_, err := c.bw.Write(appendPDU(nil, p, c.headerDigest, c.dataDigest))
	return err
}

// seq fills the StatSN/ExpCmdSN/MaxCmdSN fields (24..36) of a response;
// status says it carries status (StatSN advances).
func (c *conn) seq(p *pdu, status bool) {
	p.putU32(24, c.statSN)
	if status {
		c.statSN++
	}
	p.putU32(28, c.expCmdSN)
	p.putU32(32, c.expCmdSN+cmdWindow-1)
}

// noteCmdSN advances ExpCmdSN past a non-immediate command.
func (c *conn) noteCmdSN(p *pdu) {
	if p.immediate() {
		return
	}
	if sn := p.u32(24); sn == c.expCmdSN {
		c.expCmdSN++
	}
}

// inWindow: sn is in [ExpCmdSN, MaxCmdSN] (serial number arithmetic).
func (c *conn) inWindow(sn uint32) bool {
	return sn-c.expCmdSN < cmdWindow
}

// login runs the login phase up to the full feature phase.
func (c *conn) login(ctx context.Context) error {
	params := map[string]string{}
	for {
		p, err := readPDU(c.br, false, false, loginMaxData)
		if err != nil {
			return err
		}
		if p.opcode() != opLoginReq {
			return fmt.Errorf("%w: opcode 0x%02x before login", errProtocol, p.opcode())
		}
		pairs, err := parseText(p.data)
		if err != nil {
			return err
		}
		for _, kv := range pairs {
			params[kv.key] = kv.value
		}
		transit := p.bhs[1]&0x80 != 0
		csg, nsg := int(p.bhs[1]>>2&0x03), int(p.bhs[1]&0x03)
		copy(c.isid[:], p.bhs[8:14])
		c.expCmdSN = p.u32(24)
		c.statSN = p.u32(28)

		resp := &pdu{}
		resp.bhs[0] = opLoginResp
		resp.bhs[2], resp.bhs[3] = 0, 0 // version max, active
		copy(resp.bhs[8:14], c.isid[:])
		resp.putU32(16, p.itt())

		var reply []kv
		status := [2]byte{0, 0}
		switch {
		case csg == loginStageSec || csg == loginStageOp:
			if params["SessionType"] == sessionDiscovery {
				c.discovery = true
			} else if c.lu == nil {
				name, ok := strings.CutPrefix(params["TargetName"], c.srv.opts.BaseIQN+":")
				if !ok {
					status = [2]byte{0x02, 0x03} // initiator error: not found
					break
				}
				lu, release, err := c.srv.targets.OpenLU(ctx, name)
				if err != nil {
					status = [2]byte{0x02, 0x03}
					break
				}
				c.lu, c.release, c.target = lu, release, name
			}
			if csg == loginStageSec {
				if m := params["AuthMethod"]; m != "" {
					if !containsValue(m, "None") {
						status = [2]byte{0x02, 0x01} // authentication failure
						break
					}
					reply = append(reply, kv{"AuthMethod", "None"})
				}
			}
			reply = append(reply, c.negotiate(pairs)...)
		default:
			status = [2]byte{0x02, 0x00}
		}
		resp.bhs[36], resp.bhs[37] = status[0], status[1]
		if status[0] == 0 && transit {
			resp.bhs[1] = 0x80 | byte(csg)<<2 | byte(nsg)
		} else {
			resp.bhs[1] = byte(csg) << 2
		}
		if status[0] == 0 && transit && nsg == loginStageFull {
			c.srv.mu.Lock()
			c.srv.tsih++
			if c.srv.tsih == 0 {
				c.srv.tsih = 1
			}
			c.tsih = c.srv.tsih
			c.srv.mu.Unlock()
		}
		binary.BigEndian.PutUint16(resp.bhs[14:16], c.tsih)
		resp.data = appendText(nil, reply...)
		c.seq(resp, true)
		if err := c.send(resp); err != nil {
			return err
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
		if status[0] != 0 {
			return fmt.Errorf("login refused (status 0x%02x%02x) for %q", status[0], status[1], params["TargetName"])
		}
		if transit && nsg == loginStageFull {
			c.nexus = scsi.Nexus{InitiatorName: params["InitiatorName"],
				InitiatorPort: fmt.Sprintf("%s,i,0x%x", params["InitiatorName"], c.isid[:]),
				TargetPort:    c.srv.IQN(c.target) + ",t,0x1", RelativePort: 1}
			c.log.Info("iscsi: logged in", "initiator", params["InitiatorName"], "target", c.target, "discovery", c.discovery)
			return nil
		}
	}
}

func containsValue(list, v string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == v {
			return true
		}
	}
	return false
}

// negotiate answers the operational keys of a login request.
func (c *conn) negotiate(pairs []kv) []kv {
	var out []kv
	num := func(v string, def int) int {
		n, err := strconv.Atoi(v)
		if err != nil {
			return def
		}
		return n
	}
	for _, p := range pairs {
		switch p.key {
		case "HeaderDigest":
			c.headerDigest = false
			if strings.HasPrefix(p.value, "CRC32C") {
				// Offered first: the initiator prefers it.
				c.headerDigest = false
			}
			out = append(out, kv{p.key, "None"})
		case "DataDigest":
			out = append(out, kv{p.key, "None"})
		case "MaxRecvDataSegmentLength":
			c.theirMaxData = max(512, min(num(p.value, defaultMaxData), 1<<24-1))
			// Declarative: ours is sent on its own.
		case "MaxBurstLength":
			out = append(out, kv{p.key, strconv.Itoa(min(num(p.value, maxBurst), maxBurst))})
		case "FirstBurstLength":
			c.firstBurst = min(num(p.value, 65536), 65536)
			out = append(out, kv{p.key, strconv.Itoa(c.firstBurst)})
		case "InitialR2T":
			c.initialR2T = true
			out = append(out, kv{p.key, "Yes"})
		case "ImmediateData":
			c.immediate = p.value == "Yes"
			out = append(out, kv{p.key, p.value})
		case "MaxOutstandingR2T", "MaxConnections":
			out = append(out, kv{p.key, "1"})
		case "DataPDUInOrder", "DataSequenceInOrder":
			out = append(out, kv{p.key, "Yes"})
		case "ErrorRecoveryLevel":
			out = append(out, kv{p.key, "0"})
		case "DefaultTime2Wait", "DefaultTime2Retain":
			out = append(out, kv{p.key, "0"})
		case "IFMarker", "OFMarker":
			out = append(out, kv{p.key, "No"})
		case "InitiatorName", "InitiatorAlias", "TargetName", "SessionType", "AuthMethod":
		default:
			out = append(out, kv{p.key, "NotUnderstood"})
		}
	}
	if c.theirMaxData > 0 {
		out = append(out, kv{"MaxRecvDataSegmentLength", strconv.Itoa(ourMaxRecvData)})
	}
	if c.target != "" {
		out = append(out, kv{"TargetPortalGroupTag", "1"})
	}
	return out
}

// handle serves one PDU of the full feature phase.
func (c *conn) handle(ctx context.Context, p *pdu) error {
	switch p.opcode() {
	case opNOPOut:
		c.noteCmdSN(p)
		if p.itt() == reservedTag {
			return nil // a reply to our NOP-In, or a ping asking none
		}
		r := &pdu{data: p.data}
		r.bhs[0], r.bhs[1] = opNOPIn, 0x80
		copy(r.bhs[8:16], p.bhs[8:16])
		r.putU32(16, p.itt())
		r.putU32(20, reservedTag)
		c.seq(r, true)
		return c.send(r)
	case opTextReq:
		c.noteCmdSN(p)
		return c.text(ctx, p)
	case opSCSICommand:
		if !p.immediate() && !c.inWindow(p.u32(24)) {
			// RFC 7143 3.2.2.1: outside the window, silently ignored.
			c.log.Debug("iscsi: command outside the CmdSN window dropped", "cmdsn", p.u32(24), "exp", c.expCmdSN)
			return nil
		}
		c.noteCmdSN(p)
		if c.lu == nil {
			return fmt.Errorf("%w: a SCSI command in a discovery session", errProtocol)
		}
		return c.command(ctx, p)
	case opTaskMgmtReq:
		c.noteCmdSN(p)
		// Commands run one at a time, to completion: there is never a
		// task to abort by the time this is read.
		r := &pdu{}
		r.bhs[0], r.bhs[1] = opTaskMgmtResp, 0x80
		fn := p.bhs[1] & 0x7F
		if fn == 1 { // ABORT TASK: the task is done
			r.bhs[2] = 0x01 // task does not exist
		}
		r.putU32(16, p.itt())
		c.seq(r, true)
		return c.send(r)
	case opLogoutReq:
		c.noteCmdSN(p)
		r := &pdu{}
		r.bhs[0], r.bhs[1] = opLogoutResp, 0x80
		r.putU32(16, p.itt())
		c.seq(r, true)
		c.loggedOut = true
		return c.send(r)
	case opDataOut:
		return fmt.Errorf("%w: Data-Out for no command", errProtocol)
	}
	return c.reject(p, 0x04) // command not supported
}

// reject answers a PDU this target does not take.
func (c *conn) reject(p *pdu, reason byte) error {
	r := &pdu{data: append([]byte(nil), p.bhs[:]...)}
	r.bhs[0], r.bhs[1], r.bhs[2] = opReject, 0x80, reason
	r.putU32(16, reservedTag)
	c.seq(r, true)
	return c.send(r)
}

// text answers SendTargets.
func (c *conn) text(ctx context.Context, p *pdu) error {
	pairs, err := parseText(p.data)
	if err != nil {
		return err
	}
	var reply []kv
	for _, kv0 := range pairs {
		if kv0.key != "SendTargets" {
			reply = append(reply, kv{kv0.key, "NotUnderstood"})
			continue
		}
		names, err := c.srv.targets.ListTargets(ctx)
		if err != nil {
			return err
		}
		addr := c.nc.LocalAddr().String()
		for _, n := range names {
			if kv0.value != "All" && kv0.value != c.srv.IQN(n) && !(kv0.value == "" && n == c.target) {
				continue
			}
			reply = append(reply, kv{"TargetName", c.srv.IQN(n)}, kv{"TargetAddress", addr + ",1"})
		}
	}
	r := &pdu{data: appendText(nil, reply...)}
	r.bhs[0], r.bhs[1] = opTextResp, 0x80
	r.putU32(16, p.itt())
	r.putU32(20, reservedTag)
	c.seq(r, true)
	return c.send(r)
}

// command runs one SCSI command: collects its Data-Out (immediate data,
// then R2Ts for the rest), executes it, and returns Data-In and status.
func (c *conn) command(ctx context.Context, p *pdu) error {
	flags := p.bhs[1]
	write, read := flags&0x20 != 0, flags&0x40 != 0
	edtl := int(p.u32(20))
	cdb := append([]byte(nil), p.bhs[32:48]...)
	if len(p.ahs) >= 4 && p.ahs[2] == 0x01 { // extended CDB AHS
		cdb = append(cdb, p.ahs[4:]...)
	}
	var out []byte
	if write && edtl > maxWriteData {
		// Too big to take: refused without asking for its data (what
		// came as immediate data is dropped).
		return c.respond(p, scsi.Result{Status: scsi.StatusCheckCondition, Sense: scsi.InvalidCDB(0)}, 0, 0)
	}
	if write && edtl > 0 {
		out = make([]byte, 0, edtl)
		out = append(out, p.data[:min(len(p.data), edtl)]...)
		for len(out) < edtl {
			n := min(edtl-len(out), maxBurst)
			c.ttt++
			r2t := &pdu{}
			r2t.bhs[0], r2t.bhs[1] = opR2T, 0x80
			copy(r2t.bhs[8:16], p.bhs[8:16])
			r2t.putU32(16, p.itt())
			r2t.putU32(20, c.ttt)
			c.seq(r2t, false)
			r2t.putU32(36, 0) // R2TSN (one outstanding at a time)
			r2t.putU32(40, uint32(len(out)))
			r2t.putU32(44, uint32(n))
			if err := c.send(r2t); err != nil {
				return err
			}
			if err := c.bw.Flush(); err != nil {
				return err
			}
			for got := 0; got < n; {
				d, err := readPDU(c.br, c.headerDigest, c.dataDigest, ourMaxRecvData)
				if err != nil {
					return err
				}
				if d.opcode() != opDataOut || d.itt() != p.itt() {
					return fmt.Errorf("%w: opcode 0x%02x while waiting for Data-Out", errProtocol, d.opcode())
				}
				if off := int(d.u32(40)); off != len(out) {
					return fmt.Errorf("%w: Data-Out at offset %d, expected %d", errProtocol, off, len(out))
				}
				if len(d.data) > n-got {
					return fmt.Errorf("%w: Data-Out beyond the R2T", errProtocol)
				}
				out = append(out, d.data...)
				got += len(d.data)
				if d.final() && got < n {
					return fmt.Errorf("%w: Data-Out sequence ended short", errProtocol)
				}
			}
		}
	}
	res := c.lu.Execute(ctx, c.nexus, cdb, out)
	data := res.Data
	var residual uint32
	var rflags byte
	if read {
		switch {
		case len(data) > edtl:
			residual, rflags = uint32(len(data)-edtl), 0x04 // overflow
			data = data[:edtl]
		case len(data) < edtl:
			residual, rflags = uint32(edtl-len(data)), 0x02 // underflow
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
	// Data-In in pieces of what the initiator takes; the last carries
	// the status when there is no sense to send.
	collapse := res.Status == scsi.StatusGood
	for off := 0; off < len(data) || (off == 0 && len(data) > 0); {
		n := min(len(data)-off, c.theirMaxData)
		d := &pdu{data: data[off : off+n]}
		d.bhs[0] = opDataIn
		last := off+n == len(data)
		if last {
			d.bhs[1] = 0x80
			if collapse {
				d.bhs[1] |= 0x01 | rflags
				d.bhs[3] = byte(res.Status)
				d.putU32(44, residual)
			}
		}
		copy(d.bhs[8:16], p.bhs[8:16])
		d.putU32(16, p.itt())
		d.putU32(20, reservedTag)
		c.seq(d, last && collapse)
		d.putU32(36, uint32(off/max(1, c.theirMaxData))) // DataSN
		d.putU32(40, uint32(off))
		if err := c.send(d); err != nil {
			return err
		}
		off += n
		if last {
			break
		}
	}
	if collapse && len(data) > 0 {
		return nil
	}
	return c.respond(p, res, rflags, residual)
}

// respond sends the SCSI Response of command p.
func (c *conn) respond(p *pdu, res scsi.Result, rflags byte, residual uint32) error {
	r := &pdu{}
	r.bhs[0], r.bhs[1] = opSCSIResponse, 0x80|rflags
	r.bhs[3] = byte(res.Status)
	r.putU32(16, p.itt())
	c.seq(r, true)
	r.putU32(44, residual)
	if res.Sense != nil {
		sense := res.Sense.Fixed()
		r.data = binary.BigEndian.AppendUint16(nil, uint16(len(sense)))
		r.data = append(r.data, sense...)
	}
	return c.send(r)
}
