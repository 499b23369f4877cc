package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A multi-host harness: each host is a Linux network namespace with its own
// address on a bridge in the root namespace, its own data directory and its
// own processes. The test process sits on the bridge (.254), so it reaches
// every host; hosts reach each other through the bridge. Everything a run
// creates carries a run tag (namespace names, link names) and the run's pid
// and start time (namespace names, link aliases), so that parallel runs do
// not collide and a later run can tell a crashed run's leftovers from a
// live run's.
//
// Use:
//
//	hosts := newNetHosts(t, 3)            // skips where namespaces cannot be made
//	h1 := hosts.Hosts[0]                  // h1.Addr, h1.Dir, h1.NS
//	p := h1.Start(t, "node", "node", "serve", "--data", h1.Dir) // ovs node serve, log h1.Dir/node.log
//	p.WaitListening(h1.HostPort(8800), 30*time.Second)
//	out, err := h1.Run(ctx, "nbdinfo", "nbd://"+hosts.Hosts[1].HostPort(10809)+"/vd")
//	h1.KillAll()                          // the host dies: every process in it
//	p.Restart()                           // same arguments, log appended
//
// Keep what the processes write under a host's Dir: a t.TempDir made after
// newNetHosts is removed before the hosts' processes are killed.

const (
	// netnsPrefix starts the name of every namespace the harness makes:
	// netnsPrefix + TAG-PID-START-hN.
	netnsPrefix = "ovs-e2e-"
	// Link names are at most 15 bytes: prefix (3) + tag (8) + host index.
	bridgePrefix = "oeb"
	vethPrefix   = "oev"
	// linkAliasPrefix starts the alias of every link the harness makes,
	// followed by "pid=PID start=START".
	linkAliasPrefix = "ovs-e2e-netns "
	netnsRunDir     = "/run/netns"
	procKillTimeout = 10 * time.Second
)

// netHosts is a set of hosts made by newNetHosts, removed at the end of the
// test.
type netHosts struct {
	t      *testing.T
	Tag    string     // the run tag in every name
	Bridge string     // the bridge in the root namespace
	Subnet *net.IPNet // the hosts' /24
	// BridgeAddr is the root namespace's address on the bridge: how the
	// test process is seen by the hosts.
	BridgeAddr string
	Hosts      []*netHost

	owner string // "pid=PID start=START" of this test process
	// nsInodes are the network namespaces' inodes: a process still in one
	// of them after cleanup (even once unnamed) is a leftover.
	mu       sync.Mutex
	nsInodes map[uint64]string
}

// netHost is one host: a network namespace with one address.
type netHost struct {
	Name  string // h1, h2, ...
	NS    string // the network namespace (ip netns exec NS ...)
	Addr  string // its IPv4 address, no port
	Dir   string // its data directory (logs of its processes too)
	Index int    // 0-based position in netHosts.Hosts

	hosts *netHosts
	veth  string // the veth end on the bridge; the other end is eth0 in NS

	mu    sync.Mutex
	procs []*netProc
}

// newNetHosts makes n hosts, or skips the test where network namespaces
// cannot be made (not root, no ip, no CAP_SYS_ADMIN). Every process started
// in a host, the namespaces, links and bridge are removed when the test
// ends, and the cleanup fails the test if any is left.
func newNetHosts(t *testing.T, n int) *netHosts {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	if n < 1 || n > 99 {
		t.Fatalf("newNetHosts: %d hosts, want 1..99", n)
	}
	if os.Geteuid() != 0 {
		t.Skip("multi-host test: network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("multi-host test: no ip command (Debian package iproute2)")
	}
	pid := os.Getpid()
	_, _, start, _ := procStat(pid)
	h := &netHosts{
		t:        t,
		Tag:      fmt.Sprintf("%08x", rand.Uint32()),
		owner:    fmt.Sprintf("pid=%d start=%d", pid, start),
		nsInodes: map[uint64]string{},
	}
	h.Bridge = bridgePrefix + h.Tag
	sweepStaleNetHosts(t)
	subnet, err := pickSubnet()
	if err != nil {
		t.Skipf("multi-host test: %v", err)
	}
	h.Subnet = subnet
	h.BridgeAddr = hostIP(subnet, 254)
	// The data directories first: t.TempDir's removal is registered before
	// the cleanup below, so it runs after it, once no process writes there.
	root := t.TempDir()
	t.Cleanup(h.cleanup)

	// The first namespace doubles as the probe: where it cannot be made
	// (a container without CAP_SYS_ADMIN, no /run/netns), skip.
	for i := range n {
		hst := &netHost{
			Name:  "h" + strconv.Itoa(i+1),
			Addr:  hostIP(subnet, i+1),
			Dir:   filepath.Join(root, "h"+strconv.Itoa(i+1)),
			Index: i,
			hosts: h,
			veth:  vethPrefix + h.Tag + strconv.Itoa(i+1),
		}
		hst.NS = fmt.Sprintf("%s%s-%d-%d-%s", netnsPrefix, h.Tag, pid, start, hst.Name)
		if err := os.MkdirAll(hst.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := ipCmd("netns", "add", hst.NS); err != nil {
			if i == 0 {
				t.Skipf("multi-host test: cannot make a network namespace: %v: %s", err, out)
			}
			t.Fatalf("ip netns add %s: %v: %s", hst.NS, err, out)
		}
		h.Hosts = append(h.Hosts, hst)
		ino, err := nsInode(filepath.Join(netnsRunDir, hst.NS))
		if err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		h.nsInodes[ino] = hst.NS
		h.mu.Unlock()
	}
	alias := linkAliasPrefix + h.owner
	h.mustIP("link", "add", h.Bridge, "type", "bridge")
	h.mustIP("link", "set", h.Bridge, "alias", alias)
	h.mustIP("addr", "add", h.BridgeAddr+"/24", "dev", h.Bridge)
	h.mustIP("link", "set", h.Bridge, "up")
	for _, hst := range h.Hosts {
		h.mustIP("link", "add", hst.veth, "type", "veth", "peer", "name", "eth0", "netns", hst.NS)
		h.mustIP("link", "set", hst.veth, "alias", alias)
		h.mustIP("link", "set", hst.veth, "master", h.Bridge)
		h.mustIP("link", "set", hst.veth, "up")
		h.mustIP("-n", hst.NS, "addr", "add", hst.Addr+"/24", "dev", "eth0")
		h.mustIP("-n", hst.NS, "link", "set", "eth0", "up")
		h.mustIP("-n", hst.NS, "link", "set", "lo", "up")
	}
	var desc []string
	for _, hst := range h.Hosts {
		desc = append(desc, hst.Name+"="+hst.Addr)
	}
	t.Logf("hosts %s on bridge %s (%s), namespaces %s%s-…", strings.Join(desc, " "), h.Bridge, h.BridgeAddr,
		netnsPrefix, h.Tag)
	return h
}

func ipCmd(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "ip", args...).CombinedOutput()
}

func (h *netHosts) mustIP(args ...string) {
	h.t.Helper()
	if out, err := ipCmd(args...); err != nil {
		h.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// hostIP is address i of a /24.
func hostIP(n *net.IPNet, i int) string {
	ip := n.IP.To4()
	return net.IPv4(ip[0], ip[1], ip[2], byte(i)).String()
}

// pickSubnet picks a random 10.x.y.0/24 that no route of the root namespace
// overlaps (other runs' bridges included: their /24 is a route).
func pickSubnet() (*net.IPNet, error) {
	routes, err := ipv4Routes()
	if err != nil {
		return nil, err
	}
	for range 100 {
		cand := &net.IPNet{
			IP:   net.IPv4(10, byte(100+rand.IntN(150)), byte(rand.IntN(256)), 0).To4(),
			Mask: net.CIDRMask(24, 32),
		}
		free := true
		for _, r := range routes {
			ones, _ := r.Mask.Size()
			if ones > 0 && (r.Contains(cand.IP) || cand.Contains(r.IP)) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return nil, errors.New("no free 10.x.y.0/24 subnet for the hosts")
}

// ipv4Routes reads the root namespace's routes from /proc/net/route.
func ipv4Routes() ([]*net.IPNet, error) {
	data, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return nil, fmt.Errorf("reading routes: %w", err)
	}
	var out []*net.IPNet
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		mask, err2 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		// Little-endian words, as the kernel prints them.
		le := func(v uint64) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
		out = append(out, &net.IPNet{IP: net.IP(le(dst)), Mask: net.IPMask(le(mask))})
	}
	return out, nil
}

// HostPort is host:port on this host's address.
func (hst *netHost) HostPort(port int) string { return net.JoinHostPort(hst.Addr, strconv.Itoa(port)) }

// --- processes in a host ------------------------------------------------------

// netProc is a long-running process started in a host.
type netProc struct {
	Host    *netHost
	Name    string   // label, unique per host: its log is Host.Dir/Name.log
	Argv    []string // the program and its arguments (without ip netns exec)
	Env     []string // added to the environment at every start
	LogPath string

	t       *testing.T
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
	starts  int
}

// Start runs `ovs args...` (OVS_BIN) in the host under the label name,
// stdout and stderr appended to Host.Dir/name.log.
func (hst *netHost) Start(t *testing.T, name string, args ...string) *netProc {
	t.Helper()
	return hst.StartBin(t, name, nil, ovsBin, args...)
}

// StartBin runs any program in the host under the label name, with env
// added to the environment.
func (hst *netHost) StartBin(t *testing.T, name string, env []string, bin string, args ...string) *netProc {
	t.Helper()
	p := &netProc{
		Host: hst, Name: name, Argv: append([]string{bin}, args...), Env: env,
		LogPath: filepath.Join(hst.Dir, name+".log"), t: t,
	}
	hst.mu.Lock()
	for _, q := range hst.procs {
		if q.Name == name {
			hst.mu.Unlock()
			t.Fatalf("%s: a process named %s was started already (use Restart)", hst.Name, name)
		}
	}
	hst.procs = append(hst.procs, p)
	hst.mu.Unlock()
	p.start()
	return p
}

func (p *netProc) start() {
	t := p.t
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.exited) {
		t.Fatalf("%s/%s: already running (pid %d)", p.Host.Name, p.Name, p.cmd.Process.Pid)
	}
	p.starts++
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== start %d at %s in %s: %s\n", p.starts, time.Now().Format(time.RFC3339Nano),
		p.Host.NS, strings.Join(p.Argv, " "))
	// ip netns exec execs the program (no fork): the pid is the program's.
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.Host.NS}, p.Argv...)...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group for Stop; if the test process dies, the kernel
	// kills the program (its children are left to the next run's sweep).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close() // the child has its own descriptor
	if err != nil {
		t.Fatalf("%s/%s: starting %s: %v", p.Host.Name, p.Name, p.Argv[0], err)
	}
	p.cmd, p.exited, p.exitErr = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(done)
	}(p.exited)
	t.Logf("%s/%s: started pid %d: %s", p.Host.Name, p.Name, cmd.Process.Pid, strings.Join(p.Argv, " "))
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Pid is the process id of the current (or last) start.
func (p *netProc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Running reports whether the current start has not exited yet.
func (p *netProc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !isClosed(p.exited)
}

// Exited is closed when the current start has exited.
func (p *netProc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// Wait waits for the current start to exit and returns its exit status
// (nil for 0), or ctx's error.
func (p *netProc) Wait(ctx context.Context) error {
	done := p.Exited()
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.exitErr
	case <-ctx.Done():
		return fmt.Errorf("%s/%s (pid %d): %w", p.Host.Name, p.Name, p.Pid(), ctx.Err())
	}
}

// Stop sends SIGTERM (and SIGCONT, should it be frozen) and waits for the
// exit; after stopTimeout it kills the process group. It returns the exit
// status (nil for 0). Children left in its process group are killed.
func (p *netProc) Stop() error {
	if !p.Running() {
		return nil
	}
	pid := p.Pid()
	syscall.Kill(pid, syscall.SIGTERM)
	syscall.Kill(pid, syscall.SIGCONT)
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	err := p.Wait(ctx)
	if ctx.Err() != nil {
		syscall.Kill(-pid, syscall.SIGKILL)
		<-p.Exited()
		err = fmt.Errorf("%s/%s (pid %d) still running %v after SIGTERM: killed", p.Host.Name, p.Name, pid, stopTimeout)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	return err
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *netProc) Kill() {
	if !p.Running() {
		return
	}
	syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.Exited()
}

// Freeze stops the process with SIGSTOP: it keeps its sockets but answers
// nothing. Only this process: its children run on.
func (p *netProc) Freeze() {
	p.t.Helper()
	if err := syscall.Kill(p.Pid(), syscall.SIGSTOP); err != nil {
		p.t.Fatalf("%s/%s: SIGSTOP: %v", p.Host.Name, p.Name, err)
	}
}

// Thaw resumes a frozen process with SIGCONT.
func (p *netProc) Thaw() {
	p.t.Helper()
	if err := syscall.Kill(p.Pid(), syscall.SIGCONT); err != nil {
		p.t.Fatalf("%s/%s: SIGCONT: %v", p.Host.Name, p.Name, err)
	}
}

// Restart starts the process again with the same arguments and log (after
// it exited: Stop, Kill or the host's KillAll first).
func (p *netProc) Restart() {
	p.t.Helper()
	p.start()
}

// WaitListening waits until addr (host:port) accepts TCP connections from
// the root namespace; it fails the test if the process exits first or
// nothing listens after timeout.
func (p *netProc) WaitListening(addr string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-p.Exited():
			p.t.Fatalf("%s/%s exited before listening on %s: %v\n%s", p.Host.Name, p.Name, addr,
				p.Wait(context.Background()), p.LogTail(8<<10))
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s/%s: nothing listens on %s after %v: %v", p.Host.Name, p.Name, addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LogTail is the last max bytes of the process's log.
func (p *netProc) LogTail(max int) string {
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(data) > max {
		data = append([]byte("...\n"), data[len(data)-max:]...)
	}
	return string(data)
}

// Run runs a client in the host (name "ovs" is OVS_BIN) and returns its
// combined output. On ctx's end its process group is killed.
func (hst *netHost) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == "ovs" {
		name = ovsBin
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", hst.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A child that outlives the client must not hold the output pipe open.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%s: %s %s: %w", hst.Name, filepath.Base(name), strings.Join(args, " "), err)
	}
	hst.hosts.t.Logf("$ [%s] %s %s -> %s in %v", hst.Name, filepath.Base(name), strings.Join(args, " "),
		errOrOK(err), time.Since(start).Round(time.Millisecond))
	return out, err
}

// Pids lists the processes in the host's namespace (live ones: a zombie
// has left its namespace).
func (hst *netHost) Pids() []proc {
	ino, err := nsInode(filepath.Join(netnsRunDir, hst.NS))
	if err != nil {
		return nil
	}
	return procsInNetns(map[uint64]string{ino: hst.NS})
}

// KillAll is the host dying: SIGKILL to every process in its namespace,
// those the test started and those they started (supervised children,
// clients), until none is left; it waits until the started ones are
// reaped. It returns what it killed.
func (hst *netHost) KillAll() []proc {
	t := hst.hosts.t
	t.Helper()
	hst.mu.Lock()
	procs := append([]*netProc(nil), hst.procs...)
	hst.mu.Unlock()
	var killed []proc
	var names []string // pid(comm), read before the kill
	deadline := time.Now().Add(procKillTimeout)
	for {
		ps := hst.Pids()
		if len(ps) == 0 {
			// A start that has not entered the namespace yet is caught
			// by its process group.
			for _, p := range procs {
				if p.Running() {
					syscall.Kill(-p.Pid(), syscall.SIGKILL)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: processes still in %s after SIGKILL for %v: %v", hst.Name, hst.NS, procKillTimeout, ps)
			break
		}
		for _, p := range ps {
			names = append(names, p.String())
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
		killed = append(killed, ps...)
		time.Sleep(10 * time.Millisecond)
	}
	// A dying process leaves its namespace before it is gone: wait until
	// each one is a zombie or reaped, so that its ports and files are free.
	for _, p := range dedup(killed) {
		for p.alive() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if p.alive() {
			t.Errorf("%s: process %v still alive %v after SIGKILL", hst.Name, p, procKillTimeout)
		}
	}
	for _, p := range procs {
		select {
		case <-p.Exited():
		case <-time.After(procKillTimeout):
			t.Errorf("%s/%s: not reaped %v after SIGKILL", hst.Name, p.Name, procKillTimeout)
		}
	}
	t.Logf("%s: killed every process with SIGKILL: %s", hst.Name, strings.Join(dedup(names), " "))
	return dedup(killed)
}

// FreezeAll stops every process of the host with SIGSTOP (a host that
// hangs); ThawAll resumes them.
func (hst *netHost) FreezeAll() { hst.signalAll(syscall.SIGSTOP) }

// ThawAll resumes every process of the host with SIGCONT.
func (hst *netHost) ThawAll() { hst.signalAll(syscall.SIGCONT) }

func (hst *netHost) signalAll(sig syscall.Signal) {
	for _, p := range hst.Pids() {
		syscall.Kill(p.pid, sig)
	}
}

func dedup[T comparable](xs []T) []T {
	seen := map[T]bool{}
	var out []T
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// --- namespaces, cleanup -------------------------------------------------------

// nsInode is the inode of a network namespace file (/run/netns/NAME or
// /proc/PID/ns/net).
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return st.Ino, nil
}

// procsInNetns lists the live processes whose network namespace is one of
// inodes (what `ip netns pids` does).
func procsInNetns(inodes map[uint64]string) []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ino, err := nsInode("/proc/" + e.Name() + "/ns/net")
		if err != nil {
			continue
		}
		if _, ok := inodes[ino]; !ok {
			continue
		}
		if _, state, start, ok := procStat(pid); ok && state != 'Z' && state != 'X' {
			out = append(out, proc{pid, start})
		}
	}
	return out
}

// cleanup kills every process of every host, shows the logs if the test
// failed, removes namespaces, links and the bridge, and fails the test if
// anything of the run is left.
func (h *netHosts) cleanup() {
	t := h.t
	for _, hst := range h.Hosts {
		hst.KillAll()
	}
	if t.Failed() {
		for _, hst := range h.Hosts {
			hst.mu.Lock()
			procs := append([]*netProc(nil), hst.procs...)
			hst.mu.Unlock()
			for _, p := range procs {
				t.Logf("log of %s/%s (%s):\n%s", hst.Name, p.Name, p.LogPath, p.LogTail(16<<10))
			}
		}
	}
	for _, hst := range h.Hosts {
		// Deleting a veth deletes its peer; eth0 goes with the namespace.
		ipCmd("link", "del", hst.veth)
	}
	// Every namespace of the run, also one whose setup failed half-way.
	entries, _ := os.ReadDir(netnsRunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), netnsPrefix+h.Tag+"-") {
			if out, err := ipCmd("netns", "del", e.Name()); err != nil {
				t.Errorf("ip netns del %s: %v: %s", e.Name(), err, out)
			}
		}
	}
	ipCmd("link", "del", h.Bridge)
	if left := h.Leftovers(); len(left) > 0 {
		t.Errorf("the multi-host run %s left behind: %s", h.Tag, strings.Join(left, "; "))
	}
}

// Leftovers lists what of this run still exists: namespaces, links, and
// processes in its namespaces (named or not any more).
func (h *netHosts) Leftovers() []string {
	var left []string
	entries, _ := os.ReadDir(netnsRunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), netnsPrefix+h.Tag+"-") {
			left = append(left, "namespace "+e.Name())
		}
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if strings.Contains(i.Name, h.Tag) {
			left = append(left, "link "+i.Name)
		}
	}
	h.mu.Lock()
	inodes := h.nsInodes
	h.mu.Unlock()
	for _, p := range procsInNetns(inodes) {
		left = append(left, "process "+p.String())
	}
	return left
}

// ownerAlive tells whether "pid=PID start=START" is a live process (not a
// later one with a recycled pid).
func ownerAlive(pid int, start uint64) bool {
	_, state, st, ok := procStat(pid)
	return ok && st == start && state != 'Z' && state != 'X'
}

// sweepStaleNetHosts removes what runs whose test process is gone left
// behind (a crash, a kill -9 of go test): their namespaces with the
// processes in them, their links. Live runs' are left alone.
func sweepStaleNetHosts(t *testing.T) {
	entries, _ := os.ReadDir(netnsRunDir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		f := strings.Split(rest, "-") // TAG PID START hN
		if len(f) != 4 {
			continue
		}
		pid, err1 := strconv.Atoi(f[1])
		start, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil || ownerAlive(pid, start) {
			continue
		}
		if ino, err := nsInode(filepath.Join(netnsRunDir, e.Name())); err == nil {
			for _, p := range procsInNetns(map[uint64]string{ino: e.Name()}) {
				syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
		out, err := ipCmd("netns", "del", e.Name())
		t.Logf("removed stale namespace %s of a dead run: %s %s", e.Name(), errOrOK(err), bytes.TrimSpace(out))
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if !strings.HasPrefix(i.Name, bridgePrefix) && !strings.HasPrefix(i.Name, vethPrefix) {
			continue
		}
		alias, err := os.ReadFile("/sys/class/net/" + i.Name + "/ifalias")
		if err != nil {
			continue
		}
		rest, ok := strings.CutPrefix(strings.TrimSpace(string(alias)), linkAliasPrefix)
		if !ok {
			continue
		}
		var pid int
		var start uint64
		if _, err := fmt.Sscanf(rest, "pid=%d start=%d", &pid, &start); err != nil || ownerAlive(pid, start) {
			continue
		}
		out, err := ipCmd("link", "del", i.Name)
		t.Logf("removed stale link %s of a dead run: %s %s", i.Name, errOrOK(err), bytes.TrimSpace(out))
	}
}
