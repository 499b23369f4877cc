package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

const netNFSPort = 2049

// TestFSMultiNode: the file frontend on a cluster of three hosts, each
// with the vpool mounted, h2 also exporting it over NFS. What one node
// writes through its mount reads back byte-identical through another
// node's mount (I/O forwarded to the owner) and through NFS; renames and
// small files show everywhere; a file growing on one node shows its new
// size elsewhere once the writer fsyncs.
//
// The FUSE mounts live in the nodes' mount namespaces (ip netns exec
// unshares one), so the test reaches them through /proc/PID/root.
func TestFSMultiNode(t *testing.T) {
	needTools(t, "fusermount3", "nfs-cat")
	c := startNetClusterFor(t, func(h *netHost) string {
		extra := "mount: " + filepath.Join(h.Dir, "mnt") + "\n"
		if h.Name == "h2" {
			extra += "nfs: " + h.HostPort(netNFSPort) + "\n"
		}
		return extra
	})
	h1, h2, h3 := c.hosts.Hosts[0], c.hosts.Hosts[1], c.hosts.Hosts[2]
	mnt := func(h *netHost, name string) string {
		return filepath.Join(fmt.Sprintf("/proc/%d/root", c.nodes[h].Pid()), h.Dir, "mnt", name)
	}
	for _, h := range c.hosts.Hosts {
		waitFor(t, 30*time.Second, h.Name+"'s mount", func() bool {
			_, err := os.Stat(mnt(h, ".snapshots"))
			return err == nil
		})
	}
	nfsCat := func(name string) []byte {
		t.Helper()
		url := fmt.Sprintf("nfs://%s/vpool/%s?version=3&nfsport=%d&mountport=%d", h2.Addr, name, netNFSPort, netNFSPort)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "nfs-cat", url)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nfs-cat %s: %v\n%s", url, err, stderr.String())
		}
		return out
	}
	readOn := func(h *netHost, name string) []byte {
		t.Helper()
		b, err := os.ReadFile(mnt(h, name))
		if err != nil {
			t.Fatalf("read %s on %s: %v", name, h.Name, err)
		}
		return b
	}
	sizeOn := func(h *netHost, name string) int64 {
		t.Helper()
		fi, err := os.Stat(mnt(h, name))
		if err != nil {
			t.Fatalf("stat %s on %s: %v", name, h.Name, err)
		}
		return fi.Size()
	}

	// A vdisk file made and written on h1, read on h2 (mount and NFS)
	// and h3.
	data := make([]byte, 5<<20+3)
	rand.Read(data)
	f, err := os.Create(mnt(h1, "a.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if v := c.list(h3)["a"]; v.Owner != "h1" {
		t.Fatalf("a, made through h1's mount: %+v, want owner h1", v)
	}
	for _, h := range []*netHost{h2, h3} {
		if got := sizeOn(h, "a.raw"); got != int64(len(data)) {
			t.Fatalf("a.raw on %s: size %d, want %d", h.Name, got, len(data))
		}
		if !bytes.Equal(readOn(h, "a.raw"), data) {
			t.Fatalf("a.raw reads differently through %s's mount", h.Name)
		}
	}
	if !bytes.Equal(nfsCat("a.raw"), data) {
		t.Fatal("a.raw reads differently through NFS on h2")
	}

	// A rename on h2 shows on h1 (its entry cache holds a name for up
	// to a second).
	if err := os.Rename(mnt(h2, "a.raw"), mnt(h2, "b.raw")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the rename on h2 to show on h1", func() bool {
		_, errA := os.Stat(mnt(h1, "a.raw"))
		_, errB := os.Stat(mnt(h1, "b.raw"))
		return errors.Is(errA, fs.ErrNotExist) && errB == nil
	})
	if !bytes.Equal(readOn(h1, "b.raw"), data) || !bytes.Equal(nfsCat("b.raw"), data) {
		t.Fatal("b.raw reads other data after the rename")
	}

	// Small files (a VM's config) written on h1 are seen on h2.
	if err := os.Mkdir(mnt(h1, "vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := []byte("memory = 4096\ndisk = b.raw\n")
	if err := os.WriteFile(mnt(h1, "vm1/vm1.vmx"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "h1's small file on h2", func() bool {
		got, err := os.ReadFile(mnt(h2, "vm1/vm1.vmx"))
		return err == nil && bytes.Equal(got, cfg)
	})
	if !bytes.Equal(nfsCat("vm1/vm1.vmx"), cfg) {
		t.Fatal("the small file reads differently through NFS")
	}

	// A file growing on h1. h2 has it open (a reader on the mount, and
	// the NFS export's open-file cache) while it grows.
	part1, part2 := make([]byte, 1<<20), make([]byte, 1<<20+7)
	rand.Read(part1)
	rand.Read(part2)
	g, err := os.Create(mnt(h1, "g.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.Write(part1); err != nil {
		t.Fatal(err)
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := sizeOn(h2, "g.raw"); got != int64(len(part1)) {
		t.Fatalf("g.raw on h2 after fsync on h1: size %d, want %d", got, len(part1))
	}
	reader, err := os.Open(mnt(h2, "g.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if !bytes.Equal(nfsCat("g.raw"), part1) {
		t.Fatal("g.raw through NFS before it grows")
	}
	if _, err := g.Write(part2); err != nil {
		t.Fatal(err)
	}
	// Not fsynced: the other nodes may still see the size of the last
	// fsync (the data is there already; the size follows at fsync or
	// close, or when the vdisk grows a step), never more than written.
	if got := sizeOn(h2, "g.raw"); got < int64(len(part1)) || got > int64(len(part1)+len(part2)) {
		t.Fatalf("g.raw on h2 before the fsync on h1: size %d, want %d..%d", got, len(part1), len(part1)+len(part2))
	} else {
		t.Logf("g.raw on h2 after an unsynced write on h1: %d bytes (last fsync: %d)", got, len(part1))
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte(nil), part1...), part2...)
	for _, h := range []*netHost{h2, h3} {
		if got := sizeOn(h, "g.raw"); got != int64(len(want)) {
			t.Fatalf("g.raw on %s after the fsync on h1: size %d, want %d", h.Name, got, len(want))
		}
	}
	tail := make([]byte, len(part2))
	if n, err := reader.ReadAt(tail, int64(len(part1))); n != len(tail) || !bytes.Equal(tail, part2) {
		t.Fatalf("a reader on h2 that opened g.raw before it grew reads %d bytes of the new part (%v)", n, err)
	}
	if !bytes.Equal(readOn(h2, "g.raw"), want) {
		t.Fatal("g.raw reads differently through h2's mount after it grew")
	}
	if !bytes.Equal(nfsCat("g.raw"), want) {
		t.Fatal("g.raw reads differently through NFS after it grew")
	}
}
