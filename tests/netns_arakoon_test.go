package tests

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/framework/secret"
)

// TestNetHostsArakoon proves the multi-host harness with what runs on a
// host today: a 3-node arakoon with one node per host on the hosts' own
// addresses, driven by the ovs CLI from inside the hosts, a whole host
// killed (every process of it, SIGKILL) and brought back; an ASD per host
// reached from another host. Then that the run left nothing behind.
func TestNetHostsArakoon(t *testing.T) {
	var hosts *netHosts
	t.Run("cluster", func(t *testing.T) {
		hosts = newNetHosts(t, 3)
		testNetHostsArakoon(t, hosts)
	})
	if hosts == nil || len(hosts.Hosts) == 0 {
		if !t.Failed() {
			t.Skip("no hosts were made (see the subtest)")
		}
		return
	}
	// The subtest's cleanup has run: nothing of the run may be left, even
	// when the subtest failed.
	if left := hosts.Leftovers(); len(left) > 0 {
		t.Errorf("left behind after the test: %s", strings.Join(left, "; "))
	}
	for _, hst := range hosts.Hosts {
		hst.mu.Lock()
		for _, p := range hst.procs {
			if p.Running() {
				t.Errorf("%s/%s (pid %d) still running after cleanup", hst.Name, p.Name, p.Pid())
			}
		}
		hst.mu.Unlock()
	}
}

// Ports of a host's services: each host has its own address, so every host
// uses the defaults.
const (
	netAraClientPort = 8900
	netAraRaftPort   = 8901
	netASDPort       = 8600
)

// netArakoon is an arakoon cluster of one `ovs arakoon serve` per host, on
// the hosts' own addresses, with TLS from one cluster secret. Each host
// holds its copy of the secret (Dir/secret, where a data directory keeps
// it) and of the cluster file (Dir/arakoon.yaml), as an installer would
// leave them.
type netArakoon struct {
	t      *testing.T
	Secret testSecret // the cluster secret (its own copy, outside the hosts)
	Config *arakoon.Config
	Procs  map[*netHost]*netProc // the node of each host
	ids    map[string]*netHost   // node id -> host
}

// startNetArakoon writes the secret and cluster file on every host and
// starts node "a<N>" on host hN; it returns once every node accepts
// connections.
func startNetArakoon(t *testing.T, hosts []*netHost) *netArakoon {
	t.Helper()
	a := &netArakoon{t: t, Secret: newTestSecret(t, t.TempDir()), Procs: map[*netHost]*netProc{}, ids: map[string]*netHost{}}
	secText, err := os.ReadFile(a.Secret.path)
	if err != nil {
		t.Fatal(err)
	}
	a.Config = &arakoon.Config{Cluster: "netns", Tuning: araTuning, SecretFile: secret.FileName}
	for _, hst := range hosts {
		id := a.ID(hst)
		a.ids[id] = hst
		a.Config.Nodes = append(a.Config.Nodes, arakoon.NodeConfig{
			ID: id, Client: hst.HostPort(netAraClientPort), Raft: hst.HostPort(netAraRaftPort),
			Data: filepath.Join(hst.Dir, "arakoon"),
		})
	}
	cfgData, err := yaml.Marshal(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, hst := range hosts {
		if err := os.WriteFile(filepath.Join(hst.Dir, secret.FileName), secText, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(a.CfgPath(hst), cfgData, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, hst := range hosts {
		a.Procs[hst] = hst.Start(t, "arakoon", "arakoon", "serve", "--config", a.CfgPath(hst), "--node", a.ID(hst))
	}
	for _, hst := range hosts {
		a.Procs[hst].WaitListening(hst.HostPort(netAraClientPort), 20*time.Second)
	}
	return a
}

// ID is the arakoon node id of a host: a1 on h1.
func (a *netArakoon) ID(hst *netHost) string { return "a" + strings.TrimPrefix(hst.Name, "h") }

// Host is the host of node id, or nil.
func (a *netArakoon) Host(id string) *netHost { return a.ids[id] }

// CfgPath is the host's copy of the cluster file.
func (a *netArakoon) CfgPath(hst *netHost) string { return filepath.Join(hst.Dir, "arakoon.yaml") }

// CLI runs `ovs arakoon --config HOST's FILE args...` inside the host and
// returns its trimmed output.
func (a *netArakoon) CLI(hst *netHost, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"arakoon", "--config", a.CfgPath(hst), "--timeout", "20s"}, args...)
	out, err := hst.Run(ctx, "ovs", full...)
	return strings.TrimSpace(string(out)), err
}

// CLIOK is CLI, failing the test on error.
func (a *netArakoon) CLIOK(hst *netHost, args ...string) string {
	a.t.Helper()
	out, err := a.CLI(hst, args...)
	if err != nil {
		a.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

func testNetHostsArakoon(t *testing.T, hosts *netHosts) {
	ara := startNetArakoon(t, hosts.Hosts)
	sec := ara.Secret
	cli, cliOK := ara.CLI, ara.CLIOK
	h1, h3 := hosts.Hosts[0], hosts.Hosts[2]

	cliOK(h1, "set", "netns/k1", "v1")
	if got := cliOK(h3, "get", "netns/k1"); got != "v1" {
		t.Fatalf("get through %s: %q, want v1", h3.Name, got)
	}
	master := cliOK(h3, "who-master")
	mh := ara.Host(master)
	if mh == nil {
		t.Fatalf("who-master: %q is no node of %v", master, ara.Config.Nodes)
	}
	var others []*netHost
	for _, hst := range hosts.Hosts {
		if hst != mh {
			others = append(others, hst)
		}
	}
	t.Logf("master %s on %s", master, mh.Name)

	// The master's host dies: every process in it, SIGKILL, including
	// those a started process spawned itself in a session of its own (as
	// a supervisor's children may be), which no process group reaches.
	spawner := mh.StartBin(t, "spawner", nil, "sh", "-c", "setsid sleep 600 & exec sleep 600")
	var before []proc
	waitFor(t, 10*time.Second, "the spawner's child", func() bool {
		before = mh.Pids()
		return len(before) >= 3
	})
	killed := mh.KillAll()
	for _, p := range before {
		if p.alive() || !slices.Contains(killed, p) {
			t.Errorf("KillAll of %s: process %v of the host not killed (killed %v)", mh.Name, p, killed)
		}
	}
	if ara.Procs[mh].Running() || spawner.Running() {
		t.Fatalf("a started process of %s survived KillAll", mh.Name)
	}
	if ps := mh.Pids(); len(ps) > 0 {
		t.Fatalf("processes left in %s after KillAll: %v", mh.Name, ps)
	}
	newMaster := cliOK(others[0], "who-master")
	if newMaster == master {
		t.Fatalf("who-master through %s still names the killed %s", others[0].Name, master)
	}
	t.Logf("new master %s", newMaster)
	if got := cliOK(others[1], "get", "netns/k1"); got != "v1" {
		t.Fatalf("get through %s after the master died: %q, want v1", others[1].Name, got)
	}
	cliOK(others[0], "set", "netns/k2", "v2")
	if got := cliOK(others[1], "get", "netns/k2"); got != "v2" {
		t.Fatalf("get through %s: %q, want v2", others[1].Name, got)
	}

	// The host comes back: its node catches up on what it missed.
	ara.Procs[mh].Restart()
	ara.Procs[mh].WaitListening(mh.HostPort(netAraClientPort), 20*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := cli(mh, "get", "--node", master, "netns/k2")
		if err == nil && got == "v2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node %s never caught up: get --node %s netns/k2: %q %v", master, master, got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := cliOK(mh, "get", "netns/k1"); got != "v1" {
		t.Fatalf("get through the restarted %s: %q, want v1", mh.Name, got)
	}

	// An ASD per host, reached from the next host with curl: refused
	// without the cluster's credentials, answering with them.
	needTools(t, "curl")
	const asdPort = netASDPort
	certPath, keyPath := writeClientCert(t, sec, hosts.Hosts[0].Dir)
	var asds []*netProc
	for _, hst := range hosts.Hosts {
		p := hst.Start(t, "asd", "asd", "serve", "--dir", filepath.Join(hst.Dir, "asd"),
			"--addr", hst.HostPort(asdPort), "--node", hst.Name, "--site", "dc1",
			"--secret-file", filepath.Join(hst.Dir, secret.FileName))
		asds = append(asds, p)
	}
	for _, p := range asds {
		p.WaitListening(p.Host.HostPort(asdPort), 20*time.Second)
	}
	// health asks hst's ASD from another host, with the cluster's
	// credentials or without.
	health := func(hst *netHost, creds bool, maxTime string) ([]byte, error) {
		from := hosts.Hosts[(hst.Index+1)%len(hosts.Hosts)]
		args := []string{"-sS", "--max-time", maxTime, "-k"}
		if creds {
			args = append(args, "--cert", certPath, "--key", keyPath)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return from.Run(ctx, "curl", append(args, "https://"+hst.HostPort(asdPort)+"/v1/health")...)
	}
	for _, hst := range hosts.Hosts {
		if out, err := health(hst, false, "5"); err == nil {
			t.Errorf("ASD of %s answered a client without credentials: %q, want a refused handshake", hst.Name, out)
		}
		out, err := health(hst, true, "5")
		if err != nil {
			t.Fatalf("ASD of %s with the cluster's credentials: %v\n%s", hst.Name, err, out)
		}
		var h struct{ Node, Cluster string }
		if err := json.Unmarshal(out, &h); err != nil || h.Node != hst.Name || h.Cluster != sec.ClusterID() {
			t.Errorf("ASD of %s answers %q (%v), want node %s of cluster %s", hst.Name, out, err, hst.Name, sec.ClusterID())
		}
	}

	// A frozen process keeps its socket but answers nothing; thawed, it
	// answers; stopped, it exits cleanly; restarted, it serves again.
	asd := asds[0]
	asd.Freeze()
	if out, err := health(asd.Host, true, "1"); err == nil {
		t.Errorf("a frozen ASD answered: %q", out)
	}
	asd.Thaw()
	if out, err := health(asd.Host, true, "5"); err != nil {
		t.Errorf("the thawed ASD: %v\n%s", err, out)
	}
	if err := asd.Stop(); err != nil {
		t.Errorf("stopping the ASD: %v", err)
	}
	if asd.Running() {
		t.Errorf("the ASD runs after Stop")
	}
	asd.Restart()
	asd.WaitListening(asd.Host.HostPort(asdPort), 20*time.Second)
	if out, err := health(asd.Host, true, "5"); err != nil {
		t.Errorf("the restarted ASD: %v\n%s", err, out)
	}
}

// writeClientCert writes a client certificate endorsed by the cluster
// secret and its key as PEM files in dir, for clients such as curl.
func writeClientCert(t *testing.T, sec testSecret, dir string) (certPath, keyPath string) {
	t.Helper()
	c, err := sec.Certificate(secret.RoleBackend, "curl")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// TestNetHostsSweepStale: what a crashed run left (a namespace with a
// process in it, a bridge) is removed by the next run; a live run's is not.
func TestNetHostsSweepStale(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command (Debian package iproute2)")
	}
	// A dead test process: one that ran and exited.
	dead := exec.Command("true")
	if err := dead.Start(); err != nil {
		t.Fatal(err)
	}
	deadPid := dead.Process.Pid
	_, _, deadStart, _ := procStat(deadPid)
	dead.Wait()
	tag := fmt.Sprintf("%08x", rand.Uint32())
	ns := fmt.Sprintf("%s%s-%d-%d-h1", netnsPrefix, tag, deadPid, deadStart)
	br := bridgePrefix + tag
	// A live run's namespace: this process's.
	_, _, myStart, _ := procStat(os.Getpid())
	liveNS := fmt.Sprintf("%s%s-%d-%d-h1", netnsPrefix, tag+"x", os.Getpid(), myStart)
	t.Cleanup(func() {
		ipCmd("netns", "del", ns)
		ipCmd("netns", "del", liveNS)
		ipCmd("link", "del", br)
	})
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"netns", "add", liveNS},
		{"link", "add", br, "type", "bridge"},
		{"link", "set", br, "alias", fmt.Sprintf("%spid=%d start=%d", linkAliasPrefix, deadPid, deadStart)},
	} {
		if out, err := ipCmd(args...); err != nil {
			if args[1] == "add" && args[0] == "netns" {
				t.Skipf("cannot make a network namespace: %v: %s", err, out)
			}
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	// An orphan in the stale namespace, as a crashed run's grandchild.
	orphan := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { orphan.Wait(); close(exited) }()
	t.Cleanup(func() { orphan.Process.Kill(); <-exited })
	ino, err := nsInode(filepath.Join(netnsRunDir, ns))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the orphan in the stale namespace", func() bool {
		return len(procsInNetns(map[uint64]string{ino: ns})) == 1
	})

	sweepStaleNetHosts(t)

	if _, err := os.Stat(filepath.Join(netnsRunDir, ns)); err == nil {
		t.Errorf("stale namespace %s not removed", ns)
	}
	if _, err := net.InterfaceByName(br); err == nil {
		t.Errorf("stale bridge %s not removed", br)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Errorf("the process in the stale namespace was not killed")
	}
	if _, err := os.Stat(filepath.Join(netnsRunDir, liveNS)); err != nil {
		t.Errorf("a live run's namespace %s was removed: %v", liveNS, err)
	}
}
