package tests

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// healthReport is the part of `ovs health -o json` the test reads.
type healthReport struct {
	Status string `json:"status"`
	Node   string `json:"node"`
	Checks []struct {
		Name    string         `json:"name"`
		Status  string         `json:"status"`
		Message string         `json:"message"`
		Details map[string]any `json:"details"`
	} `json:"checks"`
}

func (c *cluster) healthJSON() healthReport {
	c.t.Helper()
	r := c.cli("health", "-o", "json")
	var rep healthReport
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
		c.t.Fatalf("ovs health -o json: %v: %v", err, r)
	}
	if want := map[string]int{"ok": 0, "warning": 1, "error": 2}[rep.Status]; r.Code != want || rep.Status == "" {
		c.t.Fatalf("ovs health -o json: status %q with exit %d", rep.Status, r.Code)
	}
	return rep
}

// TestHealthASDStopped: on `ovs up` (erasure-coded backend) every check is
// ok; an ASD that stops answering turns `ovs health` to warning (exit 1),
// naming it, and back to ok once it answers again.
//
// The ASD is stopped with SIGSTOP, not killed: ovs up supervises its ASDs
// and restarts one that exits after 200ms, which would model a crash, not
// an ASD that is down. A stopped process keeps its socket, so the
// backend's probes connect and then time out, as they do with a hung disk
// or host; SIGCONT brings it back.
func TestHealthASDStopped(t *testing.T) {
	c := startCluster(t)
	// Objects on the backend, so that the degraded-objects check has
	// something to look at.
	c.create("hvd", "64MiB")
	c.ovsOK("vdisk", "sync", "hvd")

	var last cliResult
	waitFor(t, 30*time.Second, "ovs health to be ok", func() bool {
		last = c.cli("health")
		return last.Code == 0
	})
	for _, check := range []string{"arakoon", "asds", "degraded-objects", "write-buffer", "dtl", "nodes", "clock-skew"} {
		if !strings.Contains(last.Stdout, "\n"+check+" ") {
			t.Errorf("ovs health lists no %s check:\n%s", check, last.Stdout)
		}
	}
	if rep := c.healthJSON(); rep.Status != "ok" || len(rep.Checks) != 7 {
		t.Fatalf("ovs health -o json: %+v", rep)
	}

	asds := c.asds()
	victim := asds[len(asds)/2]
	if victim.PID == 0 {
		t.Fatalf("ASD %s has no pid in asd list", victim.ID)
	}
	if err := syscall.Kill(victim.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(victim.PID, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT ASD %s: %v", victim.ID, err)
			}
		}
	}
	t.Cleanup(resume) // before ovs up stops (cleanups run last first)
	t.Logf("SIGSTOP ASD %s (pid %d)", victim.ID, victim.PID)

	waitFor(t, 30*time.Second, "ovs health to warn about "+victim.ID, func() bool {
		last = c.cli("health")
		return last.Code == 1 && strings.Contains(last.Stdout, victim.ID)
	})
	t.Logf("ovs health with ASD %s stopped:\n%s", victim.ID, last.Stdout)
	if !strings.Contains(last.Stdout, "WARNING") {
		t.Errorf("exit 1 without a WARNING verdict:\n%s", last.Stdout)
	}
	rep := c.healthJSON()
	if rep.Status != "warning" {
		t.Fatalf("ovs health -o json: status %q, want warning", rep.Status)
	}
	for _, ch := range rep.Checks {
		switch ch.Name {
		case "asds":
			down, _ := ch.Details["down"].(map[string]any)
			if ch.Status != "warning" || down[victim.ID] == nil {
				t.Errorf("asds check: %+v, want a warning with %s down", ch, victim.ID)
			}
		case "degraded-objects":
			// Every object has a fragment on each of the six ASDs.
			if ch.Status != "warning" {
				t.Errorf("degraded-objects check: %+v, want a warning", ch)
			}
		default:
			if ch.Status != "ok" {
				t.Errorf("%s check: %+v, want ok", ch.Name, ch)
			}
		}
	}

	resume()
	waitFor(t, 30*time.Second, "ovs health to be ok again", func() bool {
		last = c.cli("health")
		return last.Code == 0
	})
	if rep := c.healthJSON(); rep.Status != "ok" {
		t.Fatalf("ovs health -o json after the ASD came back: %+v", rep)
	}
}

// health runs `ovs health -o json` on host h against its own node.
func (c *netCluster) health(h *netHost) healthReport {
	c.t.Helper()
	out, _ := c.ovs(h, "health", "-o", "json") // exit 1 or 2 is a verdict
	var rep healthReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		c.t.Fatalf("ovs health -o json on %s: %v: %s", h.Name, err, out)
	}
	return rep
}

func logReport(t *testing.T, what string, rep healthReport) {
	t.Helper()
	var b strings.Builder
	for _, ch := range rep.Checks {
		fmt.Fprintf(&b, "  %-16s %-7s %s\n", ch.Name, ch.Status, ch.Message)
	}
	t.Logf("ovs health with %s: %s\n%s", what, rep.Status, b.String())
}

// checkOf returns the status and message of check name in rep.
func checkOf(rep healthReport, name string) (status, message string) {
	for _, ch := range rep.Checks {
		if ch.Name == name {
			return ch.Status, ch.Message
		}
	}
	return "", ""
}

// TestHealthClusterOfThree: on three hosts every check is ok, the clock
// check measured against the two other nodes; a frozen arakoon node turns
// the arakoon check to warning (the other two keep the quorum) and a
// frozen storage router the nodes and clock-skew checks.
func TestHealthClusterOfThree(t *testing.T) {
	c := startNetCluster(t, "")
	h1, h3 := c.hosts.Hosts[0], c.hosts.Hosts[2]
	var rep healthReport
	waitFor(t, 60*time.Second, "ovs health to be ok on h1", func() bool {
		rep = c.health(h1)
		return rep.Status == "ok"
	})
	if st, msg := checkOf(rep, "arakoon"); st != "ok" || !strings.Contains(msg, "3 of 3 voters") {
		t.Errorf("arakoon: %s %q", st, msg)
	}
	if st, msg := checkOf(rep, "nodes"); st != "ok" || !strings.Contains(msg, "3 of 3 nodes") {
		t.Errorf("nodes: %s %q", st, msg)
	}
	if st, msg := checkOf(rep, "clock-skew"); st != "ok" || !strings.Contains(msg, "2 other nodes") {
		t.Errorf("clock-skew: %s %q", st, msg)
	}

	ara3 := c.ara.Procs[h3]
	ara3.Freeze()
	frozen := true
	t.Cleanup(func() {
		if frozen {
			ara3.Thaw()
		}
	})
	waitFor(t, 60*time.Second, "the arakoon check to warn about a3", func() bool {
		rep = c.health(h1)
		st, msg := checkOf(rep, "arakoon")
		return st == "warning" && strings.Contains(msg, "unreachable: a3")
	})
	logReport(t, "a3 frozen", rep)
	ara3.Thaw()
	frozen = false
	waitFor(t, 60*time.Second, "the arakoon check to be ok again", func() bool {
		st, _ := checkOf(c.health(h1), "arakoon")
		return st == "ok"
	})

	node3 := c.nodes[h3]
	node3.Freeze()
	nodeFrozen := true
	t.Cleanup(func() {
		if nodeFrozen {
			node3.Thaw()
		}
	})
	waitFor(t, 60*time.Second, "the nodes and clock-skew checks to warn about h3", func() bool {
		rep = c.health(h1)
		nst, nmsg := checkOf(rep, "nodes")
		cst, cmsg := checkOf(rep, "clock-skew")
		return nst == "warning" && strings.Contains(nmsg, "h3") && cst == "warning" && strings.Contains(cmsg, "not answering: h3")
	})
	logReport(t, "h3's node frozen", rep)
	if rep.Status != "warning" {
		t.Errorf("overall %s with h3 frozen: %+v", rep.Status, rep)
	}
	node3.Thaw()
	nodeFrozen = false
	waitFor(t, 60*time.Second, "ovs health to be ok again", func() bool { return c.health(h1).Status == "ok" })
}
