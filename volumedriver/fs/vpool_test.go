package fs

import (
	"bytes"
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"syscall"
	"testing"
)

func newTestTree() (*VPool, *fakeVDisks, *fakeStore) {
	vd, st := newFakeVDisks(), newFakeStore()
	return NewVPool(vd, st, Options{GrowStep: 1 << 20, MaxSmallFile: 4096, MaxSmallTotal: 8000}), vd, st
}

// must fails the test (by a panic, which the test runner reports) on err.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestVDiskFileSizeAndGrowth(t *testing.T) {
	ctx := context.Background()
	tr, vd, _ := newTestTree()
	a := must(tr.Create(ctx, "/a.raw"))
	if a.Kind != KindVDisk || a.Size != 0 || a.Ino>>tagShift != tagVDisk {
		t.Fatalf("created %+v", a)
	}
	f := must(tr.Open(ctx, "a.raw", true))
	// Unaligned writes past the end: the file is exactly what was
	// written, the vdisk grows in steps.
	steps := []struct {
		off   int64
		n     int
		size  int64
		vdisk int64
	}{
		{0, 1000, 1000, 1 << 20},
		{5000, 10, 5010, 1 << 20},
		{(1 << 20) - 3, 7, (1 << 20) + 4, 2 << 20},
		{100, 10, (1 << 20) + 4, 2 << 20},
	}
	for _, s := range steps {
		p := bytes.Repeat([]byte{byte(s.n)}, s.n)
		if n, err := f.WriteAt(ctx, p, s.off); err != nil || n != s.n {
			t.Fatalf("write %d at %d: %d %v", s.n, s.off, n, err)
		}
		if f.Size() != s.size {
			t.Fatalf("after write at %d: size %d want %d", s.off, f.Size(), s.size)
		}
		if got := must(tr.Stat(ctx, "a.raw")).Size; got != s.size {
			t.Fatalf("stat while open: %d want %d", got, s.size)
		}
		if got := int64(len(vd.disks["a"].data)); got != s.vdisk {
			t.Fatalf("vdisk size %d want %d", got, s.vdisk)
		}
	}
	// Reads stop at the end of the file.
	buf := make([]byte, 100)
	n, err := f.ReadAt(ctx, buf, (1<<20)-50)
	if n != 54 || !errors.Is(err, io.EOF) {
		t.Fatalf("read at the end: %d %v", n, err)
	}
	if _, err := f.ReadAt(ctx, buf, 1<<21); !errors.Is(err, io.EOF) {
		t.Fatalf("read past the end: %v", err)
	}
	noErr(t, f.Sync(ctx))
	if vd.disks["a"].flushes != 1 {
		t.Fatalf("sync did not flush")
	}
	noErr(t, f.Close())
	// A new tree (another node, or after a restart) sees the same size
	// and inode number.
	tr2 := NewVPool(vd, tr.st, tr.opts)
	b := must(tr2.Stat(ctx, "a.raw"))
	if b.Size != (1<<20)+4 || b.Ino != a.Ino {
		t.Fatalf("from another tree: %+v, want size %d ino %d", b, (1<<20)+4, a.Ino)
	}
	// Truncate grows (thin, zeros), never shrinks.
	noErr(t, tr2.Truncate(ctx, "a.raw", 3<<20+1))
	if got := must(tr.Stat(ctx, "a.raw")).Size; got != 3<<20+1 {
		t.Fatalf("after truncate: %d", got)
	}
	if err := tr.Truncate(ctx, "a.raw", 10); !errors.Is(err, iofs.ErrInvalid) {
		t.Fatalf("shrink: %v", err)
	}
	// A vdisk grown outside the file frontend is the whole vdisk again.
	vd.Resize(ctx, "a", 8<<20)
	if got := must(tr.Stat(ctx, "a.raw")).Size; got != 8<<20 {
		t.Fatalf("after an outside resize: %d", got)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	tr, vd, _ := newTestTree()
	must(tr.Create(ctx, "a.raw"))
	must(tr.Create(ctx, "b.raw"))
	must(tr.Mkdir(ctx, "d"))
	must(tr.Create(ctx, "d/x"))
	vd.disks["b"].clones = 1
	vd.snapshot("a", "s1")
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"create existing vdisk", second(tr.Create(ctx, "a.raw")), iofs.ErrExist},
		{"create bad vdisk name", second(tr.Create(ctx, "-x.raw")), iofs.ErrInvalid},
		{"create existing small", second(tr.Create(ctx, "d/x")), iofs.ErrExist},
		{"create in missing dir", second(tr.Create(ctx, "nope/x")), iofs.ErrNotExist},
		{"create under a file", second(tr.Create(ctx, "d/x/y")), syscall.ENOTDIR},
		{"create in .snapshots", second(tr.Create(ctx, ".snapshots/x")), syscall.EROFS},
		{"mkdir NAME.raw", second(tr.Mkdir(ctx, "c.raw")), iofs.ErrInvalid},
		{"stat missing vdisk", second(tr.Stat(ctx, "zz.raw")), iofs.ErrNotExist},
		{"stat missing snapshot", second(tr.Stat(ctx, ".snapshots/a/nope.raw")), iofs.ErrNotExist},
		{"path with ..", second(tr.Stat(ctx, "d/../a.raw")), iofs.ErrInvalid},
		{"open snapshot writable", second(tr.Open(ctx, ".snapshots/a/s1.raw", true)), syscall.EROFS},
		{"open dir", second(tr.Open(ctx, "d", false)), syscall.EISDIR},
		{"remove vdisk with clones", tr.Remove(ctx, "b.raw"), syscall.EBUSY},
		{"remove non-empty dir", tr.Remove(ctx, "d"), syscall.ENOTEMPTY},
		{"remove snapshot", tr.Remove(ctx, ".snapshots/a/s1.raw"), syscall.EROFS},
		{"rename onto a vdisk", tr.Rename(ctx, "a.raw", "b.raw"), iofs.ErrExist},
		{"rename vdisk to small", tr.Rename(ctx, "a.raw", "d/a.raw"), syscall.EXDEV},
		{"rename small to vdisk", tr.Rename(ctx, "d/x", "x.raw"), syscall.EXDEV},
		{"rename dir into itself", tr.Rename(ctx, "d", "d/e"), iofs.ErrInvalid},
		{"truncate snapshot", tr.Truncate(ctx, ".snapshots/a/s1.raw", 0), syscall.EROFS},
		{"small file too big", tr.Truncate(ctx, "d/x", 5000), syscall.EFBIG},
		{"readdir of a file", second(tr.ReadDir(ctx, "d/x")), syscall.ENOTDIR},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	// Nothing was lost on the way.
	if vd.disks["b"] == nil || vd.disks["a"] == nil {
		t.Fatal("a refused change removed a vdisk")
	}
}

func second[T any](_ T, err error) error { return err }

func TestSnapshotsAndRename(t *testing.T) {
	ctx := context.Background()
	tr, vd, _ := newTestTree()
	must(tr.Create(ctx, "a.raw"))
	f := must(tr.Open(ctx, "a.raw", true))
	old := bytes.Repeat([]byte("old!"), 1000)
	must(f.WriteAt(ctx, old, 0))
	noErr(t, f.Sync(ctx))
	vd.snapshot("a", "s1")
	must(f.WriteAt(ctx, bytes.Repeat([]byte("new!"), 1000), 0))
	dir := must(tr.ReadDir(ctx, ".snapshots/a"))
	if len(dir) != 1 || dir[0].Name != "s1.raw" || dir[0].Size != int64(len(old)) || !dir[0].ReadOnly {
		t.Fatalf(".snapshots/a: %+v", dir)
	}
	sf := must(tr.Open(ctx, ".snapshots/a/s1.raw", false))
	got := make([]byte, len(old))
	if n, err := sf.ReadAt(ctx, got, 0); n != len(old) || err != nil || !bytes.Equal(got, old) {
		t.Fatalf("snapshot read: %d %v", n, err)
	}
	if _, err := sf.WriteAt(ctx, got, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("snapshot write: %v", err)
	}
	sf.Close()
	// An open file follows its vdisk's rename.
	ino := must(tr.Stat(ctx, "a.raw")).Ino
	noErr(t, tr.Rename(ctx, "a.raw", "c.raw"))
	if _, err := tr.Stat(ctx, "a.raw"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("old name after rename: %v", err)
	}
	if c := must(tr.Stat(ctx, "c.raw")); c.Ino != ino {
		t.Fatalf("inode changed by rename: %d -> %d", ino, c.Ino)
	}
	must(f.WriteAt(ctx, []byte("after"), 0))
	if !bytes.HasPrefix(vd.disks["c"].data, []byte("after")) {
		t.Fatal("a write after the rename went nowhere")
	}
	f.Close()
	for _, tc := range []struct {
		ino  uint64
		want string
	}{
		{inoRoot, ""},
		{inoSnapshots, ".snapshots"},
		{ino, "c.raw"},
		{must(tr.Stat(ctx, ".snapshots/c")).Ino, ".snapshots/c"},
		{must(tr.Stat(ctx, ".snapshots/c/s1.raw")).Ino, ".snapshots/c/s1.raw"},
	} {
		if p, err := tr.Resolve(ctx, tc.ino); err != nil || p != tc.want {
			t.Errorf("resolve %d: %q %v, want %q", tc.ino, p, err, tc.want)
		}
	}
	if _, err := tr.Resolve(ctx, tagVDisk<<tagShift|12345); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("resolve unknown: %v", err)
	}
	noErr(t, tr.Remove(ctx, "c.raw"))
	if len(vd.disks) != 0 {
		t.Fatal("remove left the vdisk")
	}
}

func TestSmallFiles(t *testing.T) {
	ctx := context.Background()
	tr, _, _ := newTestTree()
	must(tr.Mkdir(ctx, "vm"))
	a := must(tr.Create(ctx, "vm/vm.xml"))
	f := must(tr.Open(ctx, "vm/vm.xml", true))
	must(f.WriteAt(ctx, []byte("hello"), 0))
	must(f.WriteAt(ctx, []byte("world"), 10))
	want := []byte("hello\x00\x00\x00\x00\x00world")
	got := make([]byte, 100)
	n, err := f.ReadAt(ctx, got, 0)
	if !errors.Is(err, io.EOF) || !bytes.Equal(got[:n], want) {
		t.Fatalf("read %q %v", got[:n], err)
	}
	if _, err := f.WriteAt(ctx, make([]byte, 10), 4090); !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("past the file limit: %v", err)
	}
	// The total limit: 8000 bytes in all.
	for i, name := range []string{"vm/b", "vm/c"} {
		must(tr.Create(ctx, name))
		g := must(tr.Open(ctx, name, true))
		_, err := g.WriteAt(ctx, make([]byte, 4096), 0)
		if i == 1 && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("past the total limit: %v", err)
		}
	}
	// Rename replaces a file atomically and frees what it held.
	noErr(t, tr.Rename(ctx, "vm/vm.xml", "vm/b"))
	if s := must(tr.Stat(ctx, "vm/b")); s.Ino != a.Ino || s.Size != int64(len(want)) {
		t.Fatalf("after rename: %+v", s)
	}
	if p, err := tr.Resolve(ctx, a.Ino); p != "vm/b" || err != nil {
		t.Fatalf("resolve after rename: %q %v", p, err)
	}
	g := must(tr.Open(ctx, "vm/c", true))
	must(g.WriteAt(ctx, make([]byte, 4000), 0))
	noErr(t, tr.Truncate(ctx, "vm/b", 3))
	n, _ = f.ReadAt(ctx, got, 0)
	if string(got[:n]) != "hel" {
		t.Fatalf("after truncate: %q", got[:n])
	}
	root := must(tr.ReadDir(ctx, ""))
	if len(root) != 2 || root[0].Name != ".snapshots" || root[1].Name != "vm" || root[1].Kind != KindDir {
		t.Fatalf("root: %+v", root)
	}
	noErr(t, tr.Remove(ctx, "vm/b"))
	noErr(t, tr.Remove(ctx, "vm/c"))
	noErr(t, tr.Remove(ctx, "vm"))
	if _, err := f.ReadAt(ctx, got, 0); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("read of a removed file: %v", err)
	}
}

// TestGrowthSeenByAnotherNode: two trees over one cluster (two nodes). A
// file growing on one shows its new size on the other once the writer
// syncs, also where the other node has the file open (a reader, the NFS
// export's open-file cache); before the sync it shows the synced size.
func TestGrowthSeenByAnotherNode(t *testing.T) {
	ctx := context.Background()
	vd, st := newFakeVDisks(), newFakeStore()
	opts := Options{GrowStep: 1 << 20}
	a, b := NewVPool(vd, st, opts), NewVPool(vd, st, opts)
	must(a.Create(ctx, "g.raw"))
	w := must(a.Open(ctx, "g.raw", true))
	defer w.Close()
	part1 := bytes.Repeat([]byte{1}, 3000)
	part2 := bytes.Repeat([]byte{2}, 2<<20) // past a grow step
	must(w.WriteAt(ctx, part1, 0))
	noErr(t, w.Sync(ctx))
	r := must(b.Open(ctx, "g.raw", false))
	defer r.Close()
	buf := make([]byte, len(part1)+len(part2))
	if n, err := r.ReadAt(ctx, buf, 0); n != len(part1) || !errors.Is(err, io.EOF) {
		t.Fatalf("read on b before growth: %d %v", n, err)
	}
	must(w.WriteAt(ctx, part2, int64(len(part1))))
	// Before the writer's sync: b sees at most what the grow step
	// recorded, never more than the writer wrote.
	if got := must(b.Stat(ctx, "g.raw")).Size; got > int64(len(buf)) {
		t.Fatalf("size on b before the sync: %d", got)
	}
	noErr(t, w.Sync(ctx))
	for _, tc := range []struct {
		name string
		size func() int64
	}{
		{"Stat", func() int64 { return must(b.Stat(ctx, "g.raw")).Size }},
		{"ReadDir", func() int64 {
			for _, e := range must(b.ReadDir(ctx, "")) {
				if e.Name == "g.raw" {
					return e.Size
				}
			}
			return -1
		}},
	} {
		if got := tc.size(); got != int64(len(buf)) {
			t.Fatalf("%s on b after the sync: size %d, want %d", tc.name, got, len(buf))
		}
	}
	// A fresh handle and the one open since before the growth.
	r2 := must(b.Open(ctx, "g.raw", false))
	defer r2.Close()
	for i, h := range []File{r, r2} {
		got := make([]byte, len(buf)+10)
		n, err := h.ReadAt(ctx, got, 0)
		if n != len(buf) || !errors.Is(err, io.EOF) || !bytes.Equal(got[:n], append(append([]byte(nil), part1...), part2...)) {
			t.Fatalf("handle %d on b after the sync: %d bytes, %v", i, n, err)
		}
	}
}
