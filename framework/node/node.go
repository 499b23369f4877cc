package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/dashboard"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
	"github.com/ovs-storage/ovs/volumedriver/dtl"
	vfs "github.com/ovs-storage/ovs/volumedriver/fs"
	"github.com/ovs-storage/ovs/volumedriver/iscsi"
	"github.com/ovs-storage/ovs/volumedriver/nbd"
	"github.com/ovs-storage/ovs/volumedriver/remote"
)

// RunOptions are what a node takes besides its Config.
type RunOptions struct {
	Logger *slog.Logger
	// Failpoint is handed to the volume driver (crash tests).
	Failpoint func(string)
	// Ready, if set, is called once the node serves.
	Ready func()
}

// Run runs the node until ctx is done or a server fails.
func Run(ctx context.Context, cfg Config, ro RunOptions) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	cfg.setDefaults()
	log := ro.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", cfg.ID)
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	// DATA of an older version may be 0755: what it holds is nobody
	// else's to read, and 0700 here covers every file below.
	if err := os.Chmod(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(cfg.Data)
	if err != nil {
		return err
	}
	defer unlock()
	sec, err := loadSecret(cfg)
	if err != nil {
		return err
	}

	// The model and the backend's metadata live in arakoon.
	ara, closeAra, err := openArakoon(cfg, sec, log)
	if err != nil {
		return err
	}
	defer closeAra()
	store := model.New(model.Arakoon(ara))
	cluster, err := ensureCluster(ctx, cfg, store, log)
	if err != nil {
		return err
	}
	log.Info("starting node", "cluster", cluster.ID, "data", cfg.Data, "backend", cfg.Backend.Kind)

	var backend scos.Backend
	var fencer scos.Fencer
	var backendAdmin http.Handler
	var writable func(context.Context) error
	var space func(context.Context) (api.BackendSpace, error)
	var asdIDs []string
	var ecBackend *ec.Backend
	switch cfg.Backend.Kind {
	case "local":
		if backend, err = scos.NewLocalDir(filepath.Join(cfg.Data, "backend")); err != nil {
			return err
		}
		space = localSpace(filepath.Join(cfg.Data, "backend"))
	case "ec":
		first, last, err := ParsePortRange(cfg.Backend.ASDPorts)
		if err != nil {
			return fmt.Errorf("asd ports: %w", err)
		}
		host := cfg.Backend.ASDHost
		if host == "" {
			host, _, _ = net.SplitHostPort(cfg.API)
		}
		presets, err := clusterPresets(cluster)
		if err != nil {
			return err
		}
		maint := time.Duration(0)
		if !*cfg.Backend.Maintenance {
			maint = -1
		}
		nec, err := startEC(ctx, cfg.Data, ecOptions{ASDs: cfg.Backend.ASDs, FirstPort: first, LastPort: last,
			Host: host, Node: cfg.ID, Site: cfg.Site, Secret: sec, SecretFile: cfg.SecretFile,
			Config: ec.Config{KV: NewBackendKV(ara), SoleWriter: cfg.Bootstrap != nil,
				Preset: cluster.Preset, Presets: presets, MaintenanceInterval: maint}}, log)
		if err != nil {
			return fmt.Errorf("erasure-coded backend: %w", err)
		}
		defer nec.Close()
		backend, fencer = nec.Backend, nec.Backend
		backendAdmin = ec.NewAdminHandler(nec.Backend)
		writable = nec.Backend.Writable
		space = ecSpace(nec.Backend)
		asdIDs = nec.IDs
		ecBackend = nec.Backend
	}
	self, err := registerNode(ctx, cfg, store, asdIDs, false)
	if err != nil {
		return err
	}

	// Heartbeats start now, before the vdisks are brought up (which may
	// take a while): the other nodes must not take a starting node for
	// dead and fail its vdisks over.
	beatCtx, stopBeat := context.WithCancel(ctx)
	defer stopBeat()
	live := newLiveness(cfg.FailoverTimeout)
	go heartbeat(beatCtx, store, cfg.ID, live, cfg.Intervals.Heartbeat, log)

	// What this node serves: the vdisks the model says it owns. Their
	// fences go up before the driver touches their namespaces.
	if cfg.Bootstrap != nil {
		if err := adoptUnrecorded(ctx, store, backend, cfg.ID, log); err != nil {
			return err
		}
	}
	owned, err := ownedBy(ctx, store, cfg.ID)
	if err != nil {
		return err
	}
	for _, ov := range owned {
		setFence(fencer, ov)
	}
	rt := newRouter(routerConfig{self: cfg.ID, store: store, fencer: fencer, log: log.With("component", "router"),
		retryWindow: cfg.Driver.ForwardRetryWindow, cluster: cluster, dtlReadWait: cfg.DTLReadWait,
		live: live})
	nodeClientTLS, err := sec.ClientTLS(secret.RoleNode, cfg.ID, secret.RoleNode)
	if err != nil {
		return err
	}
	rt.forwardTLS = nodeClientTLS
	// A cluster of one (ovs up) has no other node for a DTL.
	var placer volumedriver.DTLPlacer
	var lease func(context.Context) error
	if cfg.Bootstrap == nil {
		placer = &dtlPlacer{self: cfg.ID, site: cfg.Site, store: store, live: rt.live, tls: nodeClientTLS,
			log: log.With("component", "dtl")}
		lease = rt.live.lease
	}
	// After a restart of several hosts at once, the others' ASDs come
	// up over some seconds: wait for the backend before reading the
	// vdisks from it, and try again while it cannot serve them yet.
	if writable != nil {
		waitWritable(ctx, writable, cfg.Driver.ReadyTimeout, log)
	}
	drv, err := openDriver(ctx, cfg.Driver.ReadyTimeout, log, func() (*volumedriver.Driver, error) {
		return volumedriver.Open(ctx, filepath.Join(cfg.Data, "volumes"), backend, volumedriver.Options{
			ReadCacheBytes:        int64(cfg.Driver.ReadCache),
			ReadCacheDiskBytes:    readCacheDiskBytes(cfg, log),
			MetadataCacheBytes:    int64(cfg.Driver.MetadataCache),
			WriteBufferBytes:      int64(cfg.Driver.WriteBuffer),
			MaxPendingUploadBytes: int64(cfg.Driver.MaxPendingUpload),
			AutoSyncInterval:      cfg.Driver.AutoSync,
			ScrubInterval:         -1, // the scheduler runs the interval scrubs (schedule.go)
			ScrubGarbageRatio:     cfg.Driver.ScrubGarbageRatio,
			CloseTimeout:          cfg.Driver.StopTimeout,
			Failpoint:             ro.Failpoint,
			Logger:                log,
			Owned: func(id string) (uint64, bool) {
				ov, ok := owned[id]
				return ov.Owner.Epoch, ok
			},
			OnFenced: rt.onFenced,
			DTL:      placer,
			DTLMode:  rt.dtlMode,
			Recover:  rt.recoverDTL,
			Lease:    lease,
		})
	})
	if err != nil {
		return fmt.Errorf("volume driver: %w", err)
	}
	defer func() {
		if err := drv.Close(); err != nil {
			log.Error("stopping the volume driver", "err", err)
		}
	}()
	rt.drv = drv
	close(rt.drvReady)
	rt.apiToken = sec.Token(nodeAPIPurpose)

	// Listen on everything before serving anything, so that a port in
	// use is a clear error at start and not half a node.
	ls := &listeners{}
	defer ls.closeAll()
	apiL, err := ls.listen("tcp", cfg.API, "REST API")
	if err != nil {
		return err
	}
	var nbdLs []net.Listener
	if cfg.NBD != "" {
		l, err := ls.listen("tcp", cfg.NBD, "NBD")
		if err != nil {
			return err
		}
		nbdLs = append(nbdLs, l)
	}
	sock := cfg.NBDSocket
	if sock == "" {
		sock = filepath.Join(cfg.Data, "nbd.sock")
	}
	if sock != "none" {
		// A socket file left by a crashed run is safe to remove: the
		// data dir lock says no other node uses this directory.
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("NBD socket: %w", err)
		}
		l, err := ls.listen("unix", sock, "NBD socket")
		if err != nil {
			return err
		}
		nbdLs = append(nbdLs, l)
		defer os.Remove(sock)
	}
	var fwdL net.Listener
	if cfg.Forward != "" {
		if fwdL, err = ls.listen("tcp", cfg.Forward, "I/O forwarding"); err != nil {
			return err
		}
	}
	var iscsiL net.Listener
	if cfg.ISCSI != "" {
		if iscsiL, err = ls.listen("tcp", cfg.ISCSI, "iSCSI"); err != nil {
			return err
		}
	}
	var nfsL net.Listener
	var nfsAllow []netip.Prefix
	if cfg.NFS != "" {
		if nfsL, err = ls.listen("tcp", cfg.NFS, "NFS"); err != nil {
			return err
		}
		if nfsAllow, err = nfsAllowList(cfg.NFSAllow, nfsL.Addr(), net.InterfaceAddrs); err != nil {
			return err
		}
		log.Info("the NFS export serves these client networks only", "nfs_allow", nfsAllow)
	}
	var dtlL net.Listener
	if cfg.DTL != "" {
		if dtlL, err = ls.listen("tcp", cfg.DTL, "DTL"); err != nil {
			return err
		}
	}

	nbdSrv := nbd.NewServer(nbdExports{rt}, nbd.Options{Logger: log.With("frontend", "nbd"),
		MaxConns: cfg.Limits.NBDMaxConns, HandshakeTimeout: cfg.Limits.NBDHandshake})
	var fwdSrv *remote.Server
	if fwdL != nil {
		tc, err := sec.ServerTLS(secret.RoleNode, cfg.ID, secret.RoleNode)
		if err != nil {
			return err
		}
		fwdSrv = remote.NewServer(forwardTarget{rt}, remote.ServerOptions{Logger: log.With("component", "forward"),
			TLS: tc, Classify: classifyForward})
	}
	var dtlSrv *dtl.Server
	if dtlL != nil {
		tc, err := sec.ServerTLS(secret.RoleNode, cfg.ID, secret.RoleNode)
		if err != nil {
			return err
		}
		if dtlSrv, err = dtl.NewServer(dtl.ServerConfig{Dir: filepath.Join(cfg.Data, "dtl"), Log: log.With("component", "dtl-server")}); err != nil {
			return fmt.Errorf("DTL server: %w", err)
		}
		defer dtlSrv.Close()
		dtlL = tls.NewListener(dtlL, tc)
	}
	apiOpts, err := apiOptions(cfg, apiL.Addr(), log)
	if err != nil {
		return err
	}
	apiOpts.Ready = writable
	apiOpts.Capacity = space
	if apiOpts.UI, err = dashboard.New(); err != nil {
		return err
	}
	apiOpts.IOStats = drv.IOStats
	apiOpts.Metrics = metricsHandler(drv, ecBackend, ara, log)
	apiOpts.Tokens = anyToken{apiOpts.Tokens, sec, []string{nodeAPIPurpose, backendAdminPurpose}}
	// ?async=true calls run as jobs for the node's lifetime.
	jobs := api.NewJobStore(ctx, api.JobOptions{Logger: log})
	apiOpts.Jobs = jobs
	if backendAdmin != nil {
		apiOpts.Mounts = map[string]http.Handler{"/api/v1/backend/": backendAdminMount(jobs.Async("backend", backendAdmin), sec)}
	}
	vd := &clusterVDisks{rt: rt}
	apiOpts.Cluster = vd
	apiOpts.HealthChecks = newHealthRunner(healthDeps{self: cfg.ID, ara: ara, backend: ecBackend, vdisks: vd, rt: rt,
		maxPendingUpload: int64(cfg.Driver.MaxPendingUpload), heartbeat: cfg.Intervals.Heartbeat}).Run
	apiOpts.Schedules = &schedules{store: store, defaultScrub: defaultScrubEvery(cfg)}
	apiOpts.Attachments = attachments{store}
	var (
		iscsiSrv     *iscsi.Server
		iscsiTargets *iscsiTargets
	)
	if iscsiL != nil {
		iscsiTargets = newISCSITargets(rt, vd)
		iscsiSrv = iscsi.NewServer(iscsiTargets, iscsi.Options{Logger: log.With("frontend", "iscsi"),
			Portal: cfg.advertised(iscsiL.Addr().String()) + ",1"})
	}
	apiSrv := api.NewServer(vd, apiOpts)
	httpSrv := apiSrv.HTTPServer()

	// One tree for the FUSE mount and the NFS export: it holds the open
	// vdisk files and their sizes, which both must share.
	var tree *vfs.VPool
	if cfg.Mount != "" || nfsL != nil {
		tree = newVPoolTree(vd, model.Arakoon(ara), log.With("frontend", "fs"))
	}
	unmount, err := startMount(cfg.Mount, tree, log.With("frontend", "fuse"))
	if err != nil {
		return err
	}
	defer unmount() // before the driver closes

	errc := make(chan error, 8)
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
	if fwdSrv != nil {
		go func() {
			if err := fwdSrv.Serve(ctx, fwdL); err != nil && !errors.Is(err, remote.ErrServerClosed) {
				errc <- fmt.Errorf("I/O forwarding: %w", err)
			}
		}()
	}
	if iscsiSrv != nil {
		go func() {
			if err := iscsiSrv.Serve(ctx, iscsiL); err != nil && !errors.Is(err, iscsi.ErrServerClosed) && ctx.Err() == nil {
				errc <- fmt.Errorf("iSCSI on %s: %w", iscsiL.Addr(), err)
			}
		}()
	}
	if dtlSrv != nil {
		go func() {
			if err := dtlSrv.Serve(ctx, dtlL); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("DTL server: %w", err)
			}
		}()
	}
	go func() {
		err := httpSrv.Serve(apiSrv.Listener(apiL))
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	if nfsL != nil {
		defer startNFS(ctx, nfsL, tree, nfsAllow, log.With("frontend", "nfs"), errc)()
	}
	bg, stopBG := context.WithCancel(ctx)
	defer stopBG()
	if iscsiSrv != nil {
		rt.sawVDisks = func(all []model.OwnedVDisk) { iscsiTargets.dropGone(iscsiSrv, all) }
	}
	go rt.watchOwners(bg, cfg.Intervals.OwnerCheck)
	defer startScheduler(bg, cfg, store, drv, log)() // stopped before the driver closes
	if cfg.Bootstrap == nil {
		go rt.watchFailover(bg, time.Second)
	}
	if dtlSrv != nil {
		go rt.dtlJanitor(bg, dtlSrv, self.DTL, time.Minute)
	}
	if writable != nil {
		waitWritable(ctx, writable, cfg.Driver.ReadyTimeout, log)
	}
	apiSrv.SetReady(true)
	log.Info("node is ready", "api", "http://"+apiL.Addr().String(), "nbd", cfg.NBD, "nbd_socket", sock,
		"forward", cfg.Forward, "dtl", cfg.DTL, "iscsi", cfg.ISCSI, "nfs", cfg.NFS, "vdisks", len(drv.Names()), "advertised_api", self.API)
	if ro.Ready != nil {
		ro.Ready()
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case runErr = <-errc:
		log.Error("a server stopped", "err", runErr)
	}
	apiSrv.SetReady(false)
	stopBG()
	stopBeat()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nbdSrv.Shutdown(shutCtx); err != nil {
		log.Warn("NBD shutdown", "err", err)
	}
	if iscsiSrv != nil {
		if err := iscsiSrv.Shutdown(shutCtx); err != nil {
			log.Warn("iSCSI shutdown", "err", err)
		}
	}
	if fwdSrv != nil {
		if err := fwdSrv.Shutdown(shutCtx); err != nil {
			log.Warn("forwarding shutdown", "err", err)
		}
	}
	if err := httpSrv.Shutdown(shutCtx); err != nil {
		log.Warn("API shutdown", "err", err)
	}
	if err := jobs.Close(shutCtx); err != nil {
		log.Warn("API jobs", "err", err)
	}
	rt.close()
	return runErr
}

// clusterPresets is the cluster's preset as the backend takes it (none:
// the backend's single-host default).
func clusterPresets(c model.Cluster) ([]ec.Preset, error) {
	if len(c.Policies) == 0 {
		return nil, nil
	}
	p := ec.Preset{Name: c.Preset, MaxPerSite: c.MaxPerSite}
	for _, s := range c.Policies {
		pol, err := ec.ParsePolicy(s)
		if err != nil {
			return nil, fmt.Errorf("cluster preset %s: %w", c.Preset, err)
		}
		p.Policies = append(p.Policies, pol)
	}
	return []ec.Preset{p}, p.Validate()
}

// openDriver opens the volume driver, trying again for up to wait while
// the backend cannot serve the vdisks' objects yet.
func openDriver(ctx context.Context, wait time.Duration, log *slog.Logger, open func() (*volumedriver.Driver, error)) (*volumedriver.Driver, error) {
	deadline := time.Now().Add(wait)
	for {
		drv, err := open()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil ||
			!(errors.Is(err, ec.ErrObjectUnavailable) || errors.Is(err, asd.ErrUnavailable) || errors.Is(err, ec.ErrInsufficientASDs)) {
			return drv, err
		}
		log.Warn("the backend cannot serve the vdisks yet; trying again", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// nodeAPIPurpose keys the token nodes present to each other's REST API.
const nodeAPIPurpose = "node-api"

func loadSecret(cfg Config) (*secret.Secret, error) {
	if cfg.Bootstrap != nil && cfg.SecretFile == filepath.Join(cfg.Data, secret.FileName) {
		// ovs up makes the cluster secret at its first start.
		return secret.Ensure(cfg.Data)
	}
	sec, err := secret.LoadFile(cfg.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	return sec, nil
}

// openArakoon starts the embedded 1-node arakoon or connects to the
// cluster's.
func openArakoon(cfg Config, sec *secret.Secret, log *slog.Logger) (*arakoon.Client, func(), error) {
	if e := cfg.EmbeddedArakoon; e != nil {
		ara, err := StartEmbeddedArakoon(filepath.Join(cfg.Data, "arakoon"), e.Client, e.Raft, sec, cfg.SecretFile, log)
		if err != nil {
			return nil, nil, fmt.Errorf("arakoon: %w", err)
		}
		return ara.Client, func() {
			if err := ara.Close(); err != nil {
				log.Error("stopping arakoon", "err", err)
			}
		}, nil
	}
	c, err := DialArakoon(cfg.Arakoon, sec, cfg.ID, log)
	if err != nil {
		return nil, nil, err
	}
	return c, func() { c.Close() }, nil
}

// DialArakoon returns a client of the arakoon cluster in file path,
// authenticated with the cluster secret.
func DialArakoon(path string, sec *secret.Secret, id string, log *slog.Logger) (*arakoon.Client, error) {
	acfg, err := arakoon.LoadConfig(path)
	if err != nil {
		return nil, fmt.Errorf("arakoon: %w", err)
	}
	cc := acfg.ClientConfig()
	cc.Logger = log.With("component", "arakoon-client")
	if cc.TLS, err = sec.ClientTLS(secret.RoleBackend, id, secret.RoleArakoon); err != nil {
		return nil, err
	}
	c, err := arakoon.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("arakoon: %w", err)
	}
	return c, nil
}

// ensureCluster reads the cluster record; a bootstrapping node (ovs up)
// writes it when there is none.
func ensureCluster(ctx context.Context, cfg Config, store *model.Store, log *slog.Logger) (model.Cluster, error) {
	c, err := store.Cluster(ctx)
	if err == nil || !errors.Is(err, model.ErrNotBootstrap) || cfg.Bootstrap == nil {
		return c, err
	}
	c, err = store.Init(ctx, model.Cluster{ID: cfg.Bootstrap.ClusterID, Preset: ec.DefaultPresetName,
		VPool: model.VPool{Name: "default"}})
	if errors.Is(err, model.ErrExists) {
		return c, nil
	}
	if err == nil {
		log.Info("cluster initialised", "cluster", c.ID)
	}
	return c, err
}

// registerNode writes this node's addresses and ASDs into its record. A
// node of a cluster must have been joined first (joining is what ovs node
// join does); a bootstrapping one joins itself. Nil asds keep the record's.
func registerNode(ctx context.Context, cfg Config, store *model.Store, asds []string, joining bool) (model.Node, error) {
	old, err := store.Node(ctx, cfg.ID)
	switch {
	case errors.Is(err, model.ErrNotFound) && !joining && cfg.Bootstrap == nil:
		return model.Node{}, fmt.Errorf("node %s is not part of the cluster: run ovs node join --config NODE.yaml first", cfg.ID)
	case err != nil && !errors.Is(err, model.ErrNotFound):
		return model.Node{}, err
	case err == nil && old.Site != "" && old.Site != cfg.Site:
		return model.Node{}, fmt.Errorf("node %s joined in site %s, its config says %s", cfg.ID, old.Site, cfg.Site)
	}
	if asds == nil {
		asds = old.ASDs
	}
	return store.PutNode(ctx, model.Node{ID: cfg.ID, Site: cfg.Site, API: cfg.advertised(cfg.API),
		NBD: cfg.advertised(cfg.NBD), Forward: cfg.advertised(cfg.Forward), DTL: cfg.advertised(cfg.DTL),
		ISCSI: cfg.advertised(cfg.ISCSI), ASDs: asds})
}

// ownedBy returns the vdisks the model says node owns, by namespace id.
func ownedBy(ctx context.Context, store *model.Store, node string) (map[string]model.OwnedVDisk, error) {
	all, err := store.VDisks(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]model.OwnedVDisk{}
	for _, ov := range all {
		if ov.OwnerRaw != nil && ov.Owner.Node == node {
			out[ov.ID] = ov
		}
	}
	return out, nil
}

// adoptUnrecorded records, as owned by this node under epoch 0, every
// vdisk on the backend that the model does not know: a DATA from before
// the model existed. Epoch 0 is what their local state (which has no
// epoch) says, so nothing local is thrown away.
func adoptUnrecorded(ctx context.Context, store *model.Store, backend scos.Backend, self string, log *slog.Logger) error {
	found, err := volumedriver.ListOnBackend(ctx, backend)
	if err != nil {
		return err
	}
	known, err := store.VDisks(ctx)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, v := range known {
		have[v.ID] = true
	}
	for _, f := range found {
		if have[f.ID] {
			continue
		}
		if _, err := store.ReserveVDisk(ctx, f.Name, f.ID, self, 0, model.VDiskReady); err != nil {
			log.Error("could not record a vdisk found on the backend", "vdisk", f.Name, "id", f.ID, "err", err)
			continue
		}
		log.Info("recorded a vdisk found on the backend in the cluster model", "vdisk", f.Name, "id", f.ID)
	}
	return nil
}

func setFence(f scos.Fencer, ov model.OwnedVDisk) {
	if f != nil {
		f.SetFence(volumedriver.Namespace(ov.ID), &scos.Fence{Key: model.OwnerKey(ov.ID), Value: ov.OwnerRaw})
	}
}

func clearFence(f scos.Fencer, id string) {
	if f != nil {
		f.SetFence(volumedriver.Namespace(id), nil)
	}
}

// listeners are the node's, closed together on a failed start.
type listeners struct{ ls []net.Listener }

func (l *listeners) listen(network, addr, what string) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	l.ls = append(l.ls, ln)
	return ln, nil
}

func (l *listeners) closeAll() {
	for _, ln := range l.ls {
		ln.Close()
	}
}

// lockDataDir takes an exclusive lock on DIR/lock: two nodes on one
// directory would corrupt each other.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another ovs process", dir)
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	return func() { f.Close() }, nil
}

// waitWritable waits (up to timeout) until the backend can take a new
// vdisk's data, so that "ready" in the log means what the health check
// means. The health check asks again on every call.
func waitWritable(ctx context.Context, writable func(context.Context) error, timeout time.Duration, log *slog.Logger) {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := writable(cctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("the backend cannot take data yet; the health check answers 503 until it can", "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ParsePortRange reads FIRST-LAST (or 0: no range, ports the kernel picks).
func ParsePortRange(v string) (first, last int, err error) {
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

// Join registers the node of cfg in the cluster model: its id, site and
// addresses. The cluster must have been initialised.
func Join(ctx context.Context, cfg Config) (model.Node, error) {
	if err := cfg.validate(); err != nil {
		return model.Node{}, err
	}
	cfg.setDefaults()
	sec, err := secret.LoadFile(cfg.SecretFile)
	if err != nil {
		return model.Node{}, fmt.Errorf("cluster secret: %w", err)
	}
	ara, err := DialArakoon(cfg.Arakoon, sec, cfg.ID, slog.New(slog.DiscardHandler))
	if err != nil {
		return model.Node{}, err
	}
	defer ara.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	store := model.New(model.Arakoon(ara))
	if _, err := store.Cluster(ctx); err != nil {
		return model.Node{}, err
	}
	return registerNode(ctx, cfg, store, nil, true)
}
