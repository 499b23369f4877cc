package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The cluster tests run 3 hosts as network namespaces (netns_test.go): on
// each an arakoon node, a storage router (ovs node serve) with 2 ASDs;
// preset 4+2 with at most 2 fragments per host.

const (
	netAPIPort     = 8800
	netNBDPort     = 10809
	netForwardPort = 8820
)

// netCluster is a cluster of nodes on netHosts.
type netCluster struct {
	t     *testing.T
	hosts *netHosts
	ara   *netArakoon
	nodes map[*netHost]*netProc
	// extra node.yaml lines per host (tests tune intervals).
	extra string
}

func (c *netCluster) nodeDir(h *netHost) string  { return filepath.Join(h.Dir, "node") }
func (c *netCluster) nodeYAML(h *netHost) string { return filepath.Join(h.Dir, "node.yaml") }
func (c *netCluster) api(h *netHost) string      { return "http://" + h.HostPort(netAPIPort) }
func (c *netCluster) nbdURI(h *netHost, name string) string {
	return "nbd://" + h.HostPort(netNBDPort) + "/" + name
}

// startNetCluster makes the hosts, the arakoon, the cluster and its nodes.
// extra is appended to every node.yaml; initArgs are added to ovs cluster
// init.
func startNetCluster(t *testing.T, extra string, initArgs ...string) *netCluster {
	t.Helper()
	return startNetClusterFor(t, func(*netHost) string { return extra }, initArgs...)
}

// startNetClusterFor is startNetCluster with node.yaml lines per host.
func startNetClusterFor(t *testing.T, extraFor func(*netHost) string, initArgs ...string) *netCluster {
	t.Helper()
	needPython(t)
	hosts := newNetHosts(t, 3)
	c := &netCluster{t: t, hosts: hosts, nodes: map[*netHost]*netProc{}, extra: extraFor(hosts.Hosts[0])}
	c.ara = startNetArakoon(t, hosts.Hosts)
	h1 := hosts.Hosts[0]
	c.ovsOK(h1, append([]string{"cluster", "init", "--arakoon", c.ara.CfgPath(h1), "--secret-file", filepath.Join(h1.Dir, "secret"),
		"--id", "netns"}, initArgs...)...)
	for _, h := range hosts.Hosts {
		cfg := fmt.Sprintf(`id: %s
site: dc1
data: %s
secret_file: %s
arakoon: %s
api: %s
nbd: %s
nbd_socket: none
forward: %s
backend:
  asds: 2
  asd_ports: 8600-8699
driver:
  read_cache: 32MiB
  write_buffer: 256MiB
%s`, h.Name, c.nodeDir(h), filepath.Join(h.Dir, "secret"), c.ara.CfgPath(h), h.HostPort(netAPIPort),
			h.HostPort(netNBDPort), h.HostPort(netForwardPort), extraFor(h))
		if err := os.WriteFile(c.nodeYAML(h), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		c.ovsOK(h, "node", "join", "--config", c.nodeYAML(h))
	}
	for _, h := range hosts.Hosts {
		c.nodes[h] = h.Start(t, "node", "node", "serve", "--config", c.nodeYAML(h))
	}
	for _, h := range hosts.Hosts {
		c.waitHealthy(h, 90*time.Second)
	}
	return c
}

// ovs runs the ovs CLI in host h against h's own API, with the node's
// API token.
func (c *netCluster) ovs(h *netHost, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"--api", c.api(h), "--token-file", filepath.Join(c.nodeDir(h), "api-tokens")}, args...)
	if args[0] == "cluster" || args[0] == "node" && (args[1] == "join" || args[1] == "serve") {
		full = args
	}
	out, err := h.Run(ctx, "ovs", full...)
	return strings.TrimSpace(string(out)), err
}

func (c *netCluster) ovsOK(h *netHost, args ...string) string {
	c.t.Helper()
	out, err := c.ovs(h, args...)
	if err != nil {
		c.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

func (c *netCluster) waitHealthy(h *netHost, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command("curl", "-s", "-m", "3", c.api(h)+"/api/v1/health").CombinedOutput()
		if err == nil && strings.Contains(string(out), `"ok"`) {
			return
		}
		if time.Now().After(deadline) {
			p := c.nodes[h]
			tail := ""
			if p != nil {
				tail = p.LogTail(4000)
			}
			c.t.Fatalf("node %s not healthy after %v: %s %v\n%s", h.Name, timeout, out, err, tail)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

type netVDisk struct {
	Name       string `json:"name"`
	Owner      string `json:"owner"`
	OwnerEpoch uint64 `json:"owner_epoch"`
	State      string `json:"state"`
	Size       int64  `json:"size"`
}

func (c *netCluster) list(h *netHost) map[string]netVDisk {
	c.t.Helper()
	out := c.ovsOK(h, "vdisk", "list", "-o", "json")
	var vs []netVDisk
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		c.t.Fatalf("vdisk list: %v\n%s", err, out)
	}
	m := map[string]netVDisk{}
	for _, v := range vs {
		m[v.Name] = v
	}
	return m
}

func (c *netCluster) host(name string) *netHost {
	for _, h := range c.hosts.Hosts {
		if h.Name == name {
			return h
		}
	}
	c.t.Fatalf("no host %s", name)
	return nil
}

// libnbdCmd runs a python snippet with h, a libnbd handle connected to
// uri (what nbdsh -u URI -c SCRIPT does), from the test's own namespace,
// which reaches every host.
func libnbdCmd(ctx context.Context, t *testing.T, uri, script string) *exec.Cmd {
	t.Helper()
	py := needPython(t)
	return exec.CommandContext(ctx, py, "-c", fmt.Sprintf("import nbd\nh = nbd.NBD()\nh.connect_uri(%q)\n", uri)+script)
}

func nbdshRun(t *testing.T, uri, script string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := libnbdCmd(ctx, t, uri, script).CombinedOutput()
	return string(out), err
}

// readSum is the sha256 of the vdisk's first n bytes through uri.
func readSum(t *testing.T, uri string, n int64) string {
	t.Helper()
	out, err := nbdshRun(t, uri, fmt.Sprintf(`
import hashlib
h2 = hashlib.sha256()
off = 0
while off < %d:
    h2.update(h.pread(1<<20, off))
    off += 1<<20
print(h2.hexdigest())
`, n))
	if err != nil {
		t.Fatalf("read %s: %v\n%s", uri, err, out)
	}
	return strings.TrimSpace(out)
}

// TestClusterOfThreeHosts is the cluster issue's end-to-end test: fio
// with verification through a node that forwards to the owner while the
// vdisk moves; kill -9 of a node that owns nothing; fencing of a frozen
// owner; a restart of the whole cluster.
func TestClusterOfThreeHosts(t *testing.T) {
	needFio(t)
	// The owner check runs every hour here, so that fencing is shown by
	// the backend refusing the old owner's writes (auto-sync uploads
	// within a second), not by the node noticing first.
	c := startNetCluster(t, "  auto_sync: 1s\nintervals:\n  owner_check: 1h\n")
	h1, h2, h3 := c.hosts.Hosts[0], c.hosts.Hosts[1], c.hosts.Hosts[2]

	nodes := c.ovsOK(h2, "node", "list")
	for _, h := range c.hosts.Hosts {
		if !strings.Contains(nodes, h.Name) {
			t.Fatalf("node list lacks %s:\n%s", h.Name, nodes)
		}
	}
	// The forwarding port serves only holders of the cluster secret: a
	// client without a certificate is dropped before any request.
	if out, err := exec.Command("curl", "-sS", "-k", "--max-time", "10", "https://"+h1.HostPort(netForwardPort)+"/").CombinedOutput(); err == nil {
		t.Errorf("the forwarding port answered a client without the cluster's certificate: %s", out)
	}
	c.ovsOK(h1, "vdisk", "create", "vm", "--size", "256MiB")
	if v := c.list(h3)["vm"]; v.Owner != "h1" || v.OwnerEpoch != 1 {
		t.Fatalf("vm after create, listed through h3: %+v", v)
	}

	t.Run("iSCSI through every node", func(t *testing.T) { iscsiAcrossNodes(t, c, h1, h2, h3) })

	t.Run("move under fio through a forwarding node", func(t *testing.T) {
		uri := c.nbdURI(h2, "vm")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		fio := exec.CommandContext(ctx, "fio", "--name=move", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=128m", "--loops=2",
			"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--lat_percentiles=1")
		var out bytes.Buffer
		fio.Stdout, fio.Stderr = &out, &out
		// A second client is connected to the owner itself: after the
		// handover its I/O goes on through the old owner, forwarded.
		fioOwner := exec.CommandContext(ctx, "fio", "--name=owner", "--ioengine=nbd", "--uri="+c.nbdURI(h1, "vm"),
			"--rw=randwrite", "--bs=4k", "--iodepth=8", "--offset=160m", "--size=32m", "--loops=3",
			"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0")
		var ownerOut bytes.Buffer
		fioOwner.Stdout, fioOwner.Stderr = &ownerOut, &ownerOut
		if err := fio.Start(); err != nil {
			t.Fatal(err)
		}
		if err := fioOwner.Start(); err != nil {
			t.Fatal(err)
		}
		done, ownerDone := make(chan error, 1), make(chan error, 1)
		go func() { done <- fio.Wait() }()
		go func() { ownerDone <- fioOwner.Wait() }()
		time.Sleep(4 * time.Second)
		moved := c.ovsOK(h2, "vdisk", "move", "vm", "--to", "h3")
		t.Logf("%s", moved)
		if err := <-done; err != nil || !strings.Contains(out.String(), "err= 0") {
			t.Fatalf("fio through h2 during the move: %v\n%s", err, out.String())
		}
		if err := <-ownerDone; err != nil || !strings.Contains(ownerOut.String(), "err= 0") {
			t.Fatalf("fio through the old owner h1 during the move: %v\n%s", err, ownerOut.String())
		}
		t.Logf("fio through h2: %s", fioSummary(out.String()))
		t.Logf("fio through h1: %s", fioSummary(ownerOut.String()))
		if v := c.list(h1)["vm"]; v.Owner != "h3" || v.OwnerEpoch != 2 {
			t.Fatalf("vm after the move: %+v", v)
		}
		// And the data fio wrote reads back through every node.
		sum := readSum(t, c.nbdURI(h1, "vm"), 128<<20)
		for _, h := range []*netHost{h2, h3} {
			if got := readSum(t, c.nbdURI(h, "vm"), 128<<20); got != sum {
				t.Fatalf("vm reads differently through %s", h.Name)
			}
		}
	})

	t.Run("kill -9 of a node that owns nothing", func(t *testing.T) {
		// h1 owns nothing now; it runs an arakoon node and 2 ASDs too.
		uri := c.nbdURI(h2, "vm")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		fio := exec.CommandContext(ctx, "fio", "--name=kill", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64m", "--offset=128m", "--loops=2",
			"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0")
		var out bytes.Buffer
		fio.Stdout, fio.Stderr = &out, &out
		if err := fio.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- fio.Wait() }()
		time.Sleep(3 * time.Second)
		killed := h1.KillAll()
		t.Logf("killed %d processes of h1", len(killed))
		if err := <-done; err != nil || !strings.Contains(out.String(), "err= 0") {
			t.Fatalf("fio through h2 while h1 is dead: %v\n%s", err, out.String())
		}
		c.ara.Procs[h1].Restart()
		c.nodes[h1].Restart()
		c.waitHealthy(h1, 90*time.Second)
		deadline := time.Now().Add(30 * time.Second)
		for {
			out := c.ovsOK(h3, "node", "list", "-o", "json")
			var ns []struct{ ID, State string }
			_ = json.Unmarshal([]byte(out), &ns)
			up := 0
			for _, n := range ns {
				if n.State == "up" {
					up++
				}
			}
			if up == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("h1 did not rejoin:\n%s", out)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("fencing of a frozen owner", func(t *testing.T) {
		// A client on the owner (h3) writes block 0 and flushes: the
		// handover that follows is forced, so this may or may not be on
		// the backend; what matters is what comes after.
		region := int64(200 << 20)
		script := func(b byte) string {
			return fmt.Sprintf("h.pwrite(b'%c' * 65536, %d)\nh.flush()\nprint('ok')\n", b, region)
		}
		if out, err := nbdshRun(t, c.nbdURI(h3, "vm"), script('A')); err != nil {
			t.Fatalf("write through the owner: %v\n%s", err, out)
		}
		c.ovsOK(h3, "vdisk", "sync", "vm")
		// A client stays connected to h3 across the freeze.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		py := libnbdCmd(ctx, t, c.nbdURI(h3, "vm"), fmt.Sprintf(`
import sys
print('connected', flush=True)
sys.stdin.readline()
try:
    h.pwrite(b'Z' * 65536, %d)
    h.flush()
    print('stale write acknowledged', flush=True)
except Exception as e:
    print('stale write failed:', e, flush=True)
import time
time.sleep(8)
try:
    h.pread(4096, 0)
    print('read after fencing served', flush=True)
except Exception as e:
    print('read after fencing failed:', e, flush=True)
`, region))
		stdin, _ := py.StdinPipe()
		var pyOut bytes.Buffer
		py.Stdout, py.Stderr = &pyOut, &pyOut
		if err := py.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "the client of the owner to connect", func() bool { return strings.Contains(pyOut.String(), "connected") })

		c.nodes[h3].Freeze()
		res := c.ovsOK(h1, "vdisk", "move", "vm", "--to", "h1", "--force")
		t.Logf("%s", res)
		if v := c.list(h2)["vm"]; v.Owner != "h1" || v.OwnerEpoch != 3 {
			t.Fatalf("vm after the forced move: %+v", v)
		}
		// The new owner serves the vdisk: write something there.
		if out, err := nbdshRun(t, c.nbdURI(h1, "vm"), fmt.Sprintf("h.pwrite(b'N' * 4096, %d)\nh.flush()\n", region+65536)); err != nil {
			t.Fatalf("write through the new owner: %v\n%s", err, out)
		}
		c.nodes[h3].Thaw()
		fmt.Fprintln(stdin)
		if err := py.Wait(); err != nil {
			t.Logf("client of the old owner: %v", err)
		}
		t.Logf("client of the old owner:\n%s", pyOut.String())
		if !strings.Contains(pyOut.String(), "read after fencing failed") {
			t.Errorf("the fenced owner went on serving its old client:\n%s", pyOut.String())
		}
		// The old owner's backend writes were refused and it dropped the vdisk.
		waitFor(t, 30*time.Second, "the old owner to be fenced", func() bool {
			log, _ := os.ReadFile(c.nodes[h3].LogPath)
			return bytes.Contains(log, []byte("vdisk fenced"))
		})
		// Nothing it wrote after the epoch change is visible anywhere.
		for _, h := range c.hosts.Hosts {
			out, err := nbdshRun(t, c.nbdURI(h, "vm"), fmt.Sprintf("print(h.pread(65536, %d)[:1], h.pread(4096, %d)[:1])", region, region+65536))
			if err != nil {
				t.Fatalf("read through %s: %v\n%s", h.Name, err, out)
			}
			if strings.Contains(out, "Z") || !strings.Contains(out, "b'N'") {
				t.Errorf("through %s after fencing: %s (want no Z, the new owner's N)", h.Name, out)
			}
		}
	})

	t.Run("restart of the whole cluster", func(t *testing.T) {
		c.ovsOK(h2, "vdisk", "create", "two", "--size", "64MiB")
		c.ovsOK(h3, "vdisk", "create", "three", "--size", "64MiB")
		sums := map[string]string{}
		for _, name := range []string{"vm", "two", "three"} {
			if _, err := nbdshRun(t, c.nbdURI(h1, name), "import os\nh.pwrite(os.urandom(1<<20), 1<<20)\nh.flush()\n"); err != nil {
				t.Fatal(err)
			}
			sums[name] = readSum(t, c.nbdURI(h2, name), 4<<20)
		}
		before := c.list(h1)
		for _, h := range c.hosts.Hosts {
			h.KillAll()
		}
		for _, h := range c.hosts.Hosts {
			c.ara.Procs[h].Restart()
		}
		for _, h := range c.hosts.Hosts {
			c.nodes[h].Restart()
		}
		for _, h := range c.hosts.Hosts {
			c.waitHealthy(h, 120*time.Second)
		}
		after := c.list(h3)
		for name, v := range before {
			a := after[name]
			if a.Owner != v.Owner || a.OwnerEpoch != v.OwnerEpoch || a.State != "ok" {
				t.Errorf("%s: before the restart %+v, after %+v", name, v, a)
			}
		}
		for name, sum := range sums {
			if got := readSum(t, c.nbdURI(h3, name), 4<<20); got != sum {
				t.Errorf("%s reads differently after the restart", name)
			}
		}
	})
}
