package remote

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

const (
	serverReadBuf  = 128 << 10
	serverWriteBuf = 128 << 10
)

// sconn is one peer connection on the server side.
type sconn struct {
	srv     *Server
	nc      net.Conn
	log     *slog.Logger
	ctx     context.Context // cancelled when the connection is torn down
	cancel  context.CancelFunc
	br      *bufio.Reader
	limit   *iopool.InflightLimit
	overCap bool // accepted at the cap: answer the hello with "too many connections"
	// version is the protocol version agreed in the hello: the peer's,
	// which may be older than ours.
	version uint16

	devMu sync.Mutex
	devs  map[string]*devEntry

	// Reply side. The hello and go-away state is guarded by w's lock.
	w          *iopool.ReplyWriter
	helloDone  bool // hello sent: replies and go-away may follow
	goAwayWant bool
	goAwaySent bool
}

func newSconn(s *Server, ctx context.Context, nc net.Conn) *sconn {
	cctx, cancel := context.WithCancel(ctx)
	c := &sconn{
		srv:    s,
		nc:     nc,
		ctx:    cctx,
		cancel: cancel,
		br:     bufio.NewReaderSize(nc, serverReadBuf),
		limit:  iopool.NewInflightLimit(s.opts.MaxInFlight, s.opts.MaxInFlightBytes),
		devs:   make(map[string]*devEntry),
	}
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	c.log = s.log.With("peer", remote)
	c.w = iopool.NewReplyWriter(bufio.NewWriterSize(nc, serverWriteBuf), func(err error) {
		if c.ctx.Err() == nil {
			c.log.Debug("remote: write failed; closing connection", "err", err)
		}
		c.cancel()
	})
	return c
}

// Serve runs the connection to its end.
func (c *sconn) Serve() {
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer func() {
		stop()
		c.cancel()
		c.nc.Close()
		c.releaseAll()
	}()
	if err := c.hello(); err != nil {
		level := connsrv.HandshakeEndLevel(c.ctx, err)
		c.log.Log(context.Background(), level, "remote: connection refused in hello", "err", err)
		return
	}
	c.transmit()
}

// hello exchanges hellos (and the TLS handshake, which the first read
// drives) under a deadline.
func (c *sconn) hello() error {
	c.nc.SetDeadline(time.Now().Add(c.srv.opts.HelloTimeout))
	var b [helloSize]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return err
	}
	h, err := decodeHello(b[:])
	if err != nil {
		return err
	}
	// A peer of an older version we still speak is answered in its
	// version (which it checks); a newer one is refused with ours, so that
	// it can try again in it.
	status, reply := uint8(helloOK), h.version
	switch {
	case h.version < MinVersion || h.version > Version:
		status, reply = helloBadVersion, Version
		err = fmt.Errorf("%w: peer speaks protocol version %d, this server speaks %d to %d", ErrVersion, h.version, MinVersion, Version)
	case c.overCap:
		status = helloTooManyConn
		err = fmt.Errorf("at the connection limit of %d", c.srv.opts.MaxConns)
		c.log.Warn("remote: connection refused: at the connection limit", "limit", c.srv.opts.MaxConns)
	}
	c.w.Lock()
	_, werr := c.nc.Write(appendHello(b[:0], hello{version: reply, status: status}))
	c.version = reply
	if err == nil && werr == nil {
		c.helloDone = true
		if c.goAwayWant {
			c.sendGoAwayLocked()
		}
	}
	c.w.Unlock()
	if err != nil {
		return err
	}
	if werr != nil {
		return werr
	}
	c.nc.SetDeadline(time.Time{})
	return nil
}

// Drain tells the peer to go away: to send nothing new on this connection
// (Shutdown). The peer closes it once its requests are answered.
func (c *sconn) Drain() {
	c.w.Lock()
	defer c.w.Unlock()
	c.goAwayWant = true
	if c.helloDone {
		c.sendGoAwayLocked()
	}
}

// Close tears the connection down at once.
func (c *sconn) Close() {
	c.cancel()
	c.nc.Close()
}

func (c *sconn) sendGoAwayLocked() {
	if c.goAwaySent || c.w.Err() != nil {
		return
	}
	c.goAwaySent = true
	c.w.Write(appendReplyHdr(c.w.Buf(replyHdrSize), replyHdr{handle: 0}))
	c.w.Flush()
}

// job is one decoded request handed to a worker.
type job struct {
	h    reqHdr
	name [MaxNameLen]byte
	buf  *[]byte // Write payload; CompareAndWrite's compare then write halves
	cost int64
}

// readRequestRest decodes the request header hb of a connection speaking
// version v and reads the name that follows into j. The payload is left
// for the caller to read once it has room for it.
func readRequestRest(br io.Reader, hb []byte, name *[MaxNameLen]byte, v uint16) (reqHdr, error) {
	h, err := decodeReqHdr(hb, v)
	if err != nil {
		return h, err
	}
	if _, err := io.ReadFull(br, name[:h.nameLen]); err != nil {
		return h, fmt.Errorf("read request name: %w", err)
	}
	return h, nil
}

// transmit reads requests and hands each to a worker until the peer closes
// the connection or it fails; then it waits for the requests in flight.
func (c *sconn) transmit() {
	var hb [reqHdrSize]byte
	var name [MaxNameLen]byte
	workers := iopool.NewWorkers(func(j job) { c.handle(&j) })
	graceful := false
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			switch {
			case err == io.EOF:
				graceful = true
				c.log.Debug("remote: peer closed the connection")
			case errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil:
			default:
				c.log.Info("remote: read request failed; closing connection", "err", err)
			}
			break
		}
		h, err := readRequestRest(c.br, hb[:], &name, c.version)
		if err != nil {
			if errors.Is(err, errProtocol) {
				c.log.Warn("remote: bad request; closing connection", "err", err)
			} else {
				c.log.Info("remote: read request failed; closing connection", "err", err)
			}
			break
		}
		// j stays on the stack: the name is copied out of the buffer
		// that the reader shares with io.ReadFull.
		j := job{h: h, name: name}
		hasPayload := h.op == opWrite || h.op == opCompareAndWrite
		if h.op == opRead || hasPayload {
			j.cost = int64(h.length)
		}
		c.limit.Acquire(j.cost)
		if hasPayload && h.length > 0 {
			j.buf = c.srv.pool.Get(int(h.length))
			if _, err := io.ReadFull(c.br, *j.buf); err != nil {
				c.srv.pool.Put(j.buf)
				c.limit.Release(j.cost)
				c.log.Info("remote: read write payload failed; closing connection", "err", err)
				break
			}
		}
		workers.Go(j)
	}
	if !graceful {
		c.cancel()
	}
	workers.Wait()
	c.w.Lock()
	c.w.Flush()
	c.w.Unlock()
}

// handle serves one request and sends its reply.
func (c *sconn) handle(j *job) {
	defer c.limit.Release(j.cost)
	defer c.srv.pool.Put(j.buf)
	name := j.name[:j.h.nameLen]
	var err error
	// A cached device that reports ErrNotOwner may be stale (the vdisk
	// left and came back, or was reopened): open the name again once.
	for attempt := 0; ; attempt++ {
		var e *devEntry
		e, err = c.acquire(name)
		if err != nil {
			break
		}
		err = c.run(j, e.dev)
		gone := err != nil && (errors.Is(err, ErrNotOwner) || errors.Is(err, ErrNotFound))
		if gone {
			c.evict(e)
		}
		c.unref(e)
		if !gone || attempt > 0 || !errors.Is(err, ErrNotOwner) {
			break
		}
	}
	if err != nil {
		c.sendError(j, err)
	}
}

// reqError is an error found by the server's own checks.
type reqError struct {
	status Status
	msg    string
}

func (e *reqError) Error() string { return e.msg }

// run carries a request out on dev and, on success, sends the reply.
func (c *sconn) run(j *job, dev Device) error {
	h := &j.h
	off, n := int64(h.offset), int64(h.length)
	if h.op == opCompareAndWrite {
		n /= 2 // the payload carries the bytes to compare, then those to write
	}
	if h.op != opSize && h.op != opFlush && off+n > dev.Size() {
		if h.op == opRead || h.op == opBlockStatus {
			return &reqError{StatusInvalid, "range beyond the end of the vdisk"}
		}
		return &reqError{StatusNoSpace, "range beyond the end of the vdisk"}
	}
	switch h.op {
	case opWrite, opTrim, opWriteZeroes, opCompareAndWrite:
		if ro, ok := dev.(ReadOnlyDevice); ok && ro.ReadOnly() {
			return &reqError{StatusReadOnly, "vdisk is read-only"}
		}
	}
	fua := h.flags&flagFUA != 0
	switch h.op {
	case opSize:
		in := Info{Size: dev.Size()}
		if ro, ok := dev.(ReadOnlyDevice); ok {
			in.ReadOnly = ro.ReadOnly()
		}
		if fz, ok := dev.(FastZeroDevice); ok {
			in.FastZero = fz.FastZero()
		}
		var b [sizeInfoSize]byte
		c.sendOK(h.handle, appendSizeInfo(b[:0], in))
		return nil
	case opRead:
		buf := c.srv.pool.Get(int(n))
		defer c.srv.pool.Put(buf)
		if n > 0 {
			if err := dev.ReadAt(c.ctx, *buf, off); err != nil {
				return err
			}
		}
		c.sendOK(h.handle, *buf)
		return nil
	case opWrite:
		if n > 0 {
			if err := dev.WriteAt(c.ctx, *j.buf, off, fua); err != nil {
				return err
			}
		}
	case opFlush:
		if err := dev.Flush(c.ctx); err != nil {
			return err
		}
	case opTrim:
		if n > 0 {
			if err := dev.Trim(c.ctx, off, n); err != nil {
				return err
			}
		}
	case opWriteZeroes:
		if n > 0 {
			if err := dev.WriteZeroes(c.ctx, off, n, h.flags&flagNoHole != 0, fua); err != nil {
				return err
			}
		}
	case opCompareAndWrite:
		cw, ok := dev.(CompareAndWriter)
		if !ok {
			return &reqError{StatusInvalid, "the vdisk's device does not compare and write"}
		}
		miscompare := int64(-1)
		if n > 0 {
			var err error
			if miscompare, err = cw.CompareAndWrite(c.ctx, off, (*j.buf)[:n], (*j.buf)[n:], fua); err != nil {
				return err
			}
			if miscompare < -1 || miscompare >= n {
				return &reqError{StatusIO, fmt.Sprintf("device reported a miscompare at %d of %d bytes", miscompare, n)}
			}
		}
		var b [cawReplySize]byte
		c.sendOK(h.handle, appendCAWReply(b[:0], miscompare))
		return nil
	case opBlockStatus:
		if n == 0 {
			return &reqError{StatusInvalid, "block status of an empty range"}
		}
		exts, err := dev.BlockStatus(c.ctx, off, n)
		if err != nil {
			return err
		}
		buf := c.srv.pool.Get(min(len(exts), MaxExtents) * extentSize)
		defer c.srv.pool.Put(buf)
		b, cnt := appendExtents((*buf)[:0], exts, n)
		if cnt == 0 {
			return &reqError{StatusIO, "device returned no extents"}
		}
		c.sendOK(h.handle, b)
		return nil
	}
	c.sendOK(h.handle, nil)
	return nil
}

// sendError answers a request with the status for err.
func (c *sconn) sendError(j *job, err error) {
	var st Status
	var re *reqError
	switch {
	case errors.As(err, &re):
		st = re.status
	case errors.Is(err, ErrNotOwner):
		st = StatusNotOwner
	case errors.Is(err, ErrNotFound):
		st = StatusNotFound
	case c.ctx.Err() != nil:
		st = StatusIO
	default:
		st = c.srv.opts.Classify(err)
		if st == StatusOK {
			st = StatusIO
		}
	}
	if st == StatusIO && re == nil && c.ctx.Err() == nil {
		c.log.Warn("remote: device error", "op", j.h.op.String(), "vdisk", string(j.name[:j.h.nameLen]),
			"offset", j.h.offset, "length", j.h.length, "err", err)
	}
	msg := err.Error()
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
	}
	if !c.w.Lock() {
		c.w.Unlock()
		return
	}
	c.w.Write(appendReplyHdr(c.w.Buf(replyHdrSize), replyHdr{handle: j.h.handle, status: st, msgLen: uint16(len(msg))}))
	c.w.WriteString(msg)
	c.w.Unlock()
}

// sendOK answers a request successfully with data. Small data goes into the
// buffered writer with the header; large data is written through.
func (c *sconn) sendOK(handle uint64, data []byte) {
	if !c.w.Lock() {
		c.w.Unlock()
		return
	}
	c.w.Write(appendReplyHdr(c.w.Buf(replyHdrSize), replyHdr{handle: handle, dataLen: uint32(len(data))}))
	if len(data) > 0 {
		c.w.Write(data)
	}
	c.w.Unlock()
}
