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

// TestFSExt4OnLoop: a vdisk file as a loop device holds an ext4 that fio
// fills and verifies, and e2fsck finds clean afterwards.
func TestFSExt4OnLoop(t *testing.T) {
	needTools(t, "losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
	needFio(t)
	c, mnt := startMounted(t)
	img := filepath.Join(mnt, "ext4.raw")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, time.Minute, "", "losetup", "--find", "--show", "--direct-io=on", img)
	if err != nil {
		t.Skipf("no loop device here: %v %s", err, out)
	}
	loop := strings.TrimSpace(out)
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	if out, err := run(t, 2*time.Minute, "", "mkfs.ext4", "-q", "-F", loop); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "ext4")
	os.MkdirAll(dir, 0o755)
	if out, err := run(t, time.Minute, "", "mount", loop, dir); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", "-l", dir).Run()
		}
	})
	runFio(t, "--name=ext4", "--directory="+dir, "--ioengine=psync", "--rw=randwrite", "--bs=4k",
		"--size=16m", "--nrfiles=4", "--numjobs=2", "--verify=crc32c", "--verify_fatal=1", "--fsync_on_close=1")
	if out, err := run(t, time.Minute, "", "umount", dir); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	mounted = false
	if out, err := run(t, 2*time.Minute, "", "e2fsck", "-fn", loop); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	if got := c.sizes()["ext4"]; got != 256<<20 {
		t.Fatalf("vdisk size %d, want 256 MiB", got)
	}
}

// TestFSKill9Fsync: ovs up dies (kill -9) while fio writes with an fsync
// after every write; after the restart (the stale mount cleaned up),
// everything fio saw fsynced reads back.
func TestFSKill9Fsync(t *testing.T) {
	c, mnt := startMounted(t)
	f := filepath.Join(mnt, "crash.raw")
	// A writer that records each block it saw fsynced: block i holds
	// its index, written sequentially past the end (so the file grows
	// and its size must survive too).
	const bs = 64 << 10
	fh, err := os.OpenFile(f, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	synced := 0
	block := func(i int) []byte {
		return bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xa5, 0x5a}, bs/4)
	}
	deadline := time.Now().Add(3 * time.Second)
	killed := make(chan struct{})
	go func() {
		time.Sleep(1500 * time.Millisecond)
		c.kill9()
		close(killed)
	}()
	for i := 0; time.Now().Before(deadline); i++ {
		if _, err := fh.WriteAt(block(i), int64(i)*bs); err != nil {
			break
		}
		if err := fh.Sync(); err != nil {
			break
		}
		synced = i + 1
	}
	<-killed
	fh.Close()
	if synced == 0 {
		t.Fatal("nothing was fsynced before the kill")
	}
	t.Logf("%d blocks of %d KiB fsynced before kill -9", synced, bs>>10)
	c.start()
	if !strings.Contains(c.logTail(1<<20), "a stale mount is in the way") {
		t.Error("the restart did not say it cleaned up the stale mount")
	}
	fi, err := os.Stat(f)
	if err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if fi.Size() < int64(synced)*bs {
		t.Fatalf("file is %d bytes after the restart; %d were fsynced", fi.Size(), int64(synced)*bs)
	}
	got, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < synced; i++ {
		if !bytes.Equal(got[i*bs:(i+1)*bs], block(i)) {
			t.Fatalf("block %d of %d fsynced ones is not what was written", i, synced)
		}
	}
}
