package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logOf returns what `ovs up` logged so far (every start of the cluster).
func (c *cluster) logOf() string {
	c.t.Helper()
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(b)
}

// TestRollbackThenStopOnEC: on the default erasure-coded backend, snapshots
// and rollbacks made right before a clean stop log no failed puts (an
// upload the rollback keeps is not canceled, one it discards is dropped
// quietly), and the stop waits for the last snapshots.json: a new host
// (same backend, no local volume state) sees the rolled-back data and the
// snapshot list as they were at the stop.
func TestRollbackThenStopOnEC(t *testing.T) {
	needFio(t)
	c := startCluster(t)
	c.create("rb", "64MiB")
	uri := c.UnixURI("rb")

	runFio(t, patternJob(uri, patternA, "32m", "--do_verify=0")...)
	c.ovsOK("vdisk", "snapshot", "create", "rb", "s1")
	runFio(t, patternJob(uri, patternB, "32m", "--do_verify=0")...)
	c.ovsOK("vdisk", "snapshot", "create", "rb", "s2")
	c.ovsOK("vdisk", "sync", "rb") // B and s2 are on the backend
	// s3's TLog is uploading when the rollback to s3 (which keeps it)
	// and then the one to s1 (which discards it) come.
	runFio(t, patternJob(uri, patternC, "32m", "--do_verify=0")...)
	c.ovsOK("vdisk", "snapshot", "create", "rb", "s3")
	c.ovsOK("vdisk", "rollback", "rb", "s3")
	c.ovsOK("vdisk", "rollback", "rb", "s1")
	c.stop()

	log := c.logOf()
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "put failed") || strings.Contains(l, "upload to the backend failed") ||
			strings.Contains(l, "stopping before the backend has") {
			t.Errorf("ovs up logged: %s", l)
		}
	}

	// A new host: the same backend, no local state.
	mustRemoveAll(t, c.Dir+"/volumes")
	c.start()
	runFio(t, patternJob(uri, patternA, "32m", "--verify_only")...)
	var snaps []snapshotInfo
	out := c.ovsOK("vdisk", "snapshot", "list", "rb", "-o", "json")
	if err := json.Unmarshal([]byte(out), &snaps); err != nil {
		t.Fatalf("snapshot list -o json: %v in %q", err, out)
	}
	if len(snaps) != 1 || snaps[0].Name != "s1" || !snaps[0].Synced {
		t.Fatalf("on a new host after rollback to s1 and a stop: snapshots %+v, want [s1] synced", snaps)
	}
}

// backendBytes is what the erasure-coded backend holds, in logical bytes
// (before erasure coding): every object of every namespace.
func (c *cluster) backendBytes() int64 {
	c.t.Helper()
	out := c.ovsOK("backend", "--data", c.Dir, "status", "-o", "json")
	var s struct {
		Bytes int64 `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		c.t.Fatalf("backend status -o json: %v in %q", err, out)
	}
	return s.Bytes
}

// TestSustainedOverwriteStaysWithinBudget: fio overwrites a 64 MiB vdisk
// at random, 6 times its size, with the hourly scrub pushed out of the
// way: the garbage trigger scrubs, and the backend comes back to within
// 1.5x of the live data (64 MiB, no snapshots) with the data intact.
func TestSustainedOverwriteStaysWithinBudget(t *testing.T) {
	needFio(t)
	needTools(t, "qemu-img", "nbdcopy")
	c := startClusterWith(t, "--scrub-interval", "24h")
	const live = 64 << 20
	c.create("ow", "64MiB")
	uri := c.UnixURI("ow")
	runFio(t, "--name=fill", "--ioengine=nbd", "--uri="+uri, "--rw=write", "--bs=256k", "--size=64m", "--iodepth=4")
	var peak float64
	done := make(chan error, 1)
	go func() {
		out, err := run(t, 10*time.Minute, "", "fio", "--name=over", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=16k", "--size=64m", "--io_size=384m", "--iodepth=8", "--randseed=12",
			"--verify=crc32c", "--verify_fatal=1", "--verify_backlog=1024", "--fsync=256")
		if err == nil && !strings.Contains(out, "err= 0") {
			err = errorString("fio did not report err= 0:\n" + out)
		} else if err != nil {
			err = errorString(err.Error() + "\n" + out)
		}
		done <- err
	}()
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("fio: %v", err)
			}
			running = false
		case <-time.After(2 * time.Second):
			r := float64(c.backendBytes()) / live
			peak = max(peak, r)
			t.Logf("backend %.2fx of live while fio runs", r)
		}
	}
	img := filepath.Join(t.TempDir(), "ow.img")
	mustRun(t, 5*time.Minute, "nbdcopy", uri, img)
	c.ovsOK("vdisk", "sync", "ow")

	var got int64
	waitFor(t, 3*time.Minute, "backend bytes within 1.5x of the live data", func() bool {
		got = c.backendBytes()
		peak = max(peak, float64(got)/live)
		return float64(got) <= 1.5*live
	})
	info := c.info("ow")
	t.Logf("backend %.2fx of live after fio (peak %.2fx while it ran); vdisk stored %d, garbage %d",
		float64(got)/live, peak, info.StoredBytes, info.GarbageBytes)
	if info.StoredBytes < live || info.GarbageBytes < 0 || info.GarbageBytes > info.StoredBytes {
		t.Fatalf("vdisk info: stored %d garbage %d for %d live", info.StoredBytes, info.GarbageBytes, live)
	}
	if !strings.Contains(c.ovsOK("vdisk", "info", "ow"), "garbage:") {
		t.Fatal("vdisk info does not show the garbage figure")
	}
	for _, l := range strings.Split(c.logOf(), "\n") {
		if strings.Contains(l, "msg=scrubbed") {
			t.Log(l)
		}
	}
	if !strings.Contains(c.logOf(), "trigger=garbage") {
		t.Fatal("no garbage-triggered scrub in the log")
	}
	if !identical(t, img, uri) {
		t.Fatal("the vdisk changed while the scrubs ran")
	}
}
