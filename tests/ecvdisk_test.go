package tests

import (
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

type asdRow struct {
	ID     string `json:"id"`
	Health string `json:"health"`
	PID    int    `json:"pid"`
}

func (c *cluster) asds() []asdRow {
	c.t.Helper()
	out := c.ovsOK("backend", "--data", c.Dir, "asd", "list", "-o", "json")
	var rows []asdRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		c.t.Fatalf("backend asd list -o json: %v in %q", err, out)
	}
	return rows
}

// TestVDiskOnECBackendSurvivesASDLoss: a fio verify job on a vdisk of the
// default (erasure-coded 4+2) backend keeps passing while an ASD is killed
// in the middle of it; on a new host, with the data read back from the
// ASDs, it verifies with one ASD stopped.
func TestVDiskOnECBackendSurvivesASDLoss(t *testing.T) {
	needFio(t)
	c := startCluster(t)
	if n := len(c.asds()); n != 6 {
		t.Fatalf("ovs up runs %d ASDs, want 6", n)
	}
	c.create("ec", "64MiB")
	uri := c.UnixURI("ec")
	job := []string{"--name=ec", "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=16k",
		"--size=64m", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1", "--randseed=11"}
	done := make(chan error, 1)
	go func() {
		out, err := run(t, 5*time.Minute, "", "fio", append(job, "--time_based", "--runtime=12",
			"--verify_backlog=256", "--fsync=32")...)
		if err == nil && !strings.Contains(out, "err= 0") {
			err = errorString("fio: " + out)
		} else if err != nil {
			err = errorString(err.Error() + "\n" + out)
		}
		done <- err
	}()
	time.Sleep(3 * time.Second)
	c.ovsOK("vdisk", "sync", "ec")
	victim := c.asds()[2]
	if victim.PID == 0 {
		t.Fatalf("ASD %s has no pid in asd list", victim.ID)
	}
	t.Logf("kill -9 ASD %s (pid %d) while fio runs", victim.ID, victim.PID)
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	c.ovsOK("vdisk", "sync", "ec") // uploads with an ASD gone
	if err := <-done; err != nil {
		t.Fatalf("fio while an ASD died: %v", err)
	}
	// Write a known whole pattern, sync it, and move to a new host: every
	// read then comes from the ASDs, one of which is frozen.
	runFio(t, patternJob(uri, patternA, "64m", "--do_verify=0")...)
	c.ovsOK("vdisk", "sync", "ec")
	c.kill9()
	mustRemoveAll(t, c.Dir+"/volumes")
	c.start()
	waitFor(t, 30*time.Second, "the restarted ASD and the others to be up", func() bool {
		up := 0
		for _, a := range c.asds() {
			if a.Health == "up" {
				up++
			}
		}
		return up == 6
	})
	frozen := c.asds()[4]
	if err := syscall.Kill(frozen.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(frozen.PID, syscall.SIGCONT)
	t.Logf("SIGSTOP ASD %s (pid %d); verifying from the backend", frozen.ID, frozen.PID)
	runFio(t, patternJob(uri, patternA, "64m", "--verify_only")...)
	syscall.Kill(frozen.PID, syscall.SIGCONT)
}

func mustRemoveAll(t *testing.T, path string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
}
