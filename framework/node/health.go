package node

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/framework/health"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/scos/ec"
)

// healthDeps are what a node's health checks read.
type healthDeps struct {
	self    string
	ara     *arakoon.Client
	backend *ec.Backend // nil with a local-directory backend
	vdisks  *clusterVDisks
	rt      *router
	// maxPendingUpload is the driver's bound on data not yet on the
	// backend (0: the driver's default).
	maxPendingUpload int64
	heartbeat        time.Duration
}

// The volume driver's default MaxPendingUploadBytes (volumedriver.Options).
const driverDefaultMaxPendingUpload = 512 << 20

// Probe timeouts of the checks that ask several servers: one that does
// not answer in this long is reported, not waited for.
const (
	arakoonProbeTimeout = 2 * time.Second
	clockProbeTimeout   = 3 * time.Second
)

// newHealthRunner returns the runner of GET /api/v1/health/checks. The
// cluster-wide checks (arakoon, ASDs, objects, vdisks, nodes) read the
// cluster as this node sees it; the write-buffer and DTL checks cover
// every vdisk, as its owner reports it.
func newHealthRunner(d healthDeps) *health.Runner {
	maxPending := d.maxPendingUpload
	if maxPending <= 0 {
		maxPending = driverDefaultMaxPendingUpload
	}
	nodes := healthNodes{rt: d.rt}
	checks := []health.Check{
		health.ArakoonQuorum(healthArakoon{d.ara}, arakoonProbeTimeout),
		health.WriteBuffer(d.vdisks, maxPending),
		health.DTLStates(d.vdisks, nodes),
		// A node is missing once it skipped about three heartbeats:
		// well before the failover timeout, so the operator hears of it
		// first.
		health.NodesAlive(nodes, 3*d.heartbeat),
		health.ClockSkew(nodes, clockProbeTimeout, nil),
	}
	if d.backend != nil {
		checks = append(checks, health.ASDHealth(d.backend), health.DegradedObjects(d.backend))
	}
	return &health.Runner{Checks: checks, Node: d.self}
}

// healthArakoon adapts the arakoon client to the quorum check.
type healthArakoon struct{ c *arakoon.Client }

func (a healthArakoon) Master(ctx context.Context) (string, error) {
	n, err := a.c.WhoMaster(ctx)
	return n.ID, err
}

func (a healthArakoon) Members(ctx context.Context) ([]health.ArakoonMember, error) {
	ms, err := a.c.Members(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]health.ArakoonMember, len(ms))
	for i, m := range ms {
		out[i] = health.ArakoonMember{ID: m.ID, Voter: m.Voter}
	}
	return out, nil
}

// Ping asks the member itself for its statistics: it answers only if it
// is up and reachable from here.
func (a healthArakoon) Ping(ctx context.Context, id string) error {
	st, err := a.c.Statistics(ctx, id)
	if err != nil {
		return err
	}
	if st.Node != "" && st.Node != id {
		return fmt.Errorf("the server asked for %s answers as %s", id, st.Node)
	}
	return nil
}

// healthNodes adapts the model and this node's view of the heartbeats to
// the nodes, DTL and clock checks.
type healthNodes struct{ rt *router }

func (n healthNodes) NodeCount(ctx context.Context) (int, error) {
	nodes, err := n.rt.store.Nodes(ctx)
	return len(nodes), err
}

func (n healthNodes) Heartbeats(ctx context.Context) ([]health.NodeBeat, error) {
	nodes, err := n.rt.store.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	beats, err := n.rt.store.Heartbeats(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]health.NodeBeat, 0, len(nodes))
	for _, nd := range nodes {
		b, ok := beats[nd.ID]
		nb := health.NodeBeat{ID: nd.ID, Beat: ok, Last: b.At}
		if ok {
			nb.Silent = n.rt.live.silence(nd.ID, nd.ID == n.rt.self, b)
		}
		out = append(out, nb)
	}
	return out, nil
}

func (n healthNodes) Peers(ctx context.Context) ([]string, error) {
	nodes, err := n.rt.store.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, nd := range nodes {
		if nd.ID != n.rt.self {
			out = append(out, nd.ID)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (n healthNodes) Time(ctx context.Context, node string) (time.Time, error) {
	c, err := n.rt.apiOf(ctx, node)
	if err != nil {
		return time.Time{}, err
	}
	return c.Clock(ctx)
}

// silence is how long node's heartbeat has not changed. This node's own
// is timed from its last successful heartbeat. Another's is timed from
// when this node saw it change, on this node's clock, so that clock skew
// does not count; before this node has watched it (a cluster of one does
// not), from the record's time stamp, on the sender's clock.
func (l *liveness) silence(node string, self bool, rec model.Heartbeat) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if self && !l.beatAt.IsZero() {
		return time.Since(l.beatAt)
	}
	if s, ok := l.seen[node]; ok {
		if !s.at.Equal(rec.At) {
			return 0 // it changed after the last look
		}
		return time.Since(s.changed)
	}
	return max(time.Since(rec.At), 0)
}
