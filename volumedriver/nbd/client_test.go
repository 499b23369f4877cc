package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// testServer runs a Server on a unix socket for one test.
type testServer struct {
	srv     *Server
	exports *fakeExports
	addr    string
	done    chan error
}

func startServer(t testing.TB, exports *fakeExports, opts Options) *testServer {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	ts := &testServer{srv: NewServer(exports, opts), exports: exports, addr: sock, done: make(chan error, 1)}
	go func() { ts.done <- ts.srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		if err := ts.srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-ts.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
	})
	return ts
}

// testClient is a tiny hand-written NBD client that speaks the wire
// protocol directly.
type testClient struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	// readLen maps the cookie of a pending READ to its length, to decode
	// simple replies.
	readLen map[uint64]uint32
	partial map[uint64]*reply
}

type reply struct {
	cookie  uint64
	errno   uint32
	msg     string
	data    []byte // READ data, reassembled
	extents [][2]uint32
	ctxID   uint32
	simple  bool
	chunks  int
}

func dialClient(t testing.TB, addr string) *testClient {
	t.Helper()
	nc, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return newTestClient(t, nc)
}

func newTestClient(t testing.TB, nc net.Conn) *testClient {
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &testClient{t: t, nc: nc, br: bufio.NewReader(nc), readLen: map[uint64]uint32{}, partial: map[uint64]*reply{}}
}

func (c *testClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *testClient) readFull(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("client read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed checks that the server closes the connection.
func (c *testClient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("expected EOF, got %v after %d bytes", err, len(b))
	}
}

// greet reads the server greeting and sends the client flags.
func (c *testClient) greet(cflags uint32) uint16 {
	c.t.Helper()
	b := c.readFull(18)
	if m := binary.BigEndian.Uint64(b); m != nbdMagic {
		c.t.Fatalf("greeting magic 0x%x", m)
	}
	if m := binary.BigEndian.Uint64(b[8:]); m != optMagic {
		c.t.Fatalf("greeting option magic 0x%x", m)
	}
	c.write(binary.BigEndian.AppendUint32(nil, cflags))
	return binary.BigEndian.Uint16(b[16:])
}

func (c *testClient) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

func (c *testClient) optReply() (opt, typ uint32, data []byte) {
	c.t.Helper()
	b := c.readFull(20)
	if m := binary.BigEndian.Uint64(b); m != optReplyMagic {
		c.t.Fatalf("option reply magic 0x%x", m)
	}
	n := binary.BigEndian.Uint32(b[16:])
	return binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:]), c.readFull(int(n))
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// exportInfo collects the NBD_REP_INFO replies of INFO/GO.
type exportInfo struct {
	size                 uint64
	flags                uint16
	name                 string
	minBS, prefBS, maxBS uint32
	final                uint32 // final reply type
	msg                  string
}

func (c *testClient) infoGo(opt uint32, name string, infos ...uint16) exportInfo {
	c.t.Helper()
	c.sendOpt(opt, infoData(name, infos...))
	var ei exportInfo
	for {
		o, typ, data := c.optReply()
		if o != opt {
			c.t.Fatalf("reply for option %d, want %d", o, opt)
		}
		if typ != repInfo {
			ei.final = typ
			ei.msg = string(data)
			return ei
		}
		switch binary.BigEndian.Uint16(data) {
		case infoExport:
			if len(data) != 12 {
				c.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(data))
			}
			ei.size = binary.BigEndian.Uint64(data[2:])
			ei.flags = binary.BigEndian.Uint16(data[10:])
		case infoName:
			ei.name = string(data[2:])
		case infoBlockSize:
			if len(data) != 14 {
				c.t.Fatalf("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
			}
			ei.minBS = binary.BigEndian.Uint32(data[2:])
			ei.prefBS = binary.BigEndian.Uint32(data[6:])
			ei.maxBS = binary.BigEndian.Uint32(data[10:])
		}
	}
}

// connect negotiates up to transmission with NBD_OPT_GO, optionally with
// structured replies and base:allocation.
func (c *testClient) connect(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	if structured {
		c.sendOpt(optStructuredReply, nil)
		if _, typ, _ := c.optReply(); typ != repAck {
			c.t.Fatalf("structured reply: reply 0x%x", typ)
		}
		c.structured = true
	}
	if meta {
		c.sendOpt(optSetMetaContext, metaData(name, metaAllocation))
		for {
			_, typ, _ := c.optReply()
			if typ == repAck {
				break
			}
			if typ != repMetaContext {
				c.t.Fatalf("set meta context: reply 0x%x", typ)
			}
		}
	}
	ei := c.infoGo(optGo, name, infoBlockSize)
	if ei.final != repAck {
		c.t.Fatalf("NBD_OPT_GO %q: reply 0x%x %q", name, ei.final, ei.msg)
	}
	return ei
}

func (c *testClient) send(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if typ == cmdRead {
		c.readLen[cookie] = length
	}
	c.write(append(b, payload...))
}

// recv reads messages until one reply is complete and returns it.
func (c *testClient) recv() reply {
	c.t.Helper()
	r, err := c.tryRecv()
	if err != nil {
		c.t.Fatalf("client: %v", err)
	}
	return r
}

func (c *testClient) tryRecv() (reply, error) {
	for {
		var b [20]byte
		if _, err := io.ReadFull(c.br, b[:4]); err != nil {
			return reply{}, err
		}
		switch binary.BigEndian.Uint32(b[:]) {
		case simpleReplyMagic:
			if _, err := io.ReadFull(c.br, b[4:16]); err != nil {
				return reply{}, err
			}
			r := reply{simple: true, errno: binary.BigEndian.Uint32(b[4:]), cookie: binary.BigEndian.Uint64(b[8:])}
			if n, ok := c.readLen[r.cookie]; ok {
				delete(c.readLen, r.cookie)
				if r.errno == 0 {
					r.data = make([]byte, n)
					if _, err := io.ReadFull(c.br, r.data); err != nil {
						return reply{}, err
					}
				}
			}
			return r, nil
		case structuredReplyMagic:
			if !c.structured {
				return reply{}, errors.New("structured reply without negotiation")
			}
			if _, err := io.ReadFull(c.br, b[4:20]); err != nil {
				return reply{}, err
			}
			flags := binary.BigEndian.Uint16(b[4:])
			typ := binary.BigEndian.Uint16(b[6:])
			cookie := binary.BigEndian.Uint64(b[8:])
			p := make([]byte, binary.BigEndian.Uint32(b[16:]))
			if _, err := io.ReadFull(c.br, p); err != nil {
				return reply{}, err
			}
			r := c.partial[cookie]
			if r == nil {
				r = &reply{cookie: cookie}
				c.partial[cookie] = r
			}
			r.chunks++
			switch typ {
			case replyTypeNone:
			case replyTypeOffsetData:
				off := binary.BigEndian.Uint64(p)
				r.data = append(r.data, p[8:]...)
				_ = off
			case replyTypeBlockStatus:
				r.ctxID = binary.BigEndian.Uint32(p)
				for q := p[4:]; len(q) >= 8; q = q[8:] {
					r.extents = append(r.extents, [2]uint32{binary.BigEndian.Uint32(q), binary.BigEndian.Uint32(q[4:])})
				}
			case replyTypeError:
				r.errno = binary.BigEndian.Uint32(p)
				ml := binary.BigEndian.Uint16(p[4:])
				r.msg = string(p[6 : 6+ml])
			default:
				return reply{}, errors.New("unexpected structured reply type")
			}
			if flags&replyFlagDone != 0 {
				delete(c.partial, cookie)
				delete(c.readLen, cookie)
				return *r, nil
			}
		default:
			return reply{}, errors.New("bad reply magic")
		}
	}
}

// do sends one request and waits for its reply.
func (c *testClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	c.t.Helper()
	const cookie = 0xc0ffee
	c.send(typ, flags, cookie, off, length, payload)
	r := c.recv()
	if r.cookie != cookie {
		c.t.Fatalf("reply cookie 0x%x, want 0x%x", r.cookie, cookie)
	}
	return r
}
