package volumedriver

import (
	"encoding/json"
	"strings"
	"testing"
)

// The JSON files of a volume come off the local disk (state.json) and the
// backend (volume.json, snapshots.json): whatever they hold, decoding
// returns an error or a value whose names are safe to use as paths.

func FuzzDecodeVolumeConfig(f *testing.F) {
	f.Add([]byte(`{"format":1,"id":"0123456789abcdef","name":"vm1","size":1048576,"cluster_size":4096,"sco_multiplier":1024,"tlog_multiplier":16}`))
	f.Add([]byte(`{"format":1,"id":"../../etc","name":"vm1"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeVolumeConfig(b)
		if err != nil {
			return
		}
		if !validID(c.ID) || strings.ContainsAny(c.ID, "/\\") || c.ID == ".." {
			t.Fatalf("accepted id %q", c.ID)
		}
		for _, a := range c.Ancestors {
			if !validID(a.ID) {
				t.Fatalf("accepted ancestor id %q", a.ID)
			}
		}
	})
}

func FuzzDecodeSnapshotsFile(f *testing.F) {
	f.Add([]byte(`{"format":1,"tlogs":[],"snapshots":[]}`))
	f.Add([]byte(`{"format":1,"tlogs":["../x"],"snapshots":[{"name":"s","tlog_count":2}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSnapshotsFile(b)
		if err != nil {
			return
		}
		for _, n := range s.TLogs {
			if !validTLogName(n) {
				t.Fatalf("accepted tlog %q", n)
			}
		}
		for _, sn := range s.Snapshots {
			if sn.TLogCount < 0 || sn.TLogCount > len(s.TLogs) {
				t.Fatalf("accepted snapshot %+v over %d tlogs", sn, len(s.TLogs))
			}
		}
	})
}

func FuzzDecodeLocalState(f *testing.F) {
	good := localState{Format: formatVersion, Config: volumeConfig{Format: formatVersion, ID: "0123456789abcdef", Name: "vm1",
		Size: 1 << 20, ClusterSize: 4096, SCOMultiplier: 1024, TLogMultiplier: 16}}
	b, _ := json.Marshal(good)
	f.Add(b)
	f.Add([]byte(`{"format":1,"sealed":[{"name":"../../x"}],"open_tlog":"/etc/passwd"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeLocalState(b)
		if err != nil {
			return
		}
		for _, tl := range s.Sealed {
			if !validTLogName(tl.Name) {
				t.Fatalf("accepted sealed tlog %q", tl.Name)
			}
		}
		if s.OpenTLog != "" && !validTLogName(s.OpenTLog) {
			t.Fatalf("accepted open tlog %q", s.OpenTLog)
		}
		if s.Checkpoint < 0 || s.Checkpoint > len(s.Sealed) {
			t.Fatalf("accepted checkpoint %d of %d", s.Checkpoint, len(s.Sealed))
		}
	})
}
