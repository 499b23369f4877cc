package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const testSize = 1 << 20

func oneExport(t testing.TB, opts Options) (*testServer, *fakeDevice) {
	dev := newFakeDevice(testSize)
	ts := startServer(t, newFakeExports(map[string]*fakeDevice{"disk": dev}), opts)
	return ts, dev
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestGreeting(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	if f := c.greet(flagCFixedNewstyle); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags 0x%x", f)
	}
	c.sendOpt(optAbort, nil)
	if _, typ, _ := c.optReply(); typ != repAck {
		t.Fatalf("abort reply 0x%x", typ)
	}
	c.expectClosed()
}

func TestBadClientFlagsCloses(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.greet(1 << 5)
	c.expectClosed()
}

func TestBadOptionMagicCloses(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	c.write(make([]byte, 16))
	c.expectClosed()
}

func TestOptList(t *testing.T) {
	exp := newFakeExports(map[string]*fakeDevice{"a": newFakeDevice(4096), "b": newFakeDevice(8192)})
	ts := startServer(t, exp, Options{})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optList, nil)
	var names []string
	for {
		opt, typ, data := c.optReply()
		if opt != optList {
			t.Fatalf("reply to option %d", opt)
		}
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("reply type 0x%x", typ)
		}
		n := binary.BigEndian.Uint32(data)
		names = append(names, string(data[4:4+n]))
	}
	if !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("names %q", names)
	}
	// NBD_OPT_LIST with data is invalid; negotiation goes on.
	c.sendOpt(optList, []byte("x"))
	if _, typ, _ := c.optReply(); typ != repErrInvalid {
		t.Fatalf("list with data: reply 0x%x", typ)
	}
	if ei := c.infoGo(optGo, "b"); ei.final != repAck || ei.size != 8192 {
		t.Fatalf("go after list: %+v", ei)
	}
}

func TestOptionErrorsKeepNegotiating(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	cases := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"unknown option", 0x1234, []byte("whatever"), repErrUnsup},
		{"starttls", optStartTLS, nil, repErrUnsup},
		{"huge unknown option", 0x4321, make([]byte, 1<<20), repErrUnsup},
		{"structured reply with data", optStructuredReply, []byte{1}, repErrInvalid},
		{"go too short", optGo, []byte{0, 0}, repErrInvalid},
		{"go name overflows", optGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, repErrInvalid},
		{"go info count mismatch", optGo, append(infoData("disk"), 0), repErrInvalid},
		{"go unknown export", optGo, infoData("nope"), repErrUnknown},
		{"info unknown export", optInfo, infoData("nope"), repErrUnknown},
		{"go name with NUL", optGo, infoData("di\x00sk"), repErrInvalid},
		{"go too big", optGo, make([]byte, maxOptData+1), repErrTooBig},
		{"set meta without structured", optSetMetaContext, metaData("disk", metaAllocation), repErrInvalid},
		{"list meta truncated", optListMetaContext, metaData("disk", metaAllocation)[:12], repErrInvalid},
		{"list meta no colon", optListMetaContext, metaData("disk", "nocolon"), repErrInvalid},
		{"list meta too many queries", optListMetaContext, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 0), 1<<30), repErrTooBig},
	}
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	for _, tc := range cases {
		c.sendOpt(tc.opt, tc.data)
		opt, typ, msg := c.optReply()
		if opt != tc.opt || typ != tc.want {
			t.Errorf("%s: reply (%d, 0x%x %q), want (%d, 0x%x)", tc.name, opt, typ, msg, tc.opt, tc.want)
		}
		if typ&(1<<31) != 0 && len(msg) == 0 {
			t.Errorf("%s: error reply without a message", tc.name)
		}
	}
	if ei := c.infoGo(optGo, "disk"); ei.final != repAck || ei.size != testSize {
		t.Fatalf("go after errors: %+v", ei)
	}
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
		t.Fatalf("read after errors: %+v", r)
	}
}

func TestInfoThenGo(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	ei := c.infoGo(optInfo, "disk", infoName, infoBlockSize, 0x7777)
	if ei.final != repAck {
		t.Fatalf("info: %+v", ei)
	}
	if ei.size != testSize || ei.name != "disk" || ei.minBS != 1 || ei.prefBS != 4096 || ei.maxBS != DefaultMaxRequestSize {
		t.Fatalf("info: %+v", ei)
	}
	want := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes |
		tflagSendFastZero | tflagCanMultiConn | tflagSendCache)
	if ei.flags != want {
		t.Fatalf("flags 0x%x, want 0x%x", ei.flags, want)
	}
	if o, r := ts.exports.counts("disk"); o != 1 || r != 1 {
		t.Fatalf("after INFO: opened %d released %d", o, r)
	}
	c.sendOpt(optStructuredReply, nil)
	c.optReply()
	ei = c.infoGo(optGo, "disk")
	if ei.final != repAck || ei.flags&tflagSendDF == 0 {
		t.Fatalf("go: %+v", ei)
	}
	c.send(cmdDisc, 0, 1, 0, 0, nil)
	c.expectClosed()
	waitFor(t, func() bool { o, r := ts.exports.counts("disk"); return o == 2 && r == 2 })
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		t.Run(fmt.Sprintf("noZeroes=%v", noZeroes), func(t *testing.T) {
			ts, dev := oneExport(t, Options{})
			dev.WriteAt(context.Background(), []byte("hello"), 0, false)
			c := dialClient(t, ts.addr)
			cf := uint32(flagCFixedNewstyle)
			if noZeroes {
				cf |= flagCNoZeroes
			}
			c.greet(cf)
			c.sendOpt(optExportName, []byte("disk"))
			b := c.readFull(10)
			if sz := binary.BigEndian.Uint64(b); sz != testSize {
				t.Fatalf("size %d", sz)
			}
			if f := binary.BigEndian.Uint16(b[8:]); f&tflagHasFlags == 0 || f&tflagSendDF != 0 {
				t.Fatalf("flags 0x%x", f)
			}
			if !noZeroes && !bytes.Equal(c.readFull(124), make([]byte, 124)) {
				t.Fatal("padding is not zero")
			}
			if r := c.do(cmdRead, 0, 0, 5, nil); r.errno != 0 || string(r.data) != "hello" {
				t.Fatalf("read: %+v", r)
			}
		})
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestNonFixedNewstyle(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.greet(0)
	c.sendOpt(optExportName, []byte("disk"))
	c.readFull(10 + 124)
	if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: %+v", r)
	}

	// Such a client may not send other options: it could not parse replies.
	c2 := dialClient(t, ts.addr)
	c2.greet(0)
	c2.sendOpt(optList, nil)
	c2.expectClosed()
}

func TestDefaultExport(t *testing.T) {
	t.Run("single export", func(t *testing.T) {
		ts, _ := oneExport(t, Options{})
		c := dialClient(t, ts.addr)
		c.greet(flagCFixedNewstyle)
		if ei := c.infoGo(optGo, "", infoName); ei.final != repAck || ei.name != "disk" {
			t.Fatalf("go \"\": %+v", ei)
		}
	})
	t.Run("ambiguous", func(t *testing.T) {
		exp := newFakeExports(map[string]*fakeDevice{"a": newFakeDevice(4096), "b": newFakeDevice(4096)})
		ts := startServer(t, exp, Options{})
		c := dialClient(t, ts.addr)
		c.greet(flagCFixedNewstyle)
		if ei := c.infoGo(optGo, ""); ei.final != repErrUnknown || ei.msg == "" {
			t.Fatalf("go \"\": %+v", ei)
		}
	})
	t.Run("configured", func(t *testing.T) {
		exp := newFakeExports(map[string]*fakeDevice{"a": newFakeDevice(4096), "b": newFakeDevice(8192)})
		ts := startServer(t, exp, Options{DefaultExport: "b"})
		c := dialClient(t, ts.addr)
		c.greet(flagCFixedNewstyle)
		if ei := c.infoGo(optGo, ""); ei.final != repAck || ei.size != 8192 {
			t.Fatalf("go \"\": %+v", ei)
		}
	})
}

func TestOpenExportErrorIsReported(t *testing.T) {
	exp := newFakeExports(map[string]*fakeDevice{"disk": newFakeDevice(4096)})
	exp.openErr = errors.New("vdisk is in use")
	ts := startServer(t, exp, Options{})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	ei := c.infoGo(optGo, "disk")
	if ei.final != repErrPolicy || !strings.Contains(ei.msg, "in use") {
		t.Fatalf("go: %+v", ei)
	}
}

func TestMetaContextNegotiation(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optStructuredReply, nil)
	c.optReply()
	c.structured = true
	contexts := func(opt uint32, queries ...string) (names []string, ids []uint32) {
		c.sendOpt(opt, metaData("disk", queries...))
		for {
			_, typ, data := c.optReply()
			if typ == repAck {
				return names, ids
			}
			if typ != repMetaContext {
				t.Fatalf("meta context reply 0x%x %q", typ, data)
			}
			ids = append(ids, binary.BigEndian.Uint32(data))
			names = append(names, string(data[4:]))
		}
	}
	cases := []struct {
		opt     uint32
		queries []string
		want    []string
	}{
		{optListMetaContext, nil, []string{metaAllocation}},
		{optListMetaContext, []string{"base:"}, []string{metaAllocation}},
		{optListMetaContext, []string{"base:allocation"}, []string{metaAllocation}},
		{optListMetaContext, []string{"qemu:dirty-bitmap:x", "base:other"}, nil},
		{optSetMetaContext, nil, nil},
		{optSetMetaContext, []string{"base:"}, nil},
		{optSetMetaContext, []string{"x-foo:bar", metaAllocation}, []string{metaAllocation}},
	}
	for _, tc := range cases {
		names, ids := contexts(tc.opt, tc.queries...)
		if !slices.Equal(names, tc.want) {
			t.Errorf("opt %d %q: contexts %q, want %q", tc.opt, tc.queries, names, tc.want)
		}
		if tc.opt == optSetMetaContext && len(ids) == 1 && ids[0] != metaAllocationID {
			t.Errorf("set: id %d", ids[0])
		}
	}
	if ei := c.infoGo(optGo, "disk"); ei.final != repAck {
		t.Fatal(ei)
	}
	if r := c.do(cmdBlockStatus, 0, 0, 4096, nil); r.errno != 0 || r.ctxID != metaAllocationID {
		t.Fatalf("block status: %+v", r)
	}
}

func TestBlockStatusNeedsMetaContext(t *testing.T) {
	exp := newFakeExports(map[string]*fakeDevice{"a": newFakeDevice(4096), "b": newFakeDevice(4096)})
	ts := startServer(t, exp, Options{})
	for _, tc := range []struct {
		name             string
		structured, meta bool
		metaFor          string
	}{
		{"simple replies", false, false, ""},
		{"no context", true, false, ""},
		{"context for another export", true, true, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialClient(t, ts.addr)
			c.greet(flagCFixedNewstyle)
			if tc.structured {
				c.sendOpt(optStructuredReply, nil)
				c.optReply()
				c.structured = true
			}
			if tc.meta {
				c.sendOpt(optSetMetaContext, metaData(tc.metaFor, metaAllocation))
				for _, typ, _ := c.optReply(); typ != repAck; _, typ, _ = c.optReply() {
				}
			}
			if ei := c.infoGo(optGo, "b"); ei.final != repAck {
				t.Fatal(ei)
			}
			if r := c.do(cmdBlockStatus, 0, 0, 4096, nil); r.errno != errInval {
				t.Fatalf("block status: %+v", r)
			}
		})
	}
}

// TestCommands runs every command with simple and with structured replies.
func TestCommands(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts, dev := oneExport(t, Options{})
			c := dialClient(t, ts.addr)
			c.connect("disk", structured, structured)
			data := pattern(3*4096, 1)

			if r := c.do(cmdWrite, cmdFlagFUA, 8192, uint32(len(data)), data); r.errno != 0 {
				t.Fatalf("write: %+v", r)
			}
			if dev.fuaWrites.Load() != 1 {
				t.Fatalf("FUA writes %d", dev.fuaWrites.Load())
			}
			r := c.do(cmdRead, 0, 8192, uint32(len(data)), nil)
			if r.errno != 0 || !bytes.Equal(r.data, data) {
				t.Fatalf("read back: errno %d, %d bytes", r.errno, len(r.data))
			}
			if structured && r.chunks != 1 {
				t.Fatalf("read in %d chunks", r.chunks)
			}
			// Unaligned read across the hole/data boundary.
			r = c.do(cmdRead, 0, 8000, 300, nil)
			want := append(make([]byte, 192), data[:108]...)
			if r.errno != 0 || !bytes.Equal(r.data, want) {
				t.Fatalf("unaligned read: %+v", r)
			}
			if structured {
				r = c.do(cmdRead, cmdFlagDF, 8192, 4096, nil)
				if r.errno != 0 || !bytes.Equal(r.data, data[:4096]) || r.chunks != 1 {
					t.Fatalf("DF read: %+v", r)
				}
			}
			if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 || dev.flushes.Load() != 1 {
				t.Fatalf("flush: %+v, flushes %d", r, dev.flushes.Load())
			}
			if r := c.do(cmdTrim, cmdFlagFUA, 8192, 4096, nil); r.errno != 0 || dev.flushes.Load() != 2 {
				t.Fatalf("trim+FUA: %+v, flushes %d", r, dev.flushes.Load())
			}
			if r := c.do(cmdRead, 0, 8192, 4096, nil); r.errno != 0 || !isZero(r.data) {
				t.Fatalf("read trimmed: %+v", r)
			}
			if r := c.do(cmdWriteZeroes, cmdFlagNoHole, 12288, 4096, nil); r.errno != 0 {
				t.Fatalf("write zeroes: %+v", r)
			}
			if dev.Page(3) == nil {
				t.Fatal("NO_HOLE write zeroes punched a hole")
			}
			if r := c.do(cmdWriteZeroes, cmdFlagFUA, 16384, 4096, nil); r.errno != 0 || dev.Page(4) != nil {
				t.Fatalf("write zeroes: %+v", r)
			}
			// The device cannot zero fast: fail at once without touching data.
			if r := c.do(cmdWriteZeroes, cmdFlagFastZero, 0, 4096, nil); r.errno != errNotSup {
				t.Fatalf("fast zero: %+v", r)
			}
			if r := c.do(cmdCache, 0, 0, 4096, nil); r.errno != 0 {
				t.Fatalf("cache: %+v", r)
			}
			// Zero-length requests succeed.
			for _, typ := range []uint16{cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes} {
				if r := c.do(typ, 0, 4096, 0, nil); r.errno != 0 || len(r.data) != 0 {
					t.Fatalf("zero-length %s: %+v", cmdName(typ), r)
				}
			}
			if structured {
				// Pages: 0-1 hole, 2 trimmed hole, 3 zero (allocated), 4 hole.
				r := c.do(cmdBlockStatus, 0, 0, 5*4096, nil)
				want := [][2]uint32{{12288, stateHole | stateZero}, {4096, stateZero}, {4096, stateHole | stateZero}}
				if r.errno != 0 || !slices.Equal(r.extents, want) {
					t.Fatalf("block status: %+v, want %v", r, want)
				}
				r = c.do(cmdBlockStatus, cmdFlagReqOne, 4096, 4*4096, nil)
				if r.errno != 0 || !slices.Equal(r.extents, [][2]uint32{{8192, stateHole | stateZero}}) {
					t.Fatalf("block status REQ_ONE: %+v", r)
				}
			}
			c.send(cmdDisc, 0, 99, 0, 0, nil)
			c.expectClosed()
		})
	}
}

func TestFastZero(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	dev.fastZero = true
	dev.WriteAt(context.Background(), pattern(4096, 3), 0, false)
	c := dialClient(t, ts.addr)
	c.connect("disk", true, false)
	if r := c.do(cmdWriteZeroes, cmdFlagFastZero, 0, 4096, nil); r.errno != 0 || dev.Page(0) != nil {
		t.Fatalf("fast zero: %+v", r)
	}
	dev.setFail("zero", fmt.Errorf("no: %w", syscall.EOPNOTSUPP))
	if r := c.do(cmdWriteZeroes, cmdFlagFastZero, 0, 4096, nil); r.errno != errNotSup {
		t.Fatalf("fast zero refused by device: %+v", r)
	}
}

func TestRequestErrors(t *testing.T) {
	type tc struct {
		name    string
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
		want    uint32
		wantSR  uint32 // with structured replies, when it differs
	}
	common := []tc{
		{"unknown command", 42, 0, 0, 0, nil, errInval, 0},
		{"unknown flag", cmdRead, 1 << 9, 0, 512, nil, errInval, 0},
		{"NO_HOLE on read", cmdRead, cmdFlagNoHole, 0, 512, nil, errInval, 0},
		{"REQ_ONE on write", cmdWrite, cmdFlagReqOne, 0, 512, make([]byte, 512), errInval, 0},
		{"read past end", cmdRead, 0, testSize - 512, 1024, nil, errInval, 0},
		{"read offset past end", cmdRead, 0, testSize + 4096, 512, nil, errInval, 0},
		{"read offset overflow", cmdRead, 0, ^uint64(0) - 100, 512, nil, errInval, 0},
		{"write past end", cmdWrite, 0, testSize - 512, 1024, make([]byte, 1024), errNoSpc, 0},
		{"write offset overflow", cmdWrite, 0, ^uint64(0) - 10, 512, make([]byte, 512), errNoSpc, 0},
		{"trim past end", cmdTrim, 0, testSize, 1, nil, errNoSpc, 0},
		{"zeroes past end", cmdWriteZeroes, 0, 0, testSize + 1, nil, errNoSpc, 0},
		{"cache past end", cmdCache, 0, testSize, 4096, nil, errInval, 0},
		{"flush with offset", cmdFlush, 0, 4096, 0, nil, errInval, 0},
		{"read too large", cmdRead, 0, 0, 8192, nil, errInval, errOverflow},
		{"write too large (drained)", cmdWrite, 0, 0, 64 << 10, make([]byte, 64<<10), errInval, 0},
	}
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts, dev := oneExport(t, Options{MaxRequestSize: 4096})
			c := dialClient(t, ts.addr)
			ei := c.connect("disk", structured, structured)
			if ei.maxBS != 4096 {
				t.Fatalf("max block size %d", ei.maxBS)
			}
			cases := common
			if structured {
				cases = append(slices.Clone(cases),
					tc{"block status past end", cmdBlockStatus, 0, testSize - 512, 1024, nil, errInval, 0},
					tc{"block status zero length", cmdBlockStatus, 0, 0, 0, nil, errInval, 0},
					tc{"DF on write", cmdWrite, cmdFlagDF, 0, 512, make([]byte, 512), errInval, 0})
			} else {
				cases = append(slices.Clone(cases),
					tc{"DF without structured", cmdRead, cmdFlagDF, 0, 512, nil, errInval, 0})
			}
			for _, tc := range cases {
				r := c.do(tc.typ, tc.flags, tc.off, tc.length, tc.payload)
				if structured && tc.wantSR != 0 {
					tc.want = tc.wantSR
				}
				if r.errno != tc.want {
					t.Errorf("%s: errno %d, want %d", tc.name, r.errno, tc.want)
				}
				if len(r.data) != 0 {
					t.Errorf("%s: data in an error reply", tc.name)
				}
				if structured && r.msg == "" {
					t.Errorf("%s: no error message", tc.name)
				}
				// The connection still serves.
				if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
					t.Fatalf("after %s: read: %+v", tc.name, r)
				}
			}
			if n := dev.writes.Load(); n != 0 {
				t.Fatalf("%d writes reached the device", n)
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	dev.readOnly = true
	c := dialClient(t, ts.addr)
	ei := c.connect("disk", true, true)
	if ei.flags&tflagReadOnly == 0 || ei.flags&(tflagSendTrim|tflagSendWriteZeroes|tflagSendFastZero) != 0 {
		t.Fatalf("flags 0x%x", ei.flags)
	}
	for _, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
		var payload []byte
		if typ == cmdWrite {
			payload = make([]byte, 4096)
		}
		if r := c.do(typ, 0, 0, 4096, payload); r.errno != errPerm {
			t.Errorf("%s: errno %d, want EPERM", cmdName(typ), r.errno)
		}
	}
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read: %+v", r)
	}
	if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: %+v", r)
	}
}

func TestDeviceErrors(t *testing.T) {
	cases := []struct {
		err  error
		want uint32
	}{
		{syscall.ENOSPC, errNoSpc},
		{fmt.Errorf("wrapped: %w", syscall.EDQUOT), errNoSpc},
		{fmt.Errorf("bad: %w", syscall.EINVAL), errInval},
		{syscall.EPERM, errPerm},
		{fmt.Errorf("ro: %w", syscall.EROFS), errPerm},
		{errors.New("backend on fire"), errIO},
		{syscall.EIO, errIO},
	}
	ops := []struct {
		op    string
		typ   uint16
		data  bool
		flags uint16
	}{
		{"read", cmdRead, false, 0},
		{"write", cmdWrite, true, 0},
		{"flush", cmdFlush, false, 0},
		{"trim", cmdTrim, false, 0},
		{"zero", cmdWriteZeroes, false, 0},
		{"status", cmdBlockStatus, false, 0},
	}
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts, dev := oneExport(t, Options{})
			c := dialClient(t, ts.addr)
			c.connect("disk", structured, structured)
			for _, op := range ops {
				if op.typ == cmdBlockStatus && !structured {
					continue
				}
				for _, tc := range cases {
					dev.setFail(op.op, tc.err)
					var payload []byte
					length := uint32(4096)
					if op.data {
						payload = make([]byte, length)
					}
					if op.typ == cmdFlush {
						length = 0
					}
					r := c.do(op.typ, op.flags, 0, length, payload)
					if r.errno != tc.want {
						t.Errorf("%s failing with %v: errno %d, want %d", op.op, tc.err, r.errno, tc.want)
					}
					dev.setFail(op.op, nil)
				}
			}
			if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
				t.Fatalf("read after errors: %+v", r)
			}
		})
	}
}

// blockStatusDevice returns canned extents, to check the server's cleanup
// of what a device reports.
type blockStatusDevice struct {
	*fakeDevice
	exts []Extent
}

func (d *blockStatusDevice) BlockStatus(ctx context.Context, off, length int64) ([]Extent, error) {
	return d.exts, nil
}

type singleExport struct{ dev Device }

func (e singleExport) OpenExport(ctx context.Context, name string) (Device, func(), error) {
	if name != "disk" {
		return nil, nil, ErrUnknownExport
	}
	return e.dev, func() {}, nil
}

func (e singleExport) ListExports(ctx context.Context) ([]string, error) {
	return []string{"disk"}, nil
}

func TestBlockStatusSanitizing(t *testing.T) {
	dev := &blockStatusDevice{fakeDevice: newFakeDevice(testSize)}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(singleExport{dev}, Options{Logger: testLogger(t)})
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	c := dialClient(t, sock)
	c.connect("disk", true, true)
	hz := uint32(stateHole | stateZero)
	cases := []struct {
		name   string
		exts   []Extent
		flags  uint16
		length uint32
		want   [][2]uint32
		errno  uint32
	}{
		{"merges equal neighbours", []Extent{{Length: 4096, Hole: true, Zero: true}, {Length: 4096, Hole: true, Zero: true}, {Length: 4096}}, 0, 12288,
			[][2]uint32{{8192, hz}, {4096, 0}}, 0},
		{"drops empty extents", []Extent{{Length: 0}, {Length: -5}, {Length: 4096, Zero: true}}, 0, 4096,
			[][2]uint32{{4096, stateZero}}, 0},
		{"clips to the request", []Extent{{Length: 1 << 30, Hole: true, Zero: true}}, 0, 4096, [][2]uint32{{4096, hz}}, 0},
		{"stops at the request", []Extent{{Length: 4096}, {Length: 4096, Hole: true, Zero: true}, {Length: 4096}}, 0, 6000,
			[][2]uint32{{4096, 0}, {1904, hz}}, 0},
		{"REQ_ONE", []Extent{{Length: 4096}, {Length: 4096, Hole: true, Zero: true}}, cmdFlagReqOne, 8192, [][2]uint32{{4096, 0}}, 0},
		{"REQ_ONE clipped", []Extent{{Length: 8192, Hole: true, Zero: true}}, cmdFlagReqOne, 512, [][2]uint32{{512, hz}}, 0},
		{"no extents", nil, 0, 4096, nil, errIO},
	}
	for _, tc := range cases {
		dev.exts = tc.exts
		r := c.do(cmdBlockStatus, tc.flags, 0, tc.length, nil)
		if r.errno != tc.errno || !slices.Equal(r.extents, tc.want) {
			t.Errorf("%s: errno %d extents %v, want %d %v", tc.name, r.errno, r.extents, tc.errno, tc.want)
		}
	}
}

// TestConcurrentRequests: a READ blocked in the device must not hold up the
// requests behind it on the same connection.
func TestConcurrentRequests(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts, dev := oneExport(t, Options{})
			gate := make(chan struct{})
			dev.readHook = func(ctx context.Context, off int64) error {
				if off == 0 {
					select {
					case <-gate:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return nil
			}
			c := dialClient(t, ts.addr)
			c.connect("disk", structured, false)
			c.send(cmdRead, 0, 1, 0, 4096, nil)
			data := pattern(4096, 9)
			c.send(cmdWrite, 0, 2, 4096, 4096, data)
			c.send(cmdRead, 0, 3, 4096, 4096, nil)
			got := map[uint64]reply{}
			for len(got) < 2 {
				r := c.recv()
				if r.cookie == 1 {
					t.Fatal("blocked read answered first")
				}
				got[r.cookie] = r
			}
			if got[2].errno != 0 {
				t.Fatalf("write: %+v", got[2])
			}
			close(gate)
			r := c.recv()
			if r.cookie != 1 || r.errno != 0 || len(r.data) != 4096 {
				t.Fatalf("blocked read: %+v", r)
			}
		})
	}
}

// TestDiscWaitsForInflight: NBD_CMD_DISC answers what is in flight first.
func TestDiscWaitsForInflight(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	gate := make(chan struct{})
	started := make(chan struct{})
	dev.readHook = func(ctx context.Context, off int64) error {
		close(started)
		<-gate
		return nil
	}
	c := dialClient(t, ts.addr)
	c.connect("disk", true, false)
	c.send(cmdRead, 0, 7, 0, 4096, nil)
	<-started
	c.send(cmdDisc, 0, 8, 0, 0, nil)
	time.Sleep(20 * time.Millisecond)
	close(gate)
	if r := c.recv(); r.cookie != 7 || r.errno != 0 {
		t.Fatalf("reply: %+v", r)
	}
	c.expectClosed()
	waitFor(t, func() bool { _, r := ts.exports.counts("disk"); return r == 1 })
}

func TestInflightLimit(t *testing.T) {
	ts, dev := oneExport(t, Options{MaxInFlight: 3})
	gate := make(chan struct{})
	dev.readHook = func(ctx context.Context, off int64) error {
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := dialClient(t, ts.addr)
	c.connect("disk", false, false)
	const n = 20
	for i := range n {
		c.send(cmdRead, 0, uint64(i), 0, 512, nil)
	}
	waitFor(t, func() bool { return dev.active.Load() == 3 })
	time.Sleep(20 * time.Millisecond)
	if a := dev.active.Load(); a != 3 {
		t.Fatalf("%d reads in the device at once, limit 3", a)
	}
	close(gate)
	for range n {
		if r := c.recv(); r.errno != 0 {
			t.Fatalf("read: %+v", r)
		}
	}
	if m := dev.maxActive.Load(); m > 3 {
		t.Fatalf("max %d reads in the device at once, limit 3", m)
	}
}

func TestBadRequestMagicClosesOnlyThatConnection(t *testing.T) {
	ts, _ := oneExport(t, Options{})
	good := dialClient(t, ts.addr)
	good.connect("disk", false, false)
	bad := dialClient(t, ts.addr)
	bad.connect("disk", false, false)
	bad.write(bytes.Repeat([]byte{0xee}, requestSize))
	bad.expectClosed()
	if r := good.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatalf("other connection: %+v", r)
	}
	waitFor(t, func() bool { _, r := ts.exports.counts("disk"); return r == 1 })
}

func TestTruncatedWritePayloadCloses(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	c := dialClient(t, ts.addr)
	c.connect("disk", false, false)
	c.send(cmdWrite, 0, 1, 0, 4096, make([]byte, 100))
	c.nc.(*net.UnixConn).CloseWrite()
	c.expectClosed()
	if dev.writes.Load() != 0 {
		t.Fatal("partial write reached the device")
	}
}

func TestHandshakeTimeout(t *testing.T) {
	ts, _ := oneExport(t, Options{HandshakeTimeout: 50 * time.Millisecond})
	c := dialClient(t, ts.addr)
	c.greet(flagCFixedNewstyle)
	c.expectClosed()
}

func TestCloseEndsConnections(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	dev.readHook = func(ctx context.Context, off int64) error {
		<-ctx.Done()
		return ctx.Err()
	}
	c := dialClient(t, ts.addr)
	c.connect("disk", false, false)
	c.send(cmdRead, 0, 1, 0, 512, nil)
	waitFor(t, func() bool { return dev.active.Load() == 1 })
	idle := dialClient(t, ts.addr)
	idle.greet(flagCFixedNewstyle)
	if err := ts.srv.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ts.done:
		ts.done <- err
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c.br) // a cancelled reply may or may not get out
	idle.expectClosed()
	if o, r := ts.exports.counts("disk"); o != r {
		t.Fatalf("opened %d released %d", o, r)
	}
	if _, err := net.Dial("unix", ts.addr); err == nil {
		t.Fatal("listener still accepts")
	}
	if err := ts.srv.Serve(context.Background(), failingListener{}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
}

func TestShutdownIsGraceful(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	gate := make(chan struct{})
	dev.readHook = func(ctx context.Context, off int64) error {
		<-gate
		return nil
	}
	c := dialClient(t, ts.addr)
	c.connect("disk", true, false)
	c.send(cmdRead, 0, 5, 0, 512, nil)
	waitFor(t, func() bool { return dev.active.Load() == 1 })
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	close(gate)
	if r := c.recv(); r.cookie != 5 || r.errno != 0 {
		t.Fatalf("reply: %+v", r)
	}
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestShutdownTimeoutForcesClose(t *testing.T) {
	ts, dev := oneExport(t, Options{})
	dev.readHook = func(ctx context.Context, off int64) error {
		<-ctx.Done()
		return ctx.Err()
	}
	c := dialClient(t, ts.addr)
	c.connect("disk", false, false)
	c.send(cmdRead, 0, 5, 0, 512, nil)
	waitFor(t, func() bool { return dev.active.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestServeContextCancel(t *testing.T) {
	dev := newFakeDevice(testSize)
	srv := NewServer(newFakeExports(map[string]*fakeDevice{"disk": dev}), Options{Logger: testLogger(t)})
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := newTestClient(t, nc)
	c.connect("disk", false, false)
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatal(r)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	c.expectClosed()
}

func TestListenerFailureReturnsError(t *testing.T) {
	srv := NewServer(newFakeExports(nil), Options{Logger: testLogger(t)})
	defer srv.Close()
	err := srv.Serve(context.Background(), failingListener{})
	if err == nil || !strings.Contains(err.Error(), "accept") {
		t.Fatalf("Serve: %v", err)
	}
}

type failingListener struct{}

func (failingListener) Accept() (net.Conn, error) { return nil, errors.New("listener broke") }
func (failingListener) Close() error              { return nil }
func (failingListener) Addr() net.Addr            { return &net.UnixAddr{Name: "fail", Net: "unix"} }
