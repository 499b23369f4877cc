package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/nbd"
)

// upOptions are the flags of `ovs up`.
type upOptions struct {
	data          string
	apiAddr       string
	nbdAddr       string
	nbdSocket     string
	readCache     sizeValue
	metadataCache sizeValue
	writeBuffer   sizeValue
	maxPending    sizeValue
	autoSync      time.Duration
	logLevel      string
	pprofAddr     string
	backend       string
	asds          int
	scrubEvery    time.Duration
	scrubGarbage  float64
	stopTimeout   time.Duration
	arakoonClient string
	arakoonRaft   string
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
	f.StringVar(&o.nbdSocket, "nbd-socket", "", "NBD unix socket (default DATA/nbd.sock); \"none\" disables it")
	o.readCache = 64 << 20
	o.metadataCache = 64 << 20
	o.writeBuffer = 1 << 30
	o.maxPending = 512 << 20
	f.Var(&o.readCache, "read-cache", "read cache size, shared by all vdisks")
	f.Var(&o.metadataCache, "metadata-cache", "metadata page cache per vdisk")
	f.Var(&o.writeBuffer, "write-buffer", "local write buffer per vdisk; uploaded SCOs beyond it are evicted")
	f.Var(&o.maxPending, "max-pending-upload", "data per vdisk not yet on the backend beyond which writes wait")
	f.DurationVar(&o.autoSync, "auto-sync", 30*time.Second, "upload an open TLog holding data after this long")
	f.StringVar(&o.backend, "backend", "", "ec (erasure-coded over local ASD processes, the default for a new DATA) or local (a plain directory); DATA remembers its choice")
	f.IntVar(&o.asds, "asds", 6, "ASD processes of the erasure-coded backend (4+2 needs 6)")
	f.DurationVar(&o.scrubEvery, "scrub-interval", time.Hour, "scrub every vdisk this often in the background (0 disables)")
	f.Float64Var(&o.scrubGarbage, "scrub-garbage-ratio", volumedriver.DefaultScrubGarbageRatio,
		"also scrub a vdisk as soon as its garbage (overwritten data no snapshot sees) exceeds this fraction of its live data (0 disables)")
	f.DurationVar(&o.stopTimeout, "stop-timeout", 30*time.Second,
		"on stop, wait this long at most for sealed data and the last snapshots.json of every vdisk to reach the backend")
	f.StringVar(&o.arakoonClient, "arakoon-client", "127.0.0.1:8900", "client address of the embedded 1-node arakoon")
	f.StringVar(&o.arakoonRaft, "arakoon-raft", "127.0.0.1:8901", "raft address of the embedded 1-node arakoon")
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
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := os.MkdirAll(o.data, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(o.data)
	if err != nil {
		return err
	}
	defer unlock()

	kind, err := backendKind(o.data, o.backend)
	if err != nil {
		return err
	}
	log.Info("starting ovs up", "data", o.data, "backend", kind)
	var backend scos.Backend
	var backendAdmin http.Handler // the erasure-coded backend's admin API, if any
	switch kind {
	case "local":
		if backend, err = scos.NewLocalDir(filepath.Join(o.data, "backend")); err != nil {
			return err
		}
	case "ec":
		// The backend's metadata (manifests, namespaces, ASD registry)
		// lives in arakoon; the fragments on ASDs run as child processes.
		ara, err := startEmbeddedArakoon(filepath.Join(o.data, "arakoon"), o.arakoonClient, o.arakoonRaft, log)
		if err != nil {
			return fmt.Errorf("arakoon: %w", err)
		}
		defer func() {
			if err := ara.Close(); err != nil {
				log.Error("stopping arakoon", "err", err)
			}
		}()
		ec, err := startLocalEC(ctx, o.data, localECOptions{ASDs: o.asds, Config: scos.ECConfig{KV: arakoonKV{ara.client}, SoleWriter: true}}, log)
		if err != nil {
			return fmt.Errorf("erasure-coded backend: %w", err)
		}
		defer func() {
			if err := ec.Close(); err != nil {
				log.Error("stopping the erasure-coded backend", "err", err)
			}
		}()
		backend = ec.Backend
		backendAdmin = scos.NewECAdminHandler(ec.Backend)
	}
	drv, err := volumedriver.Open(ctx, filepath.Join(o.data, "volumes"), backend, volumedriver.Options{
		ReadCacheBytes:        int64(o.readCache),
		MetadataCacheBytes:    int64(o.metadataCache),
		WriteBufferBytes:      int64(o.writeBuffer),
		MaxPendingUploadBytes: int64(o.maxPending),
		AutoSyncInterval:      o.autoSync,
		ScrubInterval:         scrubInterval(o.scrubEvery),
		ScrubGarbageRatio:     scrubGarbageRatio(o.scrubGarbage),
		CloseTimeout:          o.stopTimeout,
		Failpoint:             failpointsFromEnv(log),
		Logger:                log,
	})
	if err != nil {
		return fmt.Errorf("volume driver: %w", err)
	}
	defer func() {
		if err := drv.Close(); err != nil {
			log.Error("stopping the volume driver", "err", err)
		}
	}()

	// Listen on everything before serving anything, so that a port in
	// use is a clear error at start and not half a cluster.
	var listeners []net.Listener
	closeListeners := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	apiL, err := net.Listen("tcp", o.apiAddr)
	if err != nil {
		return fmt.Errorf("REST API: %w", err)
	}
	listeners = append(listeners, apiL)
	var nbdLs []net.Listener
	if o.nbdAddr != "" {
		l, err := net.Listen("tcp", o.nbdAddr)
		if err != nil {
			closeListeners()
			return fmt.Errorf("NBD: %w", err)
		}
		listeners = append(listeners, l)
		nbdLs = append(nbdLs, l)
	}
	sock := o.nbdSocket
	if sock == "" {
		sock = filepath.Join(o.data, "nbd.sock")
	}
	if sock != "none" {
		// A socket file left by a crashed run is safe to remove: the
		// data dir lock says no other ovs up uses this directory.
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			closeListeners()
			return fmt.Errorf("NBD socket: %w", err)
		}
		l, err := net.Listen("unix", sock)
		if err != nil {
			closeListeners()
			return fmt.Errorf("NBD socket: %w", err)
		}
		listeners = append(listeners, l)
		nbdLs = append(nbdLs, l)
	}

	nbdSrv := nbd.NewServer(nbdExports{drv}, nbd.Options{Logger: log.With("frontend", "nbd")})
	apiSrv := api.NewServer(drv, api.Options{Logger: log.With("component", "api")})
	handler := apiSrv.Handler()
	if backendAdmin != nil {
		// /api/v1/backend/... is the backend's admin API (status, ASDs,
		// presets, repair, scrub), as `ovs backend` uses it.
		mux := http.NewServeMux()
		mux.Handle("/api/v1/backend/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/v1/" + strings.TrimPrefix(r.URL.Path, "/api/v1/backend/")
			r2.URL.RawPath = ""
			backendAdmin.ServeHTTP(w, r2)
		}))
		mux.Handle("/", handler)
		handler = mux
	}
	httpSrv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, len(listeners))
	for _, l := range nbdLs {
		go func(l net.Listener) {
			err := nbdSrv.Serve(ctx, l)
			if errors.Is(err, nbd.ErrServerClosed) {
				err = nil
			}
			if err != nil {
				errc <- fmt.Errorf("NBD on %s: %w", l.Addr(), err)
			}
		}(l)
	}
	go func() {
		err := httpSrv.Serve(apiL)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	if o.pprofAddr != "" {
		go servePprof(o.pprofAddr, log)
	}
	apiSrv.SetReady(true)
	log.Info("ovs up is ready", "api", "http://"+apiL.Addr().String(), "nbd", o.nbdAddr, "nbd_socket", sock,
		"vdisks", len(drv.Names()))

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case runErr = <-errc:
		log.Error("a server stopped", "err", runErr)
	}
	apiSrv.SetReady(false)
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nbdSrv.Shutdown(shutCtx); err != nil {
		log.Warn("NBD shutdown", "err", err)
	}
	if err := httpSrv.Shutdown(shutCtx); err != nil {
		log.Warn("API shutdown", "err", err)
	}
	if sock != "none" {
		os.Remove(sock)
	}
	return runErr
}

// lockDataDir takes an exclusive lock on DIR/lock: two clusters on one
// directory would corrupt each other.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another ovs up", dir)
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	return func() { f.Close() }, nil
}

// nbdExports serves every vdisk of the driver as an NBD export by name.
type nbdExports struct{ drv *volumedriver.Driver }

func (e nbdExports) OpenExport(ctx context.Context, name string) (nbd.Device, func(), error) {
	v, release, err := e.drv.Acquire(name)
	if err != nil {
		if errors.Is(err, volumedriver.ErrNotFound) {
			return nil, nil, fmt.Errorf("%w: %s", nbd.ErrUnknownExport, name)
		}
		return nil, nil, err
	}
	return nbdVolume{v}, release, nil
}

func (e nbdExports) ListExports(ctx context.Context) ([]string, error) {
	return e.drv.Names(), nil
}

// nbdVolume adapts a volume to the NBD frontend's Device.
type nbdVolume struct{ *volumedriver.Volume }

func (v nbdVolume) BlockStatus(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	ext, err := v.Extents(ctx, off, length)
	if err != nil {
		return nil, err
	}
	out := make([]nbd.Extent, len(ext))
	for i, e := range ext {
		out[i] = nbd.Extent{Length: e.Length, Hole: !e.Mapped, Zero: !e.Mapped}
	}
	return out, nil
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
	if err := os.WriteFile(path, []byte(kind+"\n"), 0o644); err != nil {
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
