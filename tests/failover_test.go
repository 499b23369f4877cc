package tests

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The DTL and failover tests (issue 10) run in the 3-host namespace
// cluster of multinode_test.go. A vdisk owned by h1 is written through
// h2's NBD export by testdata/hawrite.py (libnbd), which logs which writes
// each completed flush covered; h1 dies with its disk (kill -9 of every
// process, its node directory deleted); another node takes the vdisk over;
// every covered write must read back through h2 and h3.

// haExtra is the node.yaml of the failover tests: a node whose heartbeats
// stop for 4 s loses its vdisks. Heartbeats every second, so that one late
// heartbeat on a loaded host is not taken for a death.
const haExtra = "failover_timeout: 4s\nintervals:\n  heartbeat: 1s\n"

const (
	haVDiskSize = "64MiB"
	haBlocks    = 4096     // the writer's region: the first 16 MiB
	haInflight  = 24       // writes in flight
	haFlushEach = 48       // a flush after every 48 writes sent
	haProbeOff  = 48 << 20 // the failover probe's block, outside the region
)

// haInfo is what the failover tests read of `ovs vdisk info -o json`.
type haInfo struct {
	Owner      string `json:"owner"`
	OwnerEpoch uint64 `json:"owner_epoch"`
	State      string `json:"state"`
	DTLMode    string `json:"dtl_mode"`
	DTLState   string `json:"dtl_state"`
	DTLNode    string `json:"dtl_node"`
}

func (v haInfo) String() string {
	return fmt.Sprintf("owner %s epoch %d state %s, dtl %s %s on %q", v.Owner, v.OwnerEpoch, v.State, v.DTLMode,
		v.DTLState, v.DTLNode)
}

// ovsQuiet runs the CLI against h's API from the test's own namespace,
// without logging the call: for polls.
func (c *netCluster) ovsQuiet(h *netHost, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"--api", c.api(h), "--token-file", filepath.Join(c.nodeDir(h), "api-tokens")}, args...)
	out, err := exec.CommandContext(ctx, ovsBin, full...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ovs %s through %s: %w: %s", strings.Join(args, " "), h.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (c *netCluster) info(h *netHost, name string) (haInfo, error) {
	out, err := c.ovsQuiet(h, "vdisk", "info", name, "-o", "json")
	if err != nil {
		return haInfo{}, err
	}
	var v haInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return haInfo{}, fmt.Errorf("vdisk info %s: %w: %s", name, err, out)
	}
	return v, nil
}

// waitInfo polls the vdisk's info through h until cond holds and returns
// it, with every distinct state seen on the way (errors included).
func (c *netCluster) waitInfo(h *netHost, name, what string, timeout time.Duration, cond func(haInfo) bool) (haInfo, []string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []string
	note := func(s string) {
		if len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
	}
	for {
		v, err := c.info(h, name)
		if err != nil {
			note("error: " + err.Error())
		} else {
			note(v.String())
			if cond(v) {
				return v, seen
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not after %v; seen through %s:\n  %s", what, timeout, h.Name, strings.Join(seen, "\n  "))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// nodeASDs are the ASD ids the model has for each node.
func (c *netCluster) nodeASDs(via *netHost) map[string][]string {
	c.t.Helper()
	out, err := c.ovsQuiet(via, "node", "list", "-o", "json")
	if err != nil {
		c.t.Fatal(err)
	}
	var ns []struct {
		ID   string   `json:"id"`
		ASDs []string `json:"asds"`
	}
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		c.t.Fatalf("node list: %v\n%s", err, out)
	}
	m := map[string][]string{}
	for _, n := range ns {
		m[n.ID] = n.ASDs
	}
	return m
}

// waitNodesUp waits until node list through via shows every host up.
func (c *netCluster) waitNodesUp(via *netHost, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := c.ovsQuiet(via, "node", "list", "-o", "json")
		var ns []struct{ ID, State string }
		if err == nil {
			err = json.Unmarshal([]byte(out), &ns)
		}
		up := 0
		for _, n := range ns {
			if n.State == "up" {
				up++
			}
		}
		if err == nil && up == len(c.hosts.Hosts) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("not every node up after %v: %v %s", timeout, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// loseHost is a host dying with its disk: kill -9 of every process of it
// (node, ASDs, arakoon) and its node directory (volumes, write buffer,
// ASD data) deleted. Its arakoon directory is kept: the arakoon cluster
// is not what is tested here.
func (c *netCluster) loseHost(h *netHost) {
	c.t.Helper()
	h.KillAll()
	if err := os.RemoveAll(c.nodeDir(h)); err != nil {
		c.t.Fatal(err)
	}
}

// rejoinHost brings a lost host back on an empty node directory, as a
// replaced host: its arakoon node again, ovs node join, ovs node serve.
// The ASDs on its lost disks are then removed from the backend (their
// fragments are rebuilt from the others), as an operator would.
func (c *netCluster) rejoinHost(h, via *netHost) {
	c.t.Helper()
	old := c.nodeASDs(via)[h.Name]
	c.ara.Procs[h].Restart()
	c.ovsOK(h, "node", "join", "--config", c.nodeYAML(h))
	c.nodes[h].Restart()
	c.waitHealthy(h, 120*time.Second)
	now := c.nodeASDs(via)[h.Name]
	for _, id := range old {
		if slices.Contains(now, id) {
			continue
		}
		// The backend commands authenticate with the cluster secret, not
		// an API token.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := via.Run(ctx, "ovs", "--api", c.api(via), "backend", "asd", "remove", id, "--force",
			"--secret-file", filepath.Join(via.Dir, "secret"))
		cancel()
		if err != nil {
			c.t.Fatalf("removing %s's lost ASD %s: %v\n%s", h.Name, id, err, out)
		}
	}
	c.waitNodesUp(via, 60*time.Second)
}

// restartHost restarts a killed host's arakoon node and node on their
// data, and waits until the cluster sees it up.
func (c *netCluster) restartHost(h, via *netHost) {
	c.t.Helper()
	c.ara.Procs[h].Restart()
	c.nodes[h].Restart()
	c.waitHealthy(h, 120*time.Second)
	c.waitNodesUp(via, 60*time.Second)
}

// lineLog collects a process's output (stdout and stderr) line by line.
type lineLog struct {
	mu    sync.Mutex
	part  []byte
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := slices.Index(l.part, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.part[:i]))
		l.part = l.part[i+1:]
	}
	return len(p), nil
}

// last is the last line that starts with prefix.
func (l *lineLog) last(prefix string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(l.lines[i], prefix) {
			return l.lines[i], true
		}
	}
	return "", false
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n") + string(l.part)
}

// haProc is a hawrite.py process.
type haProc struct {
	cmd  *exec.Cmd
	out  *lineLog
	done chan struct{}
	err  error
}

func startHA(t *testing.T, args ...string) *haProc {
	t.Helper()
	py := needPython(t)
	script, err := filepath.Abs(filepath.Join("testdata", "hawrite.py"))
	if err != nil {
		t.Fatal(err)
	}
	p := &haProc{out: &lineLog{}, done: make(chan struct{})}
	p.cmd = exec.Command(py, append([]string{script}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *haProc) exited() bool { return isClosed(p.done) }

// stop asks the writer to stop (SIGTERM) and waits; it is killed if it
// does not stop within a minute.
func (p *haProc) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.done
		return errors.New("did not stop within a minute of SIGTERM: killed")
	}
}

func (p *haProc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("killed after %v", timeout)
	}
}

// haSummary parses the checker's SUMMARY line: key=value counts.
func haSummary(out string) (map[string]int, bool) {
	for _, l := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), "SUMMARY ")
		if !ok {
			continue
		}
		m := map[string]int{}
		for _, kv := range strings.Fields(rest) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				continue
			}
			m[k] = n
		}
		return m, true
	}
	return nil, false
}

// haCheck runs the checker through uri; strict fails on lost blocks as
// well as wrong ones. It returns the summary and whether the checker
// passed.
func haCheck(t *testing.T, uri string, seed uint64, logPath string, strict bool) (map[string]int, bool, string) {
	t.Helper()
	s := "0"
	if strict {
		s = "1"
	}
	p := startHA(t, "check", uri, fmt.Sprint(seed), "0", fmt.Sprint(haBlocks), logPath, s)
	err := p.wait(5 * time.Minute)
	out := p.out.String()
	sum, ok := haSummary(out)
	if !ok {
		t.Fatalf("checker through %s gave no summary (%v):\n%s", uri, err, out)
	}
	return sum, err == nil, out
}

// haTrial is one failover trial; see TestFailoverSyncLosesNothing.
type haTrial struct {
	name     string
	seed     uint64
	wantMode string // the dtl_mode the vdisk must report
	setMode  string // if set: ovs vdisk set-dtl --mode setMode first
	strict   bool   // every covered write must survive (sync)
	control  bool   // also show that the checker catches a lost write
	// mustLose: a control without a DTL, where flushed writes that are
	// not on the backend yet die with the host, and the checker must
	// say so.
	mustLose bool
}

type haResult struct {
	failover time.Duration
	sum      map[string]int
}

func (c *netCluster) runHATrial(t *testing.T, tr haTrial) haResult {
	t.Helper()
	a, b, cc := c.hosts.Hosts[0], c.hosts.Hosts[1], c.hosts.Hosts[2]
	rng := rand.New(rand.NewPCG(tr.seed, 0x4841))
	delay := 500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond)))

	// The vdisk is created through h1, so h1 owns it.
	c.ovsOK(a, "vdisk", "create", tr.name, "--size", haVDiskSize)
	if tr.setMode != "" {
		c.ovsOK(a, "vdisk", "set-dtl", tr.name, "--mode", tr.setMode)
	}
	// A vdisk without a DTL reports it disabled.
	wantState := "ok"
	if tr.wantMode == "none" {
		wantState = "disabled"
	}
	before, _ := c.waitInfo(b, tr.name, "the DTL of a new vdisk", 60*time.Second, func(v haInfo) bool {
		return v.Owner == a.Name && v.DTLState == wantState
	})
	if before.DTLMode != tr.wantMode || wantState == "ok" && (before.DTLNode == "" || before.DTLNode == a.Name) {
		t.Fatalf("new vdisk: %v; want dtl mode %s on a node other than %s", before, tr.wantMode, a.Name)
	}

	logPath := filepath.Join(t.TempDir(), tr.name+".log")
	w := startHA(t, "write", c.nbdURI(b, tr.name), fmt.Sprint(tr.seed), "0", fmt.Sprint(haBlocks),
		fmt.Sprint(haInflight), fmt.Sprint(haFlushEach), logPath)
	// The kill comes at a random moment after the first completed flush.
	waitFor(t, 60*time.Second, "the writer's first completed flush", func() bool {
		_, ok := w.out.last("FLUSHED")
		if !ok && w.exited() {
			t.Fatalf("writer exited: %v\n%s", w.err, w.out)
		}
		return ok
	})
	time.Sleep(delay)
	if w.exited() {
		t.Fatalf("writer exited before the kill: %v\n%s", w.err, w.out)
	}
	lastFlush, _ := w.out.last("FLUSHED")

	killAt := time.Now()
	c.loseHost(a)
	// Failover time: from the kill to the first write+flush+read that
	// succeeds through h2 (which forwards to whoever owns the vdisk).
	probe := startHA(t, "probe", c.nbdURI(b, tr.name), fmt.Sprint(haProbeOff), "120")
	perr := probe.wait(3 * time.Minute)
	failover := time.Since(killAt)
	if perr != nil {
		w.stop()
		t.Fatalf("no I/O through %s within %v of the kill (%v):\n%s\nwriter:\n%s", b.Name, failover, perr, probe.out, w.out)
	}
	after, seen := c.waitInfo(b, tr.name, "the failover", 90*time.Second, func(v haInfo) bool {
		return v.Owner != "" && v.Owner != a.Name && v.DTLState == wantState
	})
	if after.OwnerEpoch <= before.OwnerEpoch || after.DTLNode == a.Name || wantState == "ok" && after.DTLNode == after.Owner ||
		after.DTLMode != tr.wantMode {
		t.Errorf("after the failover: %v (before: %v)", after, before)
	}
	// The writer goes on through the new owner for a moment, then stops
	// as a client that gives up would: what it has in flight stays so.
	time.Sleep(time.Second)
	if err := w.stop(); err != nil {
		t.Errorf("writer: %v\n%s", err, w.out)
	}
	endFlush, _ := w.out.last("FLUSHED")
	stopped, _ := w.out.last("STOPPED")
	t.Logf("%s: DTL on %s; kill %v after the first flush (last flush seen before it: %q, at the end: %q%s); %s",
		tr.name, cmp.Or(before.DTLNode, "no node"), delay.Round(time.Millisecond), lastFlush, endFlush, strings.TrimSuffix(", writer "+stopped, ", writer "),
		strings.Join(seen, " -> "))

	var sum map[string]int
	for _, h := range []*netHost{b, cc} {
		s, ok, out := haCheck(t, c.nbdURI(h, tr.name), tr.seed, logPath, tr.strict)
		if !ok {
			t.Errorf("%s through %s after the failover: flushed writes are not all there:\n%s", tr.name, h.Name, out)
		}
		if sum == nil {
			sum = s
		}
		if tr.mustLose && s["lost"] == 0 {
			t.Errorf("%s through %s: without a DTL no flushed write was lost (%v): the sync trials do not show "+
				"what the DTL saves (does a flush upload to the backend now?)", tr.name, h.Name, s)
		}
		if s["covered"] == 0 {
			t.Errorf("%s: the log has no covered write (%v): the trial proved nothing", tr.name, s)
		}
	}

	if tr.control {
		// The checker must see a block that went back in time.
		p := startHA(t, "rollback", c.nbdURI(cc, tr.name), fmt.Sprint(tr.seed), "0", fmt.Sprint(haBlocks), logPath)
		if err := p.wait(2 * time.Minute); err != nil {
			t.Fatalf("rollback: %v\n%s", err, p.out)
		}
		s, ok, out := haCheck(t, c.nbdURI(b, tr.name), tr.seed, logPath, true)
		if ok || s["lost"] != 1 {
			t.Errorf("control: after %s the checker should report one lost block:\n%s", strings.TrimSpace(p.out.String()), out)
		} else {
			t.Logf("control: the checker caught the rolled-back block (%s)", strings.TrimSpace(p.out.String()))
		}
	}

	if out, err := c.ovs(b, "vdisk", "delete", tr.name, "--force"); err != nil {
		t.Logf("delete %s: %v: %s", tr.name, err, out)
	}
	c.rejoinHost(a, b)
	return haResult{failover: failover, sum: sum}
}

// haSeed is the base seed of a run: OVS_FAILOVER_SEED, or random.
func haSeed(t *testing.T) uint64 {
	t.Helper()
	var seed uint64
	if _, err := fmt.Sscan(os.Getenv("OVS_FAILOVER_SEED"), &seed); err != nil {
		seed = rand.Uint64() >> 16
	}
	t.Logf("seed %d (OVS_FAILOVER_SEED=%d repeats the writes and kill delays)", seed, seed)
	return seed
}

func runHATrials(t *testing.T, c *netCluster, n int, base haTrial) []haResult {
	t.Helper()
	seed := haSeed(t)
	var res []haResult
	for i := range n {
		tr := base
		tr.name = fmt.Sprintf("%s%d", base.name, i+1)
		tr.seed = seed + uint64(i)
		tr.control = base.control && i == 0
		ok := t.Run(tr.name, func(t *testing.T) {
			r := c.runHATrial(t, tr)
			s := r.sum
			t.Logf("%s (seed %d): %d writes sent, %d acknowledged, %d failed, %d covered by %d completed flushes (%d failed); "+
				"failover (kill -> first write+flush+read through h2) %v; blocks: %d newest covered, %d later, "+
				"%d unflushed, %d zeros, %d lost, %d wrong; acknowledged but gone: %d",
				tr.name, tr.seed, s["issued"], s["acked"], s["failed"], s["covered"], s["flushes"], s["flushes_failed"],
				r.failover.Round(time.Millisecond),
				s["blocks_covered_ok"], s["blocks_later"], s["blocks_unflushed"], s["blocks_zero"], s["lost"], s["wrong"],
				s["acked_lost"])
			res = append(res, r)
		})
		if !ok {
			// The cluster is in an unknown state: later trials would
			// only repeat the failure.
			t.Fatalf("trial %d of %d failed", i+1, n)
		}
	}
	var times []time.Duration
	for _, r := range res {
		times = append(times, r.failover)
	}
	slices.Sort(times)
	if len(times) > 0 {
		t.Logf("%d/%d trials passed; failover times: min %v, median %v, max %v", len(res), n,
			times[0].Round(time.Millisecond), times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	}
	return res
}

// TestFailoverSyncLosesNothing: in sync mode (the vpool default) a host
// that dies with its disk loses nothing a completed flush covered. 10
// trials; in each, h1 owns a vdisk that a libnbd writer on h2 writes
// (pipelined, random blocks, a flush every 48 writes), h1 is killed and
// its disk deleted at a random moment, another node takes over, and
// every block holds its newest covered write (or a later one) through h2
// and h3. h1 comes back on an empty disk before the next trial. The first
// trial also shows the checker failing on a block rolled back by hand,
// and a last trial with the DTL off shows flushed writes lost.
func TestFailoverSyncLosesNothing(t *testing.T) {
	c := startNetCluster(t, haExtra)
	runHATrials(t, c, envInt("OVS_FAILOVER_TRIALS", 10), haTrial{name: "sync", wantMode: "sync", strict: true, control: true})
	// The control: the same trial without a DTL loses what the backend
	// did not have yet, so the clean trials above are the DTL's doing.
	runHATrials(t, c, 1, haTrial{name: "none", wantMode: "none", setMode: "none", mustLose: true})
}

// TestFailoverAsyncReportsLoss: the same trial in async mode (here the
// vpool default, from ovs cluster init --dtl-mode async), where a flush
// does not wait for the DTL: what was not shipped when the owner died is
// lost, and the test reports how much. What it must never see is a wrong
// block: content that is no write ever sent to that block (a torn write,
// another block's data, garbage). Zeros where writes were covered, or an
// older write than the newest covered one, are loss (the block went back
// in time, as a DTL that had not received the newer write leaves it), and
// only counted.
func TestFailoverAsyncReportsLoss(t *testing.T) {
	c := startNetCluster(t, haExtra, "--dtl-mode", "async")
	res := runHATrials(t, c, envInt("OVS_FAILOVER_ASYNC_TRIALS", 2), haTrial{name: "async", wantMode: "async"})
	for i, r := range res {
		// A block with a covered write holds it, a later write, or is lost.
		covered := r.sum["blocks_covered_ok"] + r.sum["blocks_later"] + r.sum["lost"]
		t.Logf("async trial %d: %d of the %d blocks that a completed flush covered went back in time (zeros or "+
			"an older write); %d blocks lost an acknowledged write", i+1, r.sum["lost"], covered, r.sum["acked_lost"])
	}
}

// TestDTLHostLoss: the DTL's host dies under fio (sync mode, a flush every
// 64 writes): the owner goes on serving, places the DTL on the remaining
// node and resyncs it, and fio's verification passes.
func TestDTLHostLoss(t *testing.T) {
	needFio(t)
	c := startNetCluster(t, haExtra)
	a := c.hosts.Hosts[0]
	c.ovsOK(a, "vdisk", "create", "dtlloss", "--size", "256MiB")
	v, _ := c.waitInfo(a, "dtlloss", "the DTL of a new vdisk", 60*time.Second, func(v haInfo) bool {
		return v.Owner == a.Name && v.DTLState == "ok"
	})
	if v.DTLMode != "sync" || v.DTLNode == "" || v.DTLNode == a.Name {
		t.Fatalf("new vdisk: %v; want a sync DTL on another node", v)
	}
	d := c.host(v.DTLNode)
	var rest *netHost
	for _, h := range c.hosts.Hosts {
		if h != a && h != d {
			rest = h
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=dtlloss", "--ioengine=nbd", "--uri="+c.nbdURI(a, "dtlloss"),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64m", "--loops=3", "--fsync=64",
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0")
	out := &lineLog{}
	fio.Stdout, fio.Stderr = out, out
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fio.Wait() }()
	time.Sleep(3 * time.Second)
	select {
	case err := <-done:
		t.Fatalf("fio ended before the DTL host was killed (%v): the test needs a longer run\n%s", err, out)
	default:
	}
	killAt := time.Now()
	d.KillAll()
	after, seen := c.waitInfo(a, "dtlloss", "the DTL to move to "+rest.Name, 2*time.Minute, func(v haInfo) bool {
		return v.DTLNode == rest.Name && v.DTLState == "ok"
	})
	running := "still running"
	select {
	case err := <-done:
		done <- err
		running = "had ended"
	default:
	}
	t.Logf("DTL back to ok on %s %v after the kill of %s (fio %s then): %s", rest.Name,
		time.Since(killAt).Round(time.Millisecond), d.Name, running, strings.Join(seen, " -> "))
	if after.Owner != a.Name {
		t.Errorf("the owner changed when only the DTL host died: %v", after)
	}
	if err := <-done; err != nil || !strings.Contains(out.String(), "err= 0") {
		t.Fatalf("fio through %s while the DTL host %s died: %v\n%s", a.Name, d.Name, err, out)
	}
	t.Logf("fio: %s", fioSummary(out.String()))
	c.restartHost(d, a)
}
