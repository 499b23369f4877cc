package tests

import (
	"encoding/json"
	"os"
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
	_ = time.Second
}
