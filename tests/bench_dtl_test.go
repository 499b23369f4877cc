package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchClusterDTL is `make bench`'s DTL and failover part, not a test:
// it runs only with OVS_BENCH_CLUSTER=FILE and appends its figures to
// FILE. On a 3-host namespace cluster, in one run: QD1 4 KiB write+flush
// and QD32 4 KiB randwrite through the owner's NBD export on three vdisks
// that differ only in DTL mode (none, async, sync), as ratios to none; and
// the failover time (kill -9 of the owner with its disk -> the first
// write+flush+read that succeeds through another node), over a few
// trials. It asserts nothing about the figures.
func TestBenchClusterDTL(t *testing.T) {
	out := clusterBenchOutput(t)
	runtime := envInt("BENCH_RUNTIME", 20)
	trials := envInt("BENCH_FAILOVER_TRIALS", 5)
	c := startNetCluster(t, haExtra)
	h1, h2 := c.hosts.Hosts[0], c.hosts.Hosts[1]

	modes := []string{"none", "async", "sync"}
	for _, m := range modes {
		name := "dtl-" + m
		c.ovsOK(h1, "vdisk", "create", name, "--size", "1GiB")
		c.ovsOK(h1, "vdisk", "set-dtl", name, "--mode", m)
		want := "ok"
		if m == "none" {
			want = "disabled"
		}
		c.waitInfo(h1, name, "dtl mode "+m, 60*time.Second, func(v haInfo) bool {
			return v.Owner == h1.Name && v.DTLMode == m && v.DTLState == want
		})
	}
	timed := []string{"--time_based", fmt.Sprintf("--runtime=%d", runtime), "--ramp_time=3"}
	qd1 := map[string]fioSyncFigures{}
	qd32 := map[string]fioFigures{}
	// Mode after mode for each workload, so that a drift of the host's
	// load over the run hits every mode alike.
	for _, m := range modes {
		qd1[m] = benchFioSync(t, c.nbdURI(h1, "dtl-"+m), "qd1-"+m,
			append([]string{"--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"}, timed...)...)
	}
	for _, m := range modes {
		qd32[m] = benchFio(t, c.nbdURI(h1, "dtl-"+m), "qd32-"+m,
			append([]string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}, timed...)...)
	}

	// The mode vdisks go first: else the first kill of h1 fails them
	// over too, and their restore and upload weigh on every later trial.
	for _, m := range modes {
		c.ovsOK(h1, "vdisk", "delete", "dtl-"+m, "--force")
	}

	// Failover: a sync vdisk owned by h1 with data on it; h1 dies with
	// its disk; a client of h2 tries write+flush+read until it succeeds.
	var times []time.Duration
	for i := range trials {
		name := fmt.Sprintf("fo%d", i+1)
		c.ovsOK(h1, "vdisk", "create", name, "--size", "256MiB")
		before, _ := c.waitInfo(h2, name, "the DTL", 60*time.Second, func(v haInfo) bool {
			return v.Owner == h1.Name && v.DTLState == "ok"
		})
		benchFio(t, c.nbdURI(h2, name), "fill-"+name, "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16m")
		killAt := time.Now()
		c.loseHost(h1)
		probe := startHA(t, "probe", c.nbdURI(h2, name), fmt.Sprint(haProbeOff), "120")
		if err := probe.wait(3 * time.Minute); err != nil {
			t.Fatalf("no I/O through %s after the kill of %s (%v):\n%s", h2.Name, h1.Name, err, probe.out)
		}
		took := time.Since(killAt)
		after, _ := c.waitInfo(h2, name, "the failover", 90*time.Second, func(v haInfo) bool {
			return v.Owner != "" && v.Owner != h1.Name
		})
		t.Logf("failover %d: %v (%s -> %s)", i+1, took.Round(time.Millisecond), before, after)
		times = append(times, took)
		// Each trial starts from the same state: one vdisk to fail over.
		if out, err := c.ovs(h2, "vdisk", "delete", name, "--force"); err != nil {
			t.Logf("delete %s: %v: %s", name, err, out)
		}
		c.rejoinHost(h1, h2)
	}
	slices.Sort(times)

	var b strings.Builder
	fmt.Fprintf(&b, "\n## Cluster: DTL and failover (3 hosts as network namespaces; tests/bench_dtl_test.go)\n\n")
	fmt.Fprintf(&b, "fio (nbd engine) from the test host through the owner h1's NBD export, %d s per workload, "+
		"three vdisks that differ only in DTL mode; the DTL on another host. QD1 is write, flush, write, flush... "+
		"(fio --fsync=1): a flush in sync mode waits until the DTL host has fsynced everything before it.\n\n", runtime)
	fmt.Fprintf(&b, "| DTL mode | QD1 write+flush pairs/s | write p50 / p99 | flush p50 / p99 | pairs/s vs none | flush p99 vs none | QD32 randwrite IOPS | QD32 vs none |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|\n")
	base1, base32 := qd1["none"], qd32["none"]
	for _, m := range modes {
		f1, f32 := qd1[m], qd32[m]
		fmt.Fprintf(&b, "| %s | %.0f | %s / %s | %s / %s | %.2f | %.2f | %.0f | %.2f |\n", m, f1.IOPS,
			f1.WriteP50, f1.WriteP99, f1.FlushP50, f1.FlushP99, f1.IOPS/base1.IOPS,
			float64(f1.FlushP99)/float64(base1.FlushP99), f32.IOPS, f32.IOPS/base32.IOPS)
	}
	if len(times) > 0 {
		fmt.Fprintf(&b, "\nFailover (failover_timeout 4 s, heartbeats every 1 s): kill -9 of every process of the owner "+
			"and deletion of its data directory, to the first write+flush+read that succeeds through another node "+
			"(which forwards to the new owner): median %v, max %v over %d trials.\n",
			times[len(times)/2].Round(10*time.Millisecond), times[len(times)-1].Round(10*time.Millisecond), len(times))
	}
	benchResults(t, out, b.String())
}

// fioSyncFigures are a write+flush job's figures: IOPS of the writes (one
// flush after each), and the latencies of each kind.
type fioSyncFigures struct {
	IOPS                                   float64
	WriteP50, WriteP99, FlushP50, FlushP99 time.Duration
}

// benchFioSync runs one fio job with --fsync against uri.
func benchFioSync(t *testing.T, uri, label string, args ...string) fioSyncFigures {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	full := append([]string{"--name=" + label, "--ioengine=nbd", "--uri=" + uri, "--output-format=json"}, args...)
	out, err := exec.CommandContext(ctx, "fio", full...).Output()
	if err != nil {
		t.Fatalf("fio %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	s := string(out)
	var doc struct {
		Jobs []struct {
			Write struct {
				IOPS float64 `json:"iops"`
				Clat struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
			} `json:"write"`
			Sync struct {
				Lat struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"lat_ns"`
			} `json:"sync"`
		} `json:"jobs"`
	}
	i := strings.Index(s, "{")
	if i < 0 {
		t.Fatalf("fio output: no JSON\n%s", out)
	}
	if err := json.Unmarshal([]byte(s[i:]), &doc); err != nil || len(doc.Jobs) == 0 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	j := doc.Jobs[0]
	d := func(ns float64) time.Duration { return time.Duration(ns).Round(time.Microsecond) }
	f := fioSyncFigures{IOPS: j.Write.IOPS,
		WriteP50: d(j.Write.Clat.Percentile["50.000000"]), WriteP99: d(j.Write.Clat.Percentile["99.000000"]),
		FlushP50: d(j.Sync.Lat.Percentile["50.000000"]), FlushP99: d(j.Sync.Lat.Percentile["99.000000"])}
	t.Logf("%s %s: %.0f write+flush/s, write p50 %s p99 %s, flush p50 %s p99 %s", label, uri, f.IOPS,
		f.WriteP50, f.WriteP99, f.FlushP50, f.FlushP99)
	return f
}
