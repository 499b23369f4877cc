package arakoon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Config describes one arakoon cluster: its name and its nodes. Every
// node and every client of the cluster reads the same file:
//
//	cluster: ovsdb
//	nodes:
//	  - {id: a1, client: 127.0.0.1:8900, raft: 127.0.0.1:8901, data: /var/lib/ovs/arakoon/a1}
//	  - {id: a2, client: 127.0.0.1:8910, raft: 127.0.0.1:8911, data: /var/lib/ovs/arakoon/a2}
//	  - {id: a3, client: 127.0.0.1:8920, raft: 127.0.0.1:8921, data: /var/lib/ovs/arakoon/a3}
//	tuning: {heartbeat_timeout: 1s, election_timeout: 1s, snapshot_threshold: 8192}
//
// The nodes that are neither learners nor marked join form the initial
// cluster: 1, 3 or 5 voters. A node marked join is added later to the
// live cluster with add-node; learners replicate but do not vote.
type Config struct {
	Cluster string       `yaml:"cluster"`
	Nodes   []NodeConfig `yaml:"nodes"`
	Tuning  Tuning       `yaml:"tuning,omitempty"`
	// SecretFile names the file of the cluster secret (relative to the
	// cluster file) that nodes and clients authenticate each other with;
	// the arakoon package only carries it, the caller turns it into
	// TLS configurations (ServerOptions.TLS, ClientConfig.TLS).
	SecretFile string `yaml:"secret_file,omitempty"`
}

// NodeConfig is one node of a cluster.
type NodeConfig struct {
	ID      string `yaml:"id"`
	Client  string `yaml:"client"` // host:port of the client protocol
	Raft    string `yaml:"raft"`   // host:port of the raft transport
	Data    string `yaml:"data"`   // directory of the node's log, snapshots and store
	Learner bool   `yaml:"learner,omitempty"`
	Join    bool   `yaml:"join,omitempty"` // not in the initial cluster: added later by add-node
}

// Tuning holds optional raft settings; zero values take the defaults.
type Tuning struct {
	HeartbeatTimeout   Duration `yaml:"heartbeat_timeout,omitempty"`
	ElectionTimeout    Duration `yaml:"election_timeout,omitempty"`
	LeaderLeaseTimeout Duration `yaml:"leader_lease_timeout,omitempty"`
	CommitTimeout      Duration `yaml:"commit_timeout,omitempty"`
	// A snapshot is taken every SnapshotInterval (randomized up to twice
	// that) once SnapshotThreshold entries were appended since the last;
	// TrailingLogs entries stay in the log after it, for slow followers.
	SnapshotInterval  Duration `yaml:"snapshot_interval,omitempty"`
	SnapshotThreshold uint64   `yaml:"snapshot_threshold,omitempty"`
	TrailingLogs      uint64   `yaml:"trailing_logs,omitempty"`
}

// Duration is a time.Duration written as "250ms", "1s", "2m" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	if v < 0 {
		return fmt.Errorf("line %d: negative duration %s", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

const maxNodes = 16

// LoadConfig reads and validates a cluster file. Relative data
// directories are taken relative to the file's directory.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("arakoon config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if c.SecretFile != "" && !filepath.IsAbs(c.SecretFile) {
		c.SecretFile = filepath.Join(dir, c.SecretFile)
	}
	for i := range c.Nodes {
		if !filepath.IsAbs(c.Nodes[i].Data) {
			c.Nodes[i].Data = filepath.Join(dir, c.Nodes[i].Data)
		}
	}
	return c, nil
}

// ParseConfig parses and validates a cluster description. Unknown fields
// are errors, so that a typo does not silently fall back to a default.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("arakoon config: empty")
		}
		return nil, fmt.Errorf("arakoon config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks names, addresses, uniqueness and the voter count.
func (c *Config) Validate() error {
	if err := validName("cluster name", c.Cluster); err != nil {
		return fmt.Errorf("arakoon config: %w", err)
	}
	if len(c.Nodes) == 0 {
		return errors.New("arakoon config: no nodes")
	}
	if len(c.Nodes) > maxNodes {
		return fmt.Errorf("arakoon config: %d nodes, at most %d", len(c.Nodes), maxNodes)
	}
	ids := map[string]bool{}
	addrs := map[string]string{}
	dirs := map[string]string{}
	voters := 0
	for i, n := range c.Nodes {
		where := fmt.Sprintf("node %d", i+1)
		if n.ID != "" {
			where = fmt.Sprintf("node %q", n.ID)
		}
		if err := validName("node id", n.ID); err != nil {
			return fmt.Errorf("arakoon config: %s: %w", where, err)
		}
		if ids[n.ID] {
			return fmt.Errorf("arakoon config: node id %q appears twice", n.ID)
		}
		ids[n.ID] = true
		for _, a := range []struct{ name, addr string }{{"client", n.Client}, {"raft", n.Raft}} {
			if err := validAddr(a.addr); err != nil {
				return fmt.Errorf("arakoon config: %s: %s address: %w", where, a.name, err)
			}
			if other, dup := addrs[a.addr]; dup {
				return fmt.Errorf("arakoon config: %s: %s address %s is also %s", where, a.name, a.addr, other)
			}
			addrs[a.addr] = fmt.Sprintf("the %s address of node %q", a.name, n.ID)
		}
		if n.Data == "" {
			return fmt.Errorf("arakoon config: %s: no data directory", where)
		}
		d := filepath.Clean(n.Data)
		if other, dup := dirs[d]; dup {
			return fmt.Errorf("arakoon config: %s: data directory %s is also node %q's", where, n.Data, other)
		}
		dirs[d] = n.ID
		if !n.Learner && !n.Join {
			voters++
		}
	}
	switch voters {
	case 1, 3, 5:
	default:
		return fmt.Errorf("arakoon config: %d voting nodes in the initial cluster; it needs 1, 3 or 5 (learners and join nodes do not count)", voters)
	}
	if _, err := c.raftConfig("check"); err != nil {
		return fmt.Errorf("arakoon config: tuning: %w", err)
	}
	return nil
}

// Node returns the node with the given id.
func (c *Config) Node(id string) (NodeConfig, bool) {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return NodeConfig{}, false
}

// ClientConfig is what a client needs from the cluster file.
func (c *Config) ClientConfig() ClientConfig {
	cc := ClientConfig{Cluster: c.Cluster}
	for _, n := range c.Nodes {
		cc.Nodes = append(cc.Nodes, NodeInfo{ID: n.ID, Client: n.Client, Raft: n.Raft})
	}
	return cc
}

func validName(what, s string) error {
	if s == "" {
		return fmt.Errorf("no %s", what)
	}
	if len(s) > 64 {
		return fmt.Errorf("%s %q is longer than 64 bytes", what, s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("%s %q: only letters, digits, '-', '_' and '.' are allowed", what, s)
		}
	}
	return nil
}

func validAddr(a string) error {
	if a == "" {
		return errors.New("missing")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if host == "" {
		return fmt.Errorf("%q has no host (write 127.0.0.1:PORT or HOST:PORT)", a)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port must be a number from 1 to 65535", a)
	}
	return nil
}
