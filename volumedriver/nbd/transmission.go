package nbd

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

// transmit runs the transmission phase: this goroutine reads and checks
// requests and hands each to its own goroutine, so that a slow request does
// not hold up the ones behind it. It returns when the connection is done,
// after every request in flight has finished.
func (c *conn) transmit() {
	var hb [requestSize]byte
	graceful := false
	workers := iopool.NewWorkers(c.handle)
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			switch {
			case c.stopping.Load():
				graceful = true
				c.log.Debug("nbd: shutting down connection")
			case err == io.EOF:
				graceful = true
				c.log.Debug("nbd: client closed the connection without NBD_CMD_DISC")
			case errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil:
			default:
				c.log.Info("nbd: read request failed; closing connection", "err", err)
			}
			break
		}
		r, err := parseRequest(hb[:])
		if err != nil {
			c.log.Warn("nbd: protocol error; closing connection", "err", err)
			break
		}
		if r.typ == cmdDisc {
			c.log.Debug("nbd: client disconnected")
			graceful = true
			break
		}
		errno, msg := validateRequest(&r, &c.st)
		if errno != 0 && r.typ == cmdWrite {
			// The payload follows whatever we think of the request.
			if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
				c.log.Info("nbd: read request payload failed; closing connection", "err", err)
				break
			}
		}
		var cost int64
		if errno == 0 && (r.typ == cmdRead || r.typ == cmdWrite) {
			cost = int64(r.length)
		}
		c.limit.Acquire(cost)
		var buf *[]byte
		if errno == 0 && r.typ == cmdWrite && r.length > 0 {
			buf = c.srv.pool.Get(int(r.length))
			if _, err := io.ReadFull(c.br, *buf); err != nil {
				c.srv.pool.Put(buf)
				c.limit.Release(cost)
				if c.stopping.Load() {
					graceful = true
				} else {
					c.log.Info("nbd: read write payload failed; closing connection", "err", err)
				}
				break
			}
		}
		workers.Go(job{r: r, buf: buf, cost: cost, errno: errno, msg: msg})
	}
	if !graceful {
		// Hard disconnect: cancel what is in flight.
		c.cancel()
	}
	workers.Wait()
	c.w.Lock()
	c.w.Flush()
	c.w.Unlock()
}

// job is one request, parsed and checked, for a worker.
type job struct {
	r     request
	buf   *[]byte
	cost  int64
	errno uint32
	msg   string
}

// handle serves one request and sends its reply.
func (c *conn) handle(j job) {
	r, buf, cost, errno, msg := j.r, j.buf, j.cost, j.errno, j.msg
	if errno != 0 {
		c.sendError(r.cookie, errno, msg)
		c.limit.Release(cost)
		return
	}
	var err error
	off := int64(r.offset)
	n := int64(r.length)
	switch r.typ {
	case cmdRead:
		buf = c.srv.pool.Get(int(r.length))
		if n > 0 {
			err = c.dev.ReadAt(c.ctx, *buf, off)
		}
		if err == nil {
			c.sendReadData(r.cookie, r.offset, *buf)
		}
	case cmdWrite:
		if n > 0 {
			err = c.dev.WriteAt(c.ctx, *buf, off, r.flags&cmdFlagFUA != 0)
		}
	case cmdFlush:
		err = c.dev.Flush(c.ctx)
	case cmdTrim:
		if n > 0 {
			err = c.dev.Trim(c.ctx, off, n)
			if err == nil && r.flags&cmdFlagFUA != 0 {
				err = c.dev.Flush(c.ctx)
			}
		}
	case cmdCache:
		// A hint; nothing to do for devices without a cache of their own.
	case cmdWriteZeroes:
		if r.flags&cmdFlagFastZero != 0 && !c.fastZero {
			errno, msg = errNotSup, "fast zeroing is not supported"
			break
		}
		if n > 0 {
			err = c.dev.WriteZeroes(c.ctx, off, n, r.flags&cmdFlagNoHole != 0, r.flags&cmdFlagFUA != 0)
			if err != nil && r.flags&cmdFlagFastZero != 0 &&
				(errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP)) {
				errno, msg, err = errNotSup, "fast zeroing is not supported here", nil
			}
		}
	case cmdBlockStatus:
		errno, msg = c.blockStatus(&r)
	}
	if err != nil {
		errno = errnoFor(c.ctx, err)
		msg = ""
		if c.ctx.Err() == nil {
			c.log.Warn("nbd: device error", "cmd", cmdName(r.typ), "offset", off, "length", n, "err", err, "nbd_errno", errno)
		}
	}
	switch {
	case errno != 0:
		c.sendError(r.cookie, errno, msg)
	case r.typ == cmdRead, r.typ == cmdBlockStatus:
		// Replied above.
	default:
		c.sendSimple(r.cookie, 0, nil)
	}
	c.srv.pool.Put(buf)
	c.limit.Release(cost)
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation. It sends
// the reply itself on success.
func (c *conn) blockStatus(r *request) (uint32, string) {
	want := int64(r.length)
	exts, err := c.dev.BlockStatus(c.ctx, int64(r.offset), want)
	if err != nil {
		c.log.Warn("nbd: device error", "cmd", "block_status", "offset", r.offset, "length", r.length, "err", err)
		return errnoFor(c.ctx, err), ""
	}
	maxN := min(len(exts), maxExtents)
	bp := c.srv.pool.Get(4 + 8*maxN)
	defer c.srv.pool.Put(bp)
	p := binary.BigEndian.AppendUint32((*bp)[:0], metaAllocationID)
	if r.flags&cmdFlagReqOne != 0 {
		maxN = min(maxN, 1)
	}
	p, n := blockdev.AppendExtents(p, exts, want, maxN)
	if n == 0 {
		c.log.Warn("nbd: device returned no extents", "offset", r.offset, "length", r.length)
		return errIO, "device returned no extents"
	}
	c.sendBlockStatus(r.cookie, p)
	return 0, ""
}

func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdCache:
		return "cache"
	case cmdWriteZeroes:
		return "write_zeroes"
	case cmdBlockStatus:
		return "block_status"
	default:
		return "unknown"
	}
}
