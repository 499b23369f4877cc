package tests

import (
	"encoding/json"
	"testing"
)

// TestECReadsOverBinaryProtocol: on a new host (volumes/ removed) every
// read of a vdisk of `ovs up`'s erasure-coded backend comes from the
// ASDs; fio verifies it, and the backend's counters show that the reads
// went over the ASDs' binary protocol, and that the sequential reads were
// served by the read-ahead.
func TestECReadsOverBinaryProtocol(t *testing.T) {
	needFio(t)
	c := startCluster(t)
	c.create("wire", "16MiB")
	uri := c.UnixURI("wire")
	runFio(t, patternJob(uri, patternA, "16m", "--do_verify=0")...)
	c.ovsOK("vdisk", "sync", "wire")
	c.kill9()
	mustRemoveAll(t, c.Dir+"/volumes")
	c.start()
	runFio(t, patternJob(uri, patternA, "16m", "--verify_only")...)
	out := c.ovsOK("backend", "--data", c.Dir, "status", "-o", "json")
	var st struct {
		Counters struct {
			Reads         int64 `json:"reads"`
			WireReads     int64 `json:"wire_reads"`
			DirectReads   int64 `json:"direct_reads"`
			ReadAheadHits int64 `json:"read_ahead_hits"`
		} `json:"counters"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("backend status -o json: %v in %q", err, out)
	}
	t.Logf("backend counters after a verify from the ASDs: %+v", st.Counters)
	if st.Counters.WireReads == 0 || st.Counters.ReadAheadHits == 0 {
		t.Fatalf("reads from the ASDs did not go over the binary protocol with read-ahead: %+v", st.Counters)
	}
	// ovs up's ASDs are on the node's host: their fragments are read
	// from their files (the verify passed, so with their checks).
	if st.Counters.DirectReads == 0 {
		t.Fatalf("no direct reads of the local ASDs' fragment files: %+v", st.Counters)
	}
}
