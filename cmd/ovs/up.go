package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/node"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/nbd"
)

// upOptions are the flags of `ovs up`.
type upOptions struct {
	data          string
	apiAddr       string
	nbdAddr       string
	iscsiAddr     string
	nfsAddr       string
	nfsAllow      []string
	nbdSocket     string
	mount         string
	readCache     sizeValue
	readCacheDisk autoSizeValue
	metadataCache sizeValue
	writeBuffer   sizeValue
	maxPending    sizeValue
	autoSync      time.Duration
	logLevel      string
	pprofAddr     string
	backend       string
	asds          int
	asdPorts      string
	scrubEvery    time.Duration
	scheduleTick  time.Duration
	scrubGarbage  float64
	stopTimeout   time.Duration
	arakoonClient string
	arakoonRaft   string

	apiHosts         []string
	apiRequireToken  bool
	apiMaxConns      int
	apiTimeout       time.Duration
	nbdMaxConns      int
	nbdHandshake     time.Duration
	readyWaitTimeout time.Duration
}

// newUpCommand: the embedded default, a whole single-host cluster in one
// foreground process.
func newUpCommand() *cobra.Command {
	o := &upOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a single-host OVS cluster in the foreground",
		Long: "ovs up runs the volume driver with its NBD frontend and the REST API\n" +
			"on one host, keeping everything under --data: host-local volume state\n" +
			"in DATA/volumes, the backend in DATA/backend. Run it again on the same\n" +
			"directory and every vdisk comes back. It stops on SIGINT or SIGTERM.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runUp(cmd.Context(), o) },
	}
	f := cmd.Flags()
	home, _ := os.UserHomeDir()
	f.StringVar(&o.data, "data", filepath.Join(home, ".ovs"), "directory holding all of this cluster's state")
	f.StringVar(&o.apiAddr, "api", "127.0.0.1:8800", "REST API listen address")
	f.StringVar(&o.nbdAddr, "nbd", "127.0.0.1:10809", "NBD listen address (TCP); empty disables it")
	f.StringVar(&o.iscsiAddr, "iscsi", "127.0.0.1:3260", "iSCSI target listen address (a target per vdisk, LUN 0); empty disables it")
	f.StringVar(&o.mount, "mount", "", "mount the vpool here with FUSE: each vdisk a NAME.raw file, snapshots under .snapshots (empty: no mount)")
	f.StringVar(&o.nfsAddr, "nfs", "", "NFSv3 export of the vpool's files (export /, alias /vpool); empty disables it. qemu's nfs:// asks the portmapper, so give it port 111")
	f.StringSliceVar(&o.nfsAllow, "nfs-allow", nil, "client networks (CIDR) the NFS export serves; others are disconnected (default: loopback and the networks attached to the --nfs address)")
	f.StringVar(&o.nbdSocket, "nbd-socket", "", "NBD unix socket (default DATA/nbd.sock); \"none\" disables it")
	o.readCache = 64 << 20
	o.metadataCache = 64 << 20
	o.writeBuffer = 1 << 30
	o.maxPending = 512 << 20
	f.Var(&o.readCache, "read-cache", "read cache size, shared by all vdisks")
	f.Var(&o.readCacheDisk, "read-cache-disk", "disk read cache under DATA/volumes/readcache, shared by all vdisks, in front of the erasure-coded backend (auto: 10% of DATA's free space, 256 MiB to 8 GiB; 0 disables)")
	f.Var(&o.metadataCache, "metadata-cache", "metadata page cache per vdisk")
	f.Var(&o.writeBuffer, "write-buffer", "local write buffer per vdisk; uploaded SCOs beyond it are evicted")
	f.Var(&o.maxPending, "max-pending-upload", "data per vdisk not yet on the backend beyond which writes wait")
	f.DurationVar(&o.autoSync, "auto-sync", 30*time.Second, "upload an open TLog holding data after this long")
	f.StringVar(&o.backend, "backend", "", "ec (erasure-coded over local ASD processes, the default for a new DATA) or local (a plain directory); DATA remembers its choice")
	f.IntVar(&o.asds, "asds", 6, "ASD processes of the erasure-coded backend (4+2 needs 6)")
	f.StringVar(&o.asdPorts, "asd-ports", "8600-8699", "port range of the ASDs (FIRST-LAST; 0: ports the kernel picks); an ASD whose port another process holds moves to the next free one")
	f.DurationVar(&o.scrubEvery, "scrub-interval", time.Hour, "scrub every vdisk this often, where the vpool's schedule (ovs schedule) sets no period (0 disables)")
	f.DurationVar(&o.scheduleTick, "schedule-tick", time.Minute, "how often the snapshot and scrub scheduler looks at the vdisks")
	f.Float64Var(&o.scrubGarbage, "scrub-garbage-ratio", volumedriver.DefaultScrubGarbageRatio,
		"also scrub a vdisk as soon as its garbage (overwritten data no snapshot sees) exceeds this fraction of its live data (0 disables)")
	f.DurationVar(&o.stopTimeout, "stop-timeout", 30*time.Second,
		"on stop, wait this long at most for sealed data and the last snapshots.json of every vdisk to reach the backend")
	f.StringVar(&o.arakoonClient, "arakoon-client", "127.0.0.1:8900", "client address of the embedded 1-node arakoon")
	f.StringVar(&o.arakoonRaft, "arakoon-raft", "127.0.0.1:8901", "raft address of the embedded 1-node arakoon")
	f.StringSliceVar(&o.apiHosts, "api-host", nil, "host names the REST API is reached by (besides IP addresses and localhost); other Host headers are refused")
	f.BoolVar(&o.apiRequireToken, "api-require-token", false, "require an API token (ovs token create) on mutating calls even on loopback; always on when --api listens beyond loopback")
	f.IntVar(&o.apiMaxConns, "api-max-conns", api.DefaultMaxConns, "open REST API connections beyond which new ones are refused with 503")
	f.DurationVar(&o.apiTimeout, "api-timeout", api.DefaultRequestTimeout, "deadline of a REST API call (sync, rollback, clone, flatten, template and scrub get 10x)")
	f.IntVar(&o.nbdMaxConns, "nbd-max-conns", nbd.DefaultMaxConns, "open NBD connections beyond which new ones are closed at once")
	f.DurationVar(&o.nbdHandshake, "nbd-handshake-timeout", nbd.DefaultHandshakeTimeout, "an NBD client must finish its handshake (option haggling) within this")
	f.DurationVar(&o.readyWaitTimeout, "ready-timeout", time.Minute, "how long to wait at start for the backend to take data before serving (the health check stays 503 until it does)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.pprofAddr, "pprof", "", "serve Go profiles (net/http/pprof) on this address")
	return cmd
}

func runUp(ctx context.Context, o *upOptions) error {
	// The caches (metadata pages, reads, manifests) are most of the heap
	// and are long-lived: collecting at 50% growth instead of 100% keeps
	// the process near what they are configured to, not twice that.
	// GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	prepareProcess(log)
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	kind, err := backendKind(o.data, o.backend)
	if err != nil {
		return err
	}
	if o.pprofAddr != "" {
		go servePprof(o.pprofAddr, log)
	}
	// ovs up is a cluster of one node: the same node as ovs node serve,
	// with a 1-node arakoon in the process, that initialises the cluster
	// and joins itself on its first start.
	cfg := node.Config{
		ID:              upNodeID,
		Site:            "local",
		Data:            o.data,
		API:             o.apiAddr,
		NBD:             o.nbdAddr,
		ISCSI:           o.iscsiAddr,
		NFS:             o.nfsAddr,
		NFSAllow:        o.nfsAllow,
		NBDSocket:       o.nbdSocket,
		Mount:           o.mount,
		EmbeddedArakoon: &node.EmbeddedConfig{Client: o.arakoonClient, Raft: o.arakoonRaft},
		Bootstrap:       &node.BootstrapConfig{ClusterID: "ovs"},
		Backend:         node.BackendConfig{Kind: kind, ASDs: o.asds, ASDPorts: o.asdPorts, ASDHost: "127.0.0.1"},
		Driver: node.DriverConfig{
			ReadCache:         node.Size(o.readCache),
			ReadCacheDisk:     o.readCacheDisk.size(),
			MetadataCache:     node.Size(o.metadataCache),
			WriteBuffer:       node.Size(o.writeBuffer),
			MaxPendingUpload:  node.Size(o.maxPending),
			AutoSync:          o.autoSync,
			ScrubInterval:     scrubInterval(o.scrubEvery),
			ScrubGarbageRatio: scrubGarbageRatio(o.scrubGarbage),
			StopTimeout:       o.stopTimeout,
			ReadyTimeout:      o.readyWaitTimeout,
		},
		Intervals: node.IntervalsConfig{Schedule: o.scheduleTick},
		Limits: node.LimitsConfig{
			APIHosts: o.apiHosts, APIRequireToken: o.apiRequireToken, APIMaxConns: o.apiMaxConns,
			APITimeout: o.apiTimeout, NBDMaxConns: o.nbdMaxConns, NBDHandshake: o.nbdHandshake,
		},
	}
	return node.Run(ctx, cfg, node.RunOptions{Logger: log, Failpoint: failpointsFromEnv(log)})
}

// upNodeID is the id of the one node of ovs up in its cluster model.
const upNodeID = "local"

// newLogger is the daemons' structured logger at level.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// prepareProcess raises the open file limit and restricts the umask: every
// file a daemon makes is nobody else's to read.
func prepareProcess(log *slog.Logger) {
	if n, err := raiseNoFileLimit(); err != nil {
		log.Warn("could not raise the open file limit", "err", err)
	} else {
		log.Debug("open file limit", "nofile", n)
	}
	restrictUmask()
}

// servePprof serves the Go profiler for `--pprof`; it is off by default.
func servePprof(addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		log.Warn("pprof server", "err", err)
	}
}

// failpointsFromEnv: OVS_FAILPOINTS=point[,point...] makes the process kill
// itself with SIGKILL when the volume driver reaches one of those points.
// It exists for crash tests; unset, it costs nothing.
func failpointsFromEnv(log *slog.Logger) func(string) {
	env := os.Getenv("OVS_FAILPOINTS")
	if env == "" {
		return nil
	}
	armed := map[string]bool{}
	for _, p := range strings.Split(env, ",") {
		armed[strings.TrimSpace(p)] = true
	}
	log.Warn("failpoints armed: this process will kill itself when it reaches them", "points", env)
	return func(point string) {
		if armed[point] {
			log.Warn("failpoint reached; SIGKILL", "point", point)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
}

// backendKind decides which backend DATA uses: the one it was created with
// (recorded in DATA/backend.kind), else the flag, else ec. Asking for the
// other one on an existing DATA is an error: its vdisks would vanish.
func backendKind(data, flag string) (string, error) {
	switch flag {
	case "", "ec", "local":
	default:
		return "", fmt.Errorf("--backend %q: want ec or local", flag)
	}
	path := filepath.Join(data, "backend.kind")
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		have := strings.TrimSpace(string(raw))
		if flag != "" && flag != have {
			return "", fmt.Errorf("%s holds a cluster on the %s backend; --backend %s would not see its vdisks", data, have, flag)
		}
		return have, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	kind := flag
	if kind == "" {
		kind = "ec"
		// A DATA from before backend.kind existed has a local backend.
		if ents, err := os.ReadDir(filepath.Join(data, "backend")); err == nil && len(ents) > 0 {
			kind = "local"
		}
	}
	if err := os.WriteFile(path, []byte(kind+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return kind, nil
}

// scrubGarbageRatio maps the flag (0: off) onto the driver's option
// (negative: off).
func scrubGarbageRatio(r float64) float64 {
	if r <= 0 {
		return -1
	}
	return r
}

// scrubInterval maps the flag (0: off) onto the driver's option (negative: off).
func scrubInterval(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
