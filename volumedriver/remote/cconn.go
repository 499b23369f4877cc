package remote

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	clientReadBuf  = 64 << 10
	clientWriteBuf = 64 << 10
)

// cconn is one pipelined client connection. Requests are written whole
// under the send lock into a buffered writer, flushed by the last sender
// queued, so that concurrent small requests share a syscall; one reader
// goroutine matches replies to calls by handle.
type cconn struct {
	c          *Client
	nc         net.Conn
	br         *bufio.Reader
	readerDone chan struct{}
	version    uint16 // agreed in the hello

	// dead: broken or told to go away; pick another connection.
	dead atomic.Bool

	// sem is the send lock, a channel so that waiting for it honours the
	// caller's context. queued counts the senders waiting for it.
	sem    chan struct{}
	queued atomic.Int32
	bw     *bufio.Writer

	mu       sync.Mutex
	pending  map[uint64]*call
	next     uint64
	err      error // why the connection broke; set once
	draining bool  // the server said go away: close when pending is empty
}

func newCconn(c *Client, nc net.Conn, version uint16) *cconn {
	cc := &cconn{
		c:          c,
		nc:         nc,
		version:    version,
		br:         bufio.NewReaderSize(nc, clientReadBuf),
		bw:         bufio.NewWriterSize(nc, clientWriteBuf),
		sem:        make(chan struct{}, 1),
		pending:    make(map[uint64]*call),
		readerDone: make(chan struct{}),
	}
	go cc.reader()
	return cc
}

// roundTrip registers, sends and waits for cl. It returns errConnGone,
// having sent nothing, when the connection cannot take new requests.
func (cc *cconn) roundTrip(ctx context.Context, cl *call) error {
	cc.mu.Lock()
	if cc.err != nil || cc.draining {
		cc.mu.Unlock()
		return errConnGone
	}
	cc.next++
	cl.handle = cc.next
	cc.pending[cl.handle] = cl
	cc.mu.Unlock()

	if err := cc.send(ctx, cl); err != nil {
		return err
	}
	select {
	case <-cl.done:
		return cc.c.result(cl)
	case <-ctx.Done():
	}
	if cc.forget(cl) {
		return fmt.Errorf("remote %s %q: %w", cl.op, cl.name, ctx.Err())
	}
	// The reader holds the call: its reply is being read (into the
	// caller's buffer, which must not be touched once we return). Break
	// the connection so that a stalled reply cannot hold us.
	select {
	case <-cl.done:
	default:
		cc.fail(fmt.Errorf("reply abandoned: %w", ctx.Err()))
		<-cl.done
	}
	if err := cc.c.result(cl); err != nil {
		return fmt.Errorf("remote %s %q: %w", cl.op, cl.name, ctx.Err())
	}
	return nil
}

// forget drops cl from the pending calls; it reports false when the reader
// or fail took it first (and will complete it).
func (cc *cconn) forget(cl *call) bool {
	cc.mu.Lock()
	if cc.pending[cl.handle] != cl {
		cc.mu.Unlock()
		return false
	}
	delete(cc.pending, cl.handle)
	closeNow := cc.draining && len(cc.pending) == 0
	cc.mu.Unlock()
	if closeNow {
		cc.nc.Close()
	}
	return true
}

// send writes cl's request. On failure the connection is broken and cl is
// completed with the error (send returns nil: the caller waits for it),
// except when ctx ended before anything was written.
func (cc *cconn) send(ctx context.Context, cl *call) error {
	cc.queued.Add(1)
	select {
	case cc.sem <- struct{}{}:
		cc.queued.Add(-1)
	case <-ctx.Done():
		cc.queued.Add(-1)
		if cc.forget(cl) {
			return fmt.Errorf("remote %s %q: %w", cl.op, cl.name, ctx.Err())
		}
		return nil
	}
	// A peer that stops reading blocks the write: the caller's context
	// then interrupts it through the write deadline, and a frame half
	// written breaks the connection. A write that completed keeps it: the
	// context may end just after the request went out (the reply is then
	// dropped by the reader), which must not cost the connection.
	var stop func() bool
	var interrupted chan struct{}
	if ctx.Done() != nil {
		interrupted = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			cc.nc.SetWriteDeadline(time.Now())
			close(interrupted)
		})
	}
	err := cc.writeReq(cl)
	if err == nil && cc.queued.Load() == 0 && cc.bw.Buffered() > 0 {
		err = cc.bw.Flush()
	}
	if stop != nil && !stop() {
		<-interrupted
		cc.nc.SetWriteDeadline(time.Time{})
		if err != nil {
			err = fmt.Errorf("send abandoned: %w (%w)", ctx.Err(), err)
		}
	}
	<-cc.sem
	if err != nil {
		cc.fail(fmt.Errorf("send: %w", err))
	}
	return nil
}

func (cc *cconn) writeReq(cl *call) error {
	if cc.bw.Available() < reqHdrSize+MaxNameLen {
		if err := cc.bw.Flush(); err != nil {
			return err
		}
	}
	b := appendReqHdr(cc.bw.AvailableBuffer(), reqHdr{
		op: cl.op, flags: cl.flags, nameLen: uint8(len(cl.name)),
		length: cl.length, handle: cl.handle, offset: uint64(cl.off),
	})
	b = append(b, cl.name...)
	if _, err := cc.bw.Write(b); err != nil {
		return err
	}
	for _, p := range [...][]byte{cl.wdata, cl.wdata2} {
		if len(p) > 0 {
			if _, err := cc.bw.Write(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// fail breaks the connection and completes every pending call with
// ErrUnavailable.
func (cc *cconn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = err
	cc.dead.Store(true)
	calls := cc.pending
	cc.pending = nil
	draining := cc.draining
	cc.mu.Unlock()
	cc.nc.Close()
	if len(calls) > 0 || !draining && !errors.Is(err, errClientClosed) {
		cc.c.log.Debug("remote: connection broken", "err", err, "pending", len(calls))
	}
	werr := fmt.Errorf("%w: %s: %w", ErrUnavailable, cc.c.addr, err)
	for _, cl := range calls {
		cl.err = werr
		cl.done <- struct{}{}
	}
}

// reader reads replies until the connection breaks.
func (cc *cconn) reader() {
	defer close(cc.readerDone)
	var hb [replyHdrSize]byte
	var msg [MaxMessageLen]byte
	var small [sizeInfoSize]byte
	for {
		if _, err := io.ReadFull(cc.br, hb[:]); err != nil {
			cc.fail(fmt.Errorf("read reply: %w", err))
			return
		}
		h, err := decodeReplyHdr(hb[:])
		if err != nil {
			cc.fail(err)
			return
		}
		if h.handle == 0 {
			// Go away: the server is shutting down. Send nothing new here,
			// close once the requests sent are answered.
			if _, err := cc.br.Discard(int(h.msgLen) + int(h.dataLen)); err != nil {
				cc.fail(fmt.Errorf("read reply: %w", err))
				return
			}
			cc.c.log.Debug("remote: node asked to go away")
			cc.dead.Store(true)
			cc.mu.Lock()
			cc.draining = true
			closeNow := len(cc.pending) == 0
			cc.mu.Unlock()
			if closeNow {
				cc.nc.Close()
			}
			continue
		}
		cc.mu.Lock()
		cl := cc.pending[h.handle]
		delete(cc.pending, h.handle)
		cc.mu.Unlock()
		if cl == nil {
			// Abandoned by its caller (or a bogus handle): skip it.
			if _, err := cc.br.Discard(int(h.msgLen) + int(h.dataLen)); err != nil {
				cc.fail(fmt.Errorf("read reply: %w", err))
				return
			}
			continue
		}
		if err := cc.readReply(cl, h, msg[:], small[:]); err != nil {
			cl.err = fmt.Errorf("%w: %s: %w", ErrUnavailable, cc.c.addr, err)
			cl.done <- struct{}{}
			cc.fail(err)
			return
		}
		cl.status = h.status
		cl.done <- struct{}{}
		cc.mu.Lock()
		closeNow := cc.draining && len(cc.pending) == 0
		cc.mu.Unlock()
		if closeNow {
			cc.nc.Close()
		}
	}
}

// readReply reads the rest of cl's reply.
func (cc *cconn) readReply(cl *call, h replyHdr, msg, small []byte) error {
	if h.msgLen > 0 {
		m := msg[:h.msgLen]
		if _, err := io.ReadFull(cc.br, m); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		cl.msg = string(m)
	}
	if h.status != StatusOK {
		return nil
	}
	if err := checkReplyData(cl.op, cl.length, h.dataLen); err != nil {
		return err
	}
	switch cl.op {
	case opRead:
		if _, err := io.ReadFull(cc.br, cl.rbuf); err != nil {
			return fmt.Errorf("read reply data: %w", err)
		}
	case opSize:
		if _, err := io.ReadFull(cc.br, small); err != nil {
			return fmt.Errorf("read reply data: %w", err)
		}
		in, err := decodeSizeInfo(small)
		if err != nil {
			return err
		}
		cl.info = in
	case opBlockStatus:
		buf := cc.c.pool.Get(int(h.dataLen))
		defer cc.c.pool.Put(buf)
		if _, err := io.ReadFull(cc.br, *buf); err != nil {
			return fmt.Errorf("read reply data: %w", err)
		}
		exts, err := decodeExtents(*buf, int64(cl.length))
		if err != nil {
			return err
		}
		cl.exts = exts
	case opCompareAndWrite:
		b := small[:cawReplySize]
		if _, err := io.ReadFull(cc.br, b); err != nil {
			return fmt.Errorf("read reply data: %w", err)
		}
		m, err := decodeCAWReply(b, int64(cl.length/2))
		if err != nil {
			return err
		}
		cl.miscompare = m
	}
	return nil
}
