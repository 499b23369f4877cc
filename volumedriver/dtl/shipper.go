package dtl

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// Shipper defaults.
const (
	DefaultMaxQueued   = 64 << 20
	DefaultClusterSize = 4096
	DefaultTimeout     = 10 * time.Second
	// resultGrace is how long a failed send waits for the server's
	// reason to arrive.
	resultGrace = 2 * time.Second
)

// ShipperConfig configures a Shipper.
type ShipperConfig struct {
	Addr        string      // DTL server host:port
	TLS         *tls.Config // nil: plain TCP (tests); the node passes its mutual-TLS client config
	VDisk       string      // vdisk id (namespace id, [a-z0-9-], <= 64)
	Epoch       uint64      // owner epoch; the server refuses an epoch below the vdisk's fence
	ClusterSize int         // 0: DefaultClusterSize; the server checks Data lengths with it
	MaxQueued   int64       // bytes buffered client-side before the shipper gives up (Broken); 0: DefaultMaxQueued
	Log         *slog.Logger
	// Timeout bounds a write to the server and the wait for the answer to
	// a sync request: past it the shipper is Broken (a DTL host that went
	// away without a reset, or a stuck disk). 0: DefaultTimeout.
	Timeout time.Duration
}

// Shipper ships one vdisk's changes to a DTL server over one connection.
// Begin, Append, Drop and Sync only encode into an in-memory queue; a
// writer goroutine sends the queue in large writes and a reader goroutine
// takes the server's sync acknowledgements. A Shipper that broke stays
// broken: the owner makes a new one (and resyncs).
type Shipper struct {
	cfg    ShipperConfig
	log    *slog.Logger
	ctx    context.Context // cancelled when the shipper ends
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup

	mu        sync.Mutex
	state     State
	err       error
	nc        net.Conn
	pos       uint64    // last position handed out
	q         sendQueue // encoded frames the writer has not taken yet
	scratch   []byte    // frame encoding scratch
	writing   int       // bytes the writer is sending now
	wake      chan struct{}
	requested uint64        // highest position a sync request was queued for
	durable   uint64        // highest position the server acknowledged durable
	received  uint64        // highest position the server said is in its files
	durCh     chan struct{} // closed (and replaced) when durable or the state changes
}

// NewShipper starts connecting in the background and returns at once.
// Entries appended meanwhile are queued.
func NewShipper(cfg ShipperConfig) *Shipper {
	if cfg.ClusterSize == 0 {
		cfg.ClusterSize = DefaultClusterSize
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = DefaultMaxQueued
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Shipper{
		cfg:    cfg,
		log:    cfg.Log.With("vdisk", cfg.VDisk, "dtl", cfg.Addr, "epoch", cfg.Epoch),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
		durCh:  make(chan struct{}),
	}
	// A bad config breaks the shipper at once rather than on the server.
	if err := validVDisk(cfg.VDisk); err != nil {
		s.fail(fmt.Errorf("%w: %v", ErrBroken, err))
		return s
	}
	if err := validClusterSize(cfg.ClusterSize); err != nil {
		s.fail(fmt.Errorf("%w: %v", ErrBroken, err))
		return s
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run()
	}()
	return s
}

// Begin starts a new group named tlog, after the group prev ("" if none).
// It returns the group's position, or 0 once the shipper is Broken or
// Fenced (or when the names are invalid, which breaks it).
func (s *Shipper) Begin(tlog, prev string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state >= Broken {
		return 0
	}
	if err := validGroup(tlog, false); err != nil {
		s.failLocked(fmt.Errorf("%w: begin: %v", ErrBroken, err))
		return 0
	}
	if err := validGroup(prev, true); err != nil {
		s.failLocked(fmt.Errorf("%w: begin: %v", ErrBroken, err))
		return 0
	}
	if !s.roomLocked(frameHdrSize + 2 + len(tlog) + len(prev)) {
		return 0
	}
	s.queueLocked(appendBegin(s.scratch[:0], tlog, prev))
	s.pos++
	s.kickLocked()
	return s.pos
}

// Append adds e to the current group: it copies e.Data into the queue and
// never blocks. A write of more than MaxEntryData bytes is shipped as
// several entries (and takes as many positions). It returns the position
// of its (last) entry, or 0 once the shipper is Broken or Fenced (or when
// e is malformed, which breaks it).
func (s *Shipper) Append(e Entry) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state >= Broken {
		return 0
	}
	if err := checkEntry(&e, s.cfg.ClusterSize); err != nil {
		s.failLocked(fmt.Errorf("%w: append: %v", ErrBroken, err))
		return 0
	}
	if e.Kind == Trim {
		if !s.roomLocked(frameHdrSize + entryFixed) {
			return 0
		}
		b := appendFrameHdr(s.scratch[:0], ftTrim, entryFixed)
		s.queueLocked(appendEntryHead(b, &e))
		s.pos++
		s.kickLocked()
		return s.pos
	}
	maxCount := uint32(MaxEntryData / s.cfg.ClusterSize)
	if !s.roomLocked(len(e.Data) + int(e.Count/maxCount+1)*(frameHdrSize+entryFixed) + 4*int(e.Count)) {
		return 0
	}
	for e.Count > 0 {
		part := e
		part.Count = min(e.Count, maxCount)
		part.CRCs = e.CRCs[:part.Count]
		part.Data = e.Data[:int(part.Count)*s.cfg.ClusterSize]
		b := appendFrameHdr(s.scratch[:0], ftWrite, entryBodyLen(&part))
		s.queueLocked(appendEntryHead(b, &part))
		s.q.write(part.Data)
		s.pos++
		e.Addr += uint64(part.Count)
		e.Count -= part.Count
		e.CRCs = e.CRCs[part.Count:]
		e.Data = e.Data[len(part.Data):]
	}
	s.kickLocked()
	return s.pos
}

// Drop tells the server that the group named tlog, and every group before
// it, are on the backend. It is queued in order with the entries.
func (s *Shipper) Drop(tlog string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state >= Broken {
		return
	}
	if err := validGroup(tlog, false); err != nil {
		s.failLocked(fmt.Errorf("%w: drop: %v", ErrBroken, err))
		return
	}
	if !s.roomLocked(frameHdrSize + 1 + len(tlog)) {
		return
	}
	s.queueLocked(appendName(s.scratch[:0], ftDrop, tlog))
	s.kickLocked()
}

// Sync asks the server to make every entry up to pos durable, without
// waiting.
func (s *Shipper) Sync(pos uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pos = min(pos, s.pos) // nothing beyond what was handed out
	if s.state < Broken && s.durable < pos {
		s.requestSyncLocked(pos)
	}
}

// WaitDurable asks the server to make every entry up to pos durable and
// waits until it says so. It returns an error wrapping ErrBroken if the
// shipper broke before that, ErrFenced if the server refused the epoch,
// ctx.Err() on cancel. Waiters share sync requests: one covers every
// position queued before it.
func (s *Shipper) WaitDurable(ctx context.Context, pos uint64) error {
	return s.waitFor(ctx, pos, func() uint64 { return s.durable }, true)
}

// waitFor waits until reached() (read under mu) is at pos, asking the
// server for a sync on the way if sync is set.
func (s *Shipper) waitFor(ctx context.Context, pos uint64, reached func() uint64, sync bool) error {
	for {
		s.mu.Lock()
		switch got := reached(); {
		case s.state >= Broken && (pos == 0 || pos > got):
			// Position 0 is what Append returns on a broken shipper:
			// it must not pass for durable.
			err := s.err
			s.mu.Unlock()
			return err
		case pos <= got:
			s.mu.Unlock()
			return nil
		case pos > s.pos:
			last := s.pos
			s.mu.Unlock()
			return fmt.Errorf("dtl: wait for position %d, beyond the last one handed out (%d)", pos, last)
		}
		if sync {
			s.requestSyncLocked(pos)
		}
		ch := s.durCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// State returns the shipper's state.
func (s *Shipper) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Err returns why the shipper broke or was fenced, nil while it is fine.
func (s *Shipper) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Done is closed once the shipper is Broken or Fenced.
func (s *Shipper) Done() <-chan struct{} { return s.done }

// Close stops the shipper (it ends Broken); queued entries are not
// guaranteed to be sent.
func (s *Shipper) Close() {
	s.fail(fmt.Errorf("%w: %w", ErrBroken, errClosed))
	s.wg.Wait()
}

// roomLocked checks that n more bytes fit in the queue, and breaks the
// shipper when they do not: a DTL that cannot keep up must not grow the
// owner's memory without bound.
func (s *Shipper) roomLocked(n int) bool {
	if int64(s.q.size+s.writing+n) <= s.cfg.MaxQueued {
		return true
	}
	s.failLocked(fmt.Errorf("%w: send queue over its limit of %d bytes (the DTL does not keep up)", ErrBroken, s.cfg.MaxQueued))
	return false
}

// queueLocked queues an encoded frame (or its head) and keeps the
// scratch buffer it was encoded in.
func (s *Shipper) queueLocked(b []byte) {
	s.q.write(b)
	s.scratch = b[:0]
}

func (s *Shipper) kickLocked() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// requestSyncLocked queues a sync request covering pos unless one is
// already queued or in flight.
func (s *Shipper) requestSyncLocked(pos uint64) {
	if s.requested >= pos {
		return
	}
	if !s.roomLocked(frameHdrSize + 8) {
		return
	}
	if s.requested <= s.durable && s.nc != nil {
		// The first outstanding request: the answer is due within the
		// timeout.
		s.nc.SetReadDeadline(time.Now().Add(s.cfg.Timeout))
	}
	s.queueLocked(appendU64Frame(s.scratch[:0], ftSync, s.pos))
	s.requested = s.pos
	s.kickLocked()
}

func (s *Shipper) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(err)
}

// failLocked ends the shipper with err (wrapping ErrBroken or ErrFenced).
func (s *Shipper) failLocked(err error) {
	if s.state >= Broken {
		return
	}
	s.state = Broken
	if errors.Is(err, ErrFenced) {
		s.state = Fenced
	}
	s.err = err
	close(s.done)
	close(s.durCh)
	s.durCh = make(chan struct{})
	s.cancel()
	if s.nc != nil {
		s.nc.Close()
	}
	s.q.reset()
	if !errors.Is(err, errClosed) {
		s.log.Warn("dtl: shipper stopped", "state", s.state.String(), "err", err)
	}
}

// errClosed is not logged: the owner closed the shipper.
var errClosed = errors.New("closed by its owner")

// run connects, then sends the queue until the shipper ends.
func (s *Shipper) run() {
	ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
	nc, br, err := dial(ctx, s.cfg.Addr, s.cfg.TLS, appendVDiskReq(nil, ftShip, vdiskReq{
		epoch: s.cfg.Epoch, clusterSize: uint32(s.cfg.ClusterSize), vdisk: s.cfg.VDisk}))
	if err == nil {
		err = s.opened(ctx, nc, br)
	}
	cancel()
	if err != nil {
		if nc != nil {
			nc.Close()
		}
		s.fail(err)
		return
	}
	s.mu.Lock()
	if s.state >= Broken {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.nc, s.state = nc, Connected
	if s.requested > s.durable {
		nc.SetReadDeadline(time.Now().Add(s.cfg.Timeout))
	}
	s.mu.Unlock()
	s.log.Debug("dtl: shipper connected")
	readDone := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(readDone)
		s.readLoop(br)
	}()
	for {
		s.mu.Lock()
		for s.q.size == 0 && s.state == Connected {
			s.mu.Unlock()
			select {
			case <-s.wake:
			case <-s.ctx.Done():
			}
			s.mu.Lock()
		}
		if s.state != Connected {
			s.mu.Unlock()
			return
		}
		s.writing = s.q.size
		chunks := s.q.take()
		s.mu.Unlock()

		nc.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
		bufs := net.Buffers(slices.Clone(chunks)) // WriteTo consumes its slice
		_, err := bufs.WriteTo(nc)

		s.mu.Lock()
		s.writing = 0
		if s.state == Connected {
			s.q.put(chunks)
		}
		s.mu.Unlock()
		if err != nil {
			// A server that ends the session (a fence) says why in a
			// result before it closes; a send failing on the closed
			// connection must not hide it, so give the reader a moment
			// to get there first.
			select {
			case <-readDone:
			case <-time.After(resultGrace):
			}
			s.fail(fmt.Errorf("%w: send to %s: %w", ErrBroken, s.cfg.Addr, err))
			return
		}
	}
}

// opened reads the server's answer to the Ship request.
func (s *Shipper) opened(ctx context.Context, nc net.Conn, br *bufio.Reader) error {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetReadDeadline(dl)
	}
	var buf []byte
	t, body, err := readServerFrame(br, &buf)
	if err != nil {
		return fmt.Errorf("%w: open session on %s: %w", ErrBroken, s.cfg.Addr, ctxErr(ctx, err))
	}
	if t != ftResult {
		return fmt.Errorf("%w: open session on %s: %w: unexpected %s frame", ErrBroken, s.cfg.Addr, errProtocol, t)
	}
	st, msg, err := decodeResult(body)
	if err != nil {
		return fmt.Errorf("%w: open session on %s: %w", ErrBroken, s.cfg.Addr, err)
	}
	if st != statusOK {
		return &resultError{op: "ship " + s.cfg.VDisk, status: st, msg: msg}
	}
	nc.SetReadDeadline(time.Time{})
	return nil
}

// readLoop takes the server's sync acknowledgements until the connection
// ends; a result frame on an open session is the server ending it.
func (s *Shipper) readLoop(br *bufio.Reader) {
	var buf []byte
	for {
		t, body, err := readServerFrame(br, &buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = fmt.Errorf("no answer to a sync request within %s", s.cfg.Timeout)
			}
			s.fail(fmt.Errorf("%w: connection to %s: %w", ErrBroken, s.cfg.Addr, err))
			return
		}
		switch t {
		case ftSyncAck, ftRecvAck:
			pos, err := decodeU64(body)
			if err == nil {
				if t == ftSyncAck {
					err = s.acked(pos)
				} else {
					err = s.receivedUpTo(pos)
				}
			}
			if err != nil {
				s.fail(fmt.Errorf("%w: from %s: %w", ErrBroken, s.cfg.Addr, err))
				return
			}
		case ftResult:
			st, msg, err := decodeResult(body)
			if err != nil {
				s.fail(fmt.Errorf("%w: from %s: %w", ErrBroken, s.cfg.Addr, err))
			} else {
				s.fail(&resultError{op: "ship " + s.cfg.VDisk, status: st, msg: msg})
			}
			return
		default:
			s.fail(fmt.Errorf("%w: from %s: %w: unexpected %s frame", ErrBroken, s.cfg.Addr, errProtocol, t))
			return
		}
	}
}

// receivedUpTo records that the server has everything up to pos in its
// files and wakes the waiters.
func (s *Shipper) receivedUpTo(pos uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos > s.pos || pos < s.received {
		return fmt.Errorf("%w: %s received position %d (sent %d, received before %d)", ErrBroken, s.cfg.Addr, pos, s.pos, s.received)
	}
	s.received = pos
	close(s.durCh)
	s.durCh = make(chan struct{})
	return nil
}

// WaitReceived returns once the server has every entry up to pos in its
// files (written, maybe not fdatasynced: it survives the loss of the
// owner's host and of the server's process), or an error as WaitDurable.
// The caller bounds the wait with ctx.
func (s *Shipper) WaitReceived(ctx context.Context, pos uint64) error {
	return s.waitFor(ctx, pos, func() uint64 { return max(s.received, s.durable) }, false)
}

// acked records that the server made everything up to pos durable and
// wakes the waiters.
func (s *Shipper) acked(pos uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pos > s.requested || pos < s.durable {
		return fmt.Errorf("%w: %s acknowledged position %d (requested %d, durable %d)", ErrBroken, s.cfg.Addr, pos, s.requested, s.durable)
	}
	s.durable = pos
	if s.nc != nil {
		if s.requested > s.durable {
			s.nc.SetReadDeadline(time.Now().Add(s.cfg.Timeout))
		} else {
			s.nc.SetReadDeadline(time.Time{})
		}
	}
	close(s.durCh)
	s.durCh = make(chan struct{})
	return nil
}
