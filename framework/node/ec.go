package node

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"

	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
)

// The ASDs of a node live in DATA/ec/asds/asd-N/, run as supervised child
// processes: one unit per host to install and watch, and the supervisor
// restarts an ASD that dies. The backend's metadata lives in arakoon.
const (
	ecDirName     = "ec"
	ecASDsDir     = "asds"
	localASDCount = 6
)

// ecOptions configure startEC.
type ecOptions struct {
	ASDs int // default 6
	// FirstPort-LastPort: the ports the ASDs take (both 0: ports the
	// kernel picks at the first start and kept).
	FirstPort, LastPort int
	// Host is the address the ASDs listen on (default 127.0.0.1).
	Host       string
	Node, Site string
	Binary     string // the ovs binary that runs the ASDs (default: this one)
	// Secret is the cluster's, kept in SecretFile: the ASDs serve only
	// its holders.
	Secret     *secret.Secret
	SecretFile string
	// Config: the KV store and the rest (HTTP client, logger and pids are
	// set by startEC).
	Config ec.Config
}

// nodeEC is a node's view of the erasure-coded backend: its own ASDs as
// supervised children, and the backend over every ASD of the cluster.
type nodeEC struct {
	Backend *ec.Backend
	ASDs    *asd.LocalSet
	IDs     []string // ids of this node's ASDs that run
}

// startEC starts this node's ASDs (creating them at the first run),
// opens the backend and (re-)registers each ASD at its address: one whose
// port another process took has moved, and the registry must follow
// before anything is sent to the old address.
func startEC(ctx context.Context, data string, o ecOptions, log *slog.Logger) (*nodeEC, error) {
	if o.ASDs == 0 {
		o.ASDs = localASDCount
	}
	if o.Secret == nil {
		return nil, errors.New("erasure-coded backend: no cluster secret")
	}
	tc, err := o.Secret.ClientTLS(secret.RoleBackend, o.Node, secret.RoleASD)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: asd.NewTransport(tc)}
	l := &nodeEC{}
	l.ASDs, err = asd.StartLocal(ctx, asd.LocalConfig{
		Dir: filepath.Join(data, ecDirName, ecASDsDir), Count: o.ASDs, FirstPort: o.FirstPort, LastPort: o.LastPort,
		Host: o.Host, Node: o.Node, Site: o.Site,
		Binary: o.Binary, SecretFile: o.SecretFile, HTTPClient: hc,
		Logger: log.With("component", "asd-supervisor"),
	})
	if err != nil {
		return nil, err
	}
	cfg := o.Config
	cfg.HTTPClient = hc
	cfg.Logger = log.With("component", "backend")
	cfg.LocalPids = l.ASDs.Pids
	cfg.LocalSockets = l.ASDs.Sockets
	l.Backend, err = ec.New(ctx, cfg)
	if err != nil {
		l.Close()
		return nil, err
	}
	for _, a := range l.ASDs.List() {
		if !a.Running {
			log.Warn("ASD is not running; the backend goes on without it", "asd", a.Index, "dir", a.Dir)
			continue
		}
		if _, err := l.Backend.AddASD(ctx, a.Addr); err != nil {
			log.Error("registering ASD", "asd", a.Index, "addr", a.Addr, "err", err)
			continue
		}
		if a.MovedFrom != "" {
			log.Warn("ASD registered at its new address", "asd", a.ID, "from", a.MovedFrom, "to", a.Addr)
		}
		l.IDs = append(l.IDs, a.ID)
	}
	if len(l.IDs) == 0 {
		l.Close()
		return nil, errors.New("erasure-coded backend: no ASD could be started and registered")
	}
	return l, nil
}

// Close stops the backend and the ASDs.
func (l *nodeEC) Close() error {
	if l.Backend != nil {
		l.Backend.Close()
	}
	if l.ASDs != nil {
		l.ASDs.Stop()
	}
	return nil
}
