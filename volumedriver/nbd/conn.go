package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/connsrv"
	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

const (
	readBufSize  = 128 << 10
	writeBufSize = 128 << 10
)

// conn is one client connection.
type conn struct {
	srv    *Server
	nc     net.Conn
	log    *slog.Logger
	ctx    context.Context // cancelled when the connection is torn down
	cancel context.CancelFunc
	br     *bufio.Reader

	// stopping is set by Shutdown; the reader then stops at the next request.
	stopping atomic.Bool

	// Negotiation state.
	fixed       bool
	noZeroes    bool
	structured  bool
	metaAlloc   bool   // base:allocation selected by the last SET_META_CONTEXT
	metaExport  string // the export name that SET_META_CONTEXT referred to
	metaWasSet  bool
	exportName  string
	dev         Device
	release     func()
	fastZero    bool
	st          exportState
	limit       *iopool.InflightLimit
	releaseOnce sync.Once

	// bw is written by the handshake alone, then by w, reply by reply.
	bw *bufio.Writer
	w  *iopool.ReplyWriter
}

func newConn(s *Server, ctx context.Context, nc net.Conn) *conn {
	cctx, cancel := context.WithCancel(ctx)
	c := &conn{
		srv:    s,
		nc:     nc,
		ctx:    cctx,
		cancel: cancel,
		br:     bufio.NewReaderSize(nc, readBufSize),
		bw:     bufio.NewWriterSize(nc, writeBufSize),
		limit:  iopool.NewInflightLimit(s.opts.MaxInFlight, s.opts.MaxInFlightBytes),
	}
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		remote = a.String()
	}
	c.log = s.log.With("remote", remote)
	c.w = iopool.NewReplyWriter(c.bw, func(err error) {
		if c.ctx.Err() == nil {
			c.log.Debug("nbd: write failed; closing connection", "err", err)
		}
		c.cancel()
	})
	return c
}

// Serve runs the connection to its end.
func (c *conn) Serve() {
	stop := context.AfterFunc(c.ctx, func() { c.nc.Close() })
	defer func() {
		stop()
		c.cancel()
		c.nc.Close()
		c.releaseDevice()
	}()
	if to := c.srv.opts.HandshakeTimeout; to > 0 {
		c.nc.SetDeadline(time.Now().Add(to))
	}
	if c.stopping.Load() {
		// Shutdown came before the deadline above was set.
		return
	}
	if err := c.handshake(); err != nil {
		level := connsrv.HandshakeEndLevel(c.ctx, err)
		c.log.Log(c.ctx, level, "nbd: handshake ended", "err", err)
		return
	}
	if c.dev == nil {
		c.log.Debug("nbd: client aborted negotiation")
		return
	}
	c.nc.SetDeadline(time.Time{})
	if c.stopping.Load() {
		// Shutdown raced with the end of the handshake.
		c.nc.SetReadDeadline(time.Now())
	}
	c.log.Debug("nbd: transmission started", "size", c.st.size,
		"structured", c.structured, "base_allocation", c.st.metaAlloc, "read_only", c.st.readOnly)
	c.transmit()
}

func (c *conn) releaseDevice() {
	c.releaseOnce.Do(func() {
		if c.release != nil {
			c.release()
		}
	})
}

// Drain asks the connection to end gracefully: a connection still
// negotiating is closed; one in transmission stops reading requests,
// answers those in flight and closes.
func (c *conn) Drain() {
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Now())
}

// Close tears the connection down at once.
func (c *conn) Close() {
	c.cancel()
	c.nc.Close()
}

// sendSimple writes a simple reply, with data for a successful READ.
func (c *conn) sendSimple(cookie uint64, errno uint32, data []byte) {
	if !c.w.Lock() {
		c.w.Unlock()
		return
	}
	b := c.w.Buf(16)
	b = binary.BigEndian.AppendUint32(b, simpleReplyMagic)
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint64(b, cookie)
	c.w.Write(b)
	if errno == 0 && len(data) > 0 {
		c.w.Write(data)
	}
	c.w.Unlock()
}

func appendChunkHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, structuredReplyMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, length)
}

// sendError answers a request with an error, as a structured error chunk
// when structured replies were negotiated.
func (c *conn) sendError(cookie uint64, errno uint32, msg string) {
	if !c.structured {
		c.sendSimple(cookie, errno, nil)
		return
	}
	if msg == "" {
		msg = errnoText(errno)
	}
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	if !c.w.Lock() {
		c.w.Unlock()
		return
	}
	b := c.w.Buf(26 + len(msg))
	b = appendChunkHeader(b, replyFlagDone, replyTypeError, cookie, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	c.w.Write(b)
	c.w.Unlock()
}

// sendReadData answers a successful READ.
func (c *conn) sendReadData(cookie, offset uint64, data []byte) {
	if !c.structured {
		c.sendSimple(cookie, 0, data)
		return
	}
	if !c.w.Lock() {
		c.w.Unlock()
		return
	}
	if len(data) == 0 {
		b := c.w.Buf(20)
		b = appendChunkHeader(b, replyFlagDone, replyTypeNone, cookie, 0)
		c.w.Write(b)
	} else {
		b := c.w.Buf(28)
		b = appendChunkHeader(b, replyFlagDone, replyTypeOffsetData, cookie, uint32(8+len(data)))
		b = binary.BigEndian.AppendUint64(b, offset)
		c.w.Write(b)
		c.w.Write(data)
	}
	c.w.Unlock()
}

// sendBlockStatus answers a successful BLOCK_STATUS; payload holds the
// context ID and the descriptors.
func (c *conn) sendBlockStatus(cookie uint64, payload []byte) {
	if !c.w.Lock() {
		c.w.Unlock()
		return
	}
	b := c.w.Buf(20)
	b = appendChunkHeader(b, replyFlagDone, replyTypeBlockStatus, cookie, uint32(len(payload)))
	c.w.Write(b)
	c.w.Write(payload)
	c.w.Unlock()
}
