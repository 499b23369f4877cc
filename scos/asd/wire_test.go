package asd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// serveASD runs an ASD's own Serve (HTTP and the binary protocol on one
// port) on a loopback port; tlsConf nil serves in the clear.
func serveASD(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func TestWireReads(t *testing.T) {
	ctx := context.Background()
	pki := &testPKI{trusted: map[string]bool{}}
	for _, mode := range []string{"plain", "tls"} {
		t.Run(mode, func(t *testing.T) {
			cfg := Config{Dir: t.TempDir(), Node: "n", Site: "s"}
			var hc *http.Client
			if mode == "tls" {
				cfg.TLS = func(string) (*tls.Config, error) { return pki.server(t), nil }
				hc = &http.Client{Transport: NewTransport(pki.client(t))}
			}
			s, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			addr := serveASD(t, s)
			c := NewClient(addr, hc).For(s.ID()).WithWire(WireConfig{Conns: 1, MaxBytes: 1 << 20})
			t.Cleanup(func() { c.Close() })
			data := randBytes(1, 3*DefaultFragmentBlockSize+100)
			if err := c.Put(ctx, "frag", "ns/o", data); err != nil {
				t.Fatal(err)
			}
			// Several ranges of one fragment and a missing one: one request.
			items := []ReadItem{
				{"frag", 4096, 4096},
				{"frag", DefaultFragmentBlockSize - 10, 100}, // across a block boundary
				{"nope", 0, 10},
				{"frag", int64(len(data)) - 5, 10}, // past the end
				{"frag", 0, int64(len(data))},
			}
			dst := make([][]byte, len(items))
			for i, it := range items {
				dst[i] = make([]byte, it.Length)
			}
			res, err := c.ReadBatch(ctx, items, dst)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range []int{0, 1, 4} {
				it := items[i]
				if res[i].Err != nil || !bytes.Equal(dst[i], data[it.Off:it.Off+it.Length]) ||
					res[i].CRC != crc32c.Checksum(data) || res[i].Size != int64(len(data)) {
					t.Errorf("item %d: %+v", i, res[i])
				}
			}
			if !errors.Is(res[2].Err, ErrFragmentNotFound) {
				t.Errorf("missing fragment: %v", res[2].Err)
			}
			if res[3].Err == nil {
				t.Errorf("range past the end: no error")
			}
			// Get goes over the binary protocol too.
			got, crc, err := c.Get(ctx, "frag", 10, 20)
			if err != nil || !bytes.Equal(got, data[10:30]) || crc != crc32c.Checksum(data) {
				t.Fatalf("get: %v", err)
			}
			if n := c.WireReads(); n != 2 {
				t.Fatalf("%d binary reads, want 2", n)
			}
			// Meant for another ASD: refused.
			other := NewClient(addr, hc).For("asd-other").WithWire(WireConfig{})
			defer other.Close()
			if _, _, err := other.Get(ctx, "frag", 0, 10); err == nil || !errors.Is(err, errWrongASD) {
				t.Fatalf("read meant for another ASD: %v", err)
			}
		})
	}
}

// An ASD of a build that only speaks HTTP is read over HTTP.
func TestWireFallsBackToHTTP(t *testing.T) {
	ctx := context.Background()
	pki := &testPKI{trusted: map[string]bool{}}
	for _, mode := range []string{"plain", "tls"} {
		t.Run(mode, func(t *testing.T) {
			s, err := Open(Config{Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			// What Serve did before the binary protocol.
			srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
			var hc *http.Client
			if mode == "tls" {
				srv.TLSConfig = pki.server(t)
				srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
				go srv.ServeTLS(ln, "", "")
				hc = &http.Client{Transport: NewTransport(pki.client(t))}
			} else {
				go srv.Serve(ln)
			}
			t.Cleanup(func() { srv.Close() })
			c := NewClient(ln.Addr().String(), hc).For(s.ID()).WithWire(WireConfig{})
			defer c.Close()
			data := randBytes(2, 10000)
			if err := c.Put(ctx, "frag", "", data); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				got, _, err := c.Get(ctx, "frag", 100, 200)
				if err != nil || !bytes.Equal(got, data[100:300]) {
					t.Fatalf("get from an HTTP-only ASD: %v", err)
				}
			}
			if n := c.WireReads(); n != 0 {
				t.Fatalf("%d binary reads from an HTTP-only ASD", n)
			}
			if _, err := c.StartRead(ctx, []ReadItem{{"frag", 0, 1}}, [][]byte{make([]byte, 1)}); !errors.Is(err, ErrNoWire) {
				t.Fatalf("binary read after the fallback: %v", err)
			}
		})
	}
}

// fakeWireASD speaks the protocol by hand: a test decides what it answers.
type fakeWireASD struct {
	ln    net.Listener
	conns chan *fakeWireConn
}

type fakeWireConn struct {
	c  net.Conn
	br *bufio.Reader
}

func newFakeWireASD(t *testing.T) *fakeWireASD {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWireASD{ln: ln, conns: make(chan *fakeWireConn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if _, _, _, err := readHello(br); err != nil {
				c.Close()
				continue
			}
			c.Write(appendHelloReply(nil, wireVersion, helloOK, ""))
			f.conns <- &fakeWireConn{c, br}
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return f
}

func (f *fakeWireASD) accept(t *testing.T) *fakeWireConn {
	t.Helper()
	select {
	case c := <-f.conns:
		t.Cleanup(func() { c.c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
		return nil
	}
}

// request reads one read request.
func (c *fakeWireConn) request(t *testing.T) (uint64, []ReadItem) {
	t.Helper()
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		t.Fatal(err)
	}
	h, err := decodeFrameHeader(hdr[:])
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, h.bodyLen())
	if _, err := io.ReadFull(c.br, body); err != nil {
		t.Fatal(err)
	}
	req, err := decodeReadRequest(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h.id, req.items
}

// reply answers every item with bytes of value fill.
func (c *fakeWireConn) reply(t *testing.T, id uint64, items []ReadItem, fill byte) {
	t.Helper()
	out := make([]byte, frameHeaderLen)
	for _, it := range items {
		out = append(out, 0)
		out = binary.LittleEndian.AppendUint32(out, 0xabcd)
		out = binary.LittleEndian.AppendUint64(out, 1<<20)
		out = append(out, bytes.Repeat([]byte{fill}, int(it.Length))...)
	}
	putFrameHeader(out, frameHeader{length: uint32(len(out) - 4), typ: frameReadReply, id: id})
	if _, err := c.c.Write(out); err != nil {
		t.Fatal(err)
	}
}

// Many reads in flight on one connection, answered in reverse order.
func TestWirePipelinedOutOfOrder(t *testing.T) {
	ctx := context.Background()
	f := newFakeWireASD(t)
	c := NewClient(f.ln.Addr().String(), nil).WithWire(WireConfig{Conns: 1})
	defer c.Close()
	const n = 16
	calls := make([]*WireCall, n)
	dst := make([][]byte, n)
	errc := make(chan error, 1)
	go func() {
		for i := range calls {
			dst[i] = make([]byte, 100+i)
			call, err := c.StartRead(ctx, []ReadItem{{"frag", int64(i), int64(100 + i)}}, [][]byte{dst[i]})
			if err != nil {
				errc <- err
				return
			}
			calls[i] = call
		}
		errc <- nil
	}()
	conn := f.accept(t)
	type req struct {
		id    uint64
		items []ReadItem
	}
	var reqs []req
	for range n {
		id, items := conn.request(t)
		reqs = append(reqs, req{id, items})
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for i := n - 1; i >= 0; i-- {
		conn.reply(t, reqs[i].id, reqs[i].items, byte(reqs[i].items[0].Off))
	}
	for i, call := range calls {
		select {
		case <-call.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d never completed", i)
		}
		res, err := call.Result()
		if err != nil || res[0].Err != nil || res[0].CRC != 0xabcd || !bytes.Equal(dst[i], bytes.Repeat([]byte{byte(i)}, 100+i)) {
			t.Fatalf("call %d: %+v %v", i, res, err)
		}
	}
}

// A connection that dies with reads in flight fails them at once; the
// next read redials.
func TestWireConnectionKilledMidFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newFakeWireASD(t)
	c := NewClient(f.ln.Addr().String(), nil).WithWire(WireConfig{Conns: 1})
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.ReadBatch(ctx, []ReadItem{{"frag", 0, 10}}, [][]byte{make([]byte, 10)})
			errs <- err
		}()
	}
	conn := f.accept(t)
	for range 4 {
		conn.request(t)
	}
	conn.c.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("read on a killed connection: %v", err)
		}
	}
	if ctx.Err() != nil {
		t.Fatal("the reads waited for their deadline")
	}
	// Redialled.
	done := make(chan error, 1)
	dst := make([]byte, 10)
	go func() {
		_, err := c.ReadBatch(ctx, []ReadItem{{"frag", 0, 10}}, [][]byte{dst})
		done <- err
	}()
	conn2 := f.accept(t)
	id, items := conn2.request(t)
	conn2.reply(t, id, items, 7)
	if err := <-done; err != nil || dst[0] != 7 {
		t.Fatalf("read after the redial: %v", err)
	}
}

// A read whose deadline passes fails with it; a connection that answered
// nothing since is closed.
func TestWireDeadline(t *testing.T) {
	f := newFakeWireASD(t)
	c := NewClient(f.ln.Addr().String(), nil).WithWire(WireConfig{Conns: 1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadBatch(ctx, []ReadItem{{"frag", 0, 10}}, [][]byte{make([]byte, 10)})
		done <- err
	}()
	conn := f.accept(t)
	conn.request(t)
	if err := <-done; !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read past its deadline: %v", err)
	}
	// The silent connection was closed.
	conn.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.br.ReadByte(); err != io.EOF {
		t.Fatalf("the silent connection is still open: %v", err)
	}
}

// Garbage from the network is a clear error that closes the connection,
// on either side; the ASD keeps serving others.
func TestWireBadFrames(t *testing.T) {
	ctx := context.Background()
	f := newFakeWireASD(t)
	c := NewClient(f.ln.Addr().String(), nil).WithWire(WireConfig{Conns: 1})
	defer c.Close()
	for _, garbage := range [][]byte{
		bytes.Repeat([]byte{0xff}, frameHeaderLen),        // length out of range
		{12, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, // unknown type
		func() []byte { // a reply too short for what was asked
			b := make([]byte, frameHeaderLen+13)
			putFrameHeader(b, frameHeader{length: uint32(len(b) - 4), typ: frameReadReply, id: 1})
			return b
		}(),
	} {
		done := make(chan error, 1)
		go func() {
			_, err := c.ReadBatch(ctx, []ReadItem{{"frag", 0, 10}}, [][]byte{make([]byte, 10)})
			done <- err
		}()
		conn := f.accept(t)
		conn.request(t)
		conn.c.Write(garbage)
		if err := <-done; !errors.Is(err, errProtocol) {
			t.Fatalf("garbage %x: %v", garbage, err)
		}
	}

	// The server side.
	s, err := Open(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveASD(t, s)
	good := NewClient(addr, nil).WithWire(WireConfig{})
	defer good.Close()
	if err := good.Put(ctx, "frag", "", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for _, frame := range [][]byte{
		bytes.Repeat([]byte{0xff}, frameHeaderLen),
		appendReadRequest(nil, 1, 0, []ReadItem{{"frag", 0, maxReadBytes + 1}}),
		{12, 0, 0, 0, frameReadReply, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0},
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		conn.Write(appendHello(nil, ""))
		if _, err := readHelloReply(br); err != nil {
			t.Fatal(err)
		}
		conn.Write(frame)
		rest, err := io.ReadAll(br)
		if err != nil || len(rest) > 0 {
			t.Fatalf("after a bad frame: %q %v", rest, err)
		}
		conn.Close()
		if got, _, err := good.Get(ctx, "frag", 0, 5); err != nil || string(got) != "hello" {
			t.Fatalf("the ASD after a bad frame: %q %v", got, err)
		}
	}
}

// FuzzWire feeds the decoders of everything read from the network.
func FuzzWire(f *testing.F) {
	f.Add(appendReadRequest(nil, 1, 100, []ReadItem{{"frag", 0, 4096}, {"other", 1 << 20, 1}}))
	f.Add(appendHello(nil, "asd-0123"))
	f.Add(appendHelloReply(nil, 1, 0, ""))
	f.Add(appendHelloReply(nil, 0, 2, "this is ASD x"))
	rep := make([]byte, frameHeaderLen)
	rep = appendReplyError(rep, readNotFound, 0, 0, "gone")
	rep = append(rep, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 'a', 'b')
	putFrameHeader(rep, frameHeader{length: uint32(len(rep) - 4), typ: frameReadReply, id: 3})
	f.Add(rep)
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	req := []ReadItem{{"frag", 0, 10}, {"x", 0, 2}}
	dst := [][]byte{make([]byte, 10), make([]byte, 2)}
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := decodeFrameHeader(b); err == nil && len(b) >= frameHeaderLen {
			body := b[frameHeaderLen:]
			if len(body) > h.bodyLen() {
				body = body[:h.bodyLen()]
			}
			if r, err := decodeReadRequest(body, nil); err == nil {
				// What decodes encodes back to the same bytes.
				again := appendReadRequest(nil, h.id, r.timeoutMS, r.items)
				if !bytes.Equal(again[frameHeaderLen:], body) {
					t.Fatalf("request does not round-trip")
				}
			}
			readReply(bytes.NewReader(body), h.bodyLen(), req, dst, nil)
		}
		decodeReadRequest(b, nil)
		readReply(bytes.NewReader(b), len(b), req, dst, nil)
		readHello(bytes.NewReader(b))
		readHelloReply(bytes.NewReader(b))
	})
}

// A damaged block fails only the items that touch it, in a batch whose
// other items (read into the same reply before and after it) are intact;
// 1 MiB reads go over the binary protocol by default.
func TestWireCorruptBlockAndBigReads(t *testing.T) {
	ctx := context.Background()
	s, err := Open(Config{Dir: t.TempDir(), Node: "n", Site: "s"})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveASD(t, s)
	c := NewClient(addr, nil).For(s.ID()).WithWire(WireConfig{Conns: 1})
	t.Cleanup(func() { c.Close() })
	bs := int64(DefaultFragmentBlockSize)
	big := randBytes(3, 1<<20)
	if err := c.Put(ctx, "big", "", big); err != nil {
		t.Fatal(err)
	}
	got, crc, err := c.Get(ctx, "big", 0, int64(len(big)))
	if err != nil || !bytes.Equal(got, big) || crc != crc32c.Checksum(big) || c.WireReads() != 1 {
		t.Fatalf("1 MiB read: %v (%d binary reads)", err, c.WireReads())
	}

	data := randBytes(4, int(4*bs))
	if err := c.Put(ctx, "frag", "", data); err != nil {
		t.Fatal(err)
	}
	path := FragmentPath(s.cfg.Dir, "frag")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	hl, err := FragmentHeaderLen(raw)
	if err != nil {
		t.Fatal(err)
	}
	raw[int64(hl)+bs+5] ^= 0x40 // block 1
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	items := []ReadItem{
		{"frag", 0, bs},            // block 0
		{"frag", bs + 100, 10},     // inside block 1
		{"frag", 3*bs + 7, bs - 7}, // block 3, unaligned
		{"frag", 0, 4 * bs},        // whole: the whole-data checksum
		{"frag", bs - 1, 2},        // across blocks 0 and 1
		{"frag", 2 * bs, 2 * bs},   // blocks 2 and 3
	}
	want := []bool{true, false, true, false, false, true}
	dst := make([][]byte, len(items))
	for i, it := range items {
		dst[i] = make([]byte, it.Length)
	}
	res, err := c.ReadBatch(ctx, items, dst)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		if !want[i] {
			if !errors.Is(res[i].Err, ErrFragmentCorrupt) {
				t.Errorf("item %d [%d,+%d): %v, want corrupt", i, it.Off, it.Length, res[i].Err)
			}
			continue
		}
		if res[i].Err != nil || !bytes.Equal(dst[i], data[it.Off:it.Off+it.Length]) {
			t.Errorf("item %d [%d,+%d): %v", i, it.Off, it.Length, res[i].Err)
		}
	}
}

// A reply read straight into the caller's buffer: a read given up while
// its reply is half read returns only once nothing more is written into
// its buffer, and a peer that stalls in the middle of a reply has its
// connection closed rather than holding the caller.
func TestWireCancelMidReply(t *testing.T) {
	f := newFakeWireASD(t)
	c := NewClient(f.ln.Addr().String(), nil).WithWire(WireConfig{Conns: 1})
	defer c.Close()
	dst := make([]byte, 1<<20)
	call, err := c.StartRead(context.Background(), []ReadItem{{"frag", 0, int64(len(dst))}}, [][]byte{dst})
	if err != nil {
		t.Fatal(err)
	}
	conn := f.accept(t)
	id, items := conn.request(t)
	out := make([]byte, frameHeaderLen)
	out = append(out, 0)
	out = binary.LittleEndian.AppendUint32(out, 0xabcd)
	out = binary.LittleEndian.AppendUint64(out, 1<<20)
	out = append(out, bytes.Repeat([]byte{5}, int(items[0].Length))...)
	putFrameHeader(out, frameHeader{length: uint32(len(out) - 4), typ: frameReadReply, id: id})
	half := len(out) / 2
	if _, err := conn.c.Write(out[:half]); err != nil {
		t.Fatal(err)
	}
	// Wait until the reader has taken the call (before, Cancel just
	// drops it from the pending ones).
	deadline := time.Now().Add(10 * time.Second)
	for {
		call.wc.mu.Lock()
		recv := call.recv
		call.wc.mu.Unlock()
		if recv {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reply was never taken by the reader")
		}
		time.Sleep(time.Millisecond)
	}
	call.Cancel(context.Canceled)
	select {
	case <-call.Done():
	default:
		t.Fatal("Cancel returned while the reply was still being read into the buffer")
	}
	if _, err := call.Result(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("read given up mid-reply: %v", err)
	}
	conn.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.br.ReadByte(); err != io.EOF {
		t.Fatalf("the stalled connection is still open: %v", err)
	}
}
