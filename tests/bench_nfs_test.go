package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchNFS is `make bench`'s NFS part, not a test: it runs only with
// OVS_BENCH_CLUSTER=FILE and appends its figures to FILE. No kernel NFS
// client and no fio libnfs engine are available here, so fio drives
// qemu-nbd, whose nfs:// driver is libnfs: 4 KiB randwrite and randread at
// QD32 and 1 MiB sequential write to a vdisk file through `ovs up --nfs`,
// beside the same client path to a plain file on the local disk and the
// vdisk's own NBD export (no qemu in between) as the reference. It asserts
// nothing about the figures.
func TestBenchNFS(t *testing.T) {
	out := clusterBenchOutput(t)
	needTools(t, "qemu-nbd", "qemu-img")
	needNFSFlag(t)
	runtime := envInt("BENCH_RUNTIME", 20)
	addr := nfsAddr(t)
	host, _, _ := net.SplitHostPort(addr)
	c := startClusterWith(t, "--nfs", addr)
	c.create("bench", "1GiB")
	dir := t.TempDir()
	local := filepath.Join(dir, "local.raw")
	if err := os.WriteFile(local, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(local, 1<<30); err != nil {
		t.Fatal(err)
	}

	type target struct{ name, uri string }
	targets := []target{
		{"OVS, NFS (qemu-nbd's libnfs client)", startQemuNBD(t, "nfs://"+host+"/vpool/bench.raw", dir).uri},
		{"local file through qemu-nbd (same client path)", startQemuNBD(t, local, dir).uri},
		{"OVS, NBD (no qemu in between; reference)", c.TCPURI("bench")},
	}
	timed := []string{"--time_based", fmt.Sprintf("--runtime=%d", runtime), "--ramp_time=3", "--size=1g"}
	type figures struct{ seq, w, r fioFigures }
	got := make([]figures, len(targets))
	for i, tg := range targets {
		// The sequential fill also lays the data down for the reads.
		got[i].seq = benchFio(t, tg.uri, "seqwrite", "--rw=write", "--bs=1m", "--iodepth=8", "--size=1g")
	}
	for i, tg := range targets {
		got[i].w = benchFio(t, tg.uri, "randwrite", append([]string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}, timed...)...)
	}
	for i, tg := range targets {
		got[i].r = benchFio(t, tg.uri, "randread", append([]string{"--rw=randread", "--bs=4k", "--iodepth=32"}, timed...)...)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n## NFS (tests/bench_nfs_test.go)\n\n")
	fmt.Fprintf(&b, "fio through qemu-nbd (libnfs for nfs://): 1 MiB sequential write QD8 over 1 GiB, then 4 KiB at QD32, %d s each "+
		"after 3 s ramp; %s.\n\n", runtime, time.Now().UTC().Format("2006-01-02"))
	b.WriteString("| target | 1 MiB write MiB/s | randwrite IOPS | p99 | randread IOPS | p99 | write vs local | read vs local |\n|---|---|---|---|---|---|---|---|\n")
	for i, tg := range targets {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %v | %.0f | %v | %.2f | %.2f |\n", tg.name, got[i].seq.IOPS,
			got[i].w.IOPS, got[i].w.P99, got[i].r.IOPS, got[i].r.P99, got[i].w.IOPS/got[1].w.IOPS, got[i].r.IOPS/got[1].r.IOPS)
	}
	benchResults(t, out, b.String())
}
