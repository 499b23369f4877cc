package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBenchCluster is `make bench`'s cluster part, not a test: it runs only
// with OVS_BENCH_CLUSTER=FILE and appends its figures to FILE. It measures,
// in one run on a 3-host namespace cluster, 4 KiB random I/O at QD32
// through the owner and through a node that forwards to it, and the
// longest I/O pause fio sees while the vdisk moves between nodes. It
// asserts nothing about the figures.
func TestBenchCluster(t *testing.T) {
	out := clusterBenchOutput(t)
	runtime := envInt("BENCH_RUNTIME", 20)
	c := startNetCluster(t, "")
	h1, h2, h3 := c.hosts.Hosts[0], c.hosts.Hosts[1], c.hosts.Hosts[2]
	c.ovsOK(h1, "vdisk", "create", "bench", "--size", "2GiB")
	// Reads hit data: the first 512 MiB is written first.
	benchFio(t, c.nbdURI(h1, "bench"), "write", "--rw=write", "--bs=1m", "--iodepth=8", "--size=512m")

	type row struct {
		name       string
		owner, fwd fioFigures
	}
	rows := []row{{name: "4 KiB randwrite QD32"}, {name: "4 KiB randread QD32"}}
	args := map[string][]string{
		"4 KiB randwrite QD32": {"--rw=randwrite", "--bs=4k", "--iodepth=32"},
		"4 KiB randread QD32":  {"--rw=randread", "--bs=4k", "--iodepth=32", "--size=512m"},
	}
	timed := []string{"--time_based", fmt.Sprintf("--runtime=%d", runtime), "--ramp_time=3"}
	for i := range rows {
		r := &rows[i]
		a := append(append([]string{}, args[r.name]...), timed...)
		r.owner = benchFio(t, c.nbdURI(h1, "bench"), "owner", a...)
		r.fwd = benchFio(t, c.nbdURI(h2, "bench"), "forwarded", a...)
	}

	// The longest pause: fio through h2 with and without two moves of the
	// vdisk (h1 -> h3 -> h1) during the run.
	pauseArgs := []string{"--rw=randwrite", "--bs=4k", "--iodepth=16", "--time_based", "--runtime=30"}
	base := benchFio(t, c.nbdURI(h2, "bench"), "no move", pauseArgs...)
	var held []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	moves := make(chan error, 1)
	go func() {
		for i, to := range []*netHost{h3, h1} {
			select {
			case <-ctx.Done():
				moves <- ctx.Err()
				return
			case <-time.After(time.Duration(8+i*10) * time.Second):
			}
			res, err := c.ovs(h2, "vdisk", "move", "bench", "--to", to.Name, "-o", "json")
			if err != nil {
				moves <- fmt.Errorf("%v: %s", err, res)
				return
			}
			var m struct {
				Took    time.Duration `json:"took_ns"`
				HeldIO  time.Duration `json:"held_io_ns"`
				Release time.Duration `json:"release_ns"`
				Adopt   time.Duration `json:"adopt_ns"`
			}
			_ = json.Unmarshal([]byte(res), &m)
			held = append(held, fmt.Sprintf("%s (last upload %s, restore on the new owner %s; whole move %s)",
				m.HeldIO.Round(time.Millisecond), m.Release.Round(time.Millisecond), m.Adopt.Round(time.Millisecond), m.Took.Round(time.Millisecond)))
		}
		moves <- nil
	}()
	moving := benchFio(t, c.nbdURI(h2, "bench"), "two moves", pauseArgs...)
	if err := <-moves; err != nil {
		t.Fatalf("move during the bench: %v", err)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\n## Cluster: forwarding and live move (3 hosts as network namespaces; tests/bench_cluster_test.go)\n\n")
	fmt.Fprintf(&b, "fio (nbd engine) from the test host; vdisk owned by h1; %d s per workload. "+
		"\"forwarded\" goes through h2's NBD server, which forwards every I/O to h1.\n\n", runtime)
	fmt.Fprintf(&b, "| workload | through the owner | through a forwarding node | forwarded/owner |\n|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %.0f IOPS | %.0f IOPS | %.2f |\n", r.name, r.owner.IOPS, r.fwd.IOPS, r.fwd.IOPS/r.owner.IOPS)
	}
	fmt.Fprintf(&b, "\nLive move under fio (4 KiB randwrite QD16 through h2, 30 s, the vdisk moved h1 -> h3 -> h1):\n\n")
	fmt.Fprintf(&b, "| | IOPS | p99 latency | max latency (p100) |\n|---|---|---|---|\n")
	fmt.Fprintf(&b, "| no move | %.0f | %s | %s |\n", base.IOPS, base.P99, base.Max)
	fmt.Fprintf(&b, "| two moves | %.0f | %s | %s |\n", moving.IOPS, moving.P99, moving.Max)
	fmt.Fprintf(&b, "\nI/O held at the old owner per move: %s.\n", strings.Join(held, ", "))
	benchResults(t, out, b.String())
}

type fioFigures struct {
	IOPS     float64
	P99, Max time.Duration
}

// benchFio runs one fio job against uri and returns its figures (of the
// write side for write jobs, else the read side).
func benchFio(t *testing.T, uri, label string, args ...string) fioFigures {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	full := append([]string{"--name=" + strings.ReplaceAll(label, " ", "-"), "--ioengine=nbd", "--uri=" + uri,
		"--output-format=json"}, args...)
	out, err := exec.CommandContext(ctx, "fio", full...).Output()
	if err != nil {
		t.Fatalf("fio %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	s := string(out)
	var doc struct {
		Jobs []map[string]json.RawMessage `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(s[strings.Index(s, "{"):]), &doc); err != nil || len(doc.Jobs) == 0 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	var side struct {
		IOPS float64 `json:"iops"`
		Clat struct {
			Max        float64            `json:"max"`
			Percentile map[string]float64 `json:"percentile"`
		} `json:"clat_ns"`
	}
	rw := "read"
	for _, a := range args {
		if strings.Contains(a, "write") {
			rw = "write"
		}
	}
	if err := json.Unmarshal(doc.Jobs[0][rw], &side); err != nil {
		t.Fatal(err)
	}
	f := fioFigures{IOPS: side.IOPS, P99: time.Duration(side.Clat.Percentile["99.000000"]).Round(time.Microsecond),
		Max: time.Duration(side.Clat.Max).Round(time.Microsecond)}
	t.Logf("%s %s: %.0f IOPS, p99 %s, max %s", label, uri, f.IOPS, f.P99, f.Max)
	return f
}

func envInt(name string, def int) int {
	var v int
	if _, err := fmt.Sscan(os.Getenv(name), &v); err != nil || v <= 0 {
		return def
	}
	return v
}

// clusterBenchOutput is the file a cluster bench appends its figures to
// (OVS_BENCH_CLUSTER); without it the bench is skipped.
// benchResults logs a bench's report and appends it to the results
// file out.
func benchResults(t *testing.T, out, report string) {
	t.Helper()
	t.Log(report)
	if err := appendFile(out, report); err != nil {
		t.Fatal(err)
	}
}

// appendFile appends text to the file at path, creating it.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func clusterBenchOutput(t *testing.T) string {
	t.Helper()
	out := os.Getenv("OVS_BENCH_CLUSTER")
	if out == "" {
		t.Skip("a benchmark: set OVS_BENCH_CLUSTER=FILE to run it (make bench does)")
	}
	needFio(t)
	return out
}
