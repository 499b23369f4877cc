package arakoon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodConfig = `
cluster: ovsdb
nodes:
  - {id: a1, client: 127.0.0.1:8900, raft: 127.0.0.1:8901, data: /var/lib/ovs/arakoon/a1}
  - {id: a2, client: 127.0.0.1:8910, raft: 127.0.0.1:8911, data: /var/lib/ovs/arakoon/a2}
  - {id: a3, client: 127.0.0.1:8920, raft: 127.0.0.1:8921, data: /var/lib/ovs/arakoon/a3}
  - {id: l1, client: 127.0.0.1:8930, raft: 127.0.0.1:8931, data: /var/lib/ovs/arakoon/l1, learner: true}
  - {id: j1, client: 127.0.0.1:8940, raft: 127.0.0.1:8941, data: /var/lib/ovs/arakoon/j1, join: true}
tuning: {heartbeat_timeout: 200ms, election_timeout: 300ms, snapshot_threshold: 100}
`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != "ovsdb" || len(c.Nodes) != 5 || !c.Nodes[3].Learner || !c.Nodes[4].Join {
		t.Fatalf("parsed %+v", c)
	}
	if time.Duration(c.Tuning.HeartbeatTimeout) != 200*time.Millisecond || c.Tuning.SnapshotThreshold != 100 {
		t.Fatalf("tuning %+v", c.Tuning)
	}
	rc, err := c.raftConfig("a1")
	if err != nil || rc.LeaderLeaseTimeout > rc.HeartbeatTimeout || !rc.NoSnapshotRestoreOnStart {
		t.Fatalf("raft config %+v %v", rc, err)
	}
	if n, ok := c.Node("a2"); !ok || n.Client != "127.0.0.1:8910" {
		t.Fatalf("Node(a2) = %+v %v", n, ok)
	}
	if cc := c.ClientConfig(); cc.Cluster != "ovsdb" || len(cc.Nodes) != 5 {
		t.Fatalf("client config %+v", cc)
	}
}

func TestLoadConfigRelativeData(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte("cluster: x\nnodes:\n  - {id: a, client: 127.0.0.1:1, raft: 127.0.0.1:2, data: d/a}\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Nodes[0].Data != filepath.Join(dir, "d/a") {
		t.Fatalf("data = %s", c.Nodes[0].Data)
	}
}

func TestConfigErrors(t *testing.T) {
	node := func(id, c, r, d string) string {
		return "  - {id: " + id + ", client: " + c + ", raft: " + r + ", data: " + d + "}\n"
	}
	one := node("a", "127.0.0.1:1", "127.0.0.1:2", "/d/a")
	cases := map[string]string{
		"":                               "empty",
		"cluster: x\n":                   "no nodes",
		"nodes:\n" + one:                 "no cluster name",
		"cluster: 'a b'\nnodes:\n" + one: "only letters",
		"cluster: x\nnodes:\n" + one + node("a", "127.0.0.1:3", "127.0.0.1:4", "/d/b"): "appears twice",
		"cluster: x\nnodes:\n" + one + node("b", "127.0.0.1:1", "127.0.0.1:4", "/d/b"): "is also",
		"cluster: x\nnodes:\n" + one + node("b", "127.0.0.1:3", "127.0.0.1:4", "/d/a"): "data directory",
		"cluster: x\nnodes:\n" + one + node("b", "127.0.0.1:3", "127.0.0.1:4", "/d/b"): "1, 3 or 5",
		"cluster: x\nnodes:\n" + node("a", "':1'", "127.0.0.1:2", "/d"):                "no host",
		"cluster: x\nnodes:\n" + node("a", "127.0.0.1:0", "127.0.0.1:2", "/d"):         "port",
		"cluster: x\nnodes:\n" + node("a", "127.0.0.1", "127.0.0.1:2", "/d"):           "missing port",
		"cluster: x\nnodes:\n" + node("a", "127.0.0.1:1", "127.0.0.1:2", "''"):         "no data",
		"cluster: x\ncolour: red\nnodes:\n" + one:                                      "colour",
		"cluster: x\ntuning: {heartbeat_timeout: soon}\nnodes:\n" + one:                "invalid duration",
		"cluster: x\ntuning: {heartbeat_timeout: 1ms}\nnodes:\n" + one:                 "tuning",
		"cluster: x\nnodes:\n" + strings.Replace(one, "}", ", learner: true}", 1):      "0 voting",
	}
	for in, want := range cases {
		_, err := ParseConfig([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", in, err, want)
		}
	}
}
