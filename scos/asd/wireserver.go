package asd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// How an ASD serves its port: every connection is accepted here, its TLS
// handshake done (with TLS), and its first bytes looked at: the binary
// protocol's hello goes to serveWire, anything else to the HTTP server.

const (
	firstBytesTimeout = 10 * time.Second // as the HTTP server's ReadHeaderTimeout
	wireIdleTimeout   = 2 * time.Minute  // as its IdleTimeout
	wireWorkers       = 8                // reads in progress per connection
	wireQueue         = 64               // reads queued per connection
	wireBufSize       = 64 << 10
)

// connListener hands the connections sorted out as HTTP to http.Server.
type connListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

// peekedConn replays the bytes read to sort the connection out.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// wireConns tracks the binary connections, closed at shutdown.
type wireConns struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (w *wireConns) add(c net.Conn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.conns[c] = struct{}{}
	return true
}

func (w *wireConns) remove(c net.Conn) {
	w.mu.Lock()
	delete(w.conns, c)
	w.mu.Unlock()
}

func (w *wireConns) closeAll() {
	w.mu.Lock()
	w.closed = true
	for c := range w.conns {
		c.Close()
	}
	w.mu.Unlock()
}

// acceptLoop accepts connections on l and sorts them out until l fails.
func (s *Server) acceptLoop(ctx context.Context, l net.Listener, httpL *connListener, wc *wireConns) error {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return err
		}
		delay = 0
		go s.sortConn(ctx, c, httpL, wc)
	}
}

// sortConn does the TLS handshake and hands the connection to the binary
// protocol or to the HTTP server by its first bytes.
func (s *Server) sortConn(ctx context.Context, c net.Conn, httpL *connListener, wc *wireConns) {
	c.SetDeadline(time.Now().Add(firstBytesTimeout))
	if s.tls != nil {
		tc := tls.Server(c, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			// What net/http does for a plain HTTP request to a TLS port:
			// say so instead of just closing.
			var re tls.RecordHeaderError
			if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader[:]) {
				io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
			}
			s.log.Warn("TLS handshake error", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
		c = tc
	}
	s.route(ctx, c, httpL, wc)
}

// route hands a connection (past its TLS handshake, if any) to the binary
// protocol or to the HTTP server by its first bytes.
func (s *Server) route(ctx context.Context, c net.Conn, httpL *connListener, wc *wireConns) {
	br := bufio.NewReaderSize(c, wireBufSize)
	first, err := br.Peek(len(wireMagic))
	if err != nil {
		c.Close()
		return
	}
	if string(first) != wireMagic {
		c.SetDeadline(time.Time{})
		select {
		case httpL.ch <- &peekedConn{Conn: c, r: br}:
		case <-httpL.done:
			c.Close()
		}
		return
	}
	if !wc.add(c) {
		c.Close()
		return
	}
	defer wc.remove(c)
	if err := s.serveWire(ctx, c, br); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
		s.log.Warn("binary connection closed", "remote", remoteOf(c), "err", err)
	}
}

func looksLikeHTTP(hdr []byte) bool {
	switch string(hdr) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

var replyPool = sync.Pool{New: func() any { b := make([]byte, 0, wireBufSize); return &b }}

// serveWire serves the binary protocol on c until it fails or closes.
// Reads are served by a few workers, so that a slow disk read does not
// hold up the others, and may complete out of order; one writer coalesces
// their replies into as few writes as it can.
func (s *Server) serveWire(ctx context.Context, c net.Conn, br *bufio.Reader) error {
	defer c.Close()
	lo, hi, id, err := readHello(br)
	if err != nil {
		return err
	}
	ver, status, msg := uint8(min(hi, wireVersion)), uint8(helloOK), ""
	switch {
	case hi < wireMinVersion || lo > wireVersion || lo > hi:
		ver, status, msg = 0, helloBadVersion, fmt.Sprintf("versions %d..%d offered, this ASD speaks %d..%d", lo, hi, wireMinVersion, wireVersion)
	case id != "" && id != s.id:
		ver, status, msg = 0, helloWrongASD, fmt.Sprintf("this is ASD %s, not %s", s.id, id)
		s.log.Warn("binary connection for another ASD refused", "for", id, "remote", remoteOf(c))
	}
	if _, err := c.Write(appendHelloReply(nil, ver, status, msg)); err != nil || status != helloOK {
		return err
	}
	c.SetDeadline(time.Time{})

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type job struct {
		id  uint64
		req readRequest
		at  time.Time
	}
	work := make(chan job, wireQueue)
	// Workers write their replies themselves; one that finds others
	// waiting to write leaves the flush to the last, so that replies
	// ready together go out in one TLS record and one write.
	var (
		wmu      sync.Mutex
		waiting  atomic.Int32
		writeErr error
	)
	bw := bufio.NewWriterSize(c, wireBufSize)
	var wg sync.WaitGroup
	for range wireWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				rep := s.serveRead(j.id, j.req, j.at)
				waiting.Add(1)
				wmu.Lock()
				waiting.Add(-1)
				if writeErr == nil {
					_, writeErr = bw.Write(*rep)
					if writeErr == nil && waiting.Load() == 0 {
						writeErr = bw.Flush()
					}
					if writeErr != nil {
						c.Close() // the reader fails with it
					}
				}
				wmu.Unlock()
				putBuf(&replyPool, rep)
			}
		}()
	}
	readErr := func() error {
		var hdr [frameHeaderLen]byte
		var body []byte
		for {
			c.SetReadDeadline(time.Now().Add(wireIdleTimeout))
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return err
			}
			h, err := decodeFrameHeader(hdr[:])
			if err != nil {
				return err
			}
			if h.typ != frameRead {
				return fmt.Errorf("%w: frame type %d from a client", errProtocol, h.typ)
			}
			if h.bodyLen() > maxReadItems*(readItemHeadLen+maxFragmentKeyLen)+6 {
				return fmt.Errorf("%w: read request of %d bytes", errProtocol, h.bodyLen())
			}
			body = grow(body, h.bodyLen())
			if _, err := io.ReadFull(br, body); err != nil {
				return err
			}
			req, err := decodeReadRequest(body, nil)
			if err != nil {
				return err
			}
			select {
			case work <- job{h.id, req, time.Now()}:
			case <-cctx.Done():
				return nil
			}
		}
	}()
	close(work)
	wg.Wait()
	cancel()
	if writeErr != nil && readErr == nil {
		return writeErr
	}
	if errors.Is(readErr, errProtocol) {
		return readErr
	}
	return nil
}

// grow returns b resized to n bytes, reallocated if it is too small.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n, max(n, 2*cap(b)))
	}
	return b[:n]
}

// serveRead answers one read request.
func (s *Server) serveRead(id uint64, req readRequest, at time.Time) *[]byte {
	rep := replyPool.Get().(*[]byte)
	out := append((*rep)[:0], make([]byte, frameHeaderLen)...)
	expired := req.timeoutMS > 0 && time.Since(at) > time.Duration(req.timeoutMS)*time.Millisecond
	for _, it := range req.items {
		if expired {
			out = appendReplyError(out, readExpired, 0, 0, "the client's deadline passed before the read started")
			continue
		}
		out = s.readItem(out, it)
	}
	putFrameHeader(out, frameHeader{length: uint32(len(out) - 4), typ: frameReadReply, id: id})
	*rep = out
	return rep
}

func appendReplyError(out []byte, st readStatus, crc uint32, size int64, msg string) []byte {
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	out = append(out, byte(st))
	out = binary.LittleEndian.AppendUint32(out, crc)
	out = binary.LittleEndian.AppendUint64(out, uint64(size))
	out = binary.LittleEndian.AppendUint16(out, uint16(len(msg)))
	return append(out, msg...)
}

// readItem appends the reply item for one range.
func (s *Server) readItem(out []byte, it ReadItem) []byte {
	if err := checkFragmentKey(it.Key); err != nil {
		return appendReplyError(out, readBadRequest, 0, 0, err.Error())
	}
	of, err := s.fcache.acquire(it.Key)
	if err != nil {
		return appendReplyError(out, statusOf(err), 0, 0, err.Error())
	}
	defer of.release()
	h := of.h
	if it.Off > h.DataLen || it.Length > h.DataLen-it.Off {
		return appendReplyError(out, readBadRange, h.DataCRC, h.DataLen,
			fmt.Sprintf("[%d,+%d) of fragment %s of %d bytes", it.Off, it.Length, it.Key, h.DataLen))
	}
	start := len(out)
	out = append(out, byte(readOK))
	out = binary.LittleEndian.AppendUint32(out, h.DataCRC)
	out = binary.LittleEndian.AppendUint64(out, uint64(h.DataLen))
	out, err = appendVerified(out, of.f, h, it.Off, it.Length)
	if err != nil {
		err = fmt.Errorf("asd %s: %w", s.id, err)
		if errors.Is(err, ErrFragmentCorrupt) {
			s.log.Warn("corrupt fragment", "key", it.Key, "err", err)
		}
		return appendReplyError(out[:start], statusOf(err), h.DataCRC, h.DataLen, err.Error())
	}
	return out
}

// appendVerified appends [off, off+length) of the fragment's data to out:
// read straight into out (grown as needed) and verified there, against
// the blocks it touches or, for a whole fragment, the whole-data
// checksum. Reading into a scratch buffer and appending from it cost an
// ASD a tenth of its CPU on 1 MiB reads (pprof: runtime.memmove).
func appendVerified(out []byte, f *os.File, h FragmentHeader, off, length int64) ([]byte, error) {
	start := len(out)
	if length == 0 {
		return out, nil
	}
	whole := off == 0 && length == h.DataLen
	lo, hi, first := off, off+length, int64(0)
	if !whole {
		bs := int64(h.BlockSize)
		first = off / bs
		lo, hi = first*bs, min(((off+length-1)/bs+1)*bs, h.DataLen)
	}
	out = slices.Grow(out, int(hi-lo))[:start+int(hi-lo)]
	buf := out[start:]
	if _, err := f.ReadAt(buf, int64(h.HeaderLen)+lo); err != nil {
		return out[:start], fmt.Errorf("%s: %w", h.Key, err)
	}
	if whole {
		if got := crc32c.Checksum(buf); got != h.DataCRC {
			return out[:start], fmt.Errorf("%w: %s: data checksum %08x, header says %08x", ErrFragmentCorrupt, h.Key, got, h.DataCRC)
		}
	} else if err := h.verifyBlocks(int(first), buf); err != nil {
		return out[:start], err
	}
	if off > lo {
		copy(buf, buf[off-lo:off-lo+length])
	}
	return out[:start+int(length)], nil
}

func statusOf(err error) readStatus {
	switch {
	case errors.Is(err, ErrFragmentNotFound):
		return readNotFound
	case errors.Is(err, ErrFragmentCorrupt), errors.Is(err, scos.ErrUnsupportedFormat):
		return readCorrupt
	case errors.Is(err, errBadRange):
		return readBadRange
	default:
		return readInternal
	}
}
