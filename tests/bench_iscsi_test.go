package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBenchISCSI is `make bench`'s iSCSI part, not a test: it runs only
// with OVS_BENCH_CLUSTER=FILE and appends its figures to FILE. In one run
// on this host: 4 KiB randwrite, then randread, at QD32 over iSCSI to a
// vdisk of the default `ovs up` (erasure-coded backend) and to Linux tgt
// with a file on the same disk, each driven by fio through qemu-nbd
// (qemu's iSCSI client: fio speaks NBD, not iSCSI), so that both targets
// pay the same client path. The vdisk's NBD export, without qemu in
// between, is the reference line. It asserts nothing about the figures.
func TestBenchISCSI(t *testing.T) {
	out := clusterBenchOutput(t)
	needTools(t, "qemu-nbd", "tgtd", "tgtadm")
	runtime := envInt("BENCH_RUNTIME", 20)
	const size = 1 << 30
	c := startCluster(t)
	c.create("bench", "1GiB")
	tgtURL := startTgt(t, size)
	dir := t.TempDir()

	type target struct{ name, uri string }
	targets := []target{
		{"OVS, iSCSI (ovs up default: EC backend)", startQemuNBD(t, c.ISCSIURL("bench"), dir).uri},
		{"Linux tgt, iSCSI, file on the same disk", startQemuNBD(t, tgtURL, dir).uri},
		{"OVS, NBD (no qemu in between; reference)", c.TCPURI("bench")},
	}
	timed := []string{"--time_based", fmt.Sprintf("--runtime=%d", runtime), "--ramp_time=3", "--size=1g"}
	// Lay the data down first so that reads hit written blocks on both.
	for _, tg := range targets[:2] {
		benchFio(t, tg.uri, "fill", "--rw=write", "--bs=1m", "--iodepth=8", "--size=1g")
	}
	type figures struct{ w, r fioFigures }
	got := make([]figures, len(targets))
	for i, tg := range targets {
		got[i].w = benchFio(t, tg.uri, "randwrite", append([]string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}, timed...)...)
	}
	for i, tg := range targets {
		got[i].r = benchFio(t, tg.uri, "randread", append([]string{"--rw=randread", "--bs=4k", "--iodepth=32"}, timed...)...)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## iSCSI (tests/bench_iscsi_test.go)\n\n")
	fmt.Fprintf(&b, "fio 4 KiB at QD32, %d s each after 3 s ramp, over 1 GiB, through qemu-nbd (qemu's libiscsi client) "+
		"for both iSCSI targets; %s.\n\n", runtime, time.Now().UTC().Format("2006-01-02"))
	b.WriteString("| target | randwrite IOPS | p99 | randread IOPS | p99 | write vs tgt | read vs tgt |\n|---|---|---|---|---|---|---|\n")
	for i, tg := range targets {
		fmt.Fprintf(&b, "| %s | %.0f | %v | %.0f | %v | %.2f | %.2f |\n", tg.name, got[i].w.IOPS, got[i].w.P99,
			got[i].r.IOPS, got[i].r.P99, got[i].w.IOPS/got[1].w.IOPS, got[i].r.IOPS/got[1].r.IOPS)
	}
	benchResults(t, out, b.String())
}
