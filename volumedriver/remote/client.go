package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

// Defaults for ClientOptions.
const (
	DefaultConns       = 2
	DefaultDialTimeout = 5 * time.Second
)

// ClientOptions configure a Client. The zero value is usable.
type ClientOptions struct {
	// TLS, when set, wraps each connection in TLS. An empty ServerName is
	// taken from the address's host.
	TLS *tls.Config
	// Conns is the number of connections to the node, used in turn.
	// Default 2.
	Conns int
	// DialTimeout bounds the dial, TLS handshake and hello of a
	// connection. Default 5 s.
	DialTimeout time.Duration
	// Logger receives the client's logs; nil discards them.
	Logger *slog.Logger
}

// Client sends I/O to one node: a small pool of pipelined connections,
// each dialled on first use and dialled again after it broke. Its methods
// are safe for concurrent use.
type Client struct {
	addr string
	opts ClientOptions
	log  *slog.Logger

	base   context.Context // cancelled by Close: aborts dials
	cancel context.CancelFunc

	rr    atomic.Uint32
	calls sync.Pool // *call
	pool  iopool.BufPool

	mu     sync.Mutex
	closed bool
	slots  []slot
}

// slot is one connection of the pool, or the dial that will make it.
type slot struct {
	cc      *cconn
	dialing chan struct{} // closed when the dial in progress ends
	dialErr error
}

// NewClient returns a client for the node at addr (host:port). It dials
// nothing until the first request.
func NewClient(addr string, opts ClientOptions) *Client {
	if opts.Conns <= 0 {
		opts.Conns = DefaultConns
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.TLS != nil && opts.TLS.ServerName == "" {
		opts.TLS = opts.TLS.Clone()
		if host, _, err := net.SplitHostPort(addr); err == nil {
			opts.TLS.ServerName = host
		}
	}
	base, cancel := context.WithCancel(context.Background())
	c := &Client{
		addr:   addr,
		opts:   opts,
		log:    opts.Logger.With("node", addr),
		base:   base,
		cancel: cancel,
		slots:  make([]slot, opts.Conns),
	}
	c.calls.New = func() any { return &call{done: make(chan struct{}, 1)} }
	return c
}

// Addr returns the node's address.
func (c *Client) Addr() string { return c.addr }

// Close closes the connections; requests in flight fail with
// ErrUnavailable.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	var ccs []*cconn
	for i := range c.slots {
		if cc := c.slots[i].cc; cc != nil {
			ccs = append(ccs, cc)
			c.slots[i].cc = nil
		}
	}
	c.mu.Unlock()
	c.cancel()
	for _, cc := range ccs {
		cc.fail(errClientClosed)
		<-cc.readerDone
	}
	return nil
}

var (
	errClientClosed = errors.New("client closed")
	// errConnGone: the connection picked broke or was told to go away
	// before the request was registered on it; another one is picked.
	errConnGone = errors.New("connection gone")
)

// conn returns a usable connection, dialling one when its slot has none.
func (c *Client) conn(ctx context.Context) (*cconn, error) {
	s := &c.slots[int(c.rr.Add(1)-1)%len(c.slots)]
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.addr, errClientClosed)
	}
	if s.cc != nil && !s.cc.dead.Load() {
		cc := s.cc
		c.mu.Unlock()
		return cc, nil
	}
	if ch := s.dialing; ch != nil {
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("remote: waiting for a connection to %s: %w", c.addr, ctx.Err())
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if s.cc != nil && !s.cc.dead.Load() {
			return s.cc, nil
		}
		if s.dialErr != nil {
			return nil, s.dialErr
		}
		return nil, fmt.Errorf("%w: %s: connection lost", ErrUnavailable, c.addr)
	}
	ch := make(chan struct{})
	s.dialing = ch
	c.mu.Unlock()

	// The dial does not depend on the caller's ctx, so that a caller that
	// gives up does not fail the others waiting for the same dial.
	type result struct {
		cc  *cconn
		err error
	}
	res := make(chan result, 1)
	go func() {
		cc, err := c.dial()
		c.mu.Lock()
		s.dialing = nil
		s.dialErr = err
		if err == nil {
			if c.closed {
				c.mu.Unlock()
				cc.fail(errClientClosed)
				res <- result{nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.addr, errClientClosed)}
				close(ch)
				return
			}
			s.cc = cc
		}
		c.mu.Unlock()
		close(ch)
		res <- result{cc, err}
	}()
	select {
	case r := <-res:
		return r.cc, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("remote: waiting for a connection to %s: %w", c.addr, ctx.Err())
	}
}

// dial opens and greets one connection.
func (c *Client) dial() (*cconn, error) {
	ctx, cancel := context.WithTimeout(c.base, c.opts.DialTimeout)
	defer cancel()
	nc, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	version := uint16(Version)
	for {
		peer, err := clientHello(ctx, nc, version)
		if err == nil {
			break
		}
		nc.Close()
		// A node of an older version we speak refused ours: greet it
		// again, on a new connection (it closed this one), in its own.
		// Dials are rare, so the newest version is always tried first: a
		// peer upgraded since is spoken to in it.
		if !errors.Is(err, ErrVersion) || peer >= version || peer < MinVersion {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.addr, err)
		}
		c.log.Debug("remote: the node speaks an older protocol version", "version", peer)
		version = peer
		if nc, err = c.connect(ctx); err != nil {
			return nil, err
		}
	}
	c.log.Debug("remote: connected", "version", version)
	return newCconn(c, nc, version), nil
}

// connect dials the node and does the TLS handshake, if any.
func (c *Client) connect(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if c.opts.TLS != nil {
		tc := tls.Client(nc, c.opts.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS handshake with %s: %w", ErrUnavailable, c.addr, err)
		}
		nc = tc
	}
	return nc, nil
}

// clientHello sends our hello in version v and checks the server's. It
// returns the version the server answered with (also on an error).
func clientHello(ctx context.Context, nc net.Conn, v uint16) (uint16, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()
	var b [helloSize]byte
	if _, err := nc.Write(appendHello(b[:0], hello{version: v})); err != nil {
		return 0, fmt.Errorf("send hello: %w", err)
	}
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		return 0, fmt.Errorf("read hello: %w", err)
	}
	h, err := decodeHello(b[:])
	if err != nil {
		return 0, err
	}
	if h.version != v {
		return h.version, fmt.Errorf("%w: the node speaks protocol version %d, this node speaks %d", ErrVersion, h.version, v)
	}
	switch h.status {
	case helloOK:
	case helloTooManyConn:
		return h.version, errors.New("the node is at its connection limit")
	default:
		return h.version, fmt.Errorf("%w: the node refused the hello (status %d)", errProtocol, h.status)
	}
	nc.SetDeadline(time.Time{})
	return h.version, nil
}

// call is one request in flight, pooled.
type call struct {
	handle uint64
	op     op
	flags  uint8
	name   string
	off    int64
	length uint32
	wdata  []byte // Write payload (CompareAndWrite: the bytes to compare)
	wdata2 []byte // sent after wdata (CompareAndWrite: the bytes to write)
	rbuf   []byte // Read destination

	done   chan struct{} // one send per completion
	status Status
	msg    string
	info   Info
	exts   []Extent
	// miscompare: a CompareAndWrite's answer.
	miscompare int64
	err        error // connection-level failure
}

func (c *Client) getCall(o op, name string, off int64, length uint32, flags uint8) *call {
	cl := c.calls.Get().(*call)
	cl.op, cl.name, cl.off, cl.length, cl.flags = o, name, off, length, flags
	return cl
}

func (c *Client) putCall(cl *call) {
	done := cl.done
	*cl = call{done: done}
	c.calls.Put(cl)
}

// roundTrip sends cl and waits for its reply.
func (c *Client) roundTrip(ctx context.Context, cl *call) error {
	if err := checkName(cl.name); err != nil {
		return c.invalid(cl, err.Error())
	}
	for attempt := 0; ; attempt++ {
		cc, err := c.conn(ctx)
		if err != nil {
			return err
		}
		if cl.op > maxOp(cc.version) {
			// Sending it would have the node close the connection.
			return c.invalid(cl, fmt.Sprintf("the node speaks protocol version %d, which has no %s", cc.version, cl.op))
		}
		err = cc.roundTrip(ctx, cl)
		if errors.Is(err, errConnGone) && attempt < 3 {
			continue // nothing was sent
		}
		return err
	}
}

func checkName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("vdisk name of %d bytes not in 1..%d", len(name), MaxNameLen)
	}
	return nil
}

func (c *Client) invalid(cl *call, msg string) error {
	return &StatusError{Addr: c.addr, Op: cl.op.String(), Name: cl.name, Status: StatusInvalid, Msg: msg}
}

// result turns a completed call into the method's error.
func (c *Client) result(cl *call) error {
	if cl.err != nil {
		return fmt.Errorf("remote %s %q: %w", cl.op, cl.name, cl.err)
	}
	if cl.status != StatusOK {
		return &StatusError{Addr: c.addr, Op: cl.op.String(), Name: cl.name, Status: cl.status, Msg: cl.msg}
	}
	return nil
}

func checkRange(off, length int64) bool {
	return off >= 0 && length >= 0 && length <= math.MaxUint32 && off <= math.MaxInt64-length
}

// Stat returns the vdisk's size and properties.
func (c *Client) Stat(ctx context.Context, name string) (Info, error) {
	cl := c.getCall(opSize, name, 0, 0, 0)
	defer c.putCall(cl)
	if err := c.roundTrip(ctx, cl); err != nil {
		return Info{}, err
	}
	return cl.info, nil
}

// Size returns the vdisk's size in bytes.
func (c *Client) Size(ctx context.Context, name string) (int64, error) {
	in, err := c.Stat(ctx, name)
	return in.Size, err
}

// ReadAt fills p from the vdisk at off. Reads over MaxData are split.
func (c *Client) ReadAt(ctx context.Context, name string, p []byte, off int64) error {
	if !checkRange(off, int64(len(p))) {
		return c.invalid(&call{op: opRead, name: name}, "bad range")
	}
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), MaxData)
		cl := c.getCall(opRead, name, off, uint32(n), 0)
		cl.rbuf = p[:n]
		err := c.roundTrip(ctx, cl)
		c.putCall(cl)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes p to the vdisk at off; with fua it is durable on return.
// Writes over MaxData are split.
func (c *Client) WriteAt(ctx context.Context, name string, p []byte, off int64, fua bool) error {
	if !checkRange(off, int64(len(p))) {
		return c.invalid(&call{op: opWrite, name: name}, "bad range")
	}
	var flags uint8
	if fua {
		flags = flagFUA
	}
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), MaxData)
		cl := c.getCall(opWrite, name, off, uint32(n), flags)
		cl.wdata = p[:n]
		err := c.roundTrip(ctx, cl)
		c.putCall(cl)
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush makes the vdisk's completed writes durable.
func (c *Client) Flush(ctx context.Context, name string) error {
	cl := c.getCall(opFlush, name, 0, 0, 0)
	defer c.putCall(cl)
	return c.roundTrip(ctx, cl)
}

// Trim discards a range (length < 4 GiB); it then reads as zeros.
func (c *Client) Trim(ctx context.Context, name string, off, length int64) error {
	cl := c.getCall(opTrim, name, off, uint32(length), 0)
	defer c.putCall(cl)
	if !checkRange(off, length) {
		return c.invalid(cl, "bad range")
	}
	return c.roundTrip(ctx, cl)
}

// WriteZeroes makes a range (length < 4 GiB) read as zeros; noHole asks
// that it stay allocated.
func (c *Client) WriteZeroes(ctx context.Context, name string, off, length int64, noHole, fua bool) error {
	var flags uint8
	if noHole {
		flags |= flagNoHole
	}
	if fua {
		flags |= flagFUA
	}
	cl := c.getCall(opWriteZeroes, name, off, uint32(length), flags)
	defer c.putCall(cl)
	if !checkRange(off, length) {
		return c.invalid(cl, "bad range")
	}
	return c.roundTrip(ctx, cl)
}

// BlockStatus describes allocation from off on: extents in order, the first
// starting at off, covering at most length (< 4 GiB) bytes.
func (c *Client) BlockStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	cl := c.getCall(opBlockStatus, name, off, uint32(length), 0)
	defer c.putCall(cl)
	if !checkRange(off, length) || length == 0 {
		return nil, c.invalid(cl, "bad range")
	}
	if err := c.roundTrip(ctx, cl); err != nil {
		return nil, err
	}
	return cl.exts, nil
}

// CompareAndWrite writes data to the vdisk at off if it holds cmp there
// (len(cmp) == len(data) <= blockdev.MaxCompareAndWrite), as one step
// serialised at the owner with every other CompareAndWrite of the vdisk;
// otherwise it writes nothing and returns the offset, from off, of the
// first byte that differs. It returns -1 when it wrote; with fua the data
// is durable then. A node of protocol version 1 cannot: the call fails
// with ErrInvalid, sending nothing.
//
// An error wrapping ErrUnavailable leaves open whether the node wrote; a
// retry then compares against what it holds now.
func (c *Client) CompareAndWrite(ctx context.Context, name string, off int64, cmp, data []byte, fua bool) (int64, error) {
	var flags uint8
	if fua {
		flags = flagFUA
	}
	cl := c.getCall(opCompareAndWrite, name, off, uint32(2*len(cmp)), flags)
	defer c.putCall(cl)
	if err := blockdev.CheckCompareAndWrite(cmp, data); err != nil {
		return 0, c.invalid(cl, err.Error())
	}
	if !checkRange(off, 2*int64(len(cmp))) {
		return 0, c.invalid(cl, "bad range")
	}
	cl.wdata, cl.wdata2 = cmp, data
	if err := c.roundTrip(ctx, cl); err != nil {
		return 0, err
	}
	return cl.miscompare, nil
}
