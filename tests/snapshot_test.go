package tests

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// patternJob is a fio job that writes (or verifies) every block of the
// first size bytes of uri with a crc32c-verified, recognisable pattern.
func patternJob(uri, pattern, size string, extra ...string) []string {
	return append([]string{
		"--name=pattern", "--ioengine=nbd", "--uri=" + uri,
		"--rw=write", "--bs=64k", "--size=" + size, "--iodepth=8",
		"--verify=crc32c", "--verify_pattern=" + pattern, "--verify_fatal=1",
	}, extra...)
}

const (
	patternA = "0x41414141"
	patternB = "0x42424242"
	patternC = "0x43434343"
)

// identical runs qemu-img compare; it reports whether the images match.
func identical(t *testing.T, a, b string) bool {
	t.Helper()
	out, err := run(t, 5*time.Minute, "", "qemu-img", "compare", "-f", "raw", "-F", "raw", a, b)
	if err == nil {
		return true
	}
	if strings.Contains(out, "differ") || strings.Contains(out, "Content mismatch") {
		return false
	}
	t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	return false
}

type snapshotInfo struct {
	Name   string `json:"name"`
	Synced bool   `json:"synced"`
}

// TestSnapshotRollbackClone: fio writes pattern A, snapshot, pattern B
// overwrites it, rollback, and A verifies again; a clone of the snapshot
// holds A while its parent is overwritten with C.
func TestSnapshotRollbackClone(t *testing.T) {
	needFio(t)
	needTools(t, "qemu-img", "nbdcopy")
	c := startCluster(t)
	c.create("vm", "64MiB")
	uri := c.UnixURI("vm")
	saved := filepath.Join(t.TempDir(), "a.img")

	runFio(t, patternJob(uri, patternA, "64m", "--do_verify=0")...)
	runFio(t, patternJob(uri, patternA, "64m", "--verify_only")...)
	mustRun(t, 5*time.Minute, "nbdcopy", uri, saved)
	c.ovsOK("vdisk", "snapshot", "create", "vm", "s1", "--metadata", "before B")

	runFio(t, patternJob(uri, patternB, "64m", "--do_verify=0")...)
	if identical(t, saved, uri) {
		t.Fatal("pattern B did not change the vdisk: the test could not tell A from B")
	}
	s := openNBD(t, uri)
	expectCLIError(t, "rollback with a client connected", c.cli("vdisk", "rollback", "vm", "s1"),
		"client", "busy", "force", "in use")
	s.close()
	waitFor(t, 10*time.Second, "the client to go", func() bool { return c.info("vm").Clients == 0 })
	c.ovsOK("vdisk", "rollback", "vm", "s1")
	runFio(t, patternJob(uri, patternA, "64m", "--verify_only")...)
	if !identical(t, saved, uri) {
		t.Fatal("after rollback the vdisk differs from pattern A")
	}

	var snaps []snapshotInfo
	waitFor(t, time.Minute, "snapshot s1 to be synced", func() bool {
		out := c.ovsOK("vdisk", "snapshot", "list", "vm", "-o", "json")
		if err := json.Unmarshal([]byte(out), &snaps); err != nil {
			t.Fatalf("snapshot list -o json: %v in %q", err, out)
		}
		return len(snaps) == 1 && snaps[0].Name == "s1" && snaps[0].Synced
	})

	c.ovsOK("vdisk", "clone", "cl", "--from", "vm@s1")
	if !identical(t, c.UnixURI("cl"), uri) {
		t.Fatal("clone and parent differ at the snapshot")
	}
	runFio(t, patternJob(uri, patternC, "64m", "--do_verify=0")...)
	runFio(t, patternJob(c.UnixURI("cl"), patternA, "64m", "--verify_only")...)
	runFio(t, patternJob(uri, patternC, "64m", "--verify_only")...)
	expectCLIError(t, "delete of a vdisk with clones", c.cli("vdisk", "delete", "vm", "--force"), "clone")

	// All of it survives a restart.
	c.stop()
	c.start()
	runFio(t, patternJob(c.UnixURI("cl"), patternA, "64m", "--verify_only")...)
	runFio(t, patternJob(uri, patternC, "64m", "--verify_only")...)
	c.ovsOK("vdisk", "flatten", "cl")
	c.ovsOK("vdisk", "delete", "cl")
	c.ovsOK("vdisk", "delete", "vm")
}

type scrubResult struct {
	Rewritten int   `json:"scos_rewritten"`
	Deleted   int   `json:"scos_deleted"`
	Before    int64 `json:"backend_bytes_before"`
	After     int64 `json:"backend_bytes_after"`
}

// TestScrubUnderFio: scrubs run while a fio verify job overwrites the
// vdisk; the job sees no verify error.
func TestScrubUnderFio(t *testing.T) {
	needFio(t)
	// The garbage trigger off: the scrubs under test are these.
	c := startClusterWith(t, "--scrub-garbage-ratio", "0")
	c.create("sc", "32MiB")
	uri := c.UnixURI("sc")
	done := make(chan error, 1)
	go func() {
		// Random overwrites of 32 MiB for 15 s, verified as they go
		// (verify_backlog).
		out, err := run(t, 10*time.Minute, "", "fio", "--name=scrub", "--ioengine=nbd", "--uri="+uri,
			"--rw=randwrite", "--bs=16k", "--size=32m", "--time_based", "--runtime=15", "--iodepth=8",
			"--verify=crc32c", "--verify_fatal=1", "--verify_backlog=512", "--fsync=64")
		if err == nil && !strings.Contains(out, "err= 0") {
			err = errorString("fio did not report err= 0:\n" + out)
		} else if err != nil {
			err = errorString(err.Error() + "\n" + out)
		}
		done <- err
	}()
	var total scrubResult
	scrubs := 0
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("fio under scrub: %v", err)
			}
			running = false
		case <-time.After(time.Second):
			c.ovsOK("vdisk", "sync", "sc")
			var r scrubResult
			out := c.ovsOK("vdisk", "scrub", "sc", "-o", "json")
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("scrub -o json: %v in %q", err, out)
			}
			total.Rewritten += r.Rewritten
			total.Deleted += r.Deleted
			scrubs++
		}
	}
	t.Logf("%d scrubs: %d SCOs rewritten, %d deleted", scrubs, total.Rewritten, total.Deleted)
	if scrubs == 0 || total.Rewritten+total.Deleted == 0 {
		t.Fatalf("no scrub changed anything in %d runs: the test did not exercise scrubbing under I/O", scrubs)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// TestCrashDuringScrubAndRollback: kill -9 at the switch of a scrub and of
// a rollback (failpoints make the process kill itself there); after a
// restart the vdisk holds exactly what it should.
func TestCrashDuringScrubAndRollback(t *testing.T) {
	needFio(t)
	needTools(t, "qemu-img", "nbdcopy")
	// No garbage-triggered scrub: the test's own scrubs must find work
	// (and reach the failpoints).
	c := startClusterWith(t, "--scrub-garbage-ratio", "0")
	c.create("k", "32MiB")
	uri := c.UnixURI("k")
	dir := t.TempDir()
	aImg, bImg := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")

	runFio(t, patternJob(uri, patternA, "32m", "--do_verify=0")...)
	mustRun(t, 5*time.Minute, "nbdcopy", uri, aImg)
	c.ovsOK("vdisk", "snapshot", "create", "k", "s1")
	// Garbage for the scrubber: B over everything, then random overwrites.
	runFio(t, patternJob(uri, patternB, "32m", "--do_verify=0")...)
	runFio(t, "--name=over", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bs=4k",
		"--size=32m", "--io_size=48m", "--iodepth=8", "--randseed=7")
	c.ovsOK("vdisk", "sync", "k")
	mustRun(t, 5*time.Minute, "nbdcopy", uri, bImg)

	for _, tc := range []struct {
		point string
		run   []string
		want  string
	}{
		{"scrub-before-switch", []string{"vdisk", "scrub", "k"}, bImg},
		{"scrub-after-switch", []string{"vdisk", "scrub", "k"}, bImg},
		{"rollback-after-switch", []string{"vdisk", "rollback", "k", "s1"}, aImg},
	} {
		c.stop()
		c.Env = []string{"OVS_FAILPOINTS=" + tc.point}
		c.start()
		r := c.cli(tc.run...)
		if r.Code == 0 {
			t.Fatalf("%s: %s succeeded; the failpoint did not fire", tc.point, strings.Join(tc.run, " "))
		}
		waitFor(t, 30*time.Second, "ovs up to die at "+tc.point, func() bool { return !c.running() })
		c.Env = nil
		c.start()
		if !identical(t, tc.want, uri) {
			t.Fatalf("after a crash at %s the vdisk holds neither more nor less than it should: it differs from %s", tc.point, filepath.Base(tc.want))
		}
		t.Logf("crash at %s: consistent after restart", tc.point)
	}
	runFio(t, patternJob(uri, patternA, "32m", "--verify_only")...)
	// The interrupted scrub can run again, and the vdisk is still A.
	c.ovsOK("vdisk", "scrub", "k")
	if !identical(t, aImg, uri) {
		t.Fatal("a scrub after the crashes changed the data")
	}
}
