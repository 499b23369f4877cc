package tests

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ovsBaseIQN prefixes the target name of every vdisk (BaseIQN:vdisk).
const ovsBaseIQN = "iqn.2026-11.io.ovs"

// ISCSIURL is libiscsi's URL of vdisk name's LUN 0 (qemu-img takes it too).
func (c *cluster) ISCSIURL(name string) string {
	return "iscsi://" + c.ISCSIAddr + "/" + ovsBaseIQN + ":" + name + "/0"
}

// cuStatus is the outcome of one iscsi-test-cu test.
type cuStatus string

const (
	cuPass cuStatus = "pass"
	cuSkip cuStatus = "skip" // CUnit counts it as passed; we do not
	cuFail cuStatus = "fail"
)

// parseCU reads iscsi-test-cu's verbose output into SUITE.TEST -> status.
// A test starts at "  Test: T ..."; its status is the first "passed" or
// "FAILED" that starts the text after the dots or a later line (messages
// are bracketed, "[FAILED] why", "[SKIPPED] why", and a suite's set-up may
// print one after a test's "passed" on the same line).
func parseCU(out string) map[string]cuStatus {
	res := map[string]cuStatus{}
	var suite, test string
	skipped := false
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if s, ok := strings.CutPrefix(trimmed, "Suite: "); ok && !strings.HasPrefix(line, " ") {
			suite, test = strings.TrimSpace(s), ""
			continue
		}
		seg := trimmed
		if rest, ok := strings.CutPrefix(trimmed, "Test: "); ok {
			name, after, _ := strings.Cut(rest, " ...")
			test, skipped, seg = strings.TrimSpace(name), false, strings.TrimSpace(after)
		}
		if test == "" {
			continue
		}
		if strings.HasPrefix(seg, "[SKIPPED]") {
			skipped = true
		}
		switch {
		case strings.HasPrefix(seg, "passed"):
			st := cuPass
			if skipped {
				st = cuSkip
			}
			res[suite+"."+test] = st
			test = ""
		case strings.HasPrefix(seg, "FAILED"):
			res[suite+"."+test] = cuFail
			test = ""
		}
	}
	return res
}

func countCU(res map[string]cuStatus) (pass, skip, fail int) {
	for _, s := range res {
		switch s {
		case cuPass:
			pass++
		case cuSkip:
			skip++
		case cuFail:
			fail++
		}
	}
	return
}

func TestParseCU(t *testing.T) {
	out := `Suite: CompareAndWrite
  Test: Simple ...passed
  Test: Miscompare ...
    [FAILED] wrong sense
FAILED
Suite: Unmap
  Test: VPD ...    [SKIPPED] --dataloss flag is not set. Skipping test.
passed
  Test: Simple ...
    some chatter
passed
  Test: Residuals ...passed    [FAILED] PRIN command: failed with sense.

Suite: Write10
  Test: Control ...    [WARNING] BUSY_TIMEOUT_PERIOD is undefined.
passed
  Test: Dpo ...
    [FAILED] WRITE10 with DPO failed
FAILED
`
	got := parseCU(out)
	want := map[string]cuStatus{"CompareAndWrite.Simple": cuPass, "CompareAndWrite.Miscompare": cuFail,
		"Unmap.VPD": cuSkip, "Unmap.Simple": cuPass, "Unmap.Residuals": cuPass, "Write10.Control": cuPass,
		"Write10.Dpo": cuFail}
	if len(got) != len(want) {
		t.Fatalf("parseCU = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// runCU runs libiscsi's conformance suite (every test, destructive ones
// too) against url, with url again as the second path of the multipath
// tests, and returns its results and output.
func runCU(t *testing.T, url string) (map[string]cuStatus, string) {
	t.Helper()
	dir := t.TempDir() // CUnit writes its XML files into the working directory
	out, err := run(t, 10*time.Minute, dir, "iscsi-test-cu", "--dataloss", "--test=ALL", url, url)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		err = nil // it exits 1 when a test failed: the results say which
	}
	if err != nil {
		t.Fatalf("iscsi-test-cu %s: %v (a crash or hang of the target?)\n%s", url, err, tail(out, 4000))
	}
	res := parseCU(out)
	if len(res) < 200 {
		t.Fatalf("iscsi-test-cu %s: only %d results parsed\n%s", url, len(res), tail(out, 4000))
	}
	return res, out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// startTgt runs Linux tgt (tgtd, Debian tgt) on a free port with one
// target whose LUN 1 is a file of size bytes, and returns its URL.
func startTgt(t *testing.T, size int64) string {
	t.Helper()
	needTools(t, "tgtd", "tgtadm")
	dir := t.TempDir()
	img := filepath.Join(dir, "tgt.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	port := freePorts(t, 1)[0]
	// tgtd's control socket is /var/run/tgtd/socket.N for -C N: a number
	// of our own, so that a tgtd of the host or another test is not ours.
	ctl := strconv.Itoa(1000 + rand.IntN(30000)) // tgtd takes up to 32767
	cmd := exec.Command("tgtd", "-f", "-C", ctl, "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", port))
	logf, err := os.Create(filepath.Join(dir, "tgtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		os.Remove("/var/run/tgtd/socket." + ctl)
		os.Remove("/var/run/tgtd/socket." + ctl + ".lock")
	})
	iqn := "iqn.2026-12.test.tgt:conformance"
	adm := func(args ...string) error {
		out, err := exec.Command("tgtadm", append([]string{"-C", ctl, "--lld", "iscsi"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	var setupErr error
	waitFor(t, 10*time.Second, "tgtd to take commands", func() bool {
		setupErr = adm("--op", "new", "--mode", "target", "--tid", "1", "-T", iqn)
		return setupErr == nil
	})
	for _, args := range [][]string{
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", img},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		if err := adm(args...); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/1", port, iqn)
}

// requiredSuite: the suites the issue names, which OVS must pass in full
// (no failure, no skip) whatever tgt does.
func requiredSuite(suite string) bool {
	for _, p := range []string{"CompareAndWrite", "Unmap", "WriteSame10", "WriteSame16", "Prin", "Prout",
		"Read6", "Read10", "Read12", "Read16", "Write10", "Write12", "Write16", "WriteVerify",
		"SynchronizeCache", "ReportSupportedOpcodes"} {
		if strings.HasPrefix(suite, p) {
			return true
		}
	}
	return false
}

// TestISCSIConformance runs libiscsi's iscsi-test-cu against a vdisk and,
// in the same run, against Linux tgt with a file: every test tgt passes,
// OVS must pass, and the suites the issue names must pass in full.
func TestISCSIConformance(t *testing.T) {
	needTools(t, "iscsi-test-cu", "iscsi-ls", "iscsi-inq")
	const size = 256 * MiB
	tgtURL := startTgt(t, size)
	c := startCluster(t)
	c.create("cu", "256MiB")

	tgt, _ := runCU(t, tgtURL)
	ovs, ovsOut := runCU(t, c.ISCSIURL("cu"))

	var worse, required []string
	for name, st := range tgt {
		if st == cuPass && ovs[name] != cuPass {
			worse = append(worse, fmt.Sprintf("%s (tgt pass, OVS %s)", name, ovs[name]))
		}
	}
	for name, st := range ovs {
		if requiredSuite(name) && st != cuPass {
			required = append(required, fmt.Sprintf("%s: %s", name, st))
		}
	}
	slices.Sort(worse)
	slices.Sort(required)
	tp, ts, tf := countCU(tgt)
	op, os_, of := countCU(ovs)
	report := fmt.Sprintf("iscsi-test-cu --dataloss ALL (multipath: a second session to the same LU)\n"+
		"  OVS vdisk:       %3d passed, %3d skipped, %3d failed of %d\n"+
		"  Linux tgt, file: %3d passed, %3d skipped, %3d failed of %d\n",
		op, os_, of, len(ovs), tp, ts, tf, len(tgt))
	var rest []string
	for name, st := range ovs {
		if st != cuPass {
			rest = append(rest, fmt.Sprintf("%s: %s (tgt: %s)", name, st, tgt[name]))
		}
	}
	slices.Sort(rest)
	report += "  not passed on OVS: " + strings.Join(rest, ", ") + "\n"
	t.Log(report)
	writeReport(t, "iscsi-conformance", report)
	if len(worse) > 0 || len(required) > 0 {
		t.Errorf("tests tgt passes that OVS does not:\n  %s\nrequired suites not passed in full:\n  %s\n%s",
			strings.Join(worse, "\n  "), strings.Join(required, "\n  "), tail(ovsOut, 20000))
	}
}

// writeReport appends a figure for the make test log (OVS_REPORT, set by
// the Makefile, which prints the file after the tests).
func writeReport(t *testing.T, what, text string) {
	path := os.Getenv("OVS_REPORT")
	if path == "" {
		return
	}
	if err := appendFile(path, fmt.Sprintf("== %s (%s)\n%s\n", what, t.Name(), text)); err != nil {
		t.Logf("report %s: %v", what, err)
	}
}

// TestISCSIClients: what an operator does with the target, through
// libiscsi's tools and qemu-img's iscsi driver: discovery, an image
// copied in and compared over iSCSI and over NBD, CHAP (one-way, mutual,
// discovery) set with the CLI, a template write protected, and a deleted
// vdisk's target gone.
func TestISCSIClients(t *testing.T) {
	needTools(t, "iscsi-ls", "iscsi-inq", "qemu-img", "qemu-io")
	c := startCluster(t)
	c.create("vm1", "64MiB")
	portal := "iscsi://" + c.ISCSIAddr
	iqn := ovsBaseIQN + ":vm1"

	out := mustRun(t, time.Minute, "iscsi-ls", "-s", portal)
	if !strings.Contains(out, "Target:"+iqn+" Portal:"+c.ISCSIAddr+",1") || !strings.Contains(out, "DIRECT_ACCESS") {
		t.Fatalf("iscsi-ls does not show the vdisk's target:\n%s", out)
	}
	out = mustRun(t, time.Minute, "iscsi-inq", "-e", "1", "-c", "128", c.ISCSIURL("vm1")) // VPD 0x80

	id := c.info("vm1").ID
	if !strings.Contains(out, id) {
		t.Errorf("unit serial number is not the vdisk id %s:\n%s", id, out)
	}

	// An image in, over iSCSI; the same bytes out over iSCSI and NBD.
	img := filepath.Join(t.TempDir(), "src.img")
	makeImage(t, img, 64*MiB, 7)
	mustRun(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, c.ISCSIURL("vm1"))
	mustRun(t, 5*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, c.ISCSIURL("vm1"))
	mustRun(t, 5*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, c.TCPURI("vm1"))

	// CHAP, one-way then mutual; the secrets go in by file.
	dir := t.TempDir()
	secret := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	login := func(url string) error {
		_, err := run(t, time.Minute, "", "iscsi-inq", url)
		return err
	}
	withUser := func(user, pass, query string) string {
		return "iscsi://" + user + "%" + pass + "@" + c.ISCSIAddr + "/" + iqn + "/0" + query
	}
	expectCLIError(t, "a short secret", c.cli("vdisk", "set-chap", "vm1", "--user", "esx", "--secret-file", secret("short", "tooshort")), "12")
	c.ovsOK("vdisk", "set-chap", "vm1", "--user", "esx", "--secret-file", secret("init", "initiator-secret-1"))
	if login(c.ISCSIURL("vm1")) == nil {
		t.Error("login without CHAP succeeded on a target that requires it")
	}
	if login(withUser("esx", "wrong-secret-000", "")) == nil {
		t.Error("login with a wrong CHAP secret succeeded")
	}
	if err := login(withUser("esx", "initiator-secret-1", "")); err != nil {
		t.Errorf("login with the CHAP secret: %v", err)
	}
	c.ovsOK("vdisk", "set-chap", "vm1", "--user", "esx", "--secret-file", secret("init", "initiator-secret-1"),
		"--mutual-user", "ovs", "--mutual-secret-file", secret("target", "target-secret-22"))
	if err := login(withUser("esx", "initiator-secret-1", "?target_user=ovs&target_password=target-secret-22")); err != nil {
		t.Errorf("login with mutual CHAP: %v", err)
	}
	if login(withUser("esx", "initiator-secret-1", "?target_user=ovs&target_password=not-the-target")) == nil {
		t.Error("mutual CHAP: the initiator accepted a target with the wrong secret")
	}
	// Discovery CHAP guards SendTargets (iscsi-ls without -s only
	// discovers: it does not log in to the targets it finds).
	c.ovsOK("vdisk", "set-chap", "--discovery", "--user", "disc", "--secret-file", secret("disc", "discovery-secret"))
	if _, err := run(t, time.Minute, "", "iscsi-ls", portal); err == nil {
		t.Error("discovery without CHAP succeeded while discovery needs it")
	}
	if out, err := run(t, time.Minute, "", "iscsi-ls", "iscsi://disc%discovery-secret@"+c.ISCSIAddr); err != nil || !strings.Contains(out, iqn) {
		t.Errorf("discovery with CHAP: %v\n%s", err, out)
	}
	c.ovsOK("vdisk", "set-chap", "--discovery", "--none")
	c.ovsOK("vdisk", "set-chap", "vm1", "--none")
	if err := login(c.ISCSIURL("vm1")); err != nil {
		t.Errorf("login after CHAP was removed: %v", err)
	}

	// A template is write protected; reads go on.
	c.ovsOK("vdisk", "set-template", "vm1")
	if out, err := run(t, time.Minute, "", "qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4k", c.ISCSIURL("vm1")); err == nil && !strings.Contains(out, "rror") {
		t.Errorf("a write to a template over iSCSI succeeded:\n%s", out)
	}
	mustRun(t, 5*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, c.ISCSIURL("vm1"))

	// A deleted vdisk's target is gone from discovery and logins.
	c.create("gone", "16MiB")
	c.ovsOK("vdisk", "delete", "gone")
	out = mustRun(t, time.Minute, "iscsi-ls", "-s", portal)
	if strings.Contains(out, ovsBaseIQN+":gone") {
		t.Errorf("iscsi-ls still shows a deleted vdisk:\n%s", out)
	}
	if login(c.ISCSIURL("gone")) == nil {
		t.Error("login to a deleted vdisk's target succeeded")
	}
}

// TestISCSIKillNine: qemu's iSCSI client (qemu-nbd serving the vdisk's
// iSCSI LUN, so that libnbd's writer can drive it and count flushes)
// keeps writing with a SYNCHRONIZE CACHE every 32 writes while ovs up is
// killed with SIGKILL and started again. qemu's libiscsi reconnects and
// carries on; afterwards every write acknowledged before the last
// completed flush is on the vdisk, read back over NBD.
func TestISCSIKillNine(t *testing.T) {
	needTools(t, "qemu-nbd")
	py := needPython(t)
	c := startCluster(t)
	c.create("crash", "64MiB")
	bridge := startQemuNBD(t, c.ISCSIURL("crash"), filepath.Dir(c.Socket))
	defer bridge.stop()
	qlog := bridge.log

	w := &crashWriter{seed: 303, base: 0, nblocks: 8192}
	wr := exec.Command(py, nbdioScript(t), "crash-write", bridge.uri,
		fmt.Sprint(w.seed), fmt.Sprint(w.base), fmt.Sprint(w.nblocks), fmt.Sprint(crashFlushEvery))
	lines, wErr, stopWriter := streamLines(t, wr)
	defer stopWriter()
	flushes := 0
	stopped := ""
	parse := func(line string) {
		switch w.parse(line) {
		case "FLUSHED":
			flushes++
		case "STOPPED":
			stopped = line
		}
	}
	// waitFlushes reads the writer until it has completed n more flushes.
	waitFlushes := func(n int, within time.Duration, what string) {
		t.Helper()
		goal, deadline := flushes+n, time.After(within)
		for flushes < goal {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("%s: the writer ended after %d flushes (%s): %s\nqemu-nbd: %s",
						what, flushes, stopped, wErr.String(), qlog.String())
				}
				parse(line)
			case <-deadline:
				t.Fatalf("%s: %d of %d flushes in %v\nqemu-nbd: %s", what, flushes, goal, within, qlog.String())
			}
		}
	}
	w.issued = -1
	waitFlushes(crashMinFlushes, 3*time.Minute, "before the crash")
	c.kill9()
	before := w.flushed
	c.start()
	waitFlushes(crashMinFlushes, 2*time.Minute, "after the restart (did qemu's iSCSI client reconnect?)")
	t.Logf("the writer carried on across the crash: %d writes flushed before it, %d after", before, w.flushed)

	// Stop the writer by taking its NBD server away; it reports what it
	// issued.
	bridge.stop()
	for line := range lines {
		parse(line)
	}
	wr.Wait()
	if w.issued < w.flushed {
		t.Fatalf("writer did not report what it issued (flushed %d, issued %d): %s", w.flushed, w.issued, wErr.String())
	}
	w.check(t, py, c.UnixURI("crash"))
}

// qemuNBD is qemu-nbd serving a qemu block URL (here iscsi://) as NBD on
// a unix socket: how libnbd's tools and fio, which speak NBD, drive
// qemu's iSCSI client.
type qemuNBD struct {
	uri  string
	log  *strings.Builder
	cmd  *exec.Cmd
	done chan struct{}
}

func startQemuNBD(t *testing.T, source, dir string) *qemuNBD {
	t.Helper()
	sock := filepath.Join(dir, fmt.Sprintf("qemu-nbd-%d.sock", rand.IntN(1<<30)))
	q := &qemuNBD{uri: "nbd+unix:///?socket=" + sock, log: &strings.Builder{}, done: make(chan struct{})}
	// --persistent, --shared: fio and libnbd open connections one after another.
	q.cmd = exec.Command("qemu-nbd", "-f", "raw", "--cache=none", "--aio=threads", "--persistent", "--shared=8", "-k", sock, source)
	q.cmd.Stdout, q.cmd.Stderr = q.log, q.log
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { q.cmd.Wait(); close(q.done) }()
	t.Cleanup(q.stop)
	waitFor(t, 30*time.Second, "qemu-nbd's socket", func() bool {
		_, err := os.Stat(sock)
		return err == nil
	})
	return q
}

// stop kills qemu-nbd (its clients see their connection end).
func (q *qemuNBD) stop() {
	q.cmd.Process.Kill()
	<-q.done
}

// iscsiAddr is a cluster node's iSCSI portal (its default: the API's
// host, port 3260).
func iscsiURL(h *netHost, name string) string {
	return "iscsi://" + h.HostPort(3260) + "/" + ovsBaseIQN + ":" + name + "/0"
}

// iscsiAcrossNodes: a vdisk owned by h1 is one LUN through every node. An
// image written through h2's target reads back through h3's and h1's, and
// libiscsi's multipath tests (COMPARE AND WRITE racing on two paths among
// them) pass with one session to h2 and one to h3, both forwarding to
// the owner.
func iscsiAcrossNodes(t *testing.T, c *netCluster, h1, h2, h3 *netHost) {
	needTools(t, "iscsi-test-cu", "iscsi-ls", "qemu-img")
	c.ovsOK(h1, "vdisk", "create", "lun", "--size", "64MiB")
	for _, h := range []*netHost{h1, h2, h3} {
		out := mustRun(t, time.Minute, "iscsi-ls", "iscsi://"+h.HostPort(3260))
		if !strings.Contains(out, ovsBaseIQN+":lun Portal:"+h.HostPort(3260)+",1") {
			t.Fatalf("discovery through %s:\n%s", h.Name, out)
		}
	}
	img := filepath.Join(t.TempDir(), "src.img")
	makeImage(t, img, 64*MiB, 11)
	mustRun(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, iscsiURL(h2, "lun"))
	for _, h := range []*netHost{h3, h1} {
		mustRun(t, 5*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, iscsiURL(h, "lun"))
	}
	// A fresh vdisk: the multipath COMPARE AND WRITE test assumes zeros
	// one block beyond what it initialises.
	c.ovsOK(h1, "vdisk", "create", "mp", "--size", "64MiB")
	out, err := run(t, 5*time.Minute, "", "iscsi-test-cu", "--dataloss", "--test=ALL.MultipathIO",
		iscsiURL(h2, "mp"), iscsiURL(h3, "mp"))
	res := parseCU(out)
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) || len(res) == 0 {
		t.Fatalf("iscsi-test-cu MultipathIO: %v\n%s", err, tail(out, 4000))
	}
	for name, st := range res {
		if st != cuPass {
			t.Errorf("multipath over two nodes: %s %s\n%s", name, st, tail(out, 4000))
		}
	}
	c.ovsOK(h1, "vdisk", "delete", "lun")
	c.ovsOK(h1, "vdisk", "delete", "mp")
}
