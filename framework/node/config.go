// Package node assembles a storage router: what one host of an OVS cluster
// runs (`ovs node serve`). The volume driver with its NBD frontend, the
// node-to-node I/O forwarding server, the REST API, the host's ASDs as
// supervised children, all over the cluster's shared erasure-coded backend
// and its model in arakoon. `ovs up` is a cluster of one node built by the
// same Run, with a 1-node arakoon embedded in the process.
package node

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ovs-storage/ovs/framework/api"
)

// Config is NODE.yaml: what one node runs and where. Zero values take
// the defaults.
type Config struct {
	// ID names the node in the cluster model (unique, stable).
	ID string `yaml:"id"`
	// Site is the node's failure domain above the host (data centre).
	Site string `yaml:"site"`
	// Data holds everything host-local: volumes (write buffer,
	// metadata), ASD directories, the lock.
	Data string `yaml:"data"`
	// SecretFile holds the cluster secret (default DATA/secret).
	SecretFile string `yaml:"secret_file"`

	// Listen addresses. Advertise, if set, is the host others reach
	// this node's listeners on (default: the host of each address).
	API       string `yaml:"api"`        // REST API (default 127.0.0.1:8800)
	NBD       string `yaml:"nbd"`        // NBD over TCP ("" disables)
	NBDSocket string `yaml:"nbd_socket"` // NBD unix socket (default DATA/nbd.sock; "none" disables)
	Forward   string `yaml:"forward"`    // I/O forwarding from other nodes (default: the API's host, port 8820)
	DTL       string `yaml:"dtl"`        // DTL server for other nodes' vdisks (default: the API's host, port 8810)
	ISCSI     string `yaml:"iscsi"`      // iSCSI target (default: the API's host, port 3260; "none" disables)
	NFS       string `yaml:"nfs"`        // NFSv3 export of the vpool's files ("" disables; port 111 for qemu's nfs://)
	Advertise string `yaml:"advertise"`
	// Mount, if set, is where the vpool is mounted with FUSE (each vdisk
	// a NAME.raw file; see volumedriver/fs).
	Mount string `yaml:"mount"`
	// NFSAllow lists the client networks (CIDR, or single addresses) the
	// NFS export serves; others are disconnected at accept. Default:
	// loopback and the networks attached to the NFS address.
	NFSAllow []string `yaml:"nfs_allow"`

	// Arakoon is the cluster file (arakoon cluster.yaml) of the cluster's
	// arakoon; EmbeddedArakoon runs a 1-node arakoon in this process
	// instead (ovs up).
	Arakoon         string           `yaml:"arakoon"`
	EmbeddedArakoon *EmbeddedConfig  `yaml:"-"`
	Backend         BackendConfig    `yaml:"backend"`
	Driver          DriverConfig     `yaml:"driver"`
	Limits          LimitsConfig     `yaml:"limits"`
	Intervals       IntervalsConfig  `yaml:"intervals"`
	Bootstrap       *BootstrapConfig `yaml:"-"`
	// FailoverTimeout: a node whose heartbeats stop for this long is
	// taken for dead and its vdisks fail over (default 15s).
	FailoverTimeout time.Duration `yaml:"failover_timeout"`
	// DTLReadWait: how long a node taking a vdisk over keeps trying to
	// read its DTL when the DTL's node does not answer (default 30s).
	DTLReadWait time.Duration `yaml:"dtl_read_wait"`
}

// EmbeddedConfig is the 1-node arakoon of ovs up.
type EmbeddedConfig struct {
	Client, Raft string
}

// BootstrapConfig: a node that finds no cluster in arakoon initialises
// one and registers itself (ovs up). Without it a node must have been
// joined (ovs cluster init, ovs node join).
type BootstrapConfig struct {
	ClusterID string
}

// BackendConfig is the node's part of the backend.
type BackendConfig struct {
	// Kind: "ec" (erasure-coded over the cluster's ASDs; the only kind a
	// cluster of several nodes can share) or "local" (a directory, ovs up
	// only).
	Kind string `yaml:"kind"`
	// ASDs run on this host (default 2 on a node, 6 on ovs up).
	ASDs int `yaml:"asds"`
	// ASDPorts is FIRST-LAST (default 8600-8699) or 0 (the kernel picks).
	ASDPorts string `yaml:"asd_ports"`
	// ASDHost is the address the ASDs listen on (default: the API's host).
	ASDHost string `yaml:"asd_host"`
	// Maintenance runs the backend's background repair, scrub and
	// rebalance on this node (default true).
	Maintenance *bool `yaml:"maintenance"`
}

// DriverConfig tunes the volume driver.
type DriverConfig struct {
	ReadCache          Size          `yaml:"read_cache"`
	ReadCacheDisk      *CacheSize    `yaml:"read_cache_disk"` // nil: from DATA's free space; 0: off
	MetadataCache      Size          `yaml:"metadata_cache"`
	WriteBuffer        Size          `yaml:"write_buffer"`
	MaxPendingUpload   Size          `yaml:"max_pending_upload"`
	AutoSync           time.Duration `yaml:"auto_sync"`
	ScrubInterval      time.Duration `yaml:"scrub_interval"`      // scrub period where the vpool's schedule sets none; negative: off
	ScrubGarbageRatio  float64       `yaml:"scrub_garbage_ratio"` // negative: off
	StopTimeout        time.Duration `yaml:"stop_timeout"`
	ReadyTimeout       time.Duration `yaml:"ready_timeout"`
	ForwardRetryWindow time.Duration `yaml:"forward_retry_window"` // how long forwarded I/O waits for an owner
}

// LimitsConfig are the frontends' and the REST API's limits.
type LimitsConfig struct {
	APIHosts        []string      `yaml:"api_hosts"`
	APIRequireToken bool          `yaml:"api_require_token"`
	APIMaxConns     int           `yaml:"api_max_conns"`
	APITimeout      time.Duration `yaml:"api_timeout"`
	NBDMaxConns     int           `yaml:"nbd_max_conns"`
	NBDHandshake    time.Duration `yaml:"nbd_handshake_timeout"`
}

// IntervalsConfig are the node's periodic tasks.
type IntervalsConfig struct {
	// Heartbeat: how often the node says it runs (default 2s).
	Heartbeat time.Duration `yaml:"heartbeat"`
	// OwnerCheck: how often the node compares what it serves with the
	// owners in the model (default 1s): a vdisk taken from it is fenced
	// here even before a backend write is refused.
	OwnerCheck time.Duration `yaml:"owner_check"`
	// Schedule: how often the snapshot and scrub scheduler looks at the
	// vdisks (default 1m; the schedules' periods are hours and more).
	Schedule time.Duration `yaml:"schedule"`
}

// Size is a byte count that YAML may give as "64MiB".
type Size int64

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := api.ParseSize(n.Value)
	if err != nil {
		return err
	}
	*s = Size(v)
	return nil
}

// LoadConfig reads NODE.yaml.
func LoadConfig(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("node config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("node config %s: %w", path, err)
	}
	if c.Arakoon != "" && !filepath.IsAbs(c.Arakoon) {
		c.Arakoon = filepath.Join(filepath.Dir(path), c.Arakoon)
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	if c.ID == "" {
		return fmt.Errorf("node config: no id")
	}
	if c.Data == "" {
		return fmt.Errorf("node config: no data directory")
	}
	if c.Arakoon == "" && c.EmbeddedArakoon == nil {
		return fmt.Errorf("node config: no arakoon cluster file")
	}
	if c.Advertise == "" && c.Bootstrap == nil {
		for _, a := range []string{c.API, c.NBD, c.Forward, c.DTL, c.ISCSI} {
			if host, _, err := net.SplitHostPort(a); err == nil && (host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()) {
				return fmt.Errorf("node config: %s listens on every address; set advertise to the address other nodes reach this one on", a)
			}
		}
	}
	if _, err := parseNFSAllow(c.NFSAllow); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	switch c.Backend.Kind {
	case "", "ec":
	case "local":
		if c.Bootstrap == nil {
			return fmt.Errorf("node config: the local backend serves one host only (ovs up); a cluster needs kind ec")
		}
	default:
		return fmt.Errorf("node config: backend kind %q: want ec or local", c.Backend.Kind)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Site == "" {
		c.Site = "default"
	}
	if c.API == "" {
		c.API = "127.0.0.1:8800"
	}
	if c.SecretFile == "" {
		c.SecretFile = filepath.Join(c.Data, "secret")
	}
	if c.Backend.Kind == "" {
		c.Backend.Kind = "ec"
	}
	if c.Backend.ASDs == 0 {
		c.Backend.ASDs = 2
	}
	if c.Backend.ASDPorts == "" {
		c.Backend.ASDPorts = "8600-8699"
	}
	if c.Backend.Maintenance == nil {
		t := true
		c.Backend.Maintenance = &t
	}
	if c.Driver.StopTimeout <= 0 {
		c.Driver.StopTimeout = 30 * time.Second
	}
	if c.Driver.ReadyTimeout <= 0 {
		c.Driver.ReadyTimeout = time.Minute
	}
	if c.Driver.ForwardRetryWindow <= 0 {
		c.Driver.ForwardRetryWindow = 2 * time.Minute
	}
	if c.Forward == "" && c.Bootstrap == nil {
		// A node of a cluster takes forwarded I/O: without it, what it
		// owns could be reached only through itself.
		if host, _, err := net.SplitHostPort(c.API); err == nil {
			c.Forward = net.JoinHostPort(host, "8820")
		}
	}
	if c.DTL == "" && c.Bootstrap == nil {
		if host, _, err := net.SplitHostPort(c.API); err == nil {
			c.DTL = net.JoinHostPort(host, "8810")
		}
	}
	if c.ISCSI == "" && c.Bootstrap == nil {
		if host, _, err := net.SplitHostPort(c.API); err == nil {
			c.ISCSI = net.JoinHostPort(host, "3260")
		}
	}
	if c.ISCSI == "none" {
		c.ISCSI = ""
	}
	if c.FailoverTimeout <= 0 {
		c.FailoverTimeout = 15 * time.Second
	}
	if c.DTLReadWait <= 0 {
		c.DTLReadWait = 30 * time.Second
	}
	if c.Intervals.Heartbeat <= 0 {
		c.Intervals.Heartbeat = 2 * time.Second
	}
	if c.Intervals.OwnerCheck <= 0 {
		c.Intervals.OwnerCheck = time.Second
	}
	if c.Intervals.Schedule <= 0 {
		c.Intervals.Schedule = time.Minute
	}
}

// advertised is the address others reach listen on: the Advertise host
// with listen's port, or listen itself.
func (c *Config) advertised(listen string) string {
	if listen == "" || c.Advertise == "" {
		return listen
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	return net.JoinHostPort(c.Advertise, port)
}
