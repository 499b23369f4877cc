package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// runOVSInPTY runs the ovs CLI against c with a pseudo terminal as its
// stdin, stdout and stderr, and returns everything it wrote there.
func (c *cluster) runOVSInPTY(args ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ovsBin, args...)
	cmd.Env = append(os.Environ(), "OVS_API="+c.APIURL(), "TERM=xterm")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 120})
	if err != nil {
		c.t.Fatalf("starting ovs on a pty: %v", err)
	}
	defer ptmx.Close()
	var out bytes.Buffer
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(&out, ptmx)
		copied <- err
	}()
	err = cmd.Wait()
	// The copy ends with EIO once the child (the only holder of the
	// terminal side) has exited and everything it wrote was read.
	select {
	case <-copied:
	case <-time.After(30 * time.Second):
		c.t.Fatal("the pty's output did not end after ovs exited")
	}
	c.t.Logf("$ ovs %s (on a pty) -> %v", strings.Join(args, " "), err)
	return out.String(), err
}

var (
	percentRE     = regexp.MustCompile(`\d+%`)
	scrubCountsRE = regexp.MustCompile(`SCOs rewritten:\s+(\d+)\s+SCOs deleted:\s+(\d+)`)
)

// checkProgressThenResult: the pty output shows a bar with a percent,
// and the result line comes after the last one.
func checkProgressThenResult(t *testing.T, what, out, result string) {
	t.Helper()
	loc := percentRE.FindAllStringIndex(out, -1)
	end := strings.Index(out, result)
	switch {
	case len(loc) == 0:
		t.Errorf("%s on a terminal showed no progress (no percent):\n%q", what, out)
	case end < 0:
		t.Errorf("%s on a terminal printed no result %q:\n%q", what, result, out)
	case loc[len(loc)-1][0] > end:
		t.Errorf("%s on a terminal: progress after the result:\n%q", what, out)
	}
}

// TestProgressOnTerminal: `ovs vdisk scrub` and `ovs vdisk flatten` of
// vdisks with tens of MiB to rewrite or copy draw a progress bar (a
// percent) on a terminal before printing their usual result; without a
// terminal their output is what it always was, and the jobs the terminal
// runs are listed by the node.
func TestProgressOnTerminal(t *testing.T) {
	needFio(t)
	// Only the scrubs the test asks for.
	c := startClusterWith(t, "--scrub-interval", "0", "--scrub-garbage-ratio", "0")
	for _, name := range []string{"pa", "pb"} {
		c.create(name, "64MiB")
		uri := c.UnixURI(name)
		// A first pass only a deleted snapshot sees, then the live data:
		// the scrub has the first pass's SCOs to drop or rewrite.
		runFio(t, patternJob(uri, patternA, "48m", "--do_verify=0")...)
		c.ovsOK("vdisk", "snapshot", "create", name, "old")
		runFio(t, patternJob(uri, patternB, "32m", "--bs=16k", "--rw=randwrite", "--do_verify=0")...)
		c.ovsOK("vdisk", "snapshot", "create", name, "s1")
		c.ovsOK("vdisk", "snapshot", "delete", name, "old")
		c.ovsOK("vdisk", "sync", name)
	}
	// Clones with 48 MiB to copy. (Not of pa or pb: the SCOs a clone is
	// built on are not scrubbed.)
	c.create("base", "64MiB")
	runFio(t, patternJob(c.UnixURI("base"), patternA, "48m", "--do_verify=0")...)
	c.ovsOK("vdisk", "snapshot", "create", "base", "s1")
	for _, name := range []string{"pa-clone", "pb-clone"} {
		c.ovsOK("vdisk", "clone", name, "--from", "base@s1")
	}

	// On a terminal.
	out, err := c.runOVSInPTY("vdisk", "scrub", "pa")
	if err != nil {
		t.Fatalf("scrub on a pty: %v\n%s", err, out)
	}
	t.Logf("scrub on a pty wrote:\n%q", out)
	checkProgressThenResult(t, "scrub", out, `scrubbed vdisk "pa" in`)
	if m := scrubCountsRE.FindStringSubmatch(out); m == nil || m[1] == "0" && m[2] == "0" {
		t.Errorf("the scrub had nothing to do (%q): the test shows no progress worth the name", m)
	}
	if !strings.Contains(out, "SCOs rewritten:") {
		t.Errorf("scrub on a terminal lacks its usual result:\n%q", out)
	}
	out, err = c.runOVSInPTY("vdisk", "flatten", "pa-clone")
	if err != nil {
		t.Fatalf("flatten on a pty: %v\n%s", err, out)
	}
	t.Logf("flatten on a pty wrote:\n%q", out)
	checkProgressThenResult(t, "flatten", out, `flattened vdisk "pa-clone": it no longer depends on another vdisk`)

	// Without a terminal: exactly the usual output.
	r := c.cli("vdisk", "scrub", "pb")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, `scrubbed vdisk "pb" in `) || strings.ContainsAny(r.Stdout, "%\r\x1b") ||
		!strings.Contains(r.Stdout, "SCOs rewritten:") {
		t.Errorf("scrub without a terminal: %v", r)
	}
	r = c.cli("vdisk", "flatten", "pb-clone")
	if want := "flattened vdisk \"pb-clone\": it no longer depends on another vdisk\n"; r.Code != 0 || r.Stdout != want || r.Stderr != "" {
		t.Errorf("flatten without a terminal: %v, want stdout %q", r, want)
	}
	// -o json on a terminal is for scripts: no bar.
	out, err = c.runOVSInPTY("vdisk", "scrub", "pb", "-o", "json")
	if err != nil || strings.Contains(out, "\r\x1b") || !strings.Contains(out, `"scos_rewritten"`) {
		t.Errorf("scrub -o json on a pty: %v\n%q", err, out)
	}

	// The node kept the two terminal runs as jobs, done.
	var jobs []struct {
		Kind, Target, State string
		Done, Total         int64
	}
	if err := json.Unmarshal([]byte(c.ovsOK("job", "list", "-o", "json")), &jobs); err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || jobs[0].Kind != "scrub" || jobs[0].Target != "pa" || jobs[1].Kind != "flatten" ||
		jobs[0].State != "done" || jobs[1].State != "done" {
		t.Errorf("jobs: %+v", jobs)
	}
	for _, j := range jobs {
		t.Logf("job %s %s: %s, %d of %d", j.Kind, j.Target, j.State, j.Done, j.Total)
	}
}
