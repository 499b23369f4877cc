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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/secret"
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
	asdPorts      string
	scrubEvery    time.Duration
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
	f.StringVar(&o.asdPorts, "asd-ports", "8600-8699", "port range of the ASDs (FIRST-LAST; 0: ports the kernel picks); an ASD whose port another process holds moves to the next free one")
	f.DurationVar(&o.scrubEvery, "scrub-interval", time.Hour, "scrub every vdisk this often in the background (0 disables)")
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
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	firstPort, lastPort, err := parsePortRange(o.asdPorts)
	if err != nil {
		return fmt.Errorf("--asd-ports: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if n, err := raiseNoFileLimit(); err != nil {
		log.Warn("could not raise the open file limit", "err", err)
	} else {
		log.Debug("open file limit", "nofile", n)
	}
	restrictUmask()
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// DATA of an older version may be 0755: what it holds is nobody
	// else's to read, and 0700 here covers every file below.
	if err := os.Chmod(o.data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(o.data)
	if err != nil {
		return err
	}
	defer unlock()
	// The cluster secret, made at the first start: every internal service
	// (arakoon, the ASDs, the backend admin API) serves only its holders.
	sec, err := secret.Ensure(o.data)
	if err != nil {
		return err
	}

	kind, err := backendKind(o.data, o.backend)
	if err != nil {
		return err
	}
	log.Info("starting ovs up", "data", o.data, "backend", kind)
	var backend scos.Backend
	var backendAdmin http.Handler // the erasure-coded backend's admin API, if any
	var writable func(context.Context) error
	switch kind {
	case "local":
		if backend, err = scos.NewLocalDir(filepath.Join(o.data, "backend")); err != nil {
			return err
		}
	case "ec":
		// The backend's metadata (manifests, namespaces, ASD registry)
		// lives in arakoon; the fragments on ASDs run as child processes.
		ara, err := startEmbeddedArakoon(filepath.Join(o.data, "arakoon"), o.arakoonClient, o.arakoonRaft, sec,
			filepath.Join(o.data, secret.FileName), log)
		if err != nil {
			return fmt.Errorf("arakoon: %w", err)
		}
		defer func() {
			if err := ara.Close(); err != nil {
				log.Error("stopping arakoon", "err", err)
			}
		}()
		ec, err := startLocalEC(ctx, o.data, localECOptions{ASDs: o.asds, FirstPort: firstPort, LastPort: lastPort,
			Secret: sec, SecretFile: filepath.Join(o.data, secret.FileName),
			Config: scos.ECConfig{KV: arakoonKV{ara.client}, SoleWriter: true}}, log)
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
		writable = ec.Backend.Writable
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

	nbdSrv := nbd.NewServer(nbdExports{drv}, nbd.Options{Logger: log.With("frontend", "nbd"),
		MaxConns: o.nbdMaxConns, HandshakeTimeout: o.nbdHandshake})
	apiOpts, err := o.apiOptions(apiL.Addr(), log)
	if err != nil {
		closeListeners()
		return err
	}
	apiOpts.Ready = writable
	if backendAdmin != nil {
		// /api/v1/backend/... is the backend's admin API (status, ASDs,
		// presets, repair, scrub), as `ovs backend` uses it: behind the
		// same checks as the rest (Host, Origin, JSON, deadlines), and it
		// takes the cluster's admin token (BackendAdminToken) and nothing
		// else: adding an ASD decides where fragments go.
		apiOpts.Tokens = anyToken{apiOpts.Tokens, sec, backendAdminPurpose}
		apiOpts.Mounts = map[string]http.Handler{"/api/v1/backend/": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !checkBearer(r, sec, backendAdminPurpose) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("WWW-Authenticate", `Bearer realm="ovs backend admin"`)
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprintln(w, `{"error":"the backend admin API needs the cluster's admin token (Authorization: Bearer ...; ovs backend token prints it)","code":"unauthorized"}`)
				return
			}
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/v1/" + strings.TrimPrefix(r.URL.Path, "/api/v1/backend/")
			r2.URL.RawPath = ""
			backendAdmin.ServeHTTP(w, r2)
		})}
	}
	apiSrv := api.NewServer(drv, apiOpts)
	httpSrv := apiSrv.HTTPServer()

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
		err := httpSrv.Serve(apiSrv.Listener(apiL))
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	if o.pprofAddr != "" {
		go servePprof(o.pprofAddr, log)
	}
	if writable != nil {
		waitWritable(ctx, writable, o.readyWaitTimeout, log)
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
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
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

// parsePortRange reads FIRST-LAST (or 0: no range, ports the kernel picks).
func parsePortRange(v string) (first, last int, err error) {
	if strings.TrimSpace(v) == "0" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(v, "-")
	if ok {
		first, err = strconv.Atoi(strings.TrimSpace(a))
		if err == nil {
			last, err = strconv.Atoi(strings.TrimSpace(b))
		}
	}
	if !ok || err != nil || first < 1 || last > 65535 || last < first {
		return 0, 0, fmt.Errorf("%q: want FIRST-LAST, e.g. 8600-8699, or 0", v)
	}
	return first, last, nil
}

// backendAdminPurpose keys the token of the backend admin API.
const backendAdminPurpose = "backend-admin"

// checkBearer reports whether r carries the cluster's token of purpose.
// anyToken accepts the API's own tokens and the cluster's token for one
// purpose: the backend admin routes under the API carry the latter.
type anyToken struct {
	api     api.TokenVerifier
	sec     *secret.Secret
	purpose string
}

func (a anyToken) Verify(tok string) bool {
	return a.sec.CheckToken(a.purpose, tok) || a.api != nil && a.api.Verify(tok)
}

func checkBearer(r *http.Request, sec *secret.Secret, purpose string) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && sec.CheckToken(purpose, strings.TrimSpace(tok))
}
