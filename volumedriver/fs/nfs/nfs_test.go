package nfs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"testing"
)

func TestMount(t *testing.T) {
	tree := newMemTree()
	tree.put("a.raw", nil)
	addr, _ := startServer(t, tree)
	c := dialRPC(t, addr)

	acc, r, err := c.call(progMount, 3, mountExport, nil)
	if err != nil || acc != acceptSuccess {
		t.Fatalf("EXPORT: accept %d err %v", acc, err)
	}
	var exports []string
	for r.bool() {
		exports = append(exports, r.string(1024))
		for r.bool() {
			r.string(1024)
		}
	}
	if r.err != nil || len(exports) != 1 || exports[0] != "/" {
		t.Fatalf("EXPORT lists %q (err %v), want [/]", exports, r.err)
	}

	for _, tc := range []struct {
		path string
		want uint32
	}{
		{"/", mnt3OK},
		{"/vpool", mnt3OK},
		{"", mnt3OK},
		{"/other", mnt3NoEnt},
		{"/vpool/x", mnt3NoEnt},
		{"/vpool/.snapshots", mnt3OK},
		{"/.snapshots", mnt3OK},
		{"/vpool/a.raw", mnt3NotDir},
		{"relative", mnt3NoEnt},
	} {
		acc, r, err := c.call(progMount, 3, mountMnt, args(func(w *xdrWriter) { w.string(tc.path) }).b)
		if err != nil || acc != acceptSuccess {
			t.Fatalf("MNT %q: accept %d err %v", tc.path, acc, err)
		}
		if st := r.u32(); st != tc.want {
			t.Errorf("MNT %q: status %d, want %d", tc.path, st, tc.want)
		}
	}
}

// TestOps runs each procedure against a fresh tree and checks the status
// the Tree's outcome maps to.
func TestOps(t *testing.T) {
	type env struct {
		c    *rpcClient
		tree *memTree
		root []byte
	}
	h := func(e env, name string) []byte {
		t.Helper()
		fh, st := e.c.lookup(t, e.root, name)
		if st != nfsOK {
			t.Fatalf("lookup %s: %d", name, st)
		}
		return fh
	}
	tests := []struct {
		name  string
		run   func(e env) uint32
		want  uint32
		check func(t *testing.T, e env)
	}{
		{"lookup missing", func(e env) uint32 { _, st := e.c.lookup(t, e.root, "nope"); return st }, nfsErrNoEnt, nil},
		{"lookup dot-dot of root", func(e env) uint32 { _, st := e.c.lookup(t, e.root, ".."); return st }, nfsOK, nil},
		{"lookup in a file", func(e env) uint32 { _, st := e.c.lookup(t, h(e, "a.raw"), "x"); return st }, nfsErrNotDir, nil},
		{"create unchecked over existing", func(e env) uint32 { _, st := e.c.create(t, e.root, "a.raw", createUnchecked, 0); return st }, nfsOK,
			func(t *testing.T, e env) {
				if got := e.tree.data("a.raw"); !bytes.Equal(got, []byte("hello")) {
					t.Errorf("UNCHECKED create changed the file: %q", got)
				}
			}},
		{"create guarded over existing", func(e env) uint32 { _, st := e.c.create(t, e.root, "a.raw", createGuarded, 0); return st }, nfsErrExist, nil},
		{"create guarded new", func(e env) uint32 { _, st := e.c.create(t, e.root, "new.raw", createGuarded, 0); return st }, nfsOK,
			func(t *testing.T, e env) {
				if a, err := e.tree.Stat(context.Background(), "new.raw"); err != nil || a.Size != 0 {
					t.Errorf("new.raw: %+v %v", a, err)
				}
			}},
		{"create exclusive retransmitted", func(e env) uint32 {
			if _, st := e.c.create(t, e.root, "x.raw", createExclusive, 7); st != nfsOK {
				return st
			}
			_, st := e.c.create(t, e.root, "x.raw", createExclusive, 7)
			return st
		}, nfsOK, nil},
		{"create exclusive by another client", func(e env) uint32 {
			e.c.create(t, e.root, "x.raw", createExclusive, 7)
			_, st := e.c.create(t, e.root, "x.raw", createExclusive, 8)
			return st
		}, nfsErrExist, nil},
		{"create bad name", func(e env) uint32 { _, st := e.c.create(t, e.root, "a/b", createGuarded, 0); return st }, nfsErrInval, nil},
		{"create in snapshots", func(e env) uint32 { _, st := e.c.create(t, h(e, ".snapshots"), "s.raw", createGuarded, 0); return st }, nfsErrROFS, nil},
		{"write to snapshot", func(e env) uint32 {
			snaps := h(e, ".snapshots")
			d, _ := e.c.lookup(t, snaps, "a")
			f, _ := e.c.lookup(t, d, "s1.raw")
			st, _ := e.c.write(t, f, 0, []byte("x"), fileSync)
			return st
		}, nfsErrROFS, nil},
		{"read snapshot", func(e env) uint32 {
			d, _ := e.c.lookup(t, h(e, ".snapshots"), "a")
			f, _ := e.c.lookup(t, d, "s1.raw")
			got, st := e.c.read(t, f, 0, 100)
			if st == nfsOK && string(got) != "old" {
				t.Errorf("snapshot reads %q", got)
			}
			return st
		}, nfsOK, nil},
		{"write grows", func(e env) uint32 { st, _ := e.c.write(t, h(e, "a.raw"), 8, []byte("XY"), unstable); return st }, nfsOK,
			func(t *testing.T, e env) {
				if got := e.tree.data("a.raw"); !bytes.Equal(got, []byte("hello\x00\x00\x00XY")) {
					t.Errorf("a.raw = %q", got)
				}
			}},
		{"write to dir", func(e env) uint32 { st, _ := e.c.write(t, e.root, 0, []byte("x"), unstable); return st }, nfsErrIsDir, nil},
		{"read past end", func(e env) uint32 {
			got, st := e.c.read(t, h(e, "a.raw"), 100, 10)
			if len(got) != 0 {
				t.Errorf("read past end gave %q", got)
			}
			return st
		}, nfsOK, nil},
		{"setattr size grows", func(e env) uint32 { return setSize(t, e.c, h(e, "a.raw"), 1<<20) }, nfsOK,
			func(t *testing.T, e env) {
				if n := len(e.tree.data("a.raw")); n != 1<<20 {
					t.Errorf("size %d", n)
				}
			}},
		{"setattr shrink vdisk", func(e env) uint32 { return setSize(t, e.c, h(e, "a.raw"), 1) }, nfsErrInval, nil},
		{"setattr size of dir", func(e env) uint32 { return setSize(t, e.c, e.root, 1) }, nfsErrIsDir, nil},
		{"remove", func(e env) uint32 { return e.c.removeName(t, procRemove, e.root, "a.raw") }, nfsOK,
			func(t *testing.T, e env) {
				if _, err := e.tree.Stat(context.Background(), "a.raw"); err == nil {
					t.Error("a.raw still there")
				}
			}},
		{"remove missing", func(e env) uint32 { return e.c.removeName(t, procRemove, e.root, "nope") }, nfsErrNoEnt, nil},
		{"remove vdisk with clones", func(e env) uint32 {
			e.tree.busy["a.raw"] = true
			return e.c.removeName(t, procRemove, e.root, "a.raw")
		}, nfsErrAcces, nil},
		{"remove dir", func(e env) uint32 { return e.c.removeName(t, procRemove, e.root, "dir") }, nfsErrIsDir, nil},
		{"rmdir non-empty", func(e env) uint32 { return e.c.removeName(t, procRmdir, e.root, "dir") }, nfsErrNotEmpty, nil},
		{"rmdir file", func(e env) uint32 { return e.c.removeName(t, procRmdir, e.root, "a.raw") }, nfsErrNotDir, nil},
		{"rmdir empty", func(e env) uint32 {
			e.c.removeName(t, procRemove, h(e, "dir"), "vm.xml")
			return e.c.removeName(t, procRmdir, e.root, "dir")
		}, nfsOK, nil},
		{"mkdir", func(e env) uint32 {
			st, _ := e.c.nfs(t, procMkdir, args(func(w *xdrWriter) { w.opaque(e.root); w.string("d2"); putEmptySattr(w) }))
			return st
		}, nfsOK, nil},
		{"mkdir existing", func(e env) uint32 {
			st, _ := e.c.nfs(t, procMkdir, args(func(w *xdrWriter) { w.opaque(e.root); w.string("dir"); putEmptySattr(w) }))
			return st
		}, nfsErrExist, nil},
		{"rename keeps the handle", func(e env) uint32 {
			fh := h(e, "a.raw")
			st, _ := e.c.nfs(t, procRename, args(func(w *xdrWriter) {
				w.opaque(e.root)
				w.string("a.raw")
				w.opaque(e.root)
				w.string("b.raw")
			}))
			if st != nfsOK {
				return st
			}
			got, st := e.c.read(t, fh, 0, 5)
			if string(got) != "hello" {
				t.Errorf("old handle after rename reads %q", got)
			}
			return st
		}, nfsOK, nil},
		{"stale handle", func(e env) uint32 {
			fh := h(e, "a.raw")
			e.c.removeName(t, procRemove, e.root, "a.raw")
			_, st := e.c.read(t, fh, 0, 5)
			return st
		}, nfsErrStale, nil},
		{"bad handle", func(e env) uint32 { _, st := e.c.read(t, []byte("garbage"), 0, 5); return st }, nfsErrBadHandle, nil},
		{"readlink unsupported", func(e env) uint32 {
			st, _ := e.c.nfs(t, procReadlink, args(func(w *xdrWriter) { w.opaque(e.root) }))
			return st
		}, nfsErrNotSupp, nil},
		{"fsinfo", func(e env) uint32 {
			st, r := e.c.nfs(t, procFsinfo, args(func(w *xdrWriter) { w.opaque(e.root) }))
			if r.bool() {
				r.fixed(fattrSize)
			}
			if rtmax, _, _, wtmax := r.u32(), r.u32(), r.u32(), r.u32(); rtmax != 1<<20 || wtmax != 1<<20 {
				t.Errorf("rtmax %d wtmax %d", rtmax, wtmax)
			}
			return st
		}, nfsOK, nil},
		{"fsstat", func(e env) uint32 {
			st, _ := e.c.nfs(t, procFsstat, args(func(w *xdrWriter) { w.opaque(e.root) }))
			return st
		}, nfsOK, nil},
		{"pathconf", func(e env) uint32 {
			st, _ := e.c.nfs(t, procPathconf, args(func(w *xdrWriter) { w.opaque(e.root) }))
			return st
		}, nfsOK, nil},
		{"access on snapshot", func(e env) uint32 {
			st, r := e.c.nfs(t, procAccess, args(func(w *xdrWriter) { w.opaque(h(e, ".snapshots")); w.u32(0x3f) }))
			if r.bool() {
				r.fixed(fattrSize)
			}
			if got := r.u32(); got&(accessModify|accessExtend|accessDelete) != 0 {
				t.Errorf("ACCESS on .snapshots allows %#x", got)
			}
			return st
		}, nfsOK, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tree := newMemTree()
			tree.put("a.raw", []byte("hello"))
			if _, err := tree.Mkdir(context.Background(), "dir"); err != nil {
				t.Fatal(err)
			}
			tree.put("dir/vm.xml", []byte("<vm/>"))
			tree.addSnapshot("a", "s1", []byte("old"))
			addr, _ := startServer(t, tree)
			c := dialRPC(t, addr)
			e := env{c: c, tree: tree, root: c.mountRoot(t)}
			if got := tc.run(e); got != tc.want {
				t.Fatalf("status %d, want %d", got, tc.want)
			}
			if tc.check != nil {
				tc.check(t, e)
			}
		})
	}
}

func setSize(t *testing.T, c *rpcClient, h []byte, size uint64) uint32 {
	t.Helper()
	st, _ := c.nfs(t, procSetattr, args(func(w *xdrWriter) {
		w.opaque(h)
		for range 3 {
			w.bool(false)
		}
		w.bool(true)
		w.u64(size)
		w.u32(0)
		w.u32(0)
		w.bool(false) // no guard
	}))
	return st
}

func (c *rpcClient) removeName(t *testing.T, proc uint32, dir []byte, name string) uint32 {
	t.Helper()
	st, _ := c.nfs(t, proc, args(func(w *xdrWriter) { w.opaque(dir); w.string(name) }))
	return st
}

// TestStableWrites checks that COMMIT and FILE_SYNC/DATA_SYNC writes reach
// File.Sync before the reply, and UNSTABLE ones do not claim to be stable.
func TestStableWrites(t *testing.T) {
	tree := newMemTree()
	addr, _ := startServer(t, tree)
	c := dialRPC(t, addr)
	root := c.mountRoot(t)
	fh, st := c.create(t, root, "d.raw", createGuarded, 0)
	if st != nfsOK {
		t.Fatalf("create: %d", st)
	}
	steps := []struct {
		name          string
		do            func() (uint32, uint32)
		wantCommitted uint32
		wantSyncs     int64
	}{
		{"unstable", func() (uint32, uint32) { return c.write(t, fh, 0, []byte("abc"), unstable) }, unstable, 0},
		{"commit", func() (uint32, uint32) { return c.commit(t, fh), 0 }, 0, 1},
		{"commit with nothing dirty", func() (uint32, uint32) { return c.commit(t, fh), 0 }, 0, 2},
		{"data sync", func() (uint32, uint32) { return c.write(t, fh, 3, []byte("d"), 1) }, fileSync, 3},
		{"file sync", func() (uint32, uint32) { return c.write(t, fh, 4, []byte("e"), fileSync) }, fileSync, 4},
	}
	for _, s := range steps {
		st, committed := s.do()
		if st != nfsOK || committed != s.wantCommitted {
			t.Fatalf("%s: status %d committed %d, want ok/%d", s.name, st, committed, s.wantCommitted)
		}
		if got := tree.syncs.Load(); got != s.wantSyncs {
			t.Fatalf("%s: %d Syncs, want %d", s.name, got, s.wantSyncs)
		}
	}
}

// TestEvictionSyncs fills the open-file cache past its size with UNSTABLE
// writes: a file closed to make room must be synced first, so a later
// COMMIT (which then finds nothing open) is still truthful.
func TestEvictionSyncs(t *testing.T) {
	tree := newMemTree()
	srv := NewServer(tree, Options{})
	defer srv.Close()
	ctx := context.Background()
	n := maxOpenFiles + 10
	for i := range n {
		p := fmt.Sprintf("f%d.raw", i)
		a, err := tree.Create(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		of, err := srv.files.get(ctx, a, p, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := of.f.WriteAt(ctx, []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		srv.files.markDirty(of)
		srv.files.put(a.Ino, of)
	}
	if got := tree.syncs.Load(); got < int64(n-maxOpenFiles) {
		t.Fatalf("%d files evicted with %d Syncs", n-maxOpenFiles, got)
	}
	if len(srv.files.files) > maxOpenFiles {
		t.Fatalf("%d files open, max %d", len(srv.files.files), maxOpenFiles)
	}
	before := tree.syncs.Load()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tree.syncs.Load() - before; got != int64(maxOpenFiles) {
		t.Fatalf("Close synced %d dirty files, want %d", got, maxOpenFiles)
	}
}

// TestHandlesSurviveRestart takes handles from one server and uses them on
// a new server over the same tree, which has never seen them.
func TestHandlesSurviveRestart(t *testing.T) {
	tree := newMemTree()
	tree.put("a.raw", []byte("hello"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr, srv := serveOn(t, tree, ln)
	c := dialRPC(t, addr)
	root := c.mountRoot(t)
	fh, _ := c.lookup(t, root, "a.raw")
	if st, _ := c.write(t, fh, 0, []byte("HE"), unstable); st != nfsOK {
		t.Fatalf("write: %d", st)
	}
	srv.Close()
	if got := tree.syncs.Load(); got != 1 {
		t.Fatalf("Close did not sync the UNSTABLE write (%d Syncs)", got)
	}

	addr2, _ := startServer(t, tree)
	c2 := dialRPC(t, addr2)
	got, st := c2.read(t, fh, 0, 100)
	if st != nfsOK || string(got) != "HEllo" {
		t.Fatalf("old handle on the new server: %q status %d", got, st)
	}
	if _, st := c2.lookup(t, root, "a.raw"); st != nfsOK {
		t.Fatalf("old root handle on the new server: %d", st)
	}
}

// TestReaddirCookies lists a directory of many entries in small replies
// and checks that every entry comes exactly once, also when entries are
// added and removed between the calls.
func TestReaddirCookies(t *testing.T) {
	for _, plus := range []bool{false, true} {
		t.Run(fmt.Sprintf("plus=%v", plus), func(t *testing.T) {
			tree := newMemTree()
			want := map[string]bool{".snapshots": true}
			for i := range 1000 {
				name := fmt.Sprintf("vd%04d.raw", i)
				tree.put(name, nil)
				want[name] = true
			}
			addr, _ := startServer(t, tree)
			c := dialRPC(t, addr)
			root := c.mountRoot(t)
			seen := map[string]int{}
			cookie := uint64(0)
			calls := 0
			for eof := false; !eof; calls++ {
				if calls == 3 {
					// Changes behind the cursor and ahead of it.
					tree.Remove(context.Background(), "vd0000.raw")
					delete(want, "vd0000.raw")
					tree.put("zz.raw", nil)
					want["zz.raw"] = true
				}
				proc := uint32(procReaddir)
				a := args(func(w *xdrWriter) {
					w.opaque(root)
					w.u64(cookie)
					w.fixed(make([]byte, 8))
					if plus {
						w.u32(1024)
					}
					w.u32(4096)
				})
				if plus {
					proc = procReaddirplus
				}
				st, r := c.nfs(t, proc, a)
				if st != nfsOK {
					t.Fatalf("call %d: status %d", calls, st)
				}
				if r.bool() {
					r.fixed(fattrSize)
				}
				r.fixed(8)
				for r.bool() {
					r.u64()
					name := r.string(255)
					cookie = r.u64()
					seen[name]++
					if plus {
						if !r.bool() {
							t.Fatalf("%s: no attributes", name)
						}
						r.fixed(fattrSize)
						if !r.bool() {
							t.Fatalf("%s: no handle", name)
						}
						r.opaque(64)
					}
				}
				eof = r.bool()
				if r.err != nil {
					t.Fatal(r.err)
				}
			}
			if calls < 10 {
				t.Fatalf("%d calls: the replies were not split", calls)
			}
			for name := range want {
				if seen[name] != 1 && name != "vd0000.raw" {
					t.Errorf("%s seen %d times", name, seen[name])
				}
			}
			for name, n := range seen {
				if !want[name] && name != "vd0000.raw" || n != 1 {
					t.Errorf("unexpected %s (%d times)", name, n)
				}
			}
		})
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		err  error
		want uint32
	}{
		{nil, nfsOK},
		{fmt.Errorf("x: %w", fs.ErrNotExist), nfsErrNoEnt},
		{fmt.Errorf("x: %w", fs.ErrExist), nfsErrExist},
		{fmt.Errorf("x: %w", fs.ErrPermission), nfsErrAcces},
		{fmt.Errorf("x: %w", fs.ErrInvalid), nfsErrInval},
		{fmt.Errorf("x: %w", syscall.ENOTEMPTY), nfsErrNotEmpty},
		{fmt.Errorf("x: %w", syscall.EBUSY), nfsErrAcces},
		{fmt.Errorf("x: %w", syscall.EROFS), nfsErrROFS},
		{fmt.Errorf("x: %w", syscall.EISDIR), nfsErrIsDir},
		{fmt.Errorf("x: %w", syscall.ENOTDIR), nfsErrNotDir},
		{fmt.Errorf("x: %w", syscall.ENOSPC), nfsErrNoSpc},
		{fmt.Errorf("x: %w", syscall.EFBIG), nfsErrFBig},
		{fmt.Errorf("x: %w", syscall.EIO), nfsErrIO},
		{fmt.Errorf("x: %w", syscall.EPERM), nfsErrPerm},
		{fmt.Errorf("x: %w", syscall.EACCES), nfsErrAcces},
		{fmt.Errorf("x: %w", syscall.ENOEXEC), nfsErrIO},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), nfsErrJukebox},
		{fmt.Errorf("something else"), nfsErrIO},
		{errStale, nfsErrStale},
		{errBadHandle, nfsErrBadHandle},
	}
	for _, tc := range tests {
		if got := status(tc.err); got != tc.want {
			t.Errorf("status(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
