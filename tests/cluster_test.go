package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/internal/freeport"
)

const (
	readyTimeout = 90 * time.Second // ovs up until /api/v1/health answers 200
	stopTimeout  = 60 * time.Second // SIGTERM until exit, before SIGKILL
	cliTimeout   = 5 * time.Minute  // one ovs CLI call (sync may upload)
)

// cluster is one `ovs up` single-host cluster on a temporary data directory.
// It can be stopped, killed and started again on the same directory and
// ports. Its stdout and stderr go to a log that is shown if the test fails.
type cluster struct {
	t       *testing.T
	Dir     string // --data
	Socket  string // NBD unix socket
	APIAddr string // host:port of the REST API
	NBDAddr string // host:port of the NBD TCP server
	// ISCSIAddr is the iSCSI target's portal, host:port.
	ISCSIAddr string
	// The embedded arakoon's client and raft addresses.
	AraClient, AraRaft string
	logPath            string
	starts             int
	// Env is added to the environment of the next start (e.g.
	// OVS_FAILPOINTS for crash tests).
	Env []string
	// Flags are added to every start's command line (e.g. --backend local).
	Flags []string

	proc    *exec.Cmd
	exited  chan struct{} // closed when proc has been waited for
	exitErr error         // proc's exit status; valid once exited is closed
}

// startCluster starts `ovs up` in a t.TempDir() on free 127.0.0.1 ports and
// waits until its API is healthy, with args added to its command line.
// Cleanup stops it (SIGTERM, then SIGKILL) and waits for it and its
// children.
func startCluster(t *testing.T, args ...string) *cluster {
	t.Helper()
	return startClusterWith(t, args...)
}

// startClusterWith is startCluster with extra flags for `ovs up`, kept for
// every restart.
func startClusterWith(t *testing.T, flags ...string) *cluster {
	t.Helper()
	c := newCluster(t, t.TempDir())
	c.Flags = flags
	c.start()
	return c
}

// newCluster prepares an `ovs up` on data directory dir without starting
// it, so that the test can set Flags or Env first.
func newCluster(t *testing.T, dir string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	c := &cluster{t: t, Dir: dir}
	c.Socket = filepath.Join(c.Dir, "nbd.sock")
	if len(c.Socket) > 100 { // sun_path holds 108 bytes
		sd, err := os.MkdirTemp("", "ovs-sock-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sd) })
		c.Socket = filepath.Join(sd, "nbd.sock")
	}
	ports := freePorts(t, 5)
	c.APIAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	c.NBDAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	c.AraClient = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
	c.AraRaft = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))
	c.ISCSIAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[4]))
	c.logPath = filepath.Join(t.TempDir(), "ovs-up.log")
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			c.dumpLog()
		}
	})
	return c
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a
// moment ago (all held open together, so they differ).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports, err := freeport.Ports(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// APIURL is what the CLI takes in --api / OVS_API.
func (c *cluster) APIURL() string { return "http://" + c.APIAddr }

// UnixURI is the NBD URI of a vdisk over the unix socket.
func (c *cluster) UnixURI(name string) string {
	return "nbd+unix:///" + name + "?socket=" + c.Socket
}

// TCPURI is the NBD URI of a vdisk over TCP.
func (c *cluster) TCPURI(name string) string { return "nbd://" + c.NBDAddr + "/" + name }

func (c *cluster) running() bool {
	if c.proc == nil {
		return false
	}
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// start runs `ovs up` on c.Dir and waits until it is healthy.
func (c *cluster) start() {
	t := c.t
	t.Helper()
	if c.running() {
		t.Fatal("start: ovs up is already running")
	}
	c.starts++
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"up", "--data", c.Dir, "--api", c.APIAddr, "--nbd", c.NBDAddr, "--iscsi", c.ISCSIAddr,
		"--arakoon-client", c.AraClient, "--arakoon-raft", c.AraRaft}
	if c.Socket != filepath.Join(c.Dir, "nbd.sock") {
		args = append(args, "--nbd-socket", c.Socket)
	}
	args = append(args, c.Flags...)
	fmt.Fprintf(logf, "=== start %d at %s: %s %s\n", c.starts,
		time.Now().Format(time.RFC3339Nano), ovsBin, strings.Join(args, " "))
	cmd := exec.Command(ovsBin, args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group, so that the whole tree can be killed; and if this
	// test process dies without cleaning up, the kernel kills ovs up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close() // the child has its own descriptor
	if err != nil {
		t.Fatalf("starting ovs up: %v", err)
	}
	c.proc = cmd
	c.exited = make(chan struct{})
	go func(done chan struct{}) {
		c.exitErr = cmd.Wait()
		close(done)
	}(c.exited)
	t.Logf("ovs up (pid %d) on %s, API %s, NBD %s and %s", cmd.Process.Pid, c.Dir,
		c.APIAddr, c.NBDAddr, c.Socket)
	c.waitReady()
}

func (c *cluster) waitReady() {
	t := c.t
	t.Helper()
	start := time.Now()
	deadline := start.Add(readyTimeout)
	client := &http.Client{Timeout: 2 * time.Second}
	url := c.APIURL() + "/api/v1/health"
	lastErr := "no answer yet"
	for {
		select {
		case <-c.exited:
			t.Fatalf("ovs up exited before it was ready: %v\n%s", c.exitErr, c.logTail(16<<10))
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("ovs up ready after %v", time.Since(start).Round(time.Millisecond))
				return
			}
			lastErr = resp.Status
		} else {
			lastErr = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("ovs up not ready after %v (GET %s: %s)", readyTimeout, url, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit (status 0, no child left
// running); after stopTimeout it kills the process group.
func (c *cluster) stop() {
	t := c.t
	t.Helper()
	if !c.running() {
		return
	}
	pid := c.proc.Process.Pid
	kids := descendants(pid)
	c.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		if c.exitErr != nil {
			t.Errorf("ovs up (pid %d) exited with %v after SIGTERM, want status 0", pid, c.exitErr)
		}
	case <-time.After(stopTimeout):
		t.Errorf("ovs up (pid %d) still running %v after SIGTERM; killing it", pid, stopTimeout)
		syscall.Kill(-pid, syscall.SIGKILL)
		c.proc.Process.Kill()
		<-c.exited
	}
	if left := killAll(kids); len(left) > 0 {
		t.Errorf("ovs up left child processes running after a clean stop: %v (killed them)", left)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
}

// kill9 simulates a crash: SIGKILL to the ovs up process. The children it
// supervises (if any survive their parent) are killed right after, as the
// host going down would.
func (c *cluster) kill9() {
	t := c.t
	t.Helper()
	if !c.running() {
		t.Fatal("kill9: ovs up is not running")
	}
	pid := c.proc.Process.Pid
	kids := descendants(pid)
	c.proc.Process.Signal(syscall.SIGKILL)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("ovs up (pid %d) did not die from SIGKILL", pid)
	}
	if left := killAll(kids); len(left) > 0 {
		t.Logf("killed children that outlived ovs up: %v", left)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	t.Logf("ovs up (pid %d) killed with SIGKILL", pid)
}

func (c *cluster) logTail(max int64) string {
	data, err := os.ReadFile(c.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if int64(len(data)) > max {
		data = append([]byte("...\n"), data[int64(len(data))-max:]...)
	}
	return string(data)
}

func (c *cluster) dumpLog() {
	c.t.Logf("ovs up stdout+stderr (%s):\n%s", c.logPath, c.logTail(64<<10))
}

// --- processes ---------------------------------------------------------------

// proc identifies a process by pid and start time, so that a recycled pid
// is never mistaken for it.
type proc struct {
	pid   int
	start uint64
}

func (p proc) String() string { return strconv.Itoa(p.pid) + "(" + procComm(p.pid) + ")" }

// procStat returns the parent pid, state and start time of pid.
func procStat(pid int) (ppid int, state byte, start uint64, ok bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// pid (comm) state ppid ... ; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	start, _ = strconv.ParseUint(f[19], 10, 64)
	return ppid, f[0][0], start, true
}

func procComm(pid int) string {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(data))
}

// descendants lists every process below pid.
func descendants(pid int) []proc {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]proc{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, start, ok := procStat(p); ok {
			children[ppid] = append(children[ppid], proc{p, start})
		}
	}
	var out []proc
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, k := range children[p] {
			out = append(out, k)
			queue = append(queue, k.pid)
		}
	}
	return out
}

func (p proc) alive() bool {
	_, state, start, ok := procStat(p.pid)
	return ok && start == p.start && state != 'Z' && state != 'X'
}

// killAll SIGKILLs those of ps that are still alive, waits until they are
// gone, and returns them.
func killAll(ps []proc) []proc {
	var left []proc
	for _, p := range ps {
		if p.alive() {
			left = append(left, p)
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range left {
		for p.alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return left
}

// --- the CLI -----------------------------------------------------------------

type cliResult struct {
	Stdout, Stderr string
	Code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
}

// runOVS runs the ovs CLI with the given extra environment.
func runOVS(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ovsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := cliResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.Code = ee.ExitCode()
	default:
		r.Code = -1
		r.Stderr += fmt.Sprintf("\n(test harness: %v)", err)
	}
	t.Logf("$ ovs %s -> exit %d in %v", strings.Join(args, " "), r.Code,
		time.Since(start).Round(time.Millisecond))
	return r
}

// cli runs the ovs CLI against this cluster (through OVS_API).
func (c *cluster) cli(args ...string) cliResult {
	c.t.Helper()
	return runOVS(c.t, []string{"OVS_API=" + c.APIURL()}, args...)
}

// ovsOK runs the CLI and fails the test unless it exits 0; returns stdout.
func (c *cluster) ovsOK(args ...string) string {
	c.t.Helper()
	r := c.cli(args...)
	if r.Code != 0 {
		c.t.Fatalf("ovs %s: %v", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// vdiskInfo is the part of `ovs vdisk info -o json` the contract fixes.
type vdiskInfo struct {
	Name               string `json:"name"`
	ID                 string `json:"id"`
	Size               int64  `json:"size"`
	Clients            int    `json:"clients"`
	PendingUploadBytes int64  `json:"pending_upload_bytes"`
	State              string `json:"state"`
	StoredBytes        int64  `json:"stored_bytes"`
	GarbageBytes       int64  `json:"garbage_bytes"`
}

func (c *cluster) info(name string) vdiskInfo {
	c.t.Helper()
	out := c.ovsOK("vdisk", "info", name, "-o", "json")
	var vi vdiskInfo
	if err := json.Unmarshal([]byte(out), &vi); err != nil {
		c.t.Fatalf("ovs vdisk info %s -o json: %v in %q", name, err, out)
	}
	if vi.Name != name {
		c.t.Fatalf("ovs vdisk info %s -o json: name %q in %q", name, vi.Name, out)
	}
	return vi
}

// list returns `ovs vdisk list -o json`, which must be a JSON array.
func (c *cluster) list() []vdiskInfo {
	c.t.Helper()
	out := c.ovsOK("vdisk", "list", "-o", "json")
	if strings.TrimSpace(out) == "null" {
		c.t.Errorf("ovs vdisk list -o json printed null; an empty list should be []")
		return nil
	}
	var vs []vdiskInfo
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		c.t.Fatalf("ovs vdisk list -o json: want a JSON array of vdisks: %v in %q", err, out)
	}
	return vs
}

// sizes maps each listed vdisk to its size.
func (c *cluster) sizes() map[string]int64 {
	c.t.Helper()
	m := map[string]int64{}
	for _, v := range c.list() {
		m[v.Name] = v.Size
	}
	return m
}

func (c *cluster) create(name, size string) {
	c.t.Helper()
	c.ovsOK("vdisk", "create", name, "--size", size)
}

// expectCLIError checks the contract for a failed command: exit code 1 and
// "ovs: message" on stderr; the message must mention one of the keywords
// (case-insensitive) if any are given.
func expectCLIError(t *testing.T, what string, r cliResult, keywords ...string) {
	t.Helper()
	if r.Code != 1 {
		t.Errorf("%s: want exit code 1, got %v", what, r)
		return
	}
	msg := strings.TrimSpace(r.Stderr)
	if !strings.HasPrefix(msg, "ovs: ") {
		t.Errorf("%s: stderr should start with \"ovs: \": %q", what, msg)
		return
	}
	if len(keywords) == 0 {
		return
	}
	lower := strings.ToLower(msg)
	for _, k := range keywords {
		if strings.Contains(lower, strings.ToLower(k)) {
			t.Logf("%s: %s", what, msg)
			return
		}
	}
	t.Errorf("%s: message %q should say what is wrong (mention one of %q)", what, msg, keywords)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
