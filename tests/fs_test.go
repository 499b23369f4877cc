package tests

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startMounted runs `ovs up --mount DIR` and returns the cluster and DIR.
// A mount left behind by a failed test is detached at the end.
func startMounted(t *testing.T) (*cluster, string) {
	t.Helper()
	needTools(t, "fusermount3")
	mnt := filepath.Join(t.TempDir(), "vpool")
	t.Cleanup(func() { exec.Command("fusermount3", "-u", "-z", mnt).Run() })
	return startClusterWith(t, "--mount", mnt), mnt
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFSVDiskFiles: each vdisk is NAME.raw; creating, growing, renaming
// and deleting files changes the vdisks; snapshots read back what the
// vdisk held; small files are kept; fio with O_DIRECT and qemu-img work on
// the files.
func TestFSVDiskFiles(t *testing.T) {
	needTools(t, "qemu-img")
	needFio(t)
	c, mnt := startMounted(t)
	c.create("pre", "4MiB")
	if fi, err := os.Stat(filepath.Join(mnt, "pre.raw")); err != nil || fi.Size() != 4<<20 {
		t.Fatalf("a vdisk made with the CLI: %v %v", fi, err)
	}

	// Create, write unaligned, grow, rename: all show in ovs vdisk list.
	a := filepath.Join(mnt, "a.raw")
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096*3+7)
	writeFile(t, a, data)
	if fi, err := os.Stat(a); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("size after writing %d bytes: %v %v", len(data), fi, err)
	}
	if _, ok := c.sizes()["a"]; !ok {
		t.Fatalf("a.raw is not a vdisk: %v", c.sizes())
	}
	if err := os.Truncate(a, 200<<20); err != nil {
		t.Fatal(err)
	}
	if got := c.sizes()["a"]; got < 200<<20 {
		t.Fatalf("vdisk size after truncate to 200 MiB: %d", got)
	}
	if err := os.Truncate(a, 10); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("shrink: %v, want EINVAL", err)
	}
	if err := os.Rename(a, filepath.Join(mnt, "b.raw")); err != nil {
		t.Fatal(err)
	}
	sizes := c.sizes()
	if _, ok := sizes["a"]; ok {
		t.Fatalf("renamed vdisk still listed as a: %v", sizes)
	}
	if _, ok := sizes["b"]; !ok {
		t.Fatalf("renamed vdisk not listed as b: %v", sizes)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "b.raw"))
	if err != nil || !bytes.Equal(got[:len(data)], data) || len(got) != 200<<20 {
		t.Fatalf("b.raw after rename: %d bytes, %v", len(got), err)
	}
	c.ovsOK("vdisk", "rename", "b", "a")
	if _, err := os.Stat(a); err != nil {
		t.Fatalf("after ovs vdisk rename back: %v", err)
	}

	// fio with O_DIRECT and crc32c verify on the file.
	runFio(t, "--name=fs", "--filename="+a, "--ioengine=psync", "--direct=1", "--rw=randwrite",
		"--bs=4k", "--size=32m", "--verify=crc32c", "--verify_fatal=1", "--numjobs=1")

	// qemu-img convert into the mount and compare through it.
	src := filepath.Join(t.TempDir(), "src.raw")
	writeFile(t, src, bytes.Repeat([]byte("qemu-img"), 3<<17))
	dst := filepath.Join(mnt, "q.raw")
	if out, err := run(t, time.Minute, "", "qemu-img", "convert", "-f", "raw", "-O", "raw", "-t", "none", src, dst); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	if out, err := run(t, time.Minute, "", "qemu-img", "compare", "-f", "raw", "-F", "raw", src, dst); err != nil {
		t.Fatalf("qemu-img compare: %v\n%s", err, out)
	}
	if _, ok := c.sizes()["q"]; !ok {
		t.Fatal("qemu-img's file is not a vdisk")
	}

	// Snapshots read back the vdisk as it was.
	c.ovsOK("vdisk", "snapshot", "create", "q", "s1")
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte("new!"), 1<<16), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	snap, err := os.ReadFile(filepath.Join(mnt, ".snapshots", "q", "s1.raw"))
	orig, _ := os.ReadFile(src)
	if err != nil || !bytes.Equal(snap, orig) {
		out, _ := exec.Command("ls", "-laR", filepath.Join(mnt, ".snapshots")).CombinedOutput()
		t.Logf("%s", out)
		t.Fatalf("the snapshot file does not read back the snapshot: %d bytes, %v", len(snap), err)
	}
	if err := os.WriteFile(filepath.Join(mnt, ".snapshots", "q", "s1.raw"), []byte("x"), 0); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) {
		t.Fatalf("write to a snapshot: %v", err)
	}

	// A vdisk with a clone is not removed, and loses nothing.
	c.ovsOK("vdisk", "clone", "q-clone", "--from", "q@s1")
	if err := os.Remove(dst); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("rm of a vdisk with a clone: %v, want EBUSY", err)
	}
	if now, err := os.ReadFile(dst); err != nil || !bytes.Equal(now[:4], []byte("new!")) || len(now) != len(orig) {
		t.Fatalf("after a refused rm: %d bytes, %v", len(now), err)
	}
	c.ovsOK("vdisk", "delete", "q-clone")
	if err := os.Remove(dst); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.sizes()["q"]; ok {
		t.Fatal("rm did not delete the vdisk")
	}

	// Small files and directories, beside the vdisks.
	if err := os.MkdirAll(filepath.Join(mnt, "vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := []byte("<domain><name>vm1</name></domain>\n")
	writeFile(t, filepath.Join(mnt, "vm1", "vm1.xml"), cfg)
	if err := os.WriteFile(filepath.Join(mnt, "vm1", "big"), make([]byte, 2<<20), 0o644); !errors.Is(err, syscall.EFBIG) {
		t.Fatalf("a 2 MiB small file: %v, want EFBIG", err)
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != ".snapshots a.raw pre.raw vm1" {
		t.Fatalf("root lists %v", names)
	}
	// They are in the cluster's store: a restart keeps them, and the
	// vdisk files keep their exact sizes.
	c.stop()
	c.start()
	if got, err := os.ReadFile(filepath.Join(mnt, "vm1", "vm1.xml")); err != nil || !bytes.Equal(got, cfg) {
		t.Fatalf("small file after restart: %q %v", got, err)
	}
	if fi, err := os.Stat(a); err != nil || fi.Size() != 200<<20 {
		t.Fatalf("a.raw after restart: %v %v", fi, err)
	}
}
