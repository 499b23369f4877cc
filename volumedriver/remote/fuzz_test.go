package remote

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
	"github.com/ovs-storage/ovs/volumedriver/internal/iopool"
)

// FuzzDecodeRequest feeds a byte stream to the server's request reader of
// each protocol version: it must never panic nor allocate more than
// MaxData for a payload, and every frame it accepts must encode back to
// the same bytes and be of an op of that version.
func FuzzDecodeRequest(f *testing.F) {
	frame := func(h reqHdr, name string, data []byte) []byte {
		b := appendReqHdr(nil, h)
		b = append(b, name...)
		return append(b, data...)
	}
	f.Add(frame(reqHdr{op: opRead, nameLen: 2, length: 4096, handle: 1, offset: 8192}, "vd", nil))
	f.Add(frame(reqHdr{op: opWrite, flags: flagFUA, nameLen: 3, length: 4, handle: 2}, "vd1", []byte("data")))
	f.Add(append(frame(reqHdr{op: opSize, nameLen: 1, handle: 3}, "a", nil),
		frame(reqHdr{op: opWriteZeroes, flags: flagFUA | flagNoHole, nameLen: 1, length: 1 << 20, handle: 4}, "b", nil)...))
	f.Add(frame(reqHdr{op: opBlockStatus, nameLen: 64, length: 1 << 30, handle: 5}, string(bytes.Repeat([]byte{'x'}, 64)), nil))
	f.Add(frame(reqHdr{op: opWrite, nameLen: 2, length: 0xFFFFFFFF, handle: 6}, "vd", nil))
	f.Add(frame(reqHdr{op: opFlush, nameLen: 0, handle: 7}, "", nil))
	f.Add(frame(reqHdr{op: opCompareAndWrite, flags: flagFUA, nameLen: 2, length: 8, handle: 8, offset: 512}, "vd", []byte("abcdABCD")))
	f.Add(frame(reqHdr{op: opCompareAndWrite, nameLen: 2, length: 7, handle: 9}, "vd", []byte("abcdABC")))
	f.Fuzz(func(t *testing.T, in []byte) {
		for v := uint16(MinVersion); v <= Version; v++ {
			decodeRequests(t, in, v)
		}
	})
}

func decodeRequests(t *testing.T, in []byte, v uint16) {
	br := bufio.NewReader(bytes.NewReader(in))
	var pool iopool.BufPool
	for {
		var hb [reqHdrSize]byte
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			return
		}
		var j job
		var err error
		if j.h, err = readRequestRest(br, hb[:], &j.name, v); err != nil {
			return
		}
		if j.h.op > maxOp(v) {
			t.Fatalf("version %d accepted op %s", v, j.h.op)
		}
		if j.h.op == opCompareAndWrite && (j.h.length%2 != 0 || j.h.length > 2*blockdev.MaxCompareAndWrite) {
			t.Fatalf("accepted a compare and write of %d bytes", j.h.length)
		}
		var data []byte
		if j.h.op == opWrite || j.h.op == opCompareAndWrite {
			if j.h.length > MaxData {
				t.Fatalf("accepted a write of %d bytes", j.h.length)
			}
			buf := pool.Get(int(j.h.length))
			if _, err := io.ReadFull(br, *buf); err != nil {
				pool.Put(buf)
				return
			}
			data = *buf
		}
		got := appendReqHdr(nil, j.h)
		if !bytes.Equal(got, hb[:]) {
			t.Fatalf("header %x decoded to %+v, encodes to %x", hb, j.h, got)
		}
		if j.h.nameLen == 0 || j.h.nameLen > MaxNameLen {
			t.Fatalf("accepted a name of %d bytes", j.h.nameLen)
		}
		_ = data
	}
}

// FuzzDecodeReply feeds bytes to the client's decoders: hello, reply
// header, and the data of each op.
func FuzzDecodeReply(f *testing.F) {
	f.Add(appendHello(nil, hello{version: Version}))
	f.Add(appendReplyHdr(nil, replyHdr{handle: 1, dataLen: 4096}))
	f.Add(appendReplyHdr(nil, replyHdr{handle: 2, status: StatusIO, msgLen: 12}))
	f.Add(append(appendReplyHdr(nil, replyHdr{handle: 3, dataLen: sizeInfoSize}), appendSizeInfo(nil, Info{Size: 1 << 30, ReadOnly: true})...))
	ext, _ := appendExtents(nil, []Extent{{Length: 4096}, {Length: 8192, Hole: true, Zero: true}}, 1<<20)
	f.Add(append(appendReplyHdr(nil, replyHdr{handle: 4, dataLen: uint32(len(ext))}), ext...))
	f.Add(append(appendReplyHdr(nil, replyHdr{handle: 5, dataLen: cawReplySize}), appendCAWReply(nil, -1)...))
	f.Add(append(appendReplyHdr(nil, replyHdr{handle: 6, dataLen: cawReplySize}), appendCAWReply(nil, 300)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		if h, err := decodeHello(in); err == nil {
			if got := appendHello(nil, h); !bytes.Equal(got[:6], in[:6]) {
				t.Fatalf("hello %x encodes to %x", in[:helloSize], got)
			}
		}
		h, err := decodeReplyHdr(in)
		if err != nil {
			if !errors.Is(err, errProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		if got := appendReplyHdr(nil, h); !bytes.Equal(got, in[:replyHdrSize]) {
			t.Fatalf("reply header %x encodes to %x", in[:replyHdrSize], got)
		}
		if h.dataLen > MaxData || h.msgLen > MaxMessageLen {
			t.Fatalf("accepted lengths %d/%d", h.dataLen, h.msgLen)
		}
		data := in[replyHdrSize:]
		for o := op(1); o <= opMax; o++ {
			reqLen := uint32(0)
			if len(data) >= 4 {
				reqLen = binary.BigEndian.Uint32(data)
			}
			_ = checkReplyData(o, reqLen, h.dataLen)
		}
		if in, err := decodeSizeInfo(data); err == nil {
			if got := appendSizeInfo(nil, in); !bytes.Equal(got, data) {
				t.Fatalf("size info %x encodes to %x", data, got)
			}
		}
		if m, err := decodeCAWReply(data, 512); err == nil {
			if m < -1 || m >= 512 {
				t.Fatalf("compare and write reply %x decoded to %d", data, m)
			}
			if got := appendCAWReply(nil, m); !bytes.Equal(got, data) {
				t.Fatalf("compare and write reply %x encodes to %x", data, got)
			}
		}
		if exts, err := decodeExtents(data, 1<<32); err == nil {
			var total int64
			for _, e := range exts {
				if e.Length <= 0 {
					t.Fatalf("extent of %d bytes", e.Length)
				}
				total += e.Length
			}
			re, n := appendExtents(nil, exts, total)
			if n == 0 || n > len(exts) || len(re) != n*extentSize {
				t.Fatalf("re-encoding %d extents gave %d", len(exts), n)
			}
		}
	})
}
