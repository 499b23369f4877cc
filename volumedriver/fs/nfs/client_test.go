package nfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// rpcClient is a minimal ONC RPC client for tests: one call at a time,
// AUTH_SYS as root.
type rpcClient struct {
	c   net.Conn
	rd  *bufio.Reader
	xid uint32
}

func dialRPC(t *testing.T, addr string) *rpcClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rpcClient{c: c, rd: bufio.NewReader(c), xid: 100}
}

// callRecord builds an RPC call record body (no record mark).
func callRecord(xid, prog, vers, proc uint32, args []byte) []byte {
	w := &xdrWriter{}
	w.u32(xid)
	w.u32(rpcCall)
	w.u32(2)
	w.u32(prog)
	w.u32(vers)
	w.u32(proc)
	cred := &xdrWriter{}
	cred.u32(1)      // stamp
	cred.string("t") // machine
	cred.u32(0)      // uid
	cred.u32(0)      // gid
	cred.u32(0)      // gids
	w.u32(authSys)
	w.opaque(cred.b)
	w.u32(authNone)
	w.u32(0)
	w.b = append(w.b, args...)
	return w.b
}

var errRejected = errors.New("rpc rejected")

// call sends one call and returns the accept status and the result body.
func (c *rpcClient) call(prog, vers, proc uint32, args []byte) (uint32, *xdrReader, error) {
	c.xid++
	rec := append(make([]byte, 4), callRecord(c.xid, prog, vers, proc, args)...)
	_ = c.c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := writeRecord(c.c, rec); err != nil {
		return 0, nil, err
	}
	reply, err := readRecord(c.rd, 4<<20)
	if err != nil {
		return 0, nil, err
	}
	r := &xdrReader{b: reply}
	if xid := r.u32(); xid != c.xid {
		return 0, nil, fmt.Errorf("xid %d, want %d", xid, c.xid)
	}
	if r.u32() != rpcReply {
		return 0, nil, errors.New("not a reply")
	}
	if r.u32() != msgAccepted {
		return 0, nil, errRejected
	}
	r.u32()
	r.opaque(400)
	stat := r.u32()
	return stat, r, r.err
}

// nfs calls an NFSv3 procedure that must be accepted and returns the
// nfsstat3 and the rest of the reply.
func (c *rpcClient) nfs(t *testing.T, proc uint32, args *xdrWriter) (uint32, *xdrReader) {
	t.Helper()
	acc, r, err := c.call(progNFS, 3, proc, args.b)
	if err != nil || acc != acceptSuccess {
		t.Fatalf("NFS proc %d: accept %d, err %v", proc, acc, err)
	}
	return r.u32(), r
}

func (c *rpcClient) mountRoot(t *testing.T) []byte {
	t.Helper()
	w := &xdrWriter{}
	w.string("/")
	acc, r, err := c.call(progMount, 3, mountMnt, w.b)
	if err != nil || acc != acceptSuccess {
		t.Fatalf("MNT: accept %d, err %v", acc, err)
	}
	if st := r.u32(); st != mnt3OK {
		t.Fatalf("MNT: status %d", st)
	}
	return append([]byte(nil), r.opaque(64)...)
}

func args(fn func(w *xdrWriter)) *xdrWriter {
	w := &xdrWriter{}
	fn(w)
	return w
}

// lookup returns a name's handle in dir, or the status.
func (c *rpcClient) lookup(t *testing.T, dir []byte, name string) ([]byte, uint32) {
	t.Helper()
	st, r := c.nfs(t, procLookup, args(func(w *xdrWriter) { w.opaque(dir); w.string(name) }))
	if st != nfsOK {
		return nil, st
	}
	return append([]byte(nil), r.opaque(64)...), st
}

// create makes a file (UNCHECKED unless how says otherwise).
func (c *rpcClient) create(t *testing.T, dir []byte, name string, how uint32, verf byte) ([]byte, uint32) {
	t.Helper()
	st, r := c.nfs(t, procCreate, args(func(w *xdrWriter) {
		w.opaque(dir)
		w.string(name)
		w.u32(how)
		if how == createExclusive {
			w.fixed([]byte{verf, 0, 0, 0, 0, 0, 0, 0})
		} else {
			putEmptySattr(w)
		}
	}))
	if st != nfsOK {
		return nil, st
	}
	if !r.bool() {
		t.Fatal("CREATE: no handle")
	}
	return append([]byte(nil), r.opaque(64)...), st
}

func putEmptySattr(w *xdrWriter) {
	for range 4 {
		w.bool(false)
	}
	w.u32(0)
	w.u32(0)
}

func (c *rpcClient) write(t *testing.T, h []byte, off uint64, data []byte, how uint32) (uint32, uint32) {
	t.Helper()
	st, r := c.nfs(t, procWrite, args(func(w *xdrWriter) {
		w.opaque(h)
		w.u64(off)
		w.u32(uint32(len(data)))
		w.u32(how)
		w.opaque(data)
	}))
	if st != nfsOK {
		return st, 0
	}
	r.u32() // pre_op absent
	if r.bool() {
		r.fixed(fattrSize)
	}
	r.u32() // count
	return st, r.u32()
}

func (c *rpcClient) read(t *testing.T, h []byte, off uint64, n uint32) ([]byte, uint32) {
	t.Helper()
	st, r := c.nfs(t, procRead, args(func(w *xdrWriter) { w.opaque(h); w.u64(off); w.u32(n) }))
	if st != nfsOK {
		return nil, st
	}
	if r.bool() {
		r.fixed(fattrSize)
	}
	r.u32()
	r.bool()
	return append([]byte(nil), r.opaque(maxIO)...), st
}

func (c *rpcClient) commit(t *testing.T, h []byte) uint32 {
	t.Helper()
	st, _ := c.nfs(t, procCommit, args(func(w *xdrWriter) { w.opaque(h); w.u64(0); w.u32(0) }))
	return st
}

// startServer serves tree on a free 127.0.0.1 port until the test ends.
func startServer(t *testing.T, tree *memTree) (string, *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, tree, ln)
}

// serveOn serves tree on ln until the test ends (or the server is closed).
func serveOn(t *testing.T, tree *memTree, ln net.Listener) (string, *Server) {
	t.Helper()
	srv := NewServer(tree, Options{Logger: testLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), srv
}

// testLogger logs every call when OVS_NFS_DEBUG is set.
func testLogger() *slog.Logger {
	if os.Getenv("OVS_NFS_DEBUG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
