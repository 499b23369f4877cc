package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
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

	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
)

// The erasure-coded backend against ASDs that are real `ovs asd serve`
// processes, stopped with SIGSTOP and killed with SIGKILL.

// asdProc is one `ovs asd serve` child process.
type asdProc struct {
	t          *testing.T
	secret     testSecret
	dir        string
	addr       string
	node, site string
	id         string
	logPath    string

	cmd    *exec.Cmd
	exited chan struct{}
	paused bool
}

func startASDProc(t *testing.T, sec testSecret, dir, addr, node, site string) *asdProc {
	t.Helper()
	p := &asdProc{t: t, secret: sec, dir: dir, addr: addr, node: node, site: site, logPath: filepath.Join(dir, "asd.log")}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			if b, err := os.ReadFile(p.logPath); err == nil && len(b) > 0 {
				t.Logf("log of ASD %s (%s):\n%s", p.id, p.addr, lastBytes(b, 4<<10))
			}
		}
	})
	return p
}

func lastBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// start runs the ASD and waits until it answers.
func (p *asdProc) start() {
	t := p.t
	t.Helper()
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ovsBin, "asd", "serve", "--dir", p.dir, "--addr", p.addr, "--node", p.node, "--site", p.site,
		"--secret-file", p.secret.path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		t.Fatalf("starting ovs asd serve: %v", err)
	}
	p.cmd, p.exited, p.paused = cmd, make(chan struct{}), false
	go func(done chan struct{}) { cmd.Wait(); close(done) }(p.exited)
	c := asd.NewClient(p.addr, p.secret.asdClient(t))
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		h, err := c.Health(ctx)
		cancel()
		if err == nil {
			if p.id != "" && h.ID != p.id {
				t.Fatalf("ASD in %s came back as %s, was %s", p.dir, h.ID, p.id)
			}
			p.id = h.ID
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("ovs asd serve exited: %v\n%s", cmd.ProcessState, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ASD %s not answering: %v", p.addr, err)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

func (p *asdProc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	return lastBytes(b, 2<<10)
}

func (p *asdProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *asdProc) stop() { // SIGSTOP: the process hangs, its sockets stay open
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		p.t.Fatal(err)
	}
	p.paused = true
}

func (p *asdProc) cont() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		p.t.Fatal(err)
	}
	p.paused = false
}

// kill9 kills the ASD with SIGKILL and waits for it to be gone.
func (p *asdProc) kill() {
	if p.cmd == nil || !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	if p.paused {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
	<-p.exited
}

// fragmentFiles lists the fragment files the ASD holds.
func (p *asdProc) fragmentFiles() []string {
	var out []string
	filepath.WalkDir(filepath.Join(p.dir, "fragments"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// ecProcCluster is an ec.Backend in the test process on ASD processes.
type ecProcCluster struct {
	t    *testing.T
	asds []*asdProc
	kv   *ec.BoltKV
	b    *ec.Backend
	hc   *http.Client // reaches the ASDs with the cluster's credentials
}

type asdPlace struct{ node, site string }

func startECProcCluster(t *testing.T, places []asdPlace, cfg ec.Config) *ecProcCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	c := &ecProcCluster{t: t}
	root := t.TempDir()
	sec := newTestSecret(t, root)
	c.hc = sec.asdClient(t)
	cfg.HTTPClient = c.hc
	ports := freePorts(t, len(places))
	for i, pl := range places {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i]))
		c.asds = append(c.asds, startASDProc(t, sec, filepath.Join(root, fmt.Sprintf("asd-%d", i)), addr, pl.node, pl.site))
	}
	kv, err := ec.OpenBoltKV(filepath.Join(root, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	c.kv = kv
	cfg.KV = kv
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 100 * time.Millisecond
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = 500 * time.Millisecond
	}
	if cfg.FragmentTimeout == 0 {
		cfg.FragmentTimeout = 2 * time.Second
	}
	if cfg.HedgeAfter == 0 {
		cfg.HedgeAfter = 200 * time.Millisecond
	}
	if cfg.MaintenanceInterval == 0 {
		cfg.MaintenanceInterval = -1 // the tests run maintenance themselves
	}
	logPath := filepath.Join(root, "backend.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logf, nil))
	b, err := ec.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.b = b
	t.Cleanup(func() {
		b.Close()
		kv.Close()
		logf.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("backend log:\n%s", lastBytes(data, 16<<10))
		}
	})
	for _, a := range c.asds {
		if _, err := b.AddASD(context.Background(), a.addr); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// waitASDs waits until the backend's health view matches the processes.
func (c *ecProcCluster) waitASDs() {
	c.t.Helper()
	want := map[string]string{}
	for _, a := range c.asds {
		want[a.id] = "up"
		if a.paused || !a.running() {
			want[a.id] = "down"
		}
	}
	waitFor(c.t, 15*time.Second, "the backend to see the ASDs' state", func() bool {
		l, _ := c.b.ListASDs(context.Background())
		for _, s := range l {
			if w, ok := want[s.ID]; ok && s.Health != w {
				return false
			}
		}
		return true
	})
}

func (c *ecProcCluster) byID(id string) *asdProc {
	for _, a := range c.asds {
		if a.id == id {
			return a
		}
	}
	c.t.Fatalf("no ASD %s", id)
	return nil
}

// testObjects are SCO- and metadata-like objects of assorted sizes.
func testObjects(seed uint64, n int) map[string][]byte {
	r := rand.New(rand.NewPCG(seed, 1))
	sizes := []int{4 << 20, 4 << 20, 0, 1, 517, 4096, 100003, 1 << 20}
	out := map[string][]byte{}
	for i := range n {
		size := sizes[i%len(sizes)]
		if i >= len(sizes) {
			size = 1 + r.IntN(600000)
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		out[fmt.Sprintf("00_%08x_00", i+1)] = b
	}
	return out
}

func (c *ecProcCluster) putAll(ns string, objs map[string][]byte) {
	c.t.Helper()
	ctx := context.Background()
	if err := c.b.CreateNamespace(ctx, ns); err != nil {
		c.t.Fatal(err)
	}
	for name, data := range objs {
		if err := c.b.Put(ctx, ns, name, data, false); err != nil {
			c.t.Fatalf("put %s: %v", name, err)
		}
	}
}

// checkAll reads every object whole and a cluster from the middle.
func (c *ecProcCluster) checkAll(ns string, objs map[string][]byte) {
	c.t.Helper()
	ctx := context.Background()
	for name, want := range objs {
		got, err := c.b.Get(ctx, ns, name)
		if err != nil {
			c.t.Fatalf("get %s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			c.t.Fatalf("get %s: wrong data", name)
		}
		if len(want) >= 8192 {
			off := int64(len(want)/2) &^ 4095
			p := make([]byte, 4096)
			if err := c.b.ReadAt(ctx, ns, name, p, off); err != nil || !bytes.Equal(p, want[off:off+4096]) {
				c.t.Fatalf("ReadAt %s @%d: %v", name, off, err)
			}
		}
	}
}

func sixNodes(n int) []asdPlace {
	var out []asdPlace
	for i := range n {
		out = append(out, asdPlace{fmt.Sprintf("node%d", i), "site1"})
	}
	return out
}

var preset42 = ec.Preset{Name: "p42", Policies: []ec.Policy{{K: 4, M: 2, C: 6, X: 1}}}

// TestECBackendASDFailures: with m ASDs stopped or killed every object
// reads back; with m+1 reads fail with a clear error and nothing is
// damaged; when the ASDs return everything reads again.
func TestECBackendASDFailures(t *testing.T) {
	c := startECProcCluster(t, sixNodes(6), ec.Config{Presets: []ec.Preset{preset42}, Preset: "p42"})
	ctx := context.Background()
	objs := testObjects(1, 14)
	c.putAll("vol1", objs)

	// m = 2 stopped (SIGSTOP: connections hang, nothing answers).
	c.asds[1].stop()
	c.asds[4].stop()
	start := time.Now()
	c.checkAll("vol1", objs)
	t.Logf("read back %d objects with 2 ASDs stopped in %v", len(objs), time.Since(start).Round(time.Millisecond))
	c.asds[1].cont()
	c.asds[4].cont()
	c.waitASDs()

	// m = 2 killed, then one more stopped: m+1 unavailable.
	c.asds[0].kill()
	c.asds[3].kill()
	c.checkAll("vol1", objs)
	c.asds[5].stop()
	c.waitASDs()
	failed := 0
	for name, data := range objs {
		got, err := c.b.Get(ctx, "vol1", name)
		if len(data) < 4 {
			// Its bytes are all in data fragment 0 (or it has none):
			// readable if that fragment is, and then correct.
			if err == nil && !bytes.Equal(got, data) || err != nil && !errors.Is(err, ec.ErrObjectUnavailable) {
				t.Fatalf("get %s of %d bytes with 3 of 6 ASDs gone: %v", name, len(data), err)
			}
			continue
		}
		if !errors.Is(err, ec.ErrObjectUnavailable) {
			t.Fatalf("get %s with 3 of 6 ASDs gone: %v, want ErrObjectUnavailable", name, err)
		}
		if failed == 0 {
			t.Logf("with m+1 ASDs gone: %v", err)
			if !strings.Contains(err.Error(), "fragments readable") {
				t.Errorf("the error should say how many fragments are readable: %v", err)
			}
		}
		failed++
	}
	if err := c.b.Put(ctx, "vol1", "new", []byte("x"), false); !errors.Is(err, ec.ErrInsufficientASDs) {
		t.Fatalf("put with 3 of 6 ASDs gone: %v, want ErrInsufficientASDs", err)
	}
	// They come back: everything reads, nothing was damaged.
	c.asds[5].cont()
	c.asds[0].start()
	c.asds[3].start()
	c.waitASDs()
	c.checkAll("vol1", objs)
	rep, err := c.b.Scrub(ctx)
	if err != nil || rep.Corrupt != 0 || rep.Missing != 0 || rep.Failed != 0 {
		t.Fatalf("scrub after the outage: %+v %v", rep, err)
	}
	if want := 6 * (len(objs) - 1); rep.Scrubbed != want {
		t.Fatalf("scrubbed %d fragments, want %d", rep.Scrubbed, want)
	}
}

// TestECBackendBitRot: flipped bytes in a fragment file are never served;
// the read is still correct, the corruption is reported and repaired.
func TestECBackendBitRot(t *testing.T) {
	c := startECProcCluster(t, sixNodes(6), ec.Config{Presets: []ec.Preset{preset42}, Preset: "p42"})
	ctx := context.Background()
	objs := testObjects(2, 6)
	c.putAll("vol1", objs)
	name := "00_00000001_00" // 4 MiB
	m, err := c.b.ObjectManifest(ctx, "vol1", name)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(m *ec.Manifest, i int) string {
		a := c.byID(m.Fragments[i].ASD)
		path := asd.FragmentPath(a.dir, m.FragmentKey(i))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		at := len(data) - int(m.FragmentSize) + 5000 // in the data, 5000 bytes in
		for j := at; j < at+64; j++ {
			data[j] ^= 0x5a
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	path := flip(m, 0)
	got, err := c.b.Get(ctx, "vol1", name)
	if err != nil || !bytes.Equal(got, objs[name]) {
		t.Fatalf("get over a corrupt fragment: %v", err)
	}
	p := make([]byte, 4096)
	if err := c.b.ReadAt(ctx, "vol1", name, p, 4096); err != nil || !bytes.Equal(p, objs[name][4096:8192]) {
		t.Fatalf("ranged read over a corrupt fragment: %v", err)
	}
	st, err := c.b.Status(ctx)
	if err != nil || st.Counters.CorruptFound != 1 || st.Flagged != 1 {
		t.Fatalf("corruption not reported: %+v %v", st, err)
	}
	rep, err := c.b.RepairFlagged(ctx)
	if err != nil || rep.Repaired != 1 || rep.FragmentsRebuilt != 1 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	c2 := asd.NewClient(c.byID(m.Fragments[0].ASD).addr, c.hc)
	if _, err := c2.Verify(ctx, m.FragmentKey(0)); err != nil {
		t.Fatalf("the repaired fragment %s: %v", path, err)
	}
	// Bit rot nobody reads is found by a scrub.
	m2, _ := c.b.ObjectManifest(ctx, "vol1", "00_00000002_00")
	flip(m2, 5)
	rep, err = c.b.Scrub(ctx)
	if err != nil || rep.Corrupt != 1 || rep.Repaired != 1 || rep.Remaining != 0 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
	if st, _ := c.b.Status(ctx); st.Degraded != 0 || st.Counters.CorruptFound != 2 {
		t.Fatalf("status after repair: %+v", st)
	}
	c.checkAll("vol1", objs)
}

// TestECBackendGeoSpread: a geo preset over 3 sites keeps every object
// readable with all ASDs of any one site stopped.
func TestECBackendGeoSpread(t *testing.T) {
	var places []asdPlace
	for s := range 3 {
		for n := range 3 {
			places = append(places, asdPlace{fmt.Sprintf("dc%d-host%d", s, n), fmt.Sprintf("dc%d", s)})
		}
	}
	geo := ec.Preset{Name: "geo", Policies: []ec.Policy{{K: 4, M: 2, C: 6, X: 1}}, MaxPerSite: 2}
	c := startECProcCluster(t, places, ec.Config{Presets: []ec.Preset{geo}, Preset: "geo"})
	ctx := context.Background()
	objs := testObjects(3, 10)
	c.putAll("vol1", objs)
	for name := range objs {
		m, _ := c.b.ObjectManifest(ctx, "vol1", name)
		perSite := map[string]int{}
		for _, f := range m.Fragments {
			perSite[c.byID(f.ASD).site]++
		}
		for site, n := range perSite {
			if n > 2 {
				t.Fatalf("%s has %d fragments in %s", name, n, site)
			}
		}
	}
	for site := range 3 {
		for _, a := range c.asds[site*3 : site*3+3] {
			a.stop()
		}
		c.waitASDs()
		c.checkAll("vol1", objs)
		t.Logf("all objects readable with site dc%d down", site)
		for _, a := range c.asds[site*3 : site*3+3] {
			a.cont()
		}
		c.waitASDs()
	}
}

// TestECBackendLostASD: an ASD lost for good (killed, disk wiped) is
// rebuilt elsewhere: afterwards every object has all its fragments again.
func TestECBackendLostASD(t *testing.T) {
	c := startECProcCluster(t, sixNodes(7), ec.Config{
		Presets: []ec.Preset{preset42}, Preset: "p42", LostAfter: time.Second,
	})
	ctx := context.Background()
	objs := testObjects(4, 16)
	c.putAll("vol1", objs)
	nonEmpty := 0
	for _, d := range objs {
		if len(d) > 0 {
			nonEmpty++
		}
	}
	count := func(asds []*asdProc) int {
		n := 0
		for _, a := range asds {
			n += len(a.fragmentFiles())
		}
		return n
	}
	if n := count(c.asds); n != 6*nonEmpty {
		t.Fatalf("%d fragment files, want %d", n, 6*nonEmpty)
	}
	lost := c.asds[2]
	for _, a := range c.asds {
		if len(a.fragmentFiles()) > len(lost.fragmentFiles()) {
			lost = a // the busiest, to make it count
		}
	}
	held := len(lost.fragmentFiles())
	lost.kill()
	os.RemoveAll(lost.dir)
	c.waitASDs()
	rest := []*asdProc{}
	for _, a := range c.asds {
		if a != lost {
			rest = append(rest, a)
		}
	}
	time.Sleep(1200 * time.Millisecond) // past LostAfter
	rep, err := c.b.Repair(ctx)
	if err != nil || rep.FragmentsMoved != held || rep.Remaining != 0 || rep.Failed != 0 {
		t.Fatalf("repair after losing an ASD with %d fragments: %+v %v", held, rep, err)
	}
	if n := count(rest); n != 6*nonEmpty {
		t.Fatalf("%d fragment files on the remaining ASDs, want %d", n, 6*nonEmpty)
	}
	for name := range objs {
		m, _ := c.b.ObjectManifest(ctx, "vol1", name)
		for _, f := range m.Fragments {
			if f.ASD == lost.id {
				t.Fatalf("%s still has a fragment on the lost ASD", name)
			}
		}
	}
	st, _ := c.b.Status(ctx)
	if st.Degraded != 0 || st.Unavailable != 0 {
		t.Fatalf("status after repair: %+v", st)
	}
	// Full redundancy again: two more failures are survived.
	rest[0].stop()
	rest[1].kill()
	c.waitASDs()
	c.checkAll("vol1", objs)
	rest[0].cont()
	if err := c.b.RemoveASD(ctx, lost.id, false); err != nil {
		t.Fatalf("removing the lost ASD once nothing refers to it: %v", err)
	}
}

// TestLocalASDSupervisor: ASDs run as child processes are restarted when
// they exit, on the same address and with the same identity.
func TestLocalASDSupervisor(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	ctx := context.Background()
	dir := t.TempDir()
	sec := newTestSecret(t, t.TempDir())
	hc := sec.asdClient(t)
	l, err := asd.StartLocal(ctx, asd.LocalConfig{Dir: dir, Count: 2, Binary: ovsBin, RestartDelay: 50 * time.Millisecond,
		SecretFile: sec.path, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	before := l.List()
	if before[0].Pid == 0 || before[0].ID == "" || before[0].Addr == before[1].Addr {
		t.Fatalf("ASDs: %+v", before)
	}
	syscall.Kill(before[0].Pid, syscall.SIGKILL)
	var after []asd.LocalInfo
	waitFor(t, 10*time.Second, "the ASD to be restarted", func() bool {
		after = l.List()
		return after[0].Pid != 0 && after[0].Pid != before[0].Pid
	})
	c := asd.NewClient(after[0].Addr, hc)
	waitFor(t, 10*time.Second, "the restarted ASD to answer", func() bool {
		h, err := c.Health(ctx)
		return err == nil && h.ID == before[0].ID && h.Pid == after[0].Pid
	})
	if after[0].Restarts != 1 || after[1].Pid != before[1].Pid {
		t.Fatalf("after: %+v", after)
	}
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, a := range after {
		if err := syscall.Kill(a.Pid, 0); err == nil {
			t.Errorf("ASD pid %d still running after Stop", a.Pid)
		}
	}
	// A second start on the same directory brings the same ASDs back.
	l2, err := asd.StartLocal(ctx, asd.LocalConfig{Dir: dir, Count: 2, Binary: ovsBin, SecretFile: sec.path, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Stop()
	if again := l2.List(); again[0].ID != before[0].ID || again[1].Addr != before[1].Addr {
		t.Fatalf("restart on the same dir: %+v, was %+v", again, before)
	}
}

// TestBackendCLI drives `ovs backend` on a data directory: directly on the
// store when no cluster runs, through the admin API when one does.
func TestBackendCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	// ovs backend goes through the REST API of a node (--api) with the
	// backend admin token it derives from the secret in --data.
	c := startClusterWith(t, "--asds", "3")
	ovsAt := func(api string, args ...string) cliResult {
		t.Helper()
		return runOVS(t, nil, append([]string{"--api", api, "backend", "--data", c.Dir}, args...)...)
	}
	ovs := func(args ...string) cliResult { t.Helper(); return ovsAt(c.APIURL(), args...) }
	ok := func(args ...string) string {
		t.Helper()
		r := ovs(args...)
		if r.Code != 0 {
			t.Fatalf("ovs backend %s: %v", strings.Join(args, " "), r)
		}
		return r.Stdout
	}
	expectCLIError(t, "status without a node", ovsAt("http://127.0.0.1:1", "status"), "is the API running")
	sec := newTestSecret(t, c.Dir) // the cluster's: the ASDs added below serve its holders
	var asds []*asdProc
	for i, port := range freePorts(t, 3) {
		asds = append(asds, startASDProc(t, sec, filepath.Join(t.TempDir(), "asd"), net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			fmt.Sprintf("host%d", i), "dc1"))
	}
	for _, a := range asds {
		if out := ok("asd", "add", a.addr); !strings.Contains(out, a.id) {
			t.Fatalf("asd add: %q", out)
		}
	}
	var list []ec.ASDStatus
	if err := json.Unmarshal([]byte(ok("asd", "list", "-o", "json")), &list); err != nil || len(list) != 6 {
		t.Fatalf("asd list -o json: %v %+v", err, list)
	}
	pids := 0
	for _, s := range list {
		if s.Health != "up" || s.State != "active" || s.Capacity == 0 || s.Addr == "" {
			t.Errorf("asd list entry %+v", s)
		}
		if s.Pid != 0 {
			pids++
		}
	}
	if pids != 3 {
		t.Errorf("want the pids of the node's 3 ASDs: %+v", list)
	}
	if out := ok("asd", "list"); !strings.Contains(out, "HEALTH") || !strings.Contains(out, asds[0].id) {
		t.Errorf("asd list table: %q", out)
	}
	ok("preset", "add", "small", "--policy", "2,1,3,1")
	expectCLIError(t, "duplicate preset", ovs("preset", "add", "small", "--policy", "2,1"), "exists")
	expectCLIError(t, "c below k", ovs("preset", "add", "bad", "--policy", "4,2,3,1"), "c must be")
	expectCLIError(t, "site bound over m", ovs("preset", "add", "bad", "--policy", "4,1", "--max-per-site", "2"), "site")
	var presets []ec.Preset
	if err := json.Unmarshal([]byte(ok("preset", "list", "-o", "json")), &presets); err != nil || len(presets) != 2 {
		t.Fatalf("preset list: %v %+v", err, presets)
	}
	var st ec.Status
	if err := json.Unmarshal([]byte(ok("status", "-o", "json")), &st); err != nil || st.ASDs != 6 || st.ASDsUp != 6 {
		t.Fatalf("status: %v %+v", err, st)
	}
	expectCLIError(t, "unknown ASD", ovs("asd", "decommission", "asd-nope"), "not registered")

	// A vdisk's objects (4+2 over the 6 ASDs) are on every ASD.
	c.create("v", "64MiB")
	expectCLIError(t, "remove an ASD in use", ovs("asd", "remove", asds[1].id), "decommission")
	ok("asd", "decommission", asds[1].id)
	if out := ok("repair"); !strings.Contains(out, "repair:") {
		t.Errorf("repair output %q", out)
	}
	if out := ok("scrub"); !strings.Contains(out, "scrubbed") {
		t.Errorf("scrub output %q", out)
	}
	if out := ok("status"); !strings.Contains(out, "objects:") {
		t.Errorf("status output %q", out)
	}
	ok("asd", "remove", asds[1].id, "--force")
	var st2 ec.Status
	if err := json.Unmarshal([]byte(ok("status", "-o", "json")), &st2); err != nil || st2.ASDs != 5 {
		t.Fatalf("status after a forced remove: %v %+v", err, st2)
	}
}
