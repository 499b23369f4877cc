package dtl

import (
	"bufio"
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// decodeClientStream decodes frames as the server does, and checks that
// what it accepts encodes back to the same bytes and never allocates
// beyond the type's limit.
func decodeStream(t *testing.T, in []byte, allowed func(frameType) bool) {
	br := bufio.NewReader(bytes.NewReader(in))
	for {
		var hb [frameHdrSize]byte
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			return
		}
		h, err := decodeFrameHdr(hb[:], allowed)
		if err != nil {
			return
		}
		if h.length > maxBody(h.typ) {
			t.Fatalf("accepted a %s frame of %d bytes", h.typ, h.length)
		}
		body := make([]byte, h.length)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		var re []byte
		switch h.typ {
		case ftShip, ftFence, ftGroups, ftRead, ftForget:
			r, err := decodeVDiskReq(h.typ, body)
			if err != nil {
				return
			}
			re = appendVDiskReq(nil, h.typ, r)
		case ftBegin:
			tlog, prev, err := decodeBegin(body)
			if err != nil {
				return
			}
			re = appendBegin(nil, tlog, prev)
		case ftWrite, ftTrim:
			k := Write
			if h.typ == ftTrim {
				k = Trim
			}
			if _, err := verifyEntryBody(k, body, 0); err != nil {
				return
			}
			e := decodeEntry(k, body)
			re = appendFrameHdr(nil, h.typ, entryBodyLen(&e))
			re = appendEntryBody(re, &e)
		case ftSync, ftSyncAck:
			v, err := decodeU64(body)
			if err != nil {
				return
			}
			re = appendU64Frame(nil, h.typ, v)
		case ftDrop:
			name, err := decodeDrop(body)
			if err != nil {
				return
			}
			re = appendName(nil, ftDrop, name)
		case ftResult:
			st, msg, err := decodeResult(body)
			if err != nil {
				return
			}
			re = appendResult(nil, st, msg)
		case ftGroup:
			g, err := decodeGroupInfo(body)
			if err != nil {
				return
			}
			re = appendGroupInfo(nil, g)
		default:
			t.Fatalf("accepted a frame of type %d", h.typ)
		}
		if want := append(hb[:], body...); !bytes.Equal(re, want) {
			t.Fatalf("%s frame %x re-encodes to %x", h.typ, want, re)
		}
	}
}

// smallWrite is a Write entry of two 512-byte clusters: small seeds keep
// the fuzzer fast.
func smallWrite() Entry {
	e := Entry{Kind: Write, Addr: 5, Count: 2, Data: make([]byte, 2*MinClusterSize)}
	for i := range e.Data {
		e.Data[i] = byte(i)
	}
	for i := 0; i < 2; i++ {
		e.CRCs = append(e.CRCs, crc32.Checksum(e.Data[i*MinClusterSize:(i+1)*MinClusterSize], castagnoli))
	}
	return e
}

func frameSeeds() [][]byte {
	e := smallWrite()
	w := appendFrameHdr(nil, ftWrite, entryBodyLen(&e))
	w = appendEntryBody(w, &e)
	tr := trimEntry(9, 4)
	tb := appendFrameHdr(nil, ftTrim, entryBodyLen(&tr))
	tb = appendEntryBody(tb, &tr)
	return [][]byte{
		appendVDiskReq(nil, ftShip, vdiskReq{epoch: 3, clusterSize: 4096, vdisk: "vd-1"}),
		appendVDiskReq(nil, ftRead, vdiskReq{epoch: 3, vdisk: "vd-1", from: "tlog_a"}),
		append(appendBegin(nil, "tlog_b", "tlog_a"), w...),
		append(tb, appendU64Frame(nil, ftSync, 3)...),
		appendName(nil, ftDrop, "tlog_a"),
		appendResult(nil, statusFenced, "fenced"),
		appendGroupInfo(nil, GroupInfo{TLog: "tlog_a", Entries: 3, Bytes: 100, Epoch: 2}),
		{0xff, 0xff, 0xff, 0xff, byte(ftWrite), 0, 0, 0},
	}
}

// FuzzClientFrames feeds a byte stream to the server's frame decoders.
func FuzzClientFrames(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) { decodeStream(t, in, clientFrame) })
}

// FuzzServerFrames feeds a byte stream to the clients' frame decoders.
func FuzzServerFrames(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) { decodeStream(t, in, serverFrame) })
}

// FuzzGroupFile feeds a group file to the loader: it must not panic, must
// refuse or cut what is bad, and what it keeps must read back verified.
func FuzzGroupFile(f *testing.F) {
	good := appendFileHeader(nil, 1, "tlog_a", "")
	for _, e := range []Entry{smallWrite(), trimEntry(3, 2)} {
		body := appendEntryBody(nil, &e)
		good = appendRecordHdr(good, e.Kind, body)
		good = append(good, body...)
	}
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(append(append([]byte{}, good...), make([]byte, 100)...))
	bad := append([]byte{}, good...)
	bad[len(bad)/2] ^= 1
	f.Add(bad)
	f.Fuzz(func(t *testing.T, in []byte) {
		path := filepath.Join(t.TempDir(), groupFileName(1, "tlog_a"))
		if err := os.WriteFile(path, in, 0o644); err != nil {
			t.Fatal(err)
		}
		sc, err := scanGroupFile(path)
		if err != nil {
			if !errors.Is(err, errBadHeader) && !errors.Is(err, ErrVersion) {
				t.Fatalf("scan: %v", err)
			}
			return
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if sc.size > st.Size() || (sc.corruptAt < 0 && sc.size != st.Size()) {
			t.Fatalf("valid size %d of a file of %d bytes (corrupt at %d)", sc.size, st.Size(), sc.corruptAt)
		}
		fh, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		r := io.NewSectionReader(fh, int64(sc.hdrLen), sc.size-int64(sc.hdrLen))
		var buf []byte
		for i := 0; i < sc.entries; i++ {
			if _, _, err := readRecord(r, &buf); err != nil {
				t.Fatalf("entry %d of %d: %v", i, sc.entries, err)
			}
		}
		if _, _, err := readRecord(r, &buf); !errors.Is(err, io.EOF) {
			t.Fatalf("after %d entries: %v", sc.entries, err)
		}
	})
}

// FuzzFence feeds the fence decoder.
func FuzzFence(f *testing.F) {
	f.Add(encodeFence(7))
	f.Add([]byte("OVSDTLF\x02"))
	f.Fuzz(func(t *testing.T, in []byte) {
		epoch, err := decodeFence(in)
		if err == nil && !bytes.Equal(encodeFence(epoch), in) {
			t.Fatalf("fence %x decoded to %d", in, epoch)
		}
	})
}
