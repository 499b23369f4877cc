package remote

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

func TestCompareAndWrite(t *testing.T) {
	const size = 1 << 20
	tg := newMemTarget()
	d := newMemDev(size)
	tg.add("vd", d)
	ro := newMemDev(size)
	ro.readOnly = true
	tg.add("template", ro)
	tg.add("plain", newMemDev(size))
	tg.noCAW["plain"] = true
	_, l := testServer(t, tg, ServerOptions{})
	c := testClient(t, l.Addr().String(), ClientOptions{})
	ctx := ctxTimeout(t)
	blk := func(b byte) []byte { return bytes.Repeat([]byte{b}, 512) }

	if err := c.WriteAt(ctx, "vd", blk(7), 4096, false); err != nil {
		t.Fatal(err)
	}
	wrong := blk(7)
	wrong[300] = 1
	tests := []struct {
		name      string
		vdisk     string
		off       int64
		cmp, data []byte
		fua       bool
		want      int64
		err       error
		msgPart   string
		content   []byte // the block at 4096 afterwards
	}{
		{"miscompare", "vd", 4096, wrong, blk(9), false, 300, nil, "", blk(7)},
		{"match", "vd", 4096, blk(7), blk(8), true, -1, nil, "", blk(8)},
		{"stale compare", "vd", 4096, blk(7), blk(9), false, 0, nil, "", blk(8)},
		{"empty", "vd", 0, nil, nil, false, -1, nil, "", blk(8)},
		{"read-only", "template", 4096, blk(0), blk(9), false, 0, ErrReadOnly, "", blk(8)},
		{"device without compare and write", "plain", 4096, blk(0), blk(9), false, 0, ErrInvalid, "does not compare and write", blk(8)},
		{"beyond the end", "vd", size - 256, blk(0), blk(9), false, 0, ErrNoSpace, "beyond the end", blk(8)},
		{"not found", "nope", 0, blk(0), blk(9), false, 0, ErrNotFound, "", blk(8)},
		{"lengths differ (client)", "vd", 4096, blk(8), blk(9)[:100], false, 0, ErrInvalid, "compare", blk(8)},
		{"too long (client)", "vd", 0, make([]byte, blockdev.MaxCompareAndWrite+1), make([]byte, blockdev.MaxCompareAndWrite+1),
			false, 0, ErrInvalid, "limit", blk(8)},
		{"negative offset (client)", "vd", -1, blk(8), blk(9), false, 0, ErrInvalid, "", blk(8)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fua := d.fuaWrites.Load()
			got, err := c.CompareAndWrite(ctx, tt.vdisk, tt.off, tt.cmp, tt.data, tt.fua)
			if tt.err != nil {
				var se *StatusError
				if !errors.Is(err, tt.err) || !errors.As(err, &se) || !strings.Contains(se.Msg, tt.msgPart) {
					t.Fatalf("err = %v; want %v with %q", err, tt.err, tt.msgPart)
				}
			} else if err != nil || got != tt.want {
				t.Fatalf("= %d, %v; want %d", got, err, tt.want)
			}
			if tt.fua && d.fuaWrites.Load() != fua+1 {
				t.Fatal("FUA not passed on")
			}
			b := make([]byte, 512)
			if err := c.ReadAt(ctx, "vd", b, 4096); err != nil || !bytes.Equal(b, tt.content) {
				t.Fatalf("block holds %v... (%v), want %v...", b[:4], err, tt.content[:4])
			}
		})
	}
	if n := len(l.accepted()); n > DefaultConns {
		t.Fatalf("%d connections accepted; errors should not break connections", n)
	}
}

// TestCompareAndWriteRace: callers on two nodes' clients racing with the
// same compare buffer for one block; exactly one wins each round.
func TestCompareAndWriteRace(t *testing.T) {
	tg := newMemTarget()
	d := newMemDev(1 << 20)
	tg.add("vd", d)
	_, l := testServer(t, tg, ServerOptions{})
	clients := []*Client{testClient(t, l.Addr().String(), ClientOptions{}), testClient(t, l.Addr().String(), ClientOptions{})}
	ctx := ctxTimeout(t)
	cur := make([]byte, 512)
	for round := range 30 {
		var wins atomic.Int32
		var wg sync.WaitGroup
		for g := range 8 {
			data := bytes.Repeat([]byte{byte(round*8 + g + 1)}, 512)
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, err := clients[g%2].CompareAndWrite(ctx, "vd", 8192, cur, data, false)
				switch {
				case err != nil:
					t.Error(err)
				case m == -1:
					wins.Add(1)
				case m != 0:
					t.Errorf("miscompare at %d, want 0", m)
				}
			}()
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d winners", round, n)
		}
		next := make([]byte, 512)
		if err := clients[0].ReadAt(ctx, "vd", next, 8192); err != nil {
			t.Fatal(err)
		}
		cur = next
	}
}

// oldServer serves protocol version 1 the way a node not yet upgraded
// does: a hello of another version is refused (with version 1) and the
// connection closed; a version 1 connection is passed to srv, which then
// speaks version 1 on it. It counts the connections it accepted.
func oldServer(t *testing.T, srv string) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				var b [helloSize]byte
				if _, err := io.ReadFull(nc, b[:]); err != nil {
					return
				}
				if h, err := decodeHello(b[:]); err != nil || h.version != 1 {
					nc.Write(appendHello(nil, hello{version: 1, status: helloBadVersion}))
					return
				}
				up, err := net.Dial("tcp", srv)
				if err != nil {
					return
				}
				defer up.Close()
				up.Write(b[:])
				wg.Add(1)
				go func() {
					defer wg.Done()
					io.Copy(nc, up)
					nc.Close()
				}()
				io.Copy(up, nc)
			}()
		}
	}()
	return l.Addr().String(), &accepted
}

func TestVersionNegotiation(t *testing.T) {
	tg := newMemTarget()
	tg.add("vd", newMemDev(1<<20))
	_, l := testServer(t, tg, ServerOptions{})
	ctx := ctxTimeout(t)

	t.Run("server speaks version 1 to an old client", func(t *testing.T) {
		nc, h := rawDial(t, l.Addr().String(), 1)
		if h.version != 1 || h.status != helloOK {
			t.Fatalf("hello = %+v; want version 1 accepted", h)
		}
		nc.Write(append(appendReqHdr(nil, reqHdr{op: opSize, nameLen: 2, handle: 1}), "vd"...))
		var rb [replyHdrSize + sizeInfoSize]byte
		if _, err := io.ReadFull(nc, rb[:]); err != nil {
			t.Fatal(err)
		}
		if rh, err := decodeReplyHdr(rb[:]); err != nil || rh.handle != 1 || rh.status != StatusOK {
			t.Fatalf("size reply %+v, %v", rh, err)
		}
		// Version 1 has no compare and write: the frame is a protocol
		// error there, as on a version 1 server.
		nc.Write(append(append(appendReqHdr(nil, reqHdr{op: opCompareAndWrite, nameLen: 2, length: 2, handle: 2}), "vd"...), 0, 1))
		if n, err := io.Copy(io.Discard, nc); err != nil || n != 0 {
			t.Fatalf("read %d bytes, %v; want EOF at once", n, err)
		}
	})
	t.Run("server refuses version 0", func(t *testing.T) {
		_, h := rawDial(t, l.Addr().String(), 0)
		if h.version != Version || h.status != helloBadVersion {
			t.Fatalf("hello = %+v; want version %d, status bad version", h, Version)
		}
	})
	t.Run("client speaks version 1 to an old server", func(t *testing.T) {
		addr, accepted := oldServer(t, l.Addr().String())
		c := testClient(t, addr, ClientOptions{Conns: 1})
		if err := c.WriteAt(ctx, "vd", []byte("old"), 0, false); err != nil {
			t.Fatal(err)
		}
		_, err := c.CompareAndWrite(ctx, "vd", 0, []byte("old"), []byte("new"), false)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "protocol version 1") {
			t.Fatalf("compare and write on version 1: %v; want ErrInvalid naming the version", err)
		}
		b := make([]byte, 3)
		if err := c.ReadAt(ctx, "vd", b, 0); err != nil || string(b) != "old" {
			t.Fatalf("read %q, %v", b, err)
		}
		// One refused hello, then one connection that carried everything.
		if n := accepted.Load(); n != 2 {
			t.Fatalf("%d connections to the old server; want 2", n)
		}
	})
}
