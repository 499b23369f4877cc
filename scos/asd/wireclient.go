package asd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// The client side of the binary read protocol (wire.go): a few pipelined
// connections per ASD, each with one reader goroutine that matches replies
// to requests by id. A read costs its caller no goroutine: it sends its
// frame and waits on its call.

// WireConfig configures binary reads (see Client.WithWire).
type WireConfig struct {
	// TLS is the client configuration (the cluster's credentials); nil
	// takes the one of the client's HTTP transport, if any.
	TLS *tls.Config
	// Conns is the number of connections per ASD (default 2): enough to
	// keep a disk busy, few enough that replies batch.
	Conns int
	// MaxBytes: reads of more bytes go over HTTP (default 4 MiB, a whole
	// fragment of a 16 MiB object under 4+2). It was 256 KiB, on the
	// guess that HTTP's connection per request moves big reads in
	// parallel better; measured (pprof, cold 1 MiB sequential reads), the
	// HTTP path cost the node 43% of its CPU (a fresh buffer per read,
	// its GC, net/http's reader chain) and the binary one reads into the
	// caller's buffer: the ASD's workers still read in parallel and the
	// connections' writes were never the bottleneck.
	MaxBytes int64
	// Socket, if set, is the ASD's local socket (LocalSocketPath of its
	// directory): an ASD of this host, whose reads, and HTTP requests
	// (fragment writes above all), then skip TLS and the TCP stack. A
	// dial that fails there (the ASD restarting, or one without it), or
	// another ASD answering there, falls back to the ASD's address over
	// TLS.
	Socket string
	// RetryHTTPOnly: after an ASD answered as an HTTP-only one, how long
	// reads use HTTP before the binary protocol is tried again (default
	// 1m: the ASD may be upgraded in place).
	RetryHTTPOnly time.Duration
	// NoDirectReads: with Socket set, read over the socket, not from the
	// ASD's fragment files (see localReader). Tests of the socket use it.
	NoDirectReads bool
	// Logger takes what direct reads have to say (nil: nothing).
	Logger *slog.Logger
}

const (
	defaultWireConns    = 2
	defaultWireMaxBytes = 4 << 20
	wireDialTimeout     = 2 * time.Second
	// cancelRecvWait: how long Cancel waits for a reply being read into
	// the call's buffers before it closes the connection.
	cancelRecvWait = 500 * time.Millisecond
)

// ErrNoWire: the ASD does not speak the binary protocol (or the client
// has it off): read over HTTP.
var ErrNoWire = errors.New("no binary protocol to this ASD")

// WithWire returns a client that reads over the binary protocol, falling
// back to HTTP for an ASD that does not speak it. Call it after For: the
// connections are made for the ASD meant. Close the client to close them.
func (c *Client) WithWire(cfg WireConfig) *Client {
	c2 := *c
	if cfg.TLS == nil {
		cfg.TLS = c.tlsConf
	}
	if cfg.Conns <= 0 {
		cfg.Conns = defaultWireConns
	}
	if cfg.MaxBytes <= 0 || cfg.MaxBytes > maxReadBytes {
		cfg.MaxBytes = defaultWireMaxBytes
	}
	if cfg.RetryHTTPOnly <= 0 {
		cfg.RetryHTTPOnly = time.Minute
	}
	host := c.addr
	if u, err := url.Parse(c.addr); err == nil && u.Host != "" {
		host = u.Host
	}
	p := &wirePool{addr: host, id: c.id, cfg: cfg, slots: make([]wireSlot, cfg.Conns)}
	c2.wire = p
	c2.local = newLocalHTTP(cfg.Socket, cfg.RetryHTTPOnly)
	c2.direct = nil
	if !cfg.NoDirectReads {
		c2.direct = newLocalReader(cfg.Socket, c.id, cfg.RetryHTTPOnly, cfg.Logger)
	}
	return &c2
}

// Close closes the client's binary connections (HTTP ones belong to its
// transport).
func (c *Client) Close() error {
	if c.wire != nil {
		c.wire.close()
	}
	c.local.close()
	c.direct.close()
	return nil
}

// WireReads returns how many reads the client made over the binary
// protocol.
func (c *Client) WireReads() int64 {
	if c.wire == nil {
		return 0
	}
	return c.wire.reads.Load()
}

// DirectReads returns how many batched reads the client served from the
// ASD's files (see localReader).
func (c *Client) DirectReads() int64 {
	if c.direct == nil {
		return 0
	}
	return c.direct.reads.Load()
}

// ItemResult is the outcome of one item of a batched read: the checksum
// and size of the whole fragment (as its ASD knows them) and, when the
// range could not be read, why (ErrFragmentNotFound, ErrFragmentCorrupt
// and the rest, as Get).
type ItemResult struct {
	CRC  uint32
	Size int64
	Err  error
}

// WireCall is a read in flight over the binary protocol.
type WireCall struct {
	wc    *wireConn
	id    uint64
	items []ReadItem
	dst   [][]byte
	res   []ItemResult
	err   error
	done  chan struct{}
	sent  int64 // unix nanoseconds
	recv  bool  // under wc.mu: the reader is reading the reply into dst
}

// Direct reports whether the call was served from the ASD's files (see
// localReader), without a request to the ASD.
func (w *WireCall) Direct() bool { return w.wc == nil }

// Done is closed when the call's results are in (or it failed).
func (w *WireCall) Done() <-chan struct{} { return w.done }

// Result returns the per-item results once Done is closed, or the error
// that failed the whole call (ErrUnavailable when the connection died).
func (w *WireCall) Result() ([]ItemResult, error) { return w.res, w.err }

// Cancel gives up the call: once it returns nothing is written into its
// destination buffers any more. A call that timed out on a connection
// that has not answered anything since it was sent closes that connection
// (a dead peer fails its other calls fast, and the next read redials).
func (w *WireCall) Cancel(cause error) {
	wc := w.wc
	if wc == nil {
		return // served by a direct read: done before it was returned
	}
	wc.mu.Lock()
	_, pending := wc.pending[w.id]
	delete(wc.pending, w.id)
	recv := w.recv
	wc.mu.Unlock()
	if recv {
		// Its reply is being read into the destination buffers: wait
		// for the reader to finish (a reply in flight on a live
		// connection takes little), or, from a peer that stalls in the
		// middle of a reply, close the connection so that it stops.
		t := time.NewTimer(cancelRecvWait)
		defer t.Stop()
		select {
		case <-w.done:
		case <-t.C:
			wc.fail(fmt.Errorf("%w: a reply stalled while a read was given up", ErrUnavailable))
			<-w.done
		}
		return
	}
	if pending && errors.Is(cause, context.DeadlineExceeded) && wc.lastRecv.Load() < w.sent {
		wc.fail(fmt.Errorf("%w: no answer on the connection since a read that timed out", ErrUnavailable))
	}
}

// StartRead sends a batched read: items[i] is read into dst[i] (of
// items[i].Length bytes). ctx bounds the dial and gives the ASD the
// deadline; the caller waits on Done (and its context: then Cancel). It
// returns ErrNoWire when the ASD is to be read over HTTP.
func (c *Client) StartRead(ctx context.Context, items []ReadItem, dst [][]byte) (*WireCall, error) {
	p := c.wire
	if p == nil || p.closed.Load() || time.Now().UnixNano() < p.httpOnlyUntil.Load() {
		return nil, ErrNoWire
	}
	if len(items) == 0 || len(items) > maxReadItems || len(dst) != len(items) {
		return nil, fmt.Errorf("asd %s: batched read of %d items", c.addr, len(items))
	}
	var total int64
	for i, it := range items {
		if it.Length < 0 || int64(len(dst[i])) != it.Length || checkFragmentKey(it.Key) != nil || it.Off < 0 {
			return nil, fmt.Errorf("asd %s: bad read item %q [%d,+%d)", c.addr, it.Key, it.Off, it.Length)
		}
		total += it.Length
	}
	if total > p.cfg.MaxBytes {
		return nil, ErrNoWire
	}
	if c.direct.usable() {
		if res, ok := c.direct.read(items, dst); ok {
			call := &WireCall{items: items, dst: dst, res: res, done: make(chan struct{})}
			close(call.done)
			return call, nil
		}
	}
	wc, err := p.conn(ctx)
	if err != nil {
		return nil, err
	}
	call := &WireCall{wc: wc, items: items, dst: dst, done: make(chan struct{})}
	if err := wc.send(ctx, call); err != nil {
		return nil, err
	}
	p.reads.Add(1)
	return call, nil
}

// ReadBatch is StartRead and the wait for its results.
func (c *Client) ReadBatch(ctx context.Context, items []ReadItem, dst [][]byte) ([]ItemResult, error) {
	call, err := c.StartRead(ctx, items, dst)
	if err != nil {
		return nil, err
	}
	select {
	case <-call.done:
		return call.Result()
	case <-ctx.Done():
		call.Cancel(ctx.Err())
		select {
		case <-call.done: // it made it after all
			return call.Result()
		default:
		}
		return nil, c.transportErr(ctx, ctx.Err())
	}
}

// getWire is Get over the binary protocol.
func (c *Client) getWire(ctx context.Context, key string, off, length int64) ([]byte, uint32, error) {
	data := make([]byte, length)
	res, err := c.ReadBatch(ctx, []ReadItem{{Key: key, Off: off, Length: length}}, [][]byte{data})
	if err != nil {
		return nil, 0, err
	}
	if res[0].Err != nil {
		return nil, 0, res[0].Err
	}
	return data, res[0].CRC, nil
}

type wirePool struct {
	addr, id      string
	cfg           WireConfig
	slots         []wireSlot
	next          atomic.Uint32
	httpOnlyUntil atomic.Int64 // unix nanoseconds
	closed        atomic.Bool
	reads         atomic.Int64
}

type wireSlot struct {
	mu sync.Mutex // held while dialling
	c  atomic.Pointer[wireConn]
}

func (p *wirePool) close() {
	p.closed.Store(true)
	for i := range p.slots {
		if wc := p.slots[i].c.Load(); wc != nil {
			wc.fail(net.ErrClosed)
		}
	}
}

// conn returns a live connection, dialling one if its slot has none.
func (p *wirePool) conn(ctx context.Context) (*wireConn, error) {
	s := &p.slots[int(p.next.Add(1))%len(p.slots)]
	if wc := s.c.Load(); wc != nil && !wc.isDead() {
		return wc, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if wc := s.c.Load(); wc != nil && !wc.isDead() {
		return wc, nil
	}
	wc, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	s.c.Store(wc)
	if p.closed.Load() {
		wc.fail(net.ErrClosed)
		return nil, ErrNoWire
	}
	return wc, nil
}

func (p *wirePool) dial(ctx context.Context) (*wireConn, error) {
	unavailable := func(err error) error {
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("asd %s: %w", p.addr, ctx.Err())
		}
		return fmt.Errorf("asd %s: %w: %w", p.addr, ErrUnavailable, err)
	}
	dctx, cancel := context.WithTimeout(ctx, wireDialTimeout)
	defer cancel()
	if p.cfg.Socket != "" {
		if c, err := (&net.Dialer{}).DialContext(dctx, "unix", p.cfg.Socket); err == nil {
			br, err := p.hello(dctx, c)
			if err == nil {
				return p.start(c, br), nil
			}
			// Not the ASD meant, or not answering there: its TLS port
			// decides.
			c.Close()
		}
	}
	conn, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(dctx, "tcp", p.addr)
	if err != nil {
		return nil, unavailable(err)
	}
	if p.cfg.TLS != nil {
		tc := tls.Client(conn, p.cfg.TLS)
		if err := tc.HandshakeContext(dctx); err != nil {
			conn.Close()
			return nil, unavailable(err)
		}
		conn = tc
	}
	br, err := p.hello(dctx, conn)
	switch {
	case errors.Is(err, errHTTPOnly), errors.Is(err, errNoCommonVersion):
		conn.Close()
		p.httpOnlyUntil.Store(time.Now().Add(p.cfg.RetryHTTPOnly).UnixNano())
		return nil, fmt.Errorf("asd %s: %w: %w", p.addr, ErrNoWire, err)
	case errors.Is(err, errWrongASD):
		conn.Close()
		return nil, fmt.Errorf("asd %s: %w", p.addr, err)
	case err != nil:
		conn.Close()
		return nil, unavailable(err)
	}
	return p.start(conn, br), nil
}

// hello opens the binary protocol on conn, within ctx's deadline.
func (p *wirePool) hello(ctx context.Context, conn net.Conn) (*bufio.Reader, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(conn, wireBufSize)
	_, err := conn.Write(appendHello(nil, p.id))
	if err == nil {
		_, err = readHelloReply(br)
	}
	return br, err
}

// start makes a connection that said hello a wireConn and starts reading
// its replies.
func (p *wirePool) start(conn net.Conn, br *bufio.Reader) *wireConn {
	conn.SetDeadline(time.Time{})
	wc := &wireConn{pool: p, conn: conn, br: br, bw: bufio.NewWriterSize(conn, wireBufSize),
		pending: map[uint64]*WireCall{}}
	wc.lastRecv.Store(time.Now().UnixNano())
	go wc.readLoop()
	return wc
}

type wireConn struct {
	pool *wirePool
	conn net.Conn
	br   *bufio.Reader

	wmu     sync.Mutex // serializes writes
	waiting atomic.Int32
	bw      *bufio.Writer
	frame   []byte

	mu      sync.Mutex
	pending map[uint64]*WireCall
	nextID  uint64
	dead    error

	lastRecv atomic.Int64
}

func (wc *wireConn) isDead() bool {
	wc.mu.Lock()
	defer wc.mu.Unlock()
	return wc.dead != nil
}

// fail marks the connection dead, fails its calls and closes it.
func (wc *wireConn) fail(err error) {
	wc.mu.Lock()
	if wc.dead != nil {
		wc.mu.Unlock()
		return
	}
	wc.dead = err
	calls := wc.pending
	wc.pending = nil
	wc.mu.Unlock()
	wc.conn.Close()
	for _, call := range calls {
		call.err = fmt.Errorf("asd %s: %w", wc.pool.addr, err)
		close(call.done)
	}
}

func (wc *wireConn) send(ctx context.Context, call *WireCall) error {
	var timeoutMS uint32
	if dl, ok := ctx.Deadline(); ok {
		timeoutMS = uint32(min(max(time.Until(dl).Milliseconds(), 1), 1<<31))
	}
	wc.mu.Lock()
	if wc.dead != nil {
		err := wc.dead
		wc.mu.Unlock()
		return fmt.Errorf("asd %s: %w: %w", wc.pool.addr, ErrUnavailable, err)
	}
	wc.nextID++
	call.id = wc.nextID
	call.sent = time.Now().UnixNano()
	wc.pending[call.id] = call
	wc.mu.Unlock()

	// Writers that find others waiting leave the flush to the last one,
	// so that requests sent together go out in one TLS record.
	wc.waiting.Add(1)
	wc.wmu.Lock()
	wc.waiting.Add(-1)
	wc.frame = appendReadRequest(wc.frame[:0], call.id, timeoutMS, call.items)
	_, err := wc.bw.Write(wc.frame)
	if err == nil && wc.waiting.Load() == 0 {
		err = wc.bw.Flush()
	}
	wc.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		wc.fail(err)
		return fmt.Errorf("asd %s: %w", wc.pool.addr, err)
	}
	return nil
}

// readLoop reads replies and hands each to its call, until the
// connection fails; then every call still pending fails with it. A reply's
// data is read straight into its call's buffers: the call leaves pending
// (marked recv) first, so that Cancel waits for it instead of returning
// while the reader still writes into them.
func (wc *wireConn) readLoop() {
	var hdr [frameHeaderLen]byte
	var items []replyItem
	for {
		err := func() error {
			if _, err := io.ReadFull(wc.br, hdr[:]); err != nil {
				return err
			}
			h, err := decodeFrameHeader(hdr[:])
			if err != nil {
				return err
			}
			if h.typ != frameReadReply {
				return fmt.Errorf("%w: frame type %d from an ASD", errProtocol, h.typ)
			}
			wc.lastRecv.Store(time.Now().UnixNano())
			wc.mu.Lock()
			call := wc.pending[h.id]
			if call == nil {
				sent := h.id != 0 && h.id <= wc.nextID
				wc.mu.Unlock()
				if !sent {
					return fmt.Errorf("%w: reply to request %d, never sent", errProtocol, h.id)
				}
				// Given up by its caller.
				_, err := wc.br.Discard(h.bodyLen())
				return err
			}
			delete(wc.pending, h.id)
			call.recv = true
			wc.mu.Unlock()
			items, err = readReply(wc.br, h.bodyLen(), call.items, call.dst, items)
			if err != nil {
				if !errors.Is(err, errProtocol) {
					err = fmt.Errorf("%w: %w", ErrUnavailable, err)
				}
				call.err = fmt.Errorf("asd %s: %w", wc.pool.addr, err)
				close(call.done)
				return err
			}
			call.res = make([]ItemResult, len(items))
			for i, ri := range items {
				call.res[i] = ItemResult{CRC: ri.crc, Size: ri.size}
				if ri.status != readOK {
					call.res[i].Err = wc.itemErr(call.items[i].Key, ri)
				}
			}
			close(call.done)
			return nil
		}()
		if err != nil {
			if !errors.Is(err, errProtocol) && !errors.Is(err, ErrUnavailable) {
				err = fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			wc.fail(err)
			return
		}
	}
}

func (wc *wireConn) itemErr(key string, ri replyItem) error {
	var kind error
	switch ri.status {
	case readNotFound:
		kind = ErrFragmentNotFound
	case readCorrupt:
		kind = ErrFragmentCorrupt
	case readExpired:
		kind = ErrUnavailable
	}
	return fmt.Errorf("get fragment %s: %w", key, &asdStatusError{addr: wc.pool.addr, msg: ri.msg, kind: kind})
}
