package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/internal/freeport"

	"github.com/anishathalye/porcupine"
	"gopkg.in/yaml.v3"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/framework/secret"
)

// End-to-end tests of arakoon: real `ovs arakoon serve` processes on
// loopback, killed with SIGKILL, driven by the arakoon client library and
// the `ovs arakoon` CLI.

// araTuning keeps failover quick but tolerant of a loaded 2-core machine;
// snapshots are frequent so that catch-up from a snapshot is exercised.
var araTuning = arakoon.Tuning{
	HeartbeatTimeout:   arakoon.Duration(400 * time.Millisecond),
	ElectionTimeout:    arakoon.Duration(400 * time.Millisecond),
	LeaderLeaseTimeout: arakoon.Duration(300 * time.Millisecond),
	CommitTimeout:      arakoon.Duration(5 * time.Millisecond),
	SnapshotInterval:   arakoon.Duration(300 * time.Millisecond),
	SnapshotThreshold:  200,
	TrailingLogs:       100,
}

// araCluster is an arakoon cluster of `ovs arakoon serve` processes.
type araCluster struct {
	t       *testing.T
	dir     string
	cfgPath string
	cfg     *arakoon.Config
	secret  testSecret
	mu      sync.Mutex
	nodes   map[string]*araNode
}

type araNode struct {
	id      string
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

func (n *araNode) running() bool {
	if n == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// araFreeAddrs returns n distinct 127.0.0.1 addresses free a moment ago.
func araFreeAddrs(t *testing.T, n int) []string {
	t.Helper()
	out, err := freeport.Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startAraCluster writes a cluster file for n nodes (plus extra join
// nodes, not started) and starts the n nodes.
func startAraCluster(t *testing.T, n, join int) *araCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	c := &araCluster{t: t, dir: t.TempDir(), nodes: map[string]*araNode{}}
	c.secret = newTestSecret(t, c.dir)
	c.cfg = &arakoon.Config{Cluster: "e2e", Tuning: araTuning, SecretFile: c.secret.path}
	addrs := araFreeAddrs(t, 2*(n+join))
	for i := range n + join {
		id := "a" + strconv.Itoa(i+1)
		c.cfg.Nodes = append(c.cfg.Nodes, arakoon.NodeConfig{
			ID: id, Client: addrs[2*i], Raft: addrs[2*i+1],
			Data: filepath.Join(c.dir, id), Join: i >= n,
		})
	}
	c.cfgPath = filepath.Join(c.dir, "cluster.yaml")
	data, err := yaml.Marshal(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.cfgPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := arakoon.LoadConfig(c.cfgPath); err != nil {
		t.Fatalf("the cluster file does not load: %v\n%s", err, data)
	}
	t.Cleanup(func() {
		c.mu.Lock()
		nodes := c.nodes
		c.mu.Unlock()
		for _, nd := range nodes {
			if nd.running() {
				syscall.Kill(-nd.cmd.Process.Pid, syscall.SIGKILL)
				<-nd.exited
			}
		}
		if t.Failed() {
			for _, nd := range c.cfg.Nodes {
				c.dumpLog(nd.ID)
			}
		}
	})
	for i := range n {
		c.start(c.cfg.Nodes[i].ID)
	}
	return c
}

func (c *araCluster) node(id string) arakoon.NodeConfig {
	n, ok := c.cfg.Node(id)
	if !ok {
		c.t.Fatalf("no node %s", id)
	}
	return n
}

// start runs `ovs arakoon serve` for node id and waits until it accepts
// client connections.
func (c *araCluster) start(id string) {
	t := c.t
	t.Helper()
	c.mu.Lock()
	if c.nodes[id].running() {
		c.mu.Unlock()
		t.Fatalf("start %s: already running", id)
	}
	c.mu.Unlock()
	logPath := filepath.Join(c.dir, id+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== start at %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(ovsBin, "arakoon", "serve", "--config", c.cfgPath, "--node", id)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	nd := &araNode{id: id, cmd: cmd, exited: make(chan struct{}), logPath: logPath}
	go func() { cmd.Wait(); close(nd.exited) }()
	c.mu.Lock()
	c.nodes[id] = nd
	c.mu.Unlock()
	addr := c.node(id).Client
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-nd.exited:
			t.Fatalf("node %s exited at start: %s\n%s", id, cmd.ProcessState, c.logTail(id))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s does not accept clients on %s: %v", id, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 crashes node id with SIGKILL.
func (c *araCluster) kill9(id string) {
	c.t.Helper()
	c.mu.Lock()
	nd := c.nodes[id]
	c.mu.Unlock()
	if !nd.running() {
		c.t.Fatalf("kill9 %s: not running", id)
	}
	syscall.Kill(-nd.cmd.Process.Pid, syscall.SIGKILL)
	<-nd.exited
	c.t.Logf("node %s killed with SIGKILL", id)
}

// stop stops node id with SIGTERM and expects a clean exit.
func (c *araCluster) stop(id string) {
	c.t.Helper()
	c.mu.Lock()
	nd := c.nodes[id]
	c.mu.Unlock()
	if !nd.running() {
		return
	}
	nd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-nd.exited:
		if st := nd.cmd.ProcessState; !st.Success() {
			c.t.Errorf("node %s exited with %s after SIGTERM", id, st)
		}
	case <-time.After(30 * time.Second):
		c.t.Errorf("node %s still running 30s after SIGTERM; killing it", id)
		syscall.Kill(-nd.cmd.Process.Pid, syscall.SIGKILL)
		<-nd.exited
	}
}

func (c *araCluster) logTail(id string) string {
	data, err := os.ReadFile(filepath.Join(c.dir, id+".log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(data) > 24<<10 {
		data = append([]byte("...\n"), data[len(data)-24<<10:]...)
	}
	return string(data)
}

func (c *araCluster) dumpLog(id string) {
	c.t.Logf("node %s log:\n%s", id, c.logTail(id))
}

func (c *araCluster) client() *arakoon.Client {
	c.t.Helper()
	cc := c.cfg.ClientConfig()
	cc.AttemptTimeout = 3 * time.Second
	tc, err := c.secret.ClientTLS(secret.RoleCLI, "test", secret.RoleArakoon)
	if err != nil {
		c.t.Fatal(err)
	}
	cc.TLS = tc
	cl, err := arakoon.NewClient(cc)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// master asks the cluster for its master, waiting for one.
func (c *araCluster) master(cl *arakoon.Client) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := cl.WhoMaster(ctx)
	if err != nil {
		c.t.Fatalf("who_master: %v", err)
	}
	return m.ID
}

// cli runs `ovs arakoon --config FILE args...`.
func (c *araCluster) cli(args ...string) (string, string, error) {
	full := append([]string{"arakoon", "--config", c.cfgPath, "--timeout", "20s"}, args...)
	cmd := exec.Command(ovsBin, full...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	c.t.Logf("$ ovs %s -> %v", strings.Join(full, " "), araErrOrOK(err))
	return stdout.String(), stderr.String(), err
}

func (c *araCluster) cliOK(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.cli(args...)
	if err != nil {
		c.t.Fatalf("ovs arakoon %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func araErrOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func araWait(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func opCtx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// araWriter writes keys w/<worker>/<n> in a loop and remembers which
// writes were acknowledged.
type araWriter struct {
	mu      sync.Mutex
	acked   map[string]string
	lastAck atomic.Int64 // unix nanos of the last acknowledged write
	count   atomic.Int64
}

func (w *araWriter) run(ctx context.Context, cl *arakoon.Client, worker int) {
	for i := 0; ctx.Err() == nil; i++ {
		k := fmt.Sprintf("w/%02d/%06d", worker, i)
		v := fmt.Sprintf("value %d of worker %d", i, worker)
		octx, cancel := opCtx(20 * time.Second)
		err := cl.Set(octx, []byte(k), []byte(v))
		cancel()
		if err == nil {
			w.mu.Lock()
			w.acked[k] = v
			w.mu.Unlock()
			w.lastAck.Store(time.Now().UnixNano())
			w.count.Add(1)
		}
	}
}

// checkAcked verifies that every acknowledged write is there, reading
// from the master, or (stale) from one node.
func (w *araWriter) checkAcked(t *testing.T, cl *arakoon.Client, opts ...arakoon.ReadOption) {
	t.Helper()
	ctx, cancel := opCtx(60 * time.Second)
	defer cancel()
	ents, err := cl.RangeEntries(ctx, arakoon.Range{First: []byte("w/"), Last: []byte("w0")}, opts...)
	if err != nil {
		t.Fatalf("range_entries: %v", err)
	}
	got := map[string]string{}
	for _, e := range ents {
		got[string(e.Key)] = string(e.Value)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	lost := 0
	for k, v := range w.acked {
		if got[k] != v {
			if lost < 5 {
				t.Errorf("acknowledged write %s = %q is %q", k, v, got[k])
			}
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged writes lost", lost, len(w.acked))
	}
}

func (w *araWriter) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func TestArakoonKillMasterDuringWrites(t *testing.T) {
	c := startAraCluster(t, 3, 0)
	cl := c.client()
	w := &araWriter{acked: map[string]string{}}
	ctx, stopWriters := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 8 {
		wcl := cl
		if i%2 == 1 {
			wcl = c.client()
		}
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, wcl, i) }()
	}
	araWait(t, 30*time.Second, "200 acknowledged writes", func() bool { return w.count.Load() >= 200 })

	// kill -9 the master in the middle of the stream.
	old := c.master(cl)
	killed := time.Now()
	c.kill9(old)
	araWait(t, 15*time.Second, "a write acknowledged by a new master", func() bool { return w.lastAck.Load() > killed.UnixNano() })
	failover := time.Since(killed)
	nm := c.master(cl)
	if nm == old {
		t.Fatalf("the killed node %s is still the master", old)
	}
	t.Logf("master %s killed; %s acknowledged a write %v later", old, nm, failover.Round(time.Millisecond))
	before := w.count.Load()
	araWait(t, 30*time.Second, "200 more writes", func() bool { return w.count.Load() >= before+200 })

	// The killed node restarts and catches up with the stream.
	c.start(old)
	stopAt := w.count.Load() + 200
	araWait(t, 30*time.Second, "200 writes after the restart", func() bool { return w.count.Load() >= stopAt })
	stopWriters()
	wg.Wait()
	t.Logf("%d writes acknowledged", w.ackedCount())
	w.checkAcked(t, cl)
	araWait(t, 20*time.Second, old+" caught up", func() bool {
		octx, cancel := opCtx(5 * time.Second)
		defer cancel()
		keys, err := cl.PrefixKeys(octx, []byte("w/"), 0, arakoon.ReadFrom(old))
		return err == nil && len(keys) >= w.ackedCount()
	})
	w.checkAcked(t, cl, arakoon.ReadFrom(old))

	// kill -9 a follower, write past the snapshot threshold and the
	// trailing logs: it can only catch up from a snapshot.
	m := c.master(cl)
	var follower string
	for _, n := range c.cfg.Nodes {
		if n.ID != m {
			follower = n.ID
		}
	}
	c.kill9(follower)
	ctx, stopWriters = context.WithCancel(context.Background())
	for i := range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, cl, 10+i) }()
	}
	before = w.count.Load()
	araWait(t, 60*time.Second, "1000 writes with a follower down", func() bool { return w.count.Load() >= before+1000 })
	stopWriters()
	wg.Wait()
	araWait(t, 20*time.Second, "a snapshot on the master", func() bool {
		octx, cancel := opCtx(5 * time.Second)
		defer cancel()
		st, err := cl.Statistics(octx, "")
		return err == nil && st.LastSnapshotIndex+400 > st.LastIndex
	})
	c.start(follower)
	araWait(t, 30*time.Second, follower+" caught up from a snapshot", func() bool {
		octx, cancel := opCtx(5 * time.Second)
		defer cancel()
		keys, err := cl.PrefixKeys(octx, []byte("w/"), 0, arakoon.ReadFrom(follower))
		return err == nil && len(keys) >= w.ackedCount()
	})
	w.checkAcked(t, cl, arakoon.ReadFrom(follower))
	octx, cancel := opCtx(10 * time.Second)
	st, err := cl.Statistics(octx, follower)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if st.SnapshotRestores == 0 {
		t.Errorf("%s caught up without installing a snapshot: %+v", follower, st)
	}

	// Stop all three, start them: the data is intact.
	for _, n := range c.cfg.Nodes {
		c.stop(n.ID)
	}
	for _, n := range c.cfg.Nodes {
		c.start(n.ID)
	}
	c.master(cl)
	w.checkAcked(t, cl)
	// And once more after kill -9 of all three at once.
	for _, n := range c.cfg.Nodes {
		c.kill9(n.ID)
	}
	for _, n := range c.cfg.Nodes {
		c.start(n.ID)
	}
	w.checkAcked(t, cl)
}

// --- linearizability -------------------------------------------------------

type kvInput struct {
	op       string // get, set, tas
	key      string
	value    string // set, tas: the new value
	expected string // tas
	expAbs   bool   // tas: expect the key absent
}

type kvOutput struct {
	value   string // get: the value; tas: the old value
	present bool
	unknown bool // the outcome of a set or tas is not known (error)
}

// kvState is a key's value; absent is "\x00absent".
const absent = "\x00absent"

var kvModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() []interface{} { return []interface{}{absent} },
	Step: func(state, input, output interface{}) []interface{} {
		s, in, out := state.(string), input.(kvInput), output.(kvOutput)
		cur, present := s, s != absent
		switch in.op {
		case "get":
			if out.present == present && (!present || out.value == cur) {
				return []interface{}{s}
			}
			return nil
		case "set":
			if out.unknown {
				return []interface{}{s, in.value}
			}
			return []interface{}{in.value}
		case "tas":
			match := (in.expAbs && !present) || (!in.expAbs && present && cur == in.expected)
			next := s
			if match {
				next = in.value
			}
			if out.unknown {
				return []interface{}{s, next}
			}
			if out.present != present || (present && out.value != cur) {
				return nil
			}
			return []interface{}{next}
		}
		return nil
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(kvInput), output.(kvOutput)
		return fmt.Sprintf("%s(%s %q %q) -> %q present=%v unknown=%v", in.op, in.key, in.expected, in.value, out.value, out.present, out.unknown)
	},
}

func TestArakoonLinearizable(t *testing.T) {
	c := startAraCluster(t, 3, 0)
	c.master(c.client())
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var (
		mu  sync.Mutex
		ops []porcupine.Operation
	)
	keys := []string{"x", "y", "z"}
	ctx, stop := context.WithTimeout(context.Background(), 20*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var unknown, done atomic.Int64
	for cid := range 6 {
		cl := c.client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cid), 7))
			last := map[string]string{}
			for n := 0; ctx.Err() == nil; n++ {
				key := keys[rng.IntN(len(keys))]
				in := kvInput{key: key, value: fmt.Sprintf("c%d-%d", cid, n)}
				var out kvOutput
				octx, cancel := opCtx(8 * time.Second)
				call := now()
				var err error
				switch r := rng.IntN(10); {
				case r < 4:
					in.op = "get"
					var v []byte
					v, err = cl.Get(octx, []byte(key))
					if errors.Is(err, arakoon.ErrNotFound) {
						err = nil
					} else if err == nil {
						out = kvOutput{value: string(v), present: true}
						last[key] = string(v)
					}
				case r < 7:
					in.op = "set"
					err = cl.Set(octx, []byte(key), []byte(in.value))
				default:
					in.op = "tas"
					var exp []byte
					if v, ok := last[key]; ok && rng.IntN(4) > 0 {
						exp, in.expected = []byte(v), v
					} else {
						in.expAbs = true
					}
					var old []byte
					old, _, err = cl.TestAndSet(octx, []byte(key), exp, []byte(in.value))
					if err == nil {
						out = kvOutput{value: string(old), present: old != nil}
					}
				}
				ret := now()
				cancel()
				if err != nil {
					if in.op == "get" {
						continue // a failed read had no effect
					}
					// A failed write may or may not have happened, at any
					// time after its call.
					out = kvOutput{unknown: true}
					ret = math.MaxInt64
					unknown.Add(1)
				}
				done.Add(1)
				mu.Lock()
				ops = append(ops, porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: out, Return: ret})
				mu.Unlock()
			}
		}()
	}
	// The nemesis: kill -9 a node (the master every other time), restart it.
	cl := c.client()
	kills := 0
	for i := 0; ctx.Err() == nil; i++ {
		time.Sleep(1500 * time.Millisecond)
		if ctx.Err() != nil {
			break
		}
		victim := c.cfg.Nodes[rand.IntN(len(c.cfg.Nodes))].ID
		if i%2 == 0 {
			mctx, cancel := opCtx(5 * time.Second)
			if m, err := cl.WhoMaster(mctx); err == nil {
				victim = m.ID
			}
			cancel()
		}
		c.kill9(victim)
		kills++
		time.Sleep(time.Second)
		c.start(victim)
	}
	wg.Wait()
	t.Logf("%d operations (%d with unknown outcome), %d kills", len(ops), unknown.Load(), kills)
	if len(ops) < 300 {
		t.Fatalf("only %d operations completed", len(ops))
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel.ToModel(), ops, 60*time.Second)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Fatal("porcupine could not decide within 60s")
	default:
		path := filepath.Join(t.TempDir(), "history.html")
		if err := porcupine.VisualizePath(kvModel.ToModel(), info, path); err == nil {
			t.Logf("visualization: %s", path)
		}
		t.Fatal("the history is not linearizable")
	}
}

// increment adds one to a counter by test_and_set, retrying on conflicts.
func araIncrement(ctx context.Context, cl *arakoon.Client, key []byte) error {
	for {
		cur, err := cl.Get(ctx, key)
		if err != nil && !errors.Is(err, arakoon.ErrNotFound) {
			return err
		}
		n := 0
		if cur != nil {
			if n, err = strconv.Atoi(string(cur)); err != nil {
				return err
			}
		}
		_, ok, err := cl.TestAndSet(ctx, key, cur, []byte(strconv.Itoa(n+1)))
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
}

func TestArakoonCounterExactlyOnce(t *testing.T) {
	c := startAraCluster(t, 3, 0)
	const workers, each = 6, 40
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		cl := c.client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				ctx, cancel := opCtx(60 * time.Second)
				err := araIncrement(ctx, cl, []byte("counter"))
				cancel()
				if err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	cl := c.client()
	araWait(t, 60*time.Second, "a third of the increments", func() bool { return done.Load() >= workers*each/3 })
	m := c.master(cl)
	c.kill9(m)
	araWait(t, 60*time.Second, "two thirds of the increments", func() bool { return done.Load() >= 2*workers*each/3 })
	c.start(m)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	ctx, cancel := opCtx(20 * time.Second)
	defer cancel()
	v, err := cl.Get(ctx, []byte("counter"))
	if err != nil {
		t.Fatal(err)
	}
	if string(v) != strconv.Itoa(workers*each) {
		t.Fatalf("counter = %s after %d acknowledged increments", v, workers*each)
	}
	// A sequence whose assert fails changes nothing.
	seq := (&arakoon.Sequence{}).Set([]byte("counter"), []byte("0")).Assert([]byte("counter"), []byte("1"))
	if err := cl.Sequence(ctx, seq); !errors.Is(err, arakoon.ErrAssertionFailed) {
		t.Fatalf("sequence with a failing assert: %v", err)
	}
	if v2, _ := cl.Get(ctx, []byte("counter")); string(v2) != string(v) {
		t.Fatalf("a failed sequence changed the counter to %s", v2)
	}
}

func TestArakoonCLI(t *testing.T) {
	c := startAraCluster(t, 3, 1)
	c.cliOK("set", "vdisk/one", "hello world")
	c.cliOK("set", "vdisk/two", "2")
	c.cliOK("set", "other", "x")
	if out := c.cliOK("get", "vdisk/one"); out != "hello world\n" {
		t.Fatalf("get printed %q", out)
	}
	if out := c.cliOK("list", "--prefix", "vdisk/"); out != "vdisk/one\nvdisk/two\n" {
		t.Fatalf("list printed %q", out)
	}
	c.cliOK("delete", "vdisk/two")
	if out, errOut, err := c.cli("get", "vdisk/two"); err == nil || !strings.Contains(errOut, "not found") || out != "" {
		t.Fatalf("get of a deleted key: %v, stdout %q, stderr %q", err, out, errOut)
	}
	if _, errOut, err := c.cli("delete", "vdisk/two"); err == nil || !strings.Contains(errOut, "not found") {
		t.Fatalf("delete of a missing key: %v, stderr %q", err, errOut)
	}
	m := strings.TrimSpace(c.cliOK("who-master"))
	if _, ok := c.cfg.Node(m); !ok {
		t.Fatalf("who-master printed %q", m)
	}
	var st arakoon.Statistics
	if err := json.Unmarshal([]byte(c.cliOK("stats", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Node != m || st.State != "Leader" || st.Keys != 2 {
		t.Fatalf("stats: %+v", st)
	}
	if out := c.cliOK("stats", "--node", "a2"); !strings.Contains(out, "node") || !strings.Contains(out, "a2") {
		t.Fatalf("stats --node a2:\n%s", out)
	}
	// A value over 8 MiB gets a clear error.
	big := filepath.Join(c.dir, "big")
	os.WriteFile(big, make([]byte, 8<<20+1), 0o644)
	f, _ := os.Open(big)
	cmd := exec.Command(ovsBin, "arakoon", "--config", c.cfgPath, "set", "big", "--stdin")
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	f.Close()
	if err == nil || !strings.Contains(string(out), "8 MiB") {
		t.Fatalf("set of 8 MiB + 1: %v %s", err, out)
	}
	// Membership: a4 (join: true in the file) joins the live cluster,
	// then the master leaves it.
	c.start("a4")
	c.cliOK("add-node", "a4")
	araWait(t, 20*time.Second, "a4 replicates", func() bool {
		out, _, err := c.cli("get", "--node", "a4", "vdisk/one")
		return err == nil && out == "hello world\n"
	})
	if out := c.cliOK("members"); strings.Count(out, "voter") != 4 {
		t.Fatalf("members after add-node:\n%s", out)
	}
	c.cliOK("remove-node", m)
	// The removed node stops by itself.
	c.mu.Lock()
	removed := c.nodes[m]
	c.mu.Unlock()
	select {
	case <-removed.exited:
		if st := removed.cmd.ProcessState; !st.Success() {
			t.Errorf("removed node %s exited with %s", m, st)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("removed node %s still running 20s after remove-node", m)
		c.stop(m)
	}
	c.cliOK("set", "after", "removal")
	out2 := c.cliOK("members")
	if strings.Count(out2, "voter") != 3 || strings.Contains(out2, m+" ") {
		t.Fatalf("members after remove-node %s:\n%s", m, out2)
	}
	if nm := strings.TrimSpace(c.cliOK("who-master")); nm == m {
		t.Fatalf("removed node %s still master", m)
	}
	// Usage errors.
	if _, errOut, err := c.cli("get"); err == nil || !strings.Contains(errOut, "KEY") {
		t.Fatalf("get without a key: %v %q", err, errOut)
	}
	noCfg := exec.Command(ovsBin, "arakoon", "get", "k")
	noCfg.Env = append(os.Environ(), "OVS_ARAKOON_CONFIG=")
	if out, err := noCfg.CombinedOutput(); err == nil || !strings.Contains(string(out), "--config") {
		t.Fatalf("get without a cluster file: %v %s", err, out)
	}
}
