package tests

import (
	"bytes"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// nfsAddr picks a random 127/8 address whose port 111 is free: qemu's
// nfs:// driver takes no port and asks the portmapper on 111, which the
// NFS export answers itself. Binding 111 needs root.
func nfsAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		addr := fmt.Sprintf("127.%d.%d.%d:111", 100+mrand.IntN(100), mrand.IntN(256), 1+mrand.IntN(254))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return addr
		}
		if strings.Contains(err.Error(), "permission denied") {
			t.Skipf("qemu's nfs:// needs the export on port 111: %v", err)
		}
	}
	t.Skip("no 127/8 address with port 111 free")
	return ""
}

// needNFSFlag skips until `ovs up` has both the file frontend (--mount,
// whose tree the export serves) and --nfs.
func needNFSFlag(t *testing.T) {
	t.Helper()
	out, _ := exec.Command(ovsBin, "up", "--help").CombinedOutput()
	for _, flag := range []string{"--nfs", "--mount"} {
		if !bytes.Contains(out, []byte(flag)) {
			t.Skipf("ovs up has no %s flag yet (the NFS export needs the file frontend's tree)", flag)
		}
	}
}

// TestNFSExport drives `ovs up --nfs` with qemu-img and libnfs-utils: a
// qcow2 converted onto the export and compared back, nfs-cp both ways,
// nfs-ls, and files created over NFS showing up as vdisks.
func TestNFSExport(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "nfs-ls", "nfs-cp", "nfs-cat")
	needNFSFlag(t)
	addr := nfsAddr(t)
	host, _, _ := net.SplitHostPort(addr)
	c := startClusterWith(t, "--nfs", addr)
	dir := t.TempDir()
	// The /vpool alias of the export: libnfs mounts a URL's directory
	// part, and for nfs://host/FILE that is "", which it refuses.
	url := func(p string) string { return "nfs://" + host + "/vpool/" + p }
	libnfs := func(p string) string { return url(p) + "?version=3&nfsport=111&mountport=111" }

	// qemu-img convert of a qcow2 with data here and there onto a new
	// vdisk file, then compare.
	src := filepath.Join(dir, "src.qcow2")
	mustRun(t, time.Minute, "qemu-img", "create", "-f", "qcow2", src, "64M")
	mustRun(t, time.Minute, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 3M",
		"-c", "write -P 0x5c 40M 1M", "-c", "write -P 0x11 63M 4k", src)
	mustRun(t, 5*time.Minute, "qemu-img", "convert", "-O", "raw", src, url("vm1.raw"))
	mustRun(t, 5*time.Minute, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, url("vm1.raw"))

	// nfs-cp up and back, with an unaligned tail.
	data := make([]byte, 5<<20+3)
	rand.Read(data)
	local := filepath.Join(dir, "up.raw")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 5*time.Minute, "nfs-cp", local, libnfs("cp1.raw"))
	back := filepath.Join(dir, "back.raw")
	mustRun(t, 5*time.Minute, "nfs-cp", libnfs("cp1.raw"), back)
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("nfs-cp round trip: %d bytes (%v), want %d equal", len(got), err, len(data))
	}
	ls := mustRun(t, time.Minute, "nfs-ls", libnfs(""))
	for _, want := range []string{"vm1.raw", "cp1.raw", ".snapshots"} {
		if !strings.Contains(ls, want) {
			t.Errorf("nfs-ls lacks %s:\n%s", want, ls)
		}
	}

	// Both files are vdisks now, with the sizes written.
	sizes := c.sizes()
	if sizes["vm1"] != 64<<20 {
		t.Errorf("ovs vdisk list: vm1 has size %d, want 64 MiB (%v)", sizes["vm1"], sizes)
	}
	if sizes["cp1"] < int64(len(data)) {
		t.Errorf("ovs vdisk list: cp1 has size %d, want at least %d (%v)", sizes["cp1"], len(data), sizes)
	}
}
