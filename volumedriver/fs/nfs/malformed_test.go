package nfs

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
)

// header builds an RPC call header with the given fields and an AUTH_SYS
// credential, then args.
func header(xid, mtype, rpcvers, prog, vers, proc, flavor uint32, args ...uint32) []byte {
	w := &xdrWriter{}
	for _, v := range []uint32{xid, mtype, rpcvers, prog, vers, proc, flavor} {
		w.u32(v)
	}
	w.opaque(make([]byte, 20)) // credential body
	w.u32(authNone)
	w.u32(0)
	for _, a := range args {
		w.u32(a)
	}
	return w.b
}

// replyStatus decodes a reply into (accepted?, accept or reject status).
func replyStatus(t *testing.T, reply []byte) (bool, uint32) {
	t.Helper()
	r := &xdrReader{b: reply[4:]}
	r.u32()
	r.u32()
	accepted := r.u32() == msgAccepted
	if accepted {
		r.u32()
		r.opaque(400)
	}
	st := r.u32()
	if r.err != nil {
		t.Fatalf("reply does not decode: %x", reply)
	}
	return accepted, st
}

func TestMalformedCalls(t *testing.T) {
	tree := newMemTree()
	tree.put("a.raw", []byte("data"))
	srv := NewServer(tree, Options{Logger: testLogger()})
	defer srv.Close()
	fh := makeHandle(3) // a.raw
	fhWords := func() []uint32 {
		return []uint32{16, binary.BigEndian.Uint32(fh[0:]), binary.BigEndian.Uint32(fh[4:]), binary.BigEndian.Uint32(fh[8:]), binary.BigEndian.Uint32(fh[12:])}
	}
	nfsCall := func(proc uint32, args ...uint32) []byte {
		return header(1, rpcCall, 2, progNFS, 3, proc, authSys, args...)
	}
	tests := []struct {
		name     string
		rec      []byte
		noReply  bool
		accepted bool
		want     uint32
	}{
		{"empty", nil, true, false, 0},
		{"xid only", []byte{0, 0, 0, 1}, true, false, 0},
		{"a reply, not a call", header(1, rpcReply, 2, progNFS, 3, 0, authSys), true, false, 0},
		{"rpc version 3", header(1, rpcCall, 3, progNFS, 3, 0, authSys), false, false, rejectRPCMismatch},
		{"AUTH_DH", header(1, rpcCall, 2, progNFS, 3, 1, 3), false, false, rejectAuthError},
		{"AUTH_NONE for GETATTR", header(1, rpcCall, 2, progNFS, 3, procGetattr, authNone, fhWords()...), false, false, rejectAuthError},
		{"credential cut short", []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0x86, 0xa3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}, false, true, acceptGarbageArgs},
		{"unknown program", header(1, rpcCall, 2, 123456, 1, 0, authSys), false, true, acceptProgUnavail},
		{"NFS version 2", header(1, rpcCall, 2, progNFS, 2, 0, authSys), false, true, acceptProgMismatch},
		{"NFS version 4", header(1, rpcCall, 2, progNFS, 4, 0, authSys), false, true, acceptProgMismatch},
		{"MOUNT version 1", header(1, rpcCall, 2, progMount, 1, 0, authSys), false, true, acceptProgMismatch},
		{"NFS proc 99", nfsCall(99), false, true, acceptProcUnavail},
		{"MOUNT proc 42", header(1, rpcCall, 2, progMount, 3, 42, authSys), false, true, acceptProcUnavail},
		{"GETATTR without handle", nfsCall(procGetattr), false, true, acceptGarbageArgs},
		{"GETATTR handle length 2^32-1", nfsCall(procGetattr, 0xffffffff), false, true, acceptGarbageArgs},
		{"GETATTR handle of 65 bytes", nfsCall(procGetattr, 65), false, true, acceptGarbageArgs},
		{"WRITE data longer than the record", nfsCall(procWrite, append(fhWords(), 0, 0, 4, 0, 1<<30)...), false, true, acceptGarbageArgs},
		{"WRITE stable_how 7", nfsCall(procWrite, append(fhWords(), 0, 0, 4, 7, 4, 0)...), false, true, acceptGarbageArgs},
		{"LOOKUP name cut short", nfsCall(procLookup, append(fhWords(), 200, 0x41414141)...), false, true, acceptGarbageArgs},
		{"SETATTR bad time how", nfsCall(procSetattr, append(fhWords(), 0, 0, 0, 0, 9)...), false, true, acceptGarbageArgs},
		{"CREATE mode 5", nfsCall(procCreate, append(fhWords(), 1, 0x41000000, 5)...), false, true, acceptGarbageArgs},
		{"bool of 2", nfsCall(procSetattr, append(fhWords(), 2)...), false, true, acceptGarbageArgs},
		{"READ beyond 2^62", nfsCall(procRead, append(fhWords(), 0x7fffffff, 0, 16)...), false, true, acceptSuccess},
		{"WRITE far out", nfsCall(procWrite, append(fhWords(), 0x10, 0, 4, 2, 4, 0)...), false, true, acceptSuccess},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reply := srv.handleRecord(context.Background(), tc.rec, 2049)
			if tc.noReply {
				if reply != nil {
					t.Fatalf("replied %x", reply)
				}
				return
			}
			if reply == nil {
				t.Fatal("no reply")
			}
			accepted, st := replyStatus(t, reply)
			if accepted != tc.accepted || st != tc.want {
				t.Fatalf("accepted %v status %d, want %v %d", accepted, st, tc.accepted, tc.want)
			}
		})
	}
	if got := tree.data("a.raw"); string(got) != "data" {
		t.Fatalf("a.raw changed to %q", got)
	}
}

// TestOversizedRecord sends a fragment header of 2 GiB: the connection is
// dropped without reading it, and the server keeps serving others.
func TestOversizedRecord(t *testing.T) {
	addr, _ := startServer(t, newMemTree())
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0xff, 0xff, 0xff, 0xff})
	if n, err := c.Read(make([]byte, 4)); err == nil {
		t.Fatalf("read %d bytes after an oversized record", n)
	}
	c2 := dialRPC(t, addr)
	if acc, _, err := c2.call(progNFS, 3, procNull, nil); err != nil || acc != acceptSuccess {
		t.Fatalf("NULL after an oversized record elsewhere: %d %v", acc, err)
	}
}

// FuzzHandleRecord feeds arbitrary records to the RPC layer and every
// procedure behind it: nothing may panic or hang, and a reply, if any,
// starts with the call's xid.
func FuzzHandleRecord(f *testing.F) {
	fh := makeHandle(3)
	for proc := range uint32(22) {
		w := &xdrWriter{}
		w.opaque(fh)
		w.u64(0)
		w.u32(16)
		w.u32(2)
		w.opaque([]byte("abcd"))
		f.Add(callRecord(7, progNFS, 3, proc, w.b))
	}
	f.Add(callRecord(7, progMount, 3, mountMnt, (&xdrWriter{b: []byte{0, 0, 0, 1, '/', 0, 0, 0}}).b))
	f.Add(callRecord(7, progMount, 3, mountExport, nil))
	f.Add(callRecord(7, progPortmap, 2, 3, []byte{0, 1, 0x86, 0xa3, 0, 0, 0, 3, 0, 0, 0, 6, 0, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, rec []byte) {
		tree := newMemTree()
		tree.put("a.raw", []byte("data"))
		srv := NewServer(tree, Options{Logger: testLogger()})
		defer srv.Close()
		reply := srv.handleRecord(context.Background(), rec, 2049)
		if reply != nil && (len(reply) < 8 || len(rec) < 4 || string(reply[4:8]) != string(rec[:4])) {
			t.Fatalf("reply %x to %x", reply, rec)
		}
	})
}
