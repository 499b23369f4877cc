package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallFS makes an ext4 filesystem of size bytes in a file, mounts it on a
// loop device and returns the mount point; cleanup unmounts it. It needs
// root (mount) and e2fsprogs.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("OVS_REQUIRE_TOOLS") != "" {
			t.Fatal("this test mounts a loop-mounted ext4 and needs root")
		}
		t.Skip("needs root to mount a loop-mounted ext4")
	}
	needTools(t, "mkfs.ext4", "mount", "umount")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	mustRun(t, time.Minute, "truncate", "-s", size, img)
	// -m 0: no blocks reserved for root, which the test runs as; the
	// filesystem is full for ovs when it is full for everyone.
	mustRun(t, time.Minute, "mkfs.ext4", "-q", "-F", "-m", "0", img)
	mustRun(t, time.Minute, "mount", "-o", "loop", img, mnt)
	// Registered after TempDir's cleanup, so it runs before it.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s; lazy unmount", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt
}

// TestFullDisk fills the filesystem under DATA while a vdisk is written:
// the writes that do not fit fail with ENOSPC, the vdisk (and another one)
// stay ok and keep what was written, and once space is freed the same
// vdisk takes writes and snapshots again with no restart.
func TestFullDisk(t *testing.T) {
	needPython(t)
	mnt := smallFS(t, "320M")
	c := newCluster(t, filepath.Join(mnt, "data"))
	c.Flags = append(c.Flags, "--backend", "local", "--scrub-interval", "0")
	c.start()
	c.create("big", "1GiB")
	c.create("small", "64MiB")

	small := openNBD(t, c.UnixURI("small"))
	small.mustWrite(0, MiB, 0x5a)

	// Leave about 40 MiB: the write buffer and the local backend each
	// take a copy of what is written.
	filler := filepath.Join(mnt, "filler")
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	mustRun(t, time.Minute, "fallocate", "-l", strconv.FormatInt(free-40*MiB, 10), filler)

	big := openNBD(t, c.UnixURI("big"))
	var written int64
	var full error
	for written < 512*MiB {
		if err := big.write(written, MiB, 0xb1); err != nil {
			full = err
			break
		}
		written += MiB
	}
	if full == nil {
		t.Fatalf("wrote %d MiB to a filesystem with 40 MiB free and no error", written/MiB)
	}
	t.Logf("full after %d MiB: %v", written/MiB, full)
	if !strings.Contains(strings.ToLower(full.Error()), "space") {
		t.Errorf("a write to a full disk failed with %q, want ENOSPC (no space left on device)", full)
	}

	// Nothing failed for good: both vdisks are ok and serve what they
	// hold, and the other vdisk still reads.
	for _, name := range []string{"big", "small"} {
		if st := c.info(name).State; st != "ok" {
			t.Errorf("vdisk %s is %q while the disk is full, want ok", name, st)
		}
	}
	small.mustCheck(0, MiB, 0x5a)
	big.mustCheck(0, written, 0xb1)
	if r := c.cli("vdisk", "snapshot", "create", "big", "while-full"); r.Code == 0 {
		t.Logf("a snapshot while the disk is full worked (there was room for it)")
	}

	// Free the space: the same vdisk takes writes again, no restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for off := written; off < written+8*MiB; off += MiB {
		if err := big.write(off, MiB, 0xb2); err != nil {
			t.Fatalf("write after freeing space: %v", err)
		}
	}
	small.mustWrite(MiB, MiB, 0x5b)
	c.ovsOK("vdisk", "snapshot", "create", "big", "after-full")
	big.mustCheck(0, written, 0xb1)
	big.mustCheck(written, 8*MiB, 0xb2)
	for _, name := range []string{"big", "small"} {
		if st := c.info(name).State; st != "ok" {
			t.Errorf("vdisk %s is %q after space was freed, want ok", name, st)
		}
	}
	big.close()
	small.close()

	// And what it holds survives a restart.
	c.stop()
	c.start()
	big = openNBD(t, c.UnixURI("big"))
	big.mustCheck(0, written, 0xb1)
	big.mustCheck(written, 8*MiB, 0xb2)
	small = openNBD(t, c.UnixURI("small"))
	small.mustCheck(0, MiB, 0x5a)
	small.mustCheck(MiB, MiB, 0x5b)
}
