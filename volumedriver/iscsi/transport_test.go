package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// gateDev is an in-memory device whose writes at gatedOff wait until
// open is closed, or until their context ends.
type gateDev struct {
	memDev
	gatedOff  int64
	entered   chan int64 // a write reached the gate
	open      chan struct{}
	cancelled atomic.Int32 // gated writes that ended by their context
}

func newGateDev(gatedOff int64) *gateDev {
	return &gateDev{memDev: memDev{memdev.New(64 << 20)}, gatedOff: gatedOff,
		entered: make(chan int64, 64), open: make(chan struct{})}
}

func (d *gateDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if off == d.gatedOff {
		d.entered <- off
		select {
		case <-d.open:
		case <-ctx.Done():
			d.cancelled.Add(1)
			return ctx.Err()
		}
	}
	return d.memDev.WriteAt(ctx, p, off, fua)
}

const testIQN = DefaultBaseIQN + ":vd1"

func startGated(t *testing.T, gatedOff int64) (*gateDev, string) {
	t.Helper()
	dev := newGateDev(gatedOff)
	_, addr := startTargetWith(t, &memTargets{lus: map[string]*scsi.LU{"vd1": newMemLU(dev)}}, Options{})
	return dev, addr
}

func login(t *testing.T, addr string, o loginOpts) *testInitiator {
	t.Helper()
	if o.target == "" {
		o.target = testIQN
	}
	in, err := dialInitiator(t, addr, o)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	return in
}

func pattern(seed, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*31 + i*7 + i>>9)
	}
	return b
}

func waitEntered(t *testing.T, d *gateDev) {
	t.Helper()
	select {
	case <-d.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the write did not reach the device")
	}
}

// TestConcurrentCommands: while a write is stuck in the device, reads
// and writes of other blocks go on and complete, many in flight at once
// (more than the CmdSN window: the initiator waits on MaxCmdSN); the
// stuck write completes when the device lets it.
func TestConcurrentCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    loginOpts
	}{
		{"immediate data", loginOpts{}},
		{"R2T only, 4 outstanding", loginOpts{noImmediate: true, maxR2T: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, addr := startGated(t, 0)
			in := login(t, addr, tc.o)
			slow := make(chan error, 1)
			go func() {
				res, err := in.command(write10(0, 8), pattern(0, 4096), 0)
				if err == nil && res.status != 0 {
					err = fmt.Errorf("status 0x%x", res.status)
				}
				slow <- err
			}()
			waitEntered(t, dev)

			const workers, rounds = 16, 6
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for r := range rounds {
						lba := uint32(1024 + (w*rounds+r)*1024)
						size := 4096 << (r % 5) // up to 64 KiB: immediate data and R2Ts
						data := pattern(w*100+r, size)
						res, err := in.command(write10(lba, uint16(size/512)), data, 0)
						if err != nil || res.status != 0 {
							errs <- fmt.Errorf("write %d: %v status 0x%x", lba, err, res.status)
							return
						}
						res, err = in.command(read10(lba, uint16(size/512)), nil, size)
						if err != nil || res.status != 0 || !bytes.Equal(res.data, data) {
							errs <- fmt.Errorf("read %d: %v status 0x%x, data equal %v", lba, err, res.status, bytes.Equal(res.data, data))
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			select {
			case err := <-slow:
				t.Fatalf("the stuck write answered before the device let it: %v", err)
			default:
			}
			close(dev.open)
			if err := <-slow; err != nil {
				t.Fatalf("stuck write: %v", err)
			}
			res, err := in.command(read10(0, 8), nil, 4096)
			if err != nil || !bytes.Equal(res.data, pattern(0, 4096)) {
				t.Fatalf("read back the stuck write: %v", err)
			}
			if err := in.logout(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOutstandingR2Ts: a write of 1 MiB with MaxBurstLength 256 KiB and
// MaxOutstandingR2T 4 gets its four R2Ts at once, before any data.
func TestOutstandingR2Ts(t *testing.T) {
	_, addr := startGated(t, -1)
	in := login(t, addr, loginOpts{noImmediate: true, maxR2T: 4})
	data := pattern(9, 1<<20)
	itt, cmdSN, ch := in.newTask(false)
	if err := in.send(in.cmdPDU(itt, cmdSN, write10(2048, 2048), data, 0)); err != nil {
		t.Fatal(err)
	}
	var r2ts []*pdu
	for len(r2ts) < 4 {
		select {
		case p := <-ch:
			if p.opcode() != opR2T {
				t.Fatalf("opcode 0x%x before the data", p.opcode())
			}
			if sn := p.u32(36); sn != uint32(len(r2ts)) {
				t.Fatalf("R2TSN %d, want %d", sn, len(r2ts))
			}
			r2ts = append(r2ts, p)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d R2Ts outstanding, want 4", len(r2ts))
		}
	}
	for _, r := range r2ts {
		if err := in.dataOut(itt, r.u32(20), data, int(r.u32(40)), int(r.u32(44))); err != nil {
			t.Fatal(err)
		}
	}
	res, err := in.await(itt, ch, data)
	in.done(itt)
	if err != nil || res.status != 0 {
		t.Fatalf("write: %v status 0x%x", err, res.status)
	}
	res, err = in.command(read10(2048, 2048), nil, 1<<20)
	if err != nil || !bytes.Equal(res.data, data) {
		t.Fatalf("read back: %v", err)
	}
}

// noAnswer checks that command itt got nothing (a NOP answered after
// it shows that the target has sent all it queued before).
func noAnswer(t *testing.T, in *testInitiator, ch chan *pdu) {
	t.Helper()
	if err := in.ping(); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-ch:
		t.Fatalf("an aborted command got opcode 0x%x status 0x%x", p.opcode(), p.bhs[3])
	default:
	}
}

// TestTaskManagement: ABORT TASK ends a command stuck in the device (its
// context is cancelled) or waiting for its Data-Out, answers once it has
// ended, and the command gets no response; LUN RESET and ABORT TASK SET
// end every command in flight; a task that is done "does not exist".
func TestTaskManagement(t *testing.T) {
	dev, addr := startGated(t, 0)
	in := login(t, addr, loginOpts{})

	// ABORT TASK of a write stuck in the device.
	itt, cmdSN, ch := in.newTask(false)
	if err := in.send(in.cmdPDU(itt, cmdSN, write10(0, 8), pattern(1, 4096), 0)); err != nil {
		t.Fatal(err)
	}
	waitEntered(t, dev)
	if r, err := in.tmf(tmfAbortTask, itt, cmdSN); err != nil || r != tmfComplete {
		t.Fatalf("ABORT TASK: %v response %d", err, r)
	}
	if n := dev.cancelled.Load(); n != 1 {
		t.Fatalf("%d writes saw their context cancelled, want 1", n)
	}
	noAnswer(t, in, ch)
	if r, err := in.tmf(tmfAbortTask, itt, cmdSN); err != nil || r != tmfNoTask {
		t.Fatalf("ABORT TASK of an aborted task: %v response %d", err, r)
	}
	in.done(itt)

	// ABORT TASK of a write waiting for the data of its R2T; its late
	// Data-Out is dropped.
	data := pattern(2, 128<<10)
	itt, cmdSN, ch = in.newTask(false)
	p := in.cmdPDU(itt, cmdSN, write10(4096, 256), data, 0)
	if err := in.send(p); err != nil {
		t.Fatal(err)
	}
	var r2t *pdu
	select {
	case r2t = <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("no R2T")
	}
	if r, err := in.tmf(tmfAbortTask, itt, cmdSN); err != nil || r != tmfComplete {
		t.Fatalf("ABORT TASK of a write waiting for data: %v response %d", err, r)
	}
	if err := in.dataOut(itt, r2t.u32(20), data, int(r2t.u32(40)), int(r2t.u32(44))); err != nil {
		t.Fatal(err)
	}
	noAnswer(t, in, ch)
	in.done(itt)

	// A task that has completed does not exist.
	res, err := in.command(read10(8, 1), nil, 512)
	if err != nil || res.status != 0 {
		t.Fatalf("read: %v", err)
	}
	if r, err := in.tmf(tmfAbortTask, 0x7777, cmdSN); err != nil || r != tmfNoTask {
		t.Fatalf("ABORT TASK of no task: %v response %d", err, r)
	}

	// ABORT TASK SET, CLEAR TASK SET and LUN RESET end every command in
	// flight.
	other := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 9}})
	for _, fn := range []byte{tmfAbortTaskSet, tmfClearTaskSet, tmfLUNReset} {
		before := dev.cancelled.Load()
		var chans []chan *pdu
		for range 2 {
			itt, cmdSN, ch := in.newTask(false)
			if err := in.send(in.cmdPDU(itt, cmdSN, write10(0, 8), pattern(3, 4096), 0)); err != nil {
				t.Fatal(err)
			}
			waitEntered(t, dev)
			chans = append(chans, ch)
			defer in.done(itt)
		}
		if r, err := in.tmf(fn, reservedTag, 0); err != nil || r != tmfComplete {
			t.Fatalf("TMF %d: %v response %d", fn, err, r)
		}
		if n := dev.cancelled.Load() - before; n != 2 {
			t.Fatalf("TMF %d cancelled %d writes, want 2", fn, n)
		}
		for _, ch := range chans {
			noAnswer(t, in, ch)
		}
	}
	// The LUN RESET left every session a unit attention, reported once.
	tur := make([]byte, 6)
	for _, s := range []*testInitiator{in, other} {
		res, err := s.command(tur, nil, 0)
		if err != nil || res.status != byte(scsi.StatusCheckCondition) || len(res.sense) < 14 ||
			res.sense[2]&0x0F != scsi.SenseUnitAttention || res.sense[12] != 0x29 {
			t.Fatalf("TEST UNIT READY after LUN RESET: %v status 0x%x sense % x", err, res.status, res.sense)
		}
		if res, err := s.command(tur, nil, 0); err != nil || res.status != 0 {
			t.Fatalf("TEST UNIT READY after the unit attention: %v status 0x%x", err, res.status)
		}
	}

	// Unsupported functions and a LUN that does not exist.
	if r, err := in.tmf(tmfTaskReassign, 1, 0); err != nil || r != tmfNoReassign {
		t.Fatalf("TASK REASSIGN: %v response %d", err, r)
	}
	if r, err := in.tmf(tmfClearACA, 1, 0); err != nil || r != tmfNotSupported {
		t.Fatalf("CLEAR ACA: %v response %d", err, r)
	}
	// The session still works.
	if res, err := in.command(read10(0, 8), nil, 4096); err != nil || res.status != 0 {
		t.Fatalf("read after the TMFs: %v status 0x%x", err, res.status)
	}
}

// TestTargetColdReset: the response, then every session of the target
// ends.
func TestTargetColdReset(t *testing.T) {
	_, addr := startGated(t, -1)
	a := login(t, addr, loginOpts{})
	b := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 2}})
	if r, err := a.tmf(tmfTargetColdReset, reservedTag, 0); err != nil || r != tmfComplete {
		t.Fatalf("TARGET COLD RESET: %v response %d", err, r)
	}
	a.waitClosed(t)
	b.waitClosed(t)
}

func TestCHAP(t *testing.T) {
	const (
		user, secret             = "alice", "alice-secret-0123"
		mutualUser, mutualSecret = "target-vd1", "target-secret-4567"
	)
	chaps := map[string]CHAP{
		"vd1": {User: user, Secret: secret, MutualUser: mutualUser, MutualSecret: mutualSecret},
		"vd2": {User: user, Secret: secret}, // no mutual secret
		"":    {User: "disco", Secret: "discovery-secret-89"},
	}
	targets := &memTargets{lus: map[string]*scsi.LU{
		"vd1": newMemLU(memDev{memdev.New(1 << 20)}), "vd2": newMemLU(memDev{memdev.New(1 << 20)}),
		"vd3": newMemLU(memDev{memdev.New(1 << 20)}), // no CHAP
	}, chap: chaps}
	_, addr := startTargetWith(t, targets, Options{})
	iqn := func(n string) string { return DefaultBaseIQN + ":" + n }
	for _, tc := range []struct {
		name   string
		o      loginOpts
		status uint16 // 0: logs in
	}{
		{"one-way", loginOpts{target: iqn("vd1"), user: user, secret: secret}, 0},
		{"mutual", loginOpts{target: iqn("vd1"), user: user, secret: secret, mutualUser: mutualUser, mutualSecret: mutualSecret}, 0},
		{"wrong secret", loginOpts{target: iqn("vd1"), user: user, secret: "not-the-secret"}, loginAuthFailed},
		{"wrong user", loginOpts{target: iqn("vd1"), user: "mallory", secret: secret}, loginAuthFailed},
		{"AuthMethod None", loginOpts{target: iqn("vd1"), authMethod: "None"}, loginAuthFailed},
		{"no security stage", loginOpts{target: iqn("vd1"), user: user, secret: secret, skipSecurity: true}, loginAuthFailed},
		{"no login keys at all", loginOpts{target: iqn("vd1")}, loginAuthFailed},
		{"mutual without a target secret", loginOpts{target: iqn("vd2"), user: user, secret: secret, mutualUser: "x", mutualSecret: "y"}, loginAuthFailed},
		{"mutual reflecting the challenge", loginOpts{target: iqn("vd1"), user: user, secret: secret, mutualUser: mutualUser,
			mutualSecret: mutualSecret, reflect: true}, loginAuthFailed},
		{"no CHAP configured", loginOpts{target: iqn("vd3")}, 0},
		{"no CHAP configured, CHAP offered with None", loginOpts{target: iqn("vd3"), user: user, secret: secret}, 0},
		{"discovery", loginOpts{user: "disco", secret: "discovery-secret-89"}, 0},
		{"discovery, wrong secret", loginOpts{user: "disco", secret: "nope-nope-nope"}, loginAuthFailed},
		{"discovery, none", loginOpts{}, loginAuthFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opened := targets.opened.Load()
			in, err := dialInitiator(t, addr, tc.o)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("login: %v", err)
				}
				if tc.o.target != "" {
					if res, err := in.command(read10(0, 1), nil, 512); err != nil || res.status != 0 {
						t.Fatalf("read: %v", err)
					}
				}
				return
			}
			se, ok := err.(*loginStatusError)
			if !ok || se.status != tc.status {
				t.Fatalf("login: %v, want status 0x%04x", err, tc.status)
			}
			if n := targets.opened.Load() - opened; n != 0 {
				t.Fatalf("a refused login opened the vdisk %d times", n)
			}
		})
	}
}

// TestDigests: CRC32C header and data digests agreed and checked; a Data-
// Out with a bad data digest is rejected and its command fails with a
// CRC error (the session goes on); a bad header digest ends the
// connection.
func TestDigests(t *testing.T) {
	_, addr := startGated(t, -1)
	in := login(t, addr, loginOpts{headerDigest: true, dataDigest: true, noImmediate: true})
	data := pattern(5, 300<<10)
	if res, err := in.command(write10(0, uint16(len(data)/512)), data, 0); err != nil || res.status != 0 {
		t.Fatalf("write: %v status 0x%x", err, res.status)
	}
	if res, err := in.command(read10(0, uint16(len(data)/512)), nil, len(data)); err != nil || !bytes.Equal(res.data, data) {
		t.Fatalf("read back: %v", err)
	}

	// A Data-Out whose data digest is wrong.
	itt, cmdSN, ch := in.newTask(false)
	if err := in.send(in.cmdPDU(itt, cmdSN, write10(0, 8), data[:4096], 0)); err != nil {
		t.Fatal(err)
	}
	r2t := <-ch
	if r2t.opcode() != opR2T {
		t.Fatalf("opcode 0x%x, want R2T", r2t.opcode())
	}
	d := &pdu{data: pattern(6, 4096)}
	d.bhs[0], d.bhs[1] = opDataOut, 0x80
	d.putU32(16, itt)
	d.putU32(20, r2t.u32(20))
	b := appendPDU(nil, d, true, true)
	b[len(b)-1] ^= 0xFF
	if err := in.sendRaw(b); err != nil {
		t.Fatal(err)
	}
	res, err := in.await(itt, ch, nil)
	in.done(itt)
	if err != nil || res.status != byte(scsi.StatusCheckCondition) || len(res.sense) < 14 ||
		res.sense[2]&0x0F != scsi.SenseAbortedCommand || res.sense[12] != 0x47 || res.sense[13] != 0x05 {
		t.Fatalf("write with a bad data digest: %v status 0x%x sense % x", err, res.status, res.sense)
	}
	select {
	case r := <-in.other:
		if r.opcode() != opReject || r.bhs[2] != rejectDataDigest {
			t.Fatalf("opcode 0x%x reason 0x%x, want a Reject for a data digest error", r.opcode(), r.bhs[2])
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no Reject for the data digest error")
	}
	if res, err := in.command(read10(0, 8), nil, 4096); err != nil || !bytes.Equal(res.data, data[:4096]) {
		t.Fatalf("the bad data was written, or the session broke: %v", err)
	}

	// A header digest error ends the connection.
	n := &pdu{}
	n.bhs[0], n.bhs[1] = opNOPOut|0x40, 0x80
	n.putU32(16, reservedTag)
	n.putU32(20, reservedTag)
	b = appendPDU(nil, n, true, true)
	b[bhsLen] ^= 0xFF
	if err := in.sendRaw(b); err != nil {
		t.Fatal(err)
	}
	in.waitClosed(t)
}

// TestSessions: several sessions of a target at once; the same initiator
// name and ISID logging in again ends the old session (reinstatement); a
// second connection of a session is refused (MaxConnections 1).
func TestSessions(t *testing.T) {
	_, addr := startGated(t, -1)
	a := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 1}})
	b := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 2}})
	c := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 1}, name: "iqn.2026-11.org.test:other"})
	for i, in := range []*testInitiator{a, b, c} {
		if err := in.ping(); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	a2 := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 1}})
	a.waitClosed(t)
	for i, in := range []*testInitiator{a2, b, c} {
		if err := in.ping(); err != nil {
			t.Fatalf("session %d after the reinstatement: %v", i, err)
		}
	}

	// A login naming an existing session's TSIH adds a connection.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p := &pdu{data: appendText(nil, kv{"InitiatorName", "iqn.2026-11.org.test:initiator"}, kv{"TargetName", testIQN})}
	p.bhs[0], p.bhs[1] = opLoginReq|0x40, 0x80|loginStageOp<<2|loginStageFull
	copy(p.bhs[8:14], []byte{0x80, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(p.bhs[14:16], 2) // b's TSIH
	nc.Write(appendPDU(nil, p, false, false))
	r, err := readPDU(nc, false, false, 1<<16)
	if err != nil || binary.BigEndian.Uint16(r.bhs[36:38]) != loginTooManyConns {
		t.Fatalf("a second connection: %v status 0x%04x", err, binary.BigEndian.Uint16(r.bhs[36:38]))
	}
}

// TestLoginLimits: a connection that does not log in is closed after
// LoginTimeout; one over MaxConns is closed at once; a login to a target
// that does not exist is refused.
func TestLoginLimits(t *testing.T) {
	targets := &memTargets{lus: map[string]*scsi.LU{"vd1": newMemLU(memDev{memdev.New(1 << 20)})}}
	_, addr := startTargetWith(t, targets, Options{LoginTimeout: 200 * time.Millisecond, MaxConns: 1})
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("an idle connection was not closed: %v", err)
	}

	// The server may not have released the idle connection's slot yet
	// when the client sees it closed: a refusal at the cap is retried.
	var in *testInitiator
	for try := 0; in == nil; try++ {
		in, err = dialInitiator(t, addr, loginOpts{target: testIQN})
		if err != nil && try == 100 {
			t.Fatalf("login after the idle connection was closed: %v", err)
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	over, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a connection over the cap was not closed: %v", err)
	}
	if err := in.logout(); err != nil {
		t.Fatal(err)
	}
	in.waitClosed(t)

	// The cap is free again; a target that does not exist is refused.
	var lerr error
	for range 100 { // the server may not have seen the logout's close yet
		_, lerr = dialInitiator(t, addr, loginOpts{target: DefaultBaseIQN + ":nope"})
		if se, ok := lerr.(*loginStatusError); ok && se.status == loginNotFound {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("login to no target: %v", lerr)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestShutdown: Shutdown asks a logged-in initiator to log out (Async
// Message, event 1), which it does; Shutdown then returns.
func TestShutdown(t *testing.T) {
	targets := &memTargets{lus: map[string]*scsi.LU{"vd1": newMemLU(memDev{memdev.New(1 << 20)})}}
	s, addr := startTargetWith(t, targets, Options{})
	in := login(t, addr, loginOpts{})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	select {
	case p := <-in.other:
		if p.opcode() != opAsyncMsg || p.bhs[36] != 1 {
			t.Fatalf("opcode 0x%x event %d, want an Async Message asking a logout", p.opcode(), p.bhs[36])
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no Async Message")
	}
	if err := in.logout(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestSendTargets: every target with Options.Portal as its address,
// answered in pieces when it does not fit in one PDU.
func TestSendTargets(t *testing.T) {
	lus := map[string]*scsi.LU{}
	for i := range 400 {
		lus["vdisk-"+strconv.Itoa(i)] = newMemLU(memDev{memdev.New(1 << 20)})
	}
	_, addr := startTargetWith(t, &memTargets{lus: lus}, Options{Portal: "192.0.2.7:3260,1"})
	in, err := dialInitiator(t, addr, loginOpts{}) // discovery
	if err != nil {
		t.Fatal(err)
	}
	got, err := in.text(kv{"SendTargets", "All"})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range got {
		switch p.key {
		case "TargetName":
			names[p.value] = true
		case "TargetAddress":
			if p.value != "192.0.2.7:3260,1" {
				t.Fatalf("TargetAddress %q", p.value)
			}
		}
	}
	if len(names) != 400 {
		t.Fatalf("%d targets, want 400", len(names))
	}
}

// TestOtherLUN: only LUN 0 exists; INQUIRY of another says so (peripheral
// qualifier 011b), other commands are refused with LOGICAL UNIT NOT
// SUPPORTED.
func TestOtherLUN(t *testing.T) {
	_, addr := startGated(t, -1)
	in := login(t, addr, loginOpts{})
	run := func(cdb []byte, readLen int) scsiResult {
		t.Helper()
		itt, cmdSN, ch := in.newTask(false)
		defer in.done(itt)
		p := in.cmdPDU(itt, cmdSN, cdb, nil, readLen)
		p.bhs[9] = 1 // LUN 1
		if err := in.send(p); err != nil {
			t.Fatal(err)
		}
		res, err := in.await(itt, ch, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := run(make([]byte, 6), 0); res.status != byte(scsi.StatusCheckCondition) || len(res.sense) < 14 || res.sense[12] != 0x25 {
		t.Fatalf("TEST UNIT READY of LUN 1: status 0x%x sense % x", res.status, res.sense)
	}
	if res := run([]byte{0x12, 0, 0, 0, 96, 0}, 96); res.status != 0 || len(res.data) == 0 || res.data[0] != 0x7F {
		t.Fatalf("INQUIRY of LUN 1: status 0x%x data % x", res.status, res.data)
	}
}

// TestDataInSequences: Data-In PDUs fit the initiator's
// MaxRecvDataSegmentLength, number DataSN from 0, and end a sequence (F)
// at least every MaxBurstLength bytes, even when the two do not divide.
func TestDataInSequences(t *testing.T) {
	_, addr := startGated(t, -1)
	in := login(t, addr, loginOpts{maxRecv: 100000})
	data := pattern(11, 1<<20)
	if res, err := in.command(write10(0, 2048), data, 0); err != nil || res.status != 0 {
		t.Fatalf("write: %v", err)
	}
	itt, cmdSN, ch := in.newTask(false)
	defer in.done(itt)
	if err := in.send(in.cmdPDU(itt, cmdSN, read10(0, 2048), nil, len(data))); err != nil {
		t.Fatal(err)
	}
	var got []byte
	seq, sn := 0, uint32(0)
	for {
		p := <-ch
		if p == nil || p.opcode() != opDataIn {
			t.Fatalf("want Data-In, got %v", p)
		}
		if len(p.data) > 100000 || p.u32(36) != sn || int(p.u32(40)) != len(got) {
			t.Fatalf("Data-In of %d bytes, DataSN %d (want %d), offset %d (want %d)", len(p.data), p.u32(36), sn, p.u32(40), len(got))
		}
		sn++
		got = append(got, p.data...)
		seq += len(p.data)
		if seq > 262144 {
			t.Fatalf("a Data-In sequence of %d bytes, over MaxBurstLength", seq)
		}
		if p.final() {
			seq = 0
		}
		if p.bhs[1]&0x01 != 0 {
			break
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
}

// TestSPC2ReservationNexusLoss: an SPC-2 reservation (RESERVE (6)) of one
// session keeps another out until the holder's I_T nexus ends (logout,
// connection loss, reinstatement) or a LUN or target reset releases it.
func TestSPC2ReservationNexusLoss(t *testing.T) {
	reserve6, release6 := []byte{0x16, 0, 0, 0, 0, 0}, []byte{0x17, 0, 0, 0, 0, 0}
	holderISID := [6]byte{0x80, 0, 0, 0, 0, 1}
	for _, tc := range []struct {
		name string
		// end ends the reservation of holder; other may send TMFs.
		end func(t *testing.T, addr string, holder, other *testInitiator)
	}{
		{"logout", func(t *testing.T, _ string, holder, _ *testInitiator) {
			if err := holder.logout(); err != nil {
				t.Fatal(err)
			}
		}},
		{"connection loss", func(t *testing.T, _ string, holder, _ *testInitiator) { holder.nc.Close() }},
		{"reinstatement", func(t *testing.T, addr string, holder, _ *testInitiator) {
			login(t, addr, loginOpts{isid: holderISID})
			holder.waitClosed(t)
		}},
		{"LUN reset", func(t *testing.T, _ string, _, other *testInitiator) {
			if r, err := other.tmf(tmfLUNReset, reservedTag, 0); err != nil || r != tmfComplete {
				t.Fatalf("LUN RESET: %v response %d", err, r)
			}
		}},
		{"target warm reset", func(t *testing.T, _ string, _, other *testInitiator) {
			if r, err := other.tmf(tmfTargetWarmReset, reservedTag, 0); err != nil || r != tmfComplete {
				t.Fatalf("TARGET WARM RESET: %v response %d", err, r)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startGated(t, -1)
			holder := login(t, addr, loginOpts{isid: holderISID})
			other := login(t, addr, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 2}})
			for i, want := range []byte{0, 0} { // twice: the holder may reserve again
				if res, err := holder.command(reserve6, nil, 0); err != nil || res.status != want {
					t.Fatalf("RESERVE %d: %v status 0x%x", i, err, res.status)
				}
			}
			conflict := byte(scsi.StatusReservationConflict)
			for _, cdb := range [][]byte{reserve6, read10(0, 1)} {
				if res, err := other.command(cdb, nil, 512); err != nil || res.status != conflict {
					t.Fatalf("op 0x%02x of the other session: %v status 0x%x", cdb[0], err, res.status)
				}
			}
			// RELEASE of a non-holder does nothing; INQUIRY passes.
			if res, err := other.command(release6, nil, 0); err != nil || res.status != 0 {
				t.Fatalf("RELEASE of the other session: %v status 0x%x", err, res.status)
			}
			inquiry := []byte{0x12, 0, 0, 0, 96, 0}
			if res, err := other.command(inquiry, nil, 96); err != nil || res.status != 0 {
				t.Fatalf("INQUIRY of the other session: %v status 0x%x", err, res.status)
			}
			if res, err := other.command(reserve6, nil, 0); err != nil || res.status != conflict {
				t.Fatalf("RESERVE of the other session after its RELEASE: %v status 0x%x", err, res.status)
			}

			tc.end(t, addr, holder, other)

			// The target learns of a lost connection or logout after
			// the initiator does: retry until the reservation goes
			// (a reset's unit attention comes first, once).
			deadline := time.Now().Add(30 * time.Second)
			for {
				res, err := other.command(reserve6, nil, 0)
				if err != nil {
					t.Fatal(err)
				}
				if res.status == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("RESERVE after the nexus ended: status 0x%x sense % x", res.status, res.sense)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if res, err := other.command(read10(0, 1), nil, 512); err != nil || res.status != 0 {
				t.Fatalf("read of the new holder: %v status 0x%x", err, res.status)
			}
			if res, err := other.command(release6, nil, 0); err != nil || res.status != 0 {
				t.Fatalf("RELEASE: %v status 0x%x", err, res.status)
			}
		})
	}
}

// TestLargeTransfers: a 32 MiB WRITE (16) and READ (16), the most a
// command moves; a READ into a smaller buffer than its CDB asks for
// gets what fits and an overflow residual.
func TestLargeTransfers(t *testing.T) {
	_, addr := startGated(t, -1)
	in := login(t, addr, loginOpts{})
	const blocks = 65536
	data := pattern(4, blocks*512)
	rw16 := func(op byte) []byte {
		c := make([]byte, 16)
		c[0] = op
		binary.BigEndian.PutUint32(c[10:14], blocks)
		return c
	}
	if res, err := in.command(rw16(0x8A), data, 0); err != nil || res.status != 0 {
		t.Fatalf("WRITE (16) of 32 MiB: %v status 0x%x sense % x", err, res.status, res.sense)
	}
	res, err := in.command(rw16(0x88), nil, len(data))
	if err != nil || res.status != 0 || !bytes.Equal(res.data, data) {
		t.Fatalf("READ (16) of 32 MiB: %v status 0x%x, %d bytes", err, res.status, len(res.data))
	}
	res, err = in.command(read10(0, 4), nil, 1000)
	if err != nil || res.status != 0 || !bytes.Equal(res.data, data[:1000]) || res.rflags != 0x04 || res.residual != 4*512-1000 {
		t.Fatalf("READ (10) of 4 blocks into 1000 bytes: %v status 0x%x, %d bytes, flags 0x%x residual %d",
			err, res.status, len(res.data), res.rflags, res.residual)
	}
}

// A LUN reset through one node is a unit attention for the sessions of
// the same vdisk on another node: two servers (two nodes) whose LUs
// share one persistent state, as the nodes share arakoon.
func TestResetAcrossNodes(t *testing.T) {
	shared := &scsi.MemPRStore{}
	dev := memDev{memdev.New(64 << 20)}
	node := func() string {
		lu := newMemLU(dev)
		lu.PR = scsi.NewReservations(shared)
		_, addr := startTargetWith(t, &memTargets{lus: map[string]*scsi.LU{"vd1": lu}}, Options{})
		return addr
	}
	a, b := node(), node()
	onA := login(t, a, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 1}})
	onB := login(t, b, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 2}})
	tur := []byte{0, 0, 0, 0, 0, 0}
	status := func(in *testInitiator, what string) byte {
		t.Helper()
		res, err := in.command(tur, nil, 0)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if res.status == 2 && (len(res.sense) < 13 || res.sense[2]&0x0F != byte(scsi.SenseUnitAttention) || res.sense[12] != 0x29) {
			t.Fatalf("%s: CHECK CONDITION with sense % x, want a reset unit attention", what, res.sense)
		}
		return res.status
	}
	if s := status(onB, "TUR on B before any reset"); s != 0 {
		t.Fatalf("TUR on B before any reset: status 0x%x", s)
	}
	if r, err := onA.tmf(tmfLUNReset, reservedTag, 0); err != nil || r != tmfComplete {
		t.Fatalf("LUN RESET on A: %v response %d", err, r)
	}
	for _, c := range []struct {
		in   *testInitiator
		what string
		want byte
	}{
		{onA, "TUR on A after its reset", 2},
		{onA, "TUR on A again", 0},
		{onB, "TUR on B after the reset through A", 2},
		{onB, "TUR on B again", 0},
	} {
		if s := status(c.in, c.what); s != c.want {
			t.Errorf("%s: status 0x%x, want 0x%x", c.what, s, c.want)
		}
	}
	// A session that logs in after the reset has nothing to report.
	late := login(t, b, loginOpts{isid: [6]byte{0x80, 0, 0, 0, 0, 3}})
	if s := status(late, "TUR of a later login"); s != 0 {
		t.Errorf("TUR of a session that logged in after the reset: status 0x%x", s)
	}
}

// DropSessions ends the sessions its predicate names (a vdisk deleted
// under them) and leaves the others.
func TestDropSessions(t *testing.T) {
	targets := &memTargets{lus: map[string]*scsi.LU{
		"vd1": newMemLU(memDev{memdev.New(1 << 20)}),
		"vd2": newMemLU(memDev{memdev.New(1 << 20)}),
	}}
	srv, addr := startTargetWith(t, targets, Options{})
	gone := login(t, addr, loginOpts{target: srv.IQN("vd1"), isid: [6]byte{0x80, 0, 0, 0, 0, 1}})
	kept := login(t, addr, loginOpts{target: srv.IQN("vd2"), isid: [6]byte{0x80, 0, 0, 0, 0, 2}})
	if n := srv.DropSessions(func(target string, _ *scsi.LU) bool { return target == "vd1" }); n != 1 {
		t.Fatalf("DropSessions dropped %d sessions, want 1", n)
	}
	gone.waitClosed(t)
	if res, err := kept.command([]byte{0, 0, 0, 0, 0, 0}, nil, 0); err != nil || res.status != 0 {
		t.Fatalf("the other target's session after the drop: %v status 0x%x", err, res.status)
	}
}
