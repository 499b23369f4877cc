package dtl

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// shipSome ships two groups with writes and trims and returns what a Read
// of all must give, and the last position.
func shipSome(t *testing.T, s *Shipper) ([]shipped, uint64) {
	t.Helper()
	var want []shipped
	if s.Begin("tlog_a", "") != 1 {
		t.Fatal("first Begin is not position 1")
	}
	for i := 0; i < 20; i++ {
		e := writeEntry(uint64(i*3), 1+i%3, byte(i))
		if i%5 == 4 {
			e = trimEntry(uint64(i), 2)
		}
		s.Append(e)
		want = append(want, shipped{"tlog_a", e})
	}
	s.Begin("tlog_b", "tlog_a")
	var pos uint64
	for i := 0; i < 10; i++ {
		e := writeEntry(uint64(100+i), 2, byte(50+i))
		pos = s.Append(e)
		want = append(want, shipped{"tlog_b", e})
	}
	if pos != 32 {
		t.Fatalf("last position %d, want 32", pos)
	}
	return want, pos
}

func TestShipSyncReadBack(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd-1", 1)
	want, pos := shipSome(t, s)
	waitDurable(t, s, pos)
	if st := s.State(); st != Connected {
		t.Fatalf("state %s, want connected", st)
	}

	groups, err := Groups(ctx30(t), ts.addr, nil, "vd-1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 2 || groups[0].TLog != "tlog_a" || groups[0].Prev != "" || groups[0].Entries != 20 ||
		groups[1].TLog != "tlog_b" || groups[1].Prev != "tlog_a" || groups[1].Entries != 10 || groups[1].Epoch != 1 {
		t.Fatalf("groups %+v", groups)
	}

	got, err := readAll(t, ts.addr, "vd-1", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, want)
	got, err = readAll(t, ts.addr, "vd-1", 1, "tlog_b")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, want[20:])
	if _, err := readAll(t, ts.addr, "vd-1", 1, "tlog_x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read from a missing group: %v, want ErrNotFound", err)
	}
	// A vdisk the server never saw has nothing.
	if got, err := readAll(t, ts.addr, "vd-none", 1, ""); err != nil || len(got) != 0 {
		t.Fatalf("read of an unknown vdisk: %d entries, %v", len(got), err)
	}

	infos := ts.srv.VDisks()
	if len(infos) != 1 || infos[0].VDisk != "vd-1" || infos[0].Groups != 2 || infos[0].Epoch != 1 || infos[0].Bytes == 0 {
		t.Fatalf("VDisks %+v", infos)
	}
}

// Entries appended but not synced are read back too: a reader sees
// everything the server accepted (the failover case).
func TestReadSeesUnsynced(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	e := writeEntry(7, 1, 1)
	pos := s.Append(e)
	waitDurable(t, s, pos)
	e2 := writeEntry(8, 1, 2)
	s.Append(e2)
	// The fence orders against the entry only once the server has read
	// it; wait for that through another sync.
	pos = s.Append(trimEntry(9, 1))
	waitDurable(t, s, pos)
	got, err := readAll(t, ts.addr, "vd", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, []shipped{{"tlog_a", e}, {"tlog_a", e2}, {"tlog_a", trimEntry(9, 1)}})
}

func TestLargeWriteIsSplit(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	n := 2*MaxEntryData/testCluster + 3
	e := writeEntry(10, n, 9)
	pos := s.Append(e)
	if pos != 4 {
		t.Fatalf("position %d after a write of 3 parts, want 4", pos)
	}
	waitDurable(t, s, pos)
	got, err := readAll(t, ts.addr, "vd", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d entries, want 3", len(got))
	}
	var data []byte
	next := uint64(10)
	for _, g := range got {
		if g.e.Addr != next {
			t.Fatalf("part at %d, want %d", g.e.Addr, next)
		}
		next += uint64(g.e.Count)
		data = append(data, g.e.Data...)
	}
	if string(data) != string(e.Data) {
		t.Fatal("data of the parts differs")
	}
}

func TestRestartKeepsSynced(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd-1", 3)
	want, pos := shipSome(t, s)
	waitDurable(t, s, pos)
	ts2 := ts.restart()
	waitDone(t, s)
	if !errors.Is(s.Err(), ErrBroken) {
		t.Fatalf("shipper after the server went: %v", s.Err())
	}
	got, err := readAll(t, ts2.addr, "vd-1", 3, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, want)

	// A new session of the owner keeps the groups and continues the chain.
	s2 := ts2.shipper("vd-1", 3)
	s2.Begin("tlog_c", "tlog_b")
	e := writeEntry(0, 1, 1)
	waitDurable(t, s2, s2.Append(e))
	got, err = readAll(t, ts2.addr, "vd-1", 3, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, append(want, shipped{"tlog_c", e}))
}

// groupFile returns the path of the vdisk's only file of group tlog.
func groupFile(t *testing.T, dir, vdisk, tlog string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, vdisk, "*-"+tlog+groupExt))
	if err != nil || len(m) != 1 {
		t.Fatalf("files of group %s: %v, %v", tlog, m, err)
	}
	return m[0]
}

func TestDamagedFilesAtLoad(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string, size int64, recStart []int64)
		entries int  // valid entries left of 5
		cut     bool // the file is truncated to them
	}{
		{"partial header of a record", func(t *testing.T, path string, size int64, _ []int64) {
			appendBytes(t, path, []byte{0, 0, 0x10})
		}, 5, true},
		{"partial body", func(t *testing.T, path string, size int64, rs []int64) {
			os.Truncate(path, size-100)
		}, 4, true},
		{"bad last record", func(t *testing.T, path string, size int64, rs []int64) {
			flipByte(t, path, size-10)
		}, 4, true},
		{"zeros after the last record", func(t *testing.T, path string, size int64, _ []int64) {
			appendBytes(t, path, make([]byte, 3*testCluster))
		}, 5, true},
		{"corrupt record in the middle", func(t *testing.T, path string, size int64, rs []int64) {
			flipByte(t, path, rs[2]+100)
		}, 2, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, "")
			s := ts.shipper("vd", 1)
			s.Begin("tlog_a", "")
			var want []shipped
			var pos uint64
			for i := 0; i < 5; i++ {
				e := writeEntry(uint64(i), 1, byte(i))
				pos = s.Append(e)
				want = append(want, shipped{"tlog_a", e})
			}
			waitDurable(t, s, pos)
			ts.stop()
			path := groupFile(t, ts.dir, "vd", "tlog_a")
			st, _ := os.Stat(path)
			hdr := int64(len(appendFileHeader(nil, 1, "tlog_a", "")))
			var rs []int64
			for i := 0; i < 5; i++ {
				rs = append(rs, hdr+int64(i)*(recHdrSize+entryFixed+4+testCluster))
			}
			tc.damage(t, path, st.Size(), rs)
			before, _ := os.Stat(path)

			ts2 := startServer(t, ts.dir)
			got, err := readAll(t, ts2.addr, "vd", 1, "")
			if err != nil {
				t.Fatal(err)
			}
			checkShipped(t, got, want[:tc.entries])
			after, _ := os.Stat(path)
			switch {
			case tc.cut && after.Size() != rs[0]+int64(tc.entries)*(rs[1]-rs[0]):
				t.Fatalf("file of %d bytes after the cut, want %d", after.Size(), rs[0]+int64(tc.entries)*(rs[1]-rs[0]))
			case !tc.cut && after.Size() != before.Size():
				t.Fatalf("a corrupt middle record changed the file from %d to %d bytes", before.Size(), after.Size())
			}
		})
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownVersionRefused(t *testing.T) {
	tests := []struct {
		name string
		file func(dir string) (string, []byte)
	}{
		{"group file", func(dir string) (string, []byte) {
			b := appendFileHeader(nil, 1, "tlog_a", "")
			b[magicLen] = FormatVersion + 1
			return filepath.Join(dir, groupFileName(1, "tlog_a")), b
		}},
		{"fence file", func(dir string) (string, []byte) {
			b := encodeFence(4)
			b[magicLen] = FormatVersion + 1
			return filepath.Join(dir, fenceName), b
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			vdir := filepath.Join(dir, "vd")
			os.MkdirAll(vdir, 0o755)
			path, b := tc.file(vdir)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			ts := startServer(t, dir)
			_, err := Groups(ctx30(t), ts.addr, nil, "vd", 9)
			if err == nil || !strings.Contains(err.Error(), "version 2") {
				t.Fatalf("Groups of a vdisk with a version-2 file: %v", err)
			}
			s := ts.shipper("vd", 9)
			waitDone(t, s)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("the file of an unknown version is gone: %v", err)
			}
			// The operator's way out.
			if err := Forget(ctx30(t), ts.addr, nil, "vd", 0); err != nil {
				t.Fatal(err)
			}
			if _, err := Groups(ctx30(t), ts.addr, nil, "vd", 9); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFence(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	e := writeEntry(0, 1, 1)
	waitDurable(t, s, s.Append(e))

	if err := Fence(ctx30(t), ts.addr, nil, "vd", 2); err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	if s.State() != Fenced || !errors.Is(s.Err(), ErrFenced) {
		t.Fatalf("shipper after the fence: %s, %v", s.State(), s.Err())
	}
	if err := s.WaitDurable(ctx30(t), s.Append(writeEntry(1, 1, 1))); !errors.Is(err, ErrFenced) {
		t.Fatalf("WaitDurable after the fence: %v", err)
	}
	// What was shipped before the fence is there for the new owner.
	got, err := readAll(t, ts.addr, "vd", 2, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, []shipped{{"tlog_a", e}})

	check := func(ts *testServer) {
		t.Helper()
		if err := Fence(ctx30(t), ts.addr, nil, "vd", 1); !errors.Is(err, ErrFenced) {
			t.Fatalf("Fence with an older epoch: %v", err)
		}
		if _, err := Groups(ctx30(t), ts.addr, nil, "vd", 1); !errors.Is(err, ErrFenced) {
			t.Fatalf("Groups with an older epoch: %v", err)
		}
		if err := Forget(ctx30(t), ts.addr, nil, "vd", 1); !errors.Is(err, ErrFenced) {
			t.Fatalf("Forget with an older epoch: %v", err)
		}
		old := ts.shipper("vd", 1)
		old.Begin("tlog_z", "")
		if err := old.WaitDurable(ctx30(t), old.Append(writeEntry(5, 1, 5))); !errors.Is(err, ErrFenced) || old.State() != Fenced {
			t.Fatalf("a new shipper with the old epoch: %s, %v", old.State(), err)
		}
	}
	check(ts)
	ts = ts.restart()
	check(ts) // the fence is durable

	// A session with a newer epoch raises the fence.
	s3 := ts.shipper("vd", 3)
	s3.Begin("tlog_b", "tlog_a")
	waitDurable(t, s3, s3.Append(writeEntry(2, 1, 2)))
	if err := Fence(ctx30(t), ts.addr, nil, "vd", 2); !errors.Is(err, ErrFenced) {
		t.Fatalf("Fence(2) after a session of epoch 3: %v", err)
	}
	if infos := ts.srv.VDisks(); len(infos) != 1 || infos[0].Epoch != 3 {
		t.Fatalf("VDisks %+v", infos)
	}
}

// An admin call on a fenced vdisk with an epoch for a vdisk never seen
// creates the fence (so that the old owner, arriving later, is refused).
func TestFenceUnknownVDisk(t *testing.T) {
	ts := startServer(t, "")
	if err := Fence(ctx30(t), ts.addr, nil, "fresh", 5); err != nil {
		t.Fatal(err)
	}
	s := ts.shipper("fresh", 4)
	waitDone(t, s)
	if s.State() != Fenced {
		t.Fatalf("state %s: %v", s.State(), s.Err())
	}
}

func TestDrop(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	var want []shipped
	prev := ""
	for _, g := range []string{"tlog_1", "tlog_2", "tlog_3"} {
		s.Begin(g, prev)
		e := writeEntry(0, 1, g[5])
		s.Append(e)
		want = append(want, shipped{g, e})
		prev = g
	}
	s.Drop("tlog_2")
	s.Drop("tlog_unknown") // already gone: nothing
	waitDurable(t, s, s.Append(trimEntry(4, 1)))
	want = append(want, shipped{"tlog_3", trimEntry(4, 1)})
	groups, err := Groups(ctx30(t), ts.addr, nil, "vd", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || groups[0].TLog != "tlog_3" {
		t.Fatalf("groups after the drop: %+v", groups)
	}
	files, _ := filepath.Glob(filepath.Join(ts.dir, "vd", "*"+groupExt))
	if len(files) != 1 {
		t.Fatalf("files after the drop: %v", files)
	}
	got, err := readAll(t, ts.addr, "vd", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, want[2:])

	// Dropping the current group: entries after it have no group.
	s.Drop("tlog_3")
	pos := s.Append(writeEntry(1, 1, 1))
	if err := s.WaitDurable(ctx30(t), pos); !errors.Is(err, ErrBroken) {
		t.Fatalf("an entry after its group was dropped: %v", err)
	}
}

func TestBeginReplaces(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	s.Append(writeEntry(0, 1, 1))
	s.Begin("tlog_b", "tlog_a")
	s.Append(writeEntry(1, 1, 1))
	s.Begin("tlog_b", "tlog_a") // the owner re-ships its current TLog
	e := writeEntry(1, 1, 2)
	waitDurable(t, s, s.Append(e))
	got, err := readAll(t, ts.addr, "vd", 1, "tlog_b")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, []shipped{{"tlog_b", e}})
	ts = ts.restart()
	got, err = readAll(t, ts.addr, "vd", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].group != "tlog_a" {
		t.Fatalf("after the restart: %+v", got)
	}
}

func TestBrokenOnServerKill(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	waitDurable(t, s, s.Append(writeEntry(0, 1, 1)))
	ts.stop()
	waitDone(t, s)
	if s.State() != Broken || !errors.Is(s.Err(), ErrBroken) {
		t.Fatalf("after the server went: %s, %v", s.State(), s.Err())
	}
	if p := s.Append(writeEntry(1, 1, 1)); p != 0 {
		t.Fatalf("Append on a broken shipper returned %d", p)
	}
	if err := s.WaitDurable(ctx30(t), 0); !errors.Is(err, ErrBroken) {
		t.Fatalf("WaitDurable(0) on a broken shipper: %v", err)
	}
	if err := s.WaitDurable(ctx30(t), 2); err != nil {
		t.Fatalf("WaitDurable of a position made durable before: %v", err)
	}
}

func TestBrokenOnDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := NewShipper(ShipperConfig{Addr: addr, VDisk: "vd", Epoch: 1})
	defer s.Close()
	pos := s.Begin("tlog_a", "")
	if err := s.WaitDurable(ctx30(t), pos); !errors.Is(err, ErrBroken) {
		t.Fatalf("WaitDurable with no server: %v", err)
	}
}

// silentServer accepts connections and never answers: a DTL host that is
// stuck.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func TestBrokenOnQueueOverflow(t *testing.T) {
	s := NewShipper(ShipperConfig{Addr: silentServer(t), VDisk: "vd", Epoch: 1, MaxQueued: 256 << 10})
	defer s.Close()
	s.Begin("tlog_a", "")
	var last uint64
	for i := 0; i < 100 && s.State() < Broken; i++ {
		last = s.Append(writeEntry(uint64(i), 4, byte(i)))
	}
	if s.State() != Broken || last != 0 || !strings.Contains(s.Err().Error(), "queue") {
		t.Fatalf("after overflowing the queue: %s, %v (last position %d)", s.State(), s.Err(), last)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed")
	}
}

// A server that takes the session but never answers a sync breaks the
// shipper after its timeout, instead of leaving the flush hanging.
func TestBrokenOnSyncTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<16)
		c.Read(buf) // hello and ship
		b := appendHello(nil, Version, helloOK)
		c.Write(appendResult(b, statusOK, ""))
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	s := NewShipper(ShipperConfig{Addr: ln.Addr().String(), VDisk: "vd", Epoch: 1, Timeout: 200 * time.Millisecond})
	defer s.Close()
	pos := s.Begin("tlog_a", "")
	err = s.WaitDurable(ctx30(t), pos)
	if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "sync") {
		t.Fatalf("WaitDurable on a server that never acks: %v", err)
	}
}

func TestCorruptEntryRefused(t *testing.T) {
	ts := startServer(t, "")
	good := ts.shipper("good", 1)
	good.Begin("tlog_a", "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	e := writeEntry(0, 2, 1)
	e.CRCs[1] ^= 1
	err := s.WaitDurable(ctx30(t), s.Append(e))
	if !errors.Is(err, ErrBroken) || !strings.Contains(err.Error(), "CRC") {
		t.Fatalf("a write with a bad CRC: %v", err)
	}
	// The server goes on serving the others.
	waitDurable(t, good, good.Append(writeEntry(0, 1, 1)))
}

func TestMalformedEntryBreaksShipper(t *testing.T) {
	ts := startServer(t, "")
	tests := []struct {
		name string
		do   func(s *Shipper) uint64
	}{
		{"data of the wrong length", func(s *Shipper) uint64 {
			e := writeEntry(0, 1, 1)
			e.Data = e.Data[:100]
			return s.Append(e)
		}},
		{"missing CRCs", func(s *Shipper) uint64 {
			e := writeEntry(0, 2, 1)
			e.CRCs = e.CRCs[:1]
			return s.Append(e)
		}},
		{"zero count", func(s *Shipper) uint64 { return s.Append(Entry{Kind: Trim}) }},
		{"unknown kind", func(s *Shipper) uint64 { return s.Append(Entry{Kind: 9, Count: 1}) }},
		{"bad group name", func(s *Shipper) uint64 { return s.Begin("tlog/../x", "") }},
		{"entry before begin", func(s *Shipper) uint64 { return s.Append(trimEntry(0, 1)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := ts.shipper("vd", 1)
			pos := tc.do(s)
			if err := s.WaitDurable(ctx30(t), pos); !errors.Is(err, ErrBroken) {
				t.Fatalf("WaitDurable: %v", err)
			}
		})
	}
}

func TestNewSessionSupersedes(t *testing.T) {
	ts := startServer(t, "")
	s1 := ts.shipper("vd", 1)
	s1.Begin("tlog_a", "")
	waitDurable(t, s1, s1.Append(writeEntry(0, 1, 1)))
	s2 := ts.shipper("vd", 1)
	s2.Begin("tlog_b", "tlog_a")
	waitDurable(t, s2, s2.Append(writeEntry(1, 1, 1)))
	waitDone(t, s1)
	if s1.State() != Broken || !strings.Contains(s1.Err().Error(), "superseded") {
		t.Fatalf("the older session: %s, %v", s1.State(), s1.Err())
	}
	got, err := readAll(t, ts.addr, "vd", 1, "")
	if err != nil || len(got) != 2 {
		t.Fatalf("read: %d entries, %v", len(got), err)
	}
}

func TestForget(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 2)
	s.Begin("tlog_a", "")
	waitDurable(t, s, s.Append(writeEntry(0, 1, 1)))
	if err := Forget(ctx30(t), ts.addr, nil, "vd", 2); err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	if _, err := os.Stat(filepath.Join(ts.dir, "vd")); !os.IsNotExist(err) {
		t.Fatalf("the vdisk's directory after Forget: %v", err)
	}
	if g, err := Groups(ctx30(t), ts.addr, nil, "vd", 0); err != nil || len(g) != 0 {
		t.Fatalf("groups after Forget: %+v, %v", g, err)
	}
	if len(ts.srv.VDisks()) != 0 {
		t.Fatalf("VDisks after Forget: %+v", ts.srv.VDisks())
	}
	// Forget of a vdisk the server does not know is fine.
	if err := Forget(ctx30(t), ts.addr, nil, "other", 1); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentWaiters(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	var mu sync.Mutex // the volume's write lock
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				mu.Lock()
				pos := s.Append(writeEntry(uint64(w*100+i), 1, byte(i)))
				mu.Unlock()
				if err := s.WaitDurable(context.Background(), pos); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := readAll(t, ts.addr, "vd", 1, "")
	if err != nil || len(got) != 64*50 {
		t.Fatalf("read %d entries, %v", len(got), err)
	}
}

func TestWaitDurableCancel(t *testing.T) {
	s := NewShipper(ShipperConfig{Addr: silentServer(t), VDisk: "vd", Epoch: 1})
	defer s.Close()
	pos := s.Begin("tlog_a", "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.WaitDurable(ctx, pos); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitDurable with a cancelled context: %v", err)
	}
	if err := s.WaitDurable(ctx30(t), pos+1); err == nil {
		t.Fatal("WaitDurable beyond the last position succeeded")
	}
	s.Close()
	if err := s.WaitDurable(ctx30(t), pos); !errors.Is(err, ErrBroken) {
		t.Fatalf("WaitDurable after Close: %v", err)
	}
}

// Raw protocol abuse: the server answers with an invalid result and
// closes, and keeps serving.
func TestMalformedFrames(t *testing.T) {
	ts := startServer(t, "")
	hello := appendHello(nil, Version, 0)
	tests := []struct {
		name string
		send []byte
		want string // in the result message; "" for a bare close
	}{
		{"huge frame", append(append([]byte{}, hello...), 0xff, 0xff, 0xff, 0xff, byte(ftWrite), 0, 0, 0), "exceeds"},
		{"unknown type", append(append([]byte{}, hello...), 0, 0, 0, 1, 99, 0, 0, 0, 0), "unexpected frame type"},
		{"reserved bits", append(append([]byte{}, hello...), 0, 0, 0, 8, byte(ftSync), 1, 0, 0), "reserved"},
		{"bad vdisk name", appendVDiskReq(append([]byte{}, hello...), ftShip, vdiskReq{epoch: 1, clusterSize: 4096, vdisk: "../x"}), "vdisk id"},
		{"bad cluster size", appendVDiskReq(append([]byte{}, hello...), ftShip, vdiskReq{epoch: 1, clusterSize: 4095, vdisk: "x"}), "cluster size"},
		{"sync out of step", appendU64Frame(appendVDiskReq(append([]byte{}, hello...), ftShip, vdiskReq{epoch: 1, clusterSize: 4096, vdisk: "x"}), ftSync, 7), "sync at position"},
		{"bad magic", []byte("GET / HTTP/1.1\r\n\r\n"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			var all []byte
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				all = append(all, buf[:n]...)
				if err != nil {
					break
				}
			}
			if tc.want != "" && !strings.Contains(string(all), tc.want) {
				t.Fatalf("reply %q lacks %q", all, tc.want)
			}
		})
	}
	s := ts.shipper("vd", 1)
	waitDurable(t, s, s.Begin("tlog_a", ""))
}

func TestVersionMismatch(t *testing.T) {
	ts := startServer(t, "")
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(appendHello(nil, Version+1, 0))
	var b [helloSize]byte
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	v, st, err := decodeHello(b[:])
	if err != nil || v != Version || st != helloBadVersion {
		t.Fatalf("hello reply: version %d status %d, %v", v, st, err)
	}
}

// A fence while the owner streams: the shipper ends Fenced (not merely
// Broken by the closed connection), and every entry it had acknowledged
// durable is in what the new owner reads.
func TestFenceWhileStreaming(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	for i := uint64(0); i < 50; i++ {
		s.Append(writeEntry(i, 1, byte(i)))
	}
	var durable uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := uint64(50); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pos := s.Append(writeEntry(i, 1, byte(i)))
			if pos == 0 {
				return
			}
			if i%16 == 0 {
				if s.WaitDurable(context.Background(), pos) != nil {
					return
				}
				durable = pos
			}
		}
	}()
	waitDurable(t, s, 50)
	if err := Fence(ctx30(t), ts.addr, nil, "vd", 2); err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	close(stop)
	<-done
	if s.State() != Fenced {
		t.Fatalf("state %s after a fence: %v", s.State(), s.Err())
	}
	got, err := readAll(t, ts.addr, "vd", 2, "")
	if err != nil {
		t.Fatal(err)
	}
	// Positions: 1 is the Begin, entry i is position i+2.
	if uint64(len(got))+1 < durable {
		t.Fatalf("read %d entries, but position %d was acknowledged durable", len(got), durable)
	}
	for i, g := range got {
		if g.e.Addr != uint64(i) {
			t.Fatalf("entry %d at %d: out of order", i, g.e.Addr)
		}
	}
}

// TestWaitReceived: the server says how far it has the entries in its
// files without a sync being asked; what it said it has, a Read sees, even
// after its session ended without a sync (the owner died).
func TestWaitReceived(t *testing.T) {
	ts := startServer(t, "")
	s := ts.shipper("vd", 1)
	s.Begin("tlog_a", "")
	var want []shipped
	var pos uint64
	for i := 0; i < 200; i++ {
		e := writeEntry(uint64(i), 1, byte(i))
		pos = s.Append(e)
		want = append(want, shipped{"tlog_a", e})
	}
	if err := s.WaitReceived(ctx30(t), pos); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	requested := s.requested
	s.mu.Unlock()
	if requested != 0 {
		t.Fatalf("WaitReceived asked for a sync (up to %d)", requested)
	}
	if vs := ts.srv.VDisks(); len(vs) != 1 || !vs[0].Session || time.Since(vs[0].Changed) > time.Minute || vs[0].Groups != 1 {
		t.Fatalf("VDisks while shipping: %+v", vs)
	}
	s.Close() // the owner is gone, nothing synced
	deadline := time.Now().Add(10 * time.Second)
	for vs := ts.srv.VDisks(); len(vs) != 1 || vs[0].Session; vs = ts.srv.VDisks() {
		if time.Now().After(deadline) {
			t.Fatalf("VDisks after the shipper closed: %+v", vs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, err := readAll(t, ts.addr, "vd", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	checkShipped(t, got, want)
	// A broken shipper never says a position it did not get to is received.
	if err := s.WaitReceived(ctx30(t), pos+1); !errors.Is(err, ErrBroken) {
		t.Fatalf("WaitReceived on a closed shipper: %v", err)
	}
	if err := s.WaitReceived(ctx30(t), 0); !errors.Is(err, ErrBroken) {
		t.Fatalf("WaitReceived(0) on a closed shipper: %v", err)
	}
}
