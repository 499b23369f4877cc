package tests

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type scheduleFields struct {
	Snapshots string `json:"snapshots"`
	Retention string `json:"retention"`
	Scrub     string `json:"scrub"`
}

type scheduleInfo struct {
	VDisk     string          `json:"vdisk"`
	Set       scheduleFields  `json:"set"`
	VPool     *scheduleFields `json:"vpool"`
	Effective scheduleFields  `json:"effective"`
}

func (c *cluster) schedule(args ...string) scheduleInfo {
	c.t.Helper()
	out := c.ovsOK(append(append([]string{"schedule"}, args...), "-o", "json")...)
	var in scheduleInfo
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		c.t.Fatalf("ovs schedule %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return in
}

// TestScheduleCLI: `ovs schedule set` and `show` on the vpool and on a
// vdisk, bad values refused, the settings kept over a restart, and the
// node's scheduler taking an automatic snapshot once the vpool's schedule
// asks for one (while the user's snapshot stays).
func TestScheduleCLI(t *testing.T) {
	c := startCluster(t, "--backend", "local", "--schedule-tick", "2s")
	c.create("sd", "64MiB")
	c.ovsOK("vdisk", "snapshot", "create", "sd", "mine")

	// Defaults: no automatic snapshots, Open vStorage's retention, the
	// node's scrub interval (1h).
	in := c.schedule("show")
	want := scheduleFields{Snapshots: "off", Retention: "1h:24h,24h:7d,7d:28d", Scrub: "hourly"}
	if in.Set != (scheduleFields{}) || in.Effective != want {
		t.Fatalf("default vpool schedule: %+v", in)
	}
	if out := c.ovsOK("schedule", "show"); !strings.Contains(out, "EFFECTIVE") || !strings.Contains(out, "1h:24h,24h:7d,7d:28d") {
		t.Fatalf("ovs schedule show:\n%s", out)
	}

	in = c.schedule("set", "--vpool", "--snapshots", "hourly", "--scrub", "24h")
	if in.Set != (scheduleFields{Snapshots: "hourly", Scrub: "24h"}) || in.Effective.Snapshots != "hourly" || in.Effective.Scrub != "daily" {
		t.Fatalf("after set --vpool: %+v", in)
	}
	in = c.schedule("set", "sd", "--retention", "1h:6h,24h:7d", "--scrub", "12h")
	if in.VDisk != "sd" || in.Set != (scheduleFields{Retention: "1h:6h,24h:7d", Scrub: "12h"}) ||
		in.Effective != (scheduleFields{Snapshots: "hourly", Retention: "1h:6h,24h:7d", Scrub: "12h"}) ||
		in.VPool == nil || in.VPool.Snapshots != "hourly" {
		t.Fatalf("after set sd: %+v", in)
	}
	// A field given back to the vpool; the others stay.
	in = c.schedule("set", "sd", "--scrub", "vpool")
	if in.Set != (scheduleFields{Retention: "1h:6h,24h:7d"}) || in.Effective.Scrub != "daily" {
		t.Fatalf("after set sd --scrub vpool: %+v", in)
	}
	if out := c.ovsOK("schedule", "show", "sd"); !strings.Contains(out, "VDISK sd") || !strings.Contains(out, "1h:6h,24h:7d") {
		t.Fatalf("ovs schedule show sd:\n%s", out)
	}

	for _, tc := range []struct {
		args []string
		says []string
	}{
		{[]string{"set", "sd", "--snapshots", "sometimes"}, []string{"snapshots", "sometimes"}},
		{[]string{"set", "sd", "--retention", "1h"}, []string{"retention"}},
		{[]string{"set", "sd", "--scrub", "5s"}, []string{"scrub", "1m"}},
		{[]string{"set", "sd", "--vpool", "--scrub", "1h"}, []string{"not both"}},
		{[]string{"set", "--vpool", "--scrub", "vpool"}, []string{"vdisk"}},
		{[]string{"set", "sd"}, []string{"nothing to set"}},
		{[]string{"show", "nosuch"}, []string{"not found"}},
		{[]string{"set", "nosuch", "--scrub", "1h"}, []string{"not found"}},
	} {
		expectCLIError(t, "ovs schedule "+strings.Join(tc.args, " "), c.cli(append([]string{"schedule"}, tc.args...)...), tc.says...)
	}

	// The scheduler looks every 2 s here (--schedule-tick): an automatic
	// snapshot of sd comes, and the user's stays.
	var names []string
	waitFor(t, 3*time.Minute, "an automatic snapshot of sd", func() bool {
		var snaps []snapshotInfo
		if err := json.Unmarshal([]byte(c.ovsOK("vdisk", "snapshot", "list", "sd", "-o", "json")), &snaps); err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		auto := false
		for _, s := range snaps {
			names = append(names, s.Name)
			auto = auto || strings.HasPrefix(s.Name, "auto-")
		}
		if !auto {
			time.Sleep(time.Second)
		}
		return auto
	})
	if names[0] != "mine" || len(names) != 2 {
		t.Fatalf("snapshots of sd: %v", names)
	}

	// The schedules are in the cluster model: a restart keeps them.
	c.stop()
	c.start()
	if in := c.schedule("show", "sd"); in.Set != (scheduleFields{Retention: "1h:6h,24h:7d"}) || in.VPool == nil ||
		*in.VPool != (scheduleFields{Snapshots: "hourly", Scrub: "24h"}) {
		t.Fatalf("after a restart: %+v", in)
	}
}
