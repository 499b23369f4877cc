package nfs

import (
	"bytes"
	"context"
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

// Real clients: libnfs-utils (nfs-ls, nfs-cp, nfs-cat) and qemu-img's
// nfs:// driver (qemu-block-extra), none of them written here.

func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs libnfs-utils, qemu-utils, qemu-block-extra)", n)
		}
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// libnfsURL names path on a server at addr for libnfs: libnfs takes the
// ports as URL parameters, and so skips the portmapper. The path goes
// through the /vpool alias of the export: libnfs mounts the directory part
// of the URL, and for nfs://host/FILE that is "", which it refuses.
func libnfsURL(addr, path string) string {
	_, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("nfs://127.0.0.1/vpool/%s?version=3&nfsport=%s&mountport=%s", path, port, port)
}

func TestLibnfsClients(t *testing.T) {
	needTool(t, "nfs-ls", "nfs-cp", "nfs-cat")
	tree := newMemTree()
	tree.put("small.txt", []byte("hello over nfs\n"))
	tree.addSnapshot("disk", "s1", []byte("snap"))
	addr, _ := startServer(t, tree)
	dir := t.TempDir()

	// nfs-cp to the server: a 9 MiB + 5 B vdisk, so several WRITEs and
	// an unaligned tail.
	src := make([]byte, 9<<20+5)
	rand.Read(src)
	local := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(local, src, 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, "nfs-cp", local, libnfsURL(addr, "disk.raw"))
	if got := tree.data("disk.raw"); !bytes.Equal(got, src) {
		t.Fatalf("nfs-cp to the server: %d bytes stored, want %d equal", len(got), len(src))
	}
	t.Logf("nfs-cp upload: %d Syncs", tree.syncs.Load())

	// nfs-ls shows the vdisk with its size and the .snapshots directory.
	ls := runTool(t, "nfs-ls", libnfsURL(addr, ""))
	for _, want := range []string{"disk.raw", "small.txt", ".snapshots", fmt.Sprint(len(src))} {
		if !strings.Contains(ls, want) {
			t.Errorf("nfs-ls lacks %q:\n%s", want, ls)
		}
	}
	lsr := runTool(t, "nfs-ls", "-R", libnfsURL(addr, ""))
	if !strings.Contains(lsr, "s1.raw") {
		t.Errorf("nfs-ls -R lacks the snapshot:\n%s", lsr)
	}

	// nfs-cp back and nfs-cat.
	back := filepath.Join(dir, "back.raw")
	runTool(t, "nfs-cp", libnfsURL(addr, "disk.raw"), back)
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, src) {
		t.Fatalf("nfs-cp from the server: %d bytes (%v), want %d equal", len(got), err, len(src))
	}
	if got := runTool(t, "nfs-cat", libnfsURL(addr, "small.txt")); got != "hello over nfs\n" {
		t.Fatalf("nfs-cat: %q", got)
	}
	if got := runTool(t, "nfs-cat", libnfsURL(addr, ".snapshots/disk/s1.raw")); got != "snap" {
		t.Fatalf("nfs-cat of a snapshot: %q", got)
	}
}

// qemuAddr listens on port 111 of a random 127/8 address: qemu's nfs://
// driver takes no port and asks the portmapper there, which this server
// answers itself. Binding 111 needs root; the address keeps parallel tests
// and any system rpcbind out of the way.
func qemuListener(t *testing.T) net.Listener {
	t.Helper()
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 100+mrand.IntN(100), mrand.IntN(256), 1+mrand.IntN(254))
		ln, err := net.Listen("tcp", ip+":111")
		if err == nil {
			return ln
		}
		if strings.Contains(err.Error(), "permission denied") {
			t.Skipf("qemu's nfs:// needs the server on port 111: %v", err)
		}
	}
	t.Skip("no free 127/8 address with port 111")
	return nil
}

func TestQemuImg(t *testing.T) {
	needTool(t, "qemu-img")
	if out, err := exec.Command("qemu-img", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), " nfs ") {
		t.Skip("qemu-img has no nfs driver (qemu-block-extra)")
	}
	tree := newMemTree()
	ln := qemuListener(t)
	addr, _ := serveOn(t, tree, ln)
	host, _, _ := net.SplitHostPort(addr)
	dir := t.TempDir()

	// A qcow2 with data in a few places, converted to a raw vdisk on
	// the export and compared back.
	src := filepath.Join(dir, "src.qcow2")
	runTool(t, "qemu-img", "create", "-f", "qcow2", src, "64M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 3M", "-c", "write -P 0x5c 40M 1M", "-c", "write -P 0x11 63M 4k", src)
	url := "nfs://" + host + "/vpool/vm1.raw"
	runTool(t, "qemu-img", "convert", "-p", "-O", "raw", src, url)
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, url)
	if n := len(tree.data("vm1.raw")); n != 64<<20 {
		t.Fatalf("vm1.raw is %d bytes, want 64 MiB", n)
	}
	if tree.syncs.Load() == 0 {
		t.Error("qemu-img convert's flush did not reach Sync")
	}
	info := runTool(t, "qemu-img", "info", url)
	if !strings.Contains(info, "virtual size: 64 MiB") {
		t.Errorf("qemu-img info:\n%s", info)
	}
	// A file in a directory below the export, and a refusal under the
	// read-only .snapshots.
	if _, err := tree.Mkdir(context.Background(), "vms"); err != nil {
		t.Fatal(err)
	}
	runTool(t, "qemu-img", "convert", "-O", "raw", src, "nfs://"+host+"/vpool/vms/x.img")
	if n := len(tree.data("vms/x.img")); n != 64<<20 {
		t.Fatalf("vms/x.img is %d bytes", n)
	}
	out, err := exec.Command("qemu-img", "convert", "-O", "raw", src, "nfs://"+host+"/vpool/.snapshots/x.raw").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "NFS3ERR_ROFS") {
		t.Fatalf("qemu-img convert into .snapshots: %v\n%s", err, out)
	}
}
