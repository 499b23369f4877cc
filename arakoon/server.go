package arakoon

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	applyTimeout      = 10 * time.Second // enqueueing a command or a barrier
	membershipTimeout = 30 * time.Second
	snapshotsRetained = 2
	maxConnRequests   = 256 // concurrent requests per client connection
	writeTimeout      = 30 * time.Second
)

// raftConfig builds the raft settings of node id from the tuning.
func (c *Config) raftConfig(id string) (*raft.Config, error) {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = hclog.NewNullLogger()
	t := c.Tuning
	if t.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = time.Duration(t.HeartbeatTimeout)
	}
	if t.ElectionTimeout > 0 {
		rc.ElectionTimeout = time.Duration(t.ElectionTimeout)
	}
	if t.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = time.Duration(t.LeaderLeaseTimeout)
	} else if rc.LeaderLeaseTimeout > rc.HeartbeatTimeout {
		rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	}
	if t.CommitTimeout > 0 {
		rc.CommitTimeout = time.Duration(t.CommitTimeout)
	}
	if t.SnapshotInterval > 0 {
		rc.SnapshotInterval = time.Duration(t.SnapshotInterval)
	}
	if t.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = t.SnapshotThreshold
	}
	if t.TrailingLogs > 0 {
		rc.TrailingLogs = t.TrailingLogs
	}
	// The store is durable on its own (see fsm); raft must not restore a
	// snapshot over it on start.
	rc.NoSnapshotRestoreOnStart = true
	rc.BatchApplyCh = true
	return rc, raft.ValidateConfig(rc)
}

// ServerOptions are the optional settings of a node.
type ServerOptions struct {
	// Join starts a node that is not in the initial cluster: it does not
	// bootstrap and waits until add-node makes it a member. A node marked
	// join in the config is started this way too.
	Join bool
	// Logger receives the node's log; nil discards it.
	Logger *slog.Logger
	// TLS, if set, makes the node serve clients and peers only over TLS
	// with the cluster's credentials: whoever cannot authenticate is
	// refused before a request is read, and can change nothing.
	TLS *TLSConfig
}

// TLSConfig holds the TLS configurations of a node.
type TLSConfig struct {
	Client *tls.Config // serving clients (server side)
	Raft   *tls.Config // serving the raft traffic of peers (server side)
	Peer   *tls.Config // reaching peers: raft, and checking a node before adding it (client side)
}

// Server is one running arakoon node: a raft member with its state
// machine, serving the client protocol.
type Server struct {
	cfg     *Config
	node    NodeConfig
	tls     *TLSConfig
	log     *slog.Logger
	started time.Time

	fsm   *fsm
	raft  *raft.Raft
	trans *raft.NetworkTransport
	store *raftboltdb.BoltStore
	snaps *raft.FileSnapshotStore
	ln    net.Listener

	readyMu   sync.Mutex
	readyTerm atomic.Uint64 // term in which this leader applied everything committed before it

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}

	closeOnce sync.Once
	closeErr  error

	ops [256]atomic.Uint64
}

// Start opens node nodeID's data directory, starts its raft member and
// serves clients on its client address until Close.
func Start(cfg *Config, nodeID string, opts ServerOptions) (_ *Server, err error) {
	node, ok := cfg.Node(nodeID)
	if !ok {
		return nil, fmt.Errorf("arakoon: node %q is not in cluster %q's config", nodeID, cfg.Cluster)
	}
	rc, err := cfg.raftConfig(nodeID)
	if err != nil {
		return nil, fmt.Errorf("arakoon: raft settings: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = discardLogger()
	}
	log = log.With("cluster", cfg.Cluster, "node", nodeID)
	if t := opts.TLS; t != nil && (t.Client == nil || t.Raft == nil || t.Peer == nil) {
		return nil, errors.New("arakoon: TLS needs the client, raft and peer configurations")
	}
	s := &Server{cfg: cfg, node: node, tls: opts.TLS, log: log, started: time.Now(), conns: map[net.Conn]struct{}{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var closers []func()
	defer func() {
		if err != nil {
			s.cancel()
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	if err := os.MkdirAll(node.Data, 0o700); err != nil {
		return nil, fmt.Errorf("arakoon: data directory: %w", err)
	}
	hl := newHCLog(log, "raft")
	s.store, err = raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(node.Data, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("arakoon: %s is locked by another process (is node %s already running?)", node.Data, nodeID)
		}
		return nil, fmt.Errorf("arakoon: raft log: %w", err)
	}
	closers = append(closers, func() { s.store.Close() })
	s.fsm, err = openFSM(filepath.Join(node.Data, "fsm.db"), log)
	if err != nil {
		return nil, fmt.Errorf("arakoon: state machine: %w", err)
	}
	closers = append(closers, func() { s.fsm.Close() })
	s.snaps, err = raft.NewFileSnapshotStoreWithLogger(node.Data, snapshotsRetained, hl.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("arakoon: snapshot store: %w", err)
	}
	logs, err := raft.NewLogCache(1024, s.store)
	if err != nil {
		return nil, err
	}
	existing, err := raft.HasExistingState(logs, s.store, s.snaps)
	if err != nil {
		return nil, fmt.Errorf("arakoon: raft state: %w", err)
	}
	if err := s.checkStore(existing); err != nil {
		return nil, err
	}

	addr, err := net.ResolveTCPAddr("tcp", node.Raft)
	if err != nil {
		return nil, fmt.Errorf("arakoon: raft address: %w", err)
	}
	if s.tls == nil {
		s.trans, err = raft.NewTCPTransportWithLogger(node.Raft, addr, 3, 10*time.Second, hl.Named("transport"))
		if err != nil {
			return nil, fmt.Errorf("arakoon: raft transport on %s: %w", node.Raft, err)
		}
	} else {
		rl, err := net.Listen("tcp", node.Raft)
		if err != nil {
			return nil, fmt.Errorf("arakoon: raft transport on %s: %w", node.Raft, err)
		}
		s.trans = raft.NewNetworkTransportWithLogger(&tlsStream{ln: rl, server: s.tls.Raft, client: s.tls.Peer},
			3, 10*time.Second, hl.Named("transport"))
	}
	closers = append(closers, func() { s.trans.Close() })

	rc.Logger = hl
	s.raft, err = raft.NewRaft(rc, s.fsm, logs, s.store, s.snaps, s.trans)
	if err != nil {
		return nil, fmt.Errorf("arakoon: raft: %w", err)
	}
	closers = append(closers, func() { s.raft.Shutdown().Error() })
	if !existing && !opts.Join && !node.Join {
		var servers []raft.Server
		for _, n := range cfg.Nodes {
			if n.Join {
				continue
			}
			sv := raft.Server{ID: raft.ServerID(n.ID), Address: raft.ServerAddress(n.Raft), Suffrage: raft.Voter}
			if n.Learner {
				sv.Suffrage = raft.Nonvoter
			}
			servers = append(servers, sv)
		}
		if err := s.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("arakoon: bootstrap: %w", err)
		}
		log.Info("arakoon cluster bootstrapped", "voters", len(servers))
	}

	s.ln, err = net.Listen("tcp", node.Client)
	if err != nil {
		return nil, fmt.Errorf("arakoon: client address: %w", err)
	}
	s.wg.Add(1)
	go s.acceptLoop()
	log.Info("arakoon node serving", "client", node.Client, "raft", node.Raft, "data", node.Data,
		"applied", s.fsm.applied.Load())
	return s, nil
}

// checkStore reconciles the state machine's store with the raft state
// before raft starts: a store behind the newest snapshot (lost, or from a
// copy) is rebuilt from it; a store with state but no raft log is refused.
func (s *Server) checkStore(existing bool) error {
	applied := s.fsm.applied.Load()
	if !existing {
		if applied > 0 {
			return fmt.Errorf("arakoon: %s has state up to log index %d but the raft log is empty; "+
				"move the data directory away to rejoin the cluster as a new node", s.fsm.path, applied)
		}
		return nil
	}
	metas, err := s.snaps.List()
	if err != nil {
		return fmt.Errorf("arakoon: snapshots: %w", err)
	}
	if len(metas) == 0 || metas[0].Index <= applied {
		return nil
	}
	s.log.Warn("arakoon store is behind the newest snapshot; restoring it", "applied", applied, "snapshot", metas[0].Index)
	_, rc, err := s.snaps.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("arakoon: open snapshot %s: %w", metas[0].ID, err)
	}
	if err := s.fsm.Restore(rc); err != nil {
		return fmt.Errorf("arakoon: %w", err)
	}
	return nil
}

// Addr is the client address the node listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// ID is the node's id.
func (s *Server) ID() string { return s.node.ID }

// IsMaster reports whether the node is the raft leader right now.
func (s *Server) IsMaster() bool { return s.raft.State() == raft.Leader }

// Failed is closed when the node hit a storage error and must stop.
func (s *Server) Failed() <-chan struct{} { return s.fsm.failed }

// Run serves until ctx is done or the node fails, then hands leadership
// to another voter (if it is the master) and closes the node.
func (s *Server) Run(ctx context.Context) error {
	var err error
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-s.fsm.failed:
			err = fmt.Errorf("arakoon: node stopped: %w", s.fsm.failErr)
			break wait
		case <-tick.C:
			// Raft shuts itself down when the node is removed.
			if s.raft.State() == raft.Shutdown {
				s.log.Info("arakoon node removed from the cluster; stopping")
				break wait
			}
		}
	}
	if err == nil && s.IsMaster() && s.voters() > 1 {
		s.log.Info("arakoon handing over mastership before stopping")
		if terr := s.raft.LeadershipTransfer().Error(); terr != nil {
			s.log.Warn("arakoon leadership transfer", "err", terr)
		}
	}
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *Server) voters() int {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, sv := range f.Configuration().Servers {
		if sv.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

// Close stops serving clients, shuts raft down and closes the stores.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
		var errs []error
		if err := s.raft.Shutdown().Error(); err != nil {
			errs = append(errs, err)
		}
		if err := s.trans.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := s.store.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := s.fsm.Close(); err != nil {
			errs = append(errs, err)
		}
		s.closeErr = errors.Join(errs...)
		s.log.Info("arakoon node stopped")
	})
	return s.closeErr
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Error("arakoon accept", "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.ctx.Err() != nil {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[nc] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
			s.mu.Lock()
			delete(s.conns, nc)
			s.mu.Unlock()
		}()
	}
}

// serveConn reads requests from one client connection and answers each
// as soon as it is done; requests on a connection run concurrently.
func (s *Server) serveConn(raw net.Conn) {
	ctx, cancel := context.WithCancel(s.ctx)
	var handlers sync.WaitGroup
	defer func() {
		cancel()
		handlers.Wait()
		raw.Close()
	}()
	nc := raw
	if s.tls != nil {
		var err error
		if nc, err = s.secure(ctx, raw); err != nil {
			s.log.Warn("arakoon client refused: no valid cluster credentials", "remote", raw.RemoteAddr(), "err", err)
			return
		}
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	bw := bufio.NewWriterSize(nc, 64<<10)
	var wmu sync.Mutex
	send := func(id uint64, o op, r *response) {
		payload := r.encode(o)
		if len(payload) > MaxFrameSize {
			r = &response{Status: StatusTooLarge, Msg: fmt.Sprintf("the %s response of %d bytes exceeds the frame limit", o, len(payload))}
			payload = r.encode(o)
		}
		wmu.Lock()
		defer wmu.Unlock()
		// A client that stops reading must not hold handlers forever.
		nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		err := writeFrame(bw, byte(r.Status), id, payload)
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			nc.Close() // a partly written frame cannot be followed by another
		}
	}
	sem := make(chan struct{}, maxConnRequests)
	for {
		f, err := readFrame(br)
		if err != nil {
			var fe *frameError
			switch {
			case errors.As(err, &fe):
				s.log.Warn("arakoon client sent a bad frame; closing its connection", "remote", nc.RemoteAddr(), "err", err)
				send(fe.ID, 0, &response{Status: StatusBadRequest, Msg: err.Error()})
			case errors.Is(err, io.EOF) || ctx.Err() != nil || errors.Is(err, net.ErrClosed):
			default:
				s.log.Debug("arakoon client connection", "remote", nc.RemoteAddr(), "err", err)
			}
			return
		}
		o := op(f.Kind)
		req, err := decodeRequest(f.ID, o, f.Payload)
		if err != nil {
			send(f.ID, o, &response{Status: StatusBadRequest, Msg: err.Error()})
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			defer func() { <-sem }()
			send(req.ID, req.Op, s.handle(ctx, req))
		}()
	}
}

// handle serves one request.
func (s *Server) handle(ctx context.Context, req *request) (resp *response) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("arakoon request panicked", "op", req.Op, "panic", p, "stack", string(debug.Stack()))
			resp = &response{Status: StatusInternal, Msg: fmt.Sprintf("%s failed on node %s; see its log", req.Op, s.node.ID)}
		}
	}()
	s.ops[req.Op].Add(1)
	switch req.Op {
	case opHello:
		if req.Cluster != s.cfg.Cluster {
			return &response{Status: StatusWrongCluster, Msg: fmt.Sprintf("node %s belongs to cluster %q, not %q", s.node.ID, s.cfg.Cluster, req.Cluster)}
		}
		return &response{Node: s.nodeInfo(s.node.ID)}
	case opStatistics:
		st, err := s.Statistics()
		if err != nil {
			return errResponse(err)
		}
		b, err := json.Marshal(st)
		if err != nil {
			return errResponse(err)
		}
		return &response{JSON: b}
	case opMembers:
		ms, err := s.members()
		if err != nil {
			return errResponse(err)
		}
		return &response{Members: ms}
	case opWhoMaster:
		if req.Consistency == Stale {
			_, id := s.raft.LeaderWithID()
			if id == "" {
				return &response{Status: StatusNoMaster, Msg: fmt.Sprintf("node %s knows no master", s.node.ID)}
			}
			return &response{Node: s.nodeInfo(string(id))}
		}
		if r := s.notLeader(); r != nil {
			return r
		}
		if err := waitFuture(ctx, s.raft.VerifyLeader()); err != nil {
			return s.leaderError(err)
		}
		return &response{Node: s.nodeInfo(s.node.ID)}
	case opGet, opMultiGet, opExists, opRange, opRangeEntries, opPrefixKeys:
		return s.read(ctx, req)
	case opSet, opDelete, opDeletePrefix, opTestAndSet, opSequence:
		if e := req.Mutation.validate(); e != nil {
			return &response{Status: e.Status, Msg: e.Msg}
		}
		return s.propose(ctx, &command{Type: cmdClient, Session: req.Session, Seq: req.Seq, Lowest: req.Lowest, Mutation: req.Mutation})
	case opNop:
		return s.propose(ctx, &command{Type: cmdNop})
	case opRegisterSession:
		return s.propose(ctx, &command{Type: cmdRegisterSession})
	case opCloseSession:
		return s.propose(ctx, &command{Type: cmdCloseSession, Session: req.Session})
	case opAddNode:
		return s.addNode(ctx, req.NodeInfo, req.Learner)
	case opRemoveNode:
		return s.removeNode(ctx, req.NodeID)
	}
	return &response{Status: StatusBadRequest, Msg: fmt.Sprintf("unknown op %s", req.Op)}
}

func errResponse(err error) *response {
	var e *Error
	if errors.As(err, &e) {
		return &response{Status: e.Status, Msg: e.Msg}
	}
	return &response{Status: StatusInternal, Msg: err.Error()}
}

// read serves a read, linearizable unless the client asked for stale.
func (s *Server) read(ctx context.Context, req *request) *response {
	var term uint64
	if req.Consistency == Linearizable {
		var r *response
		if term, r = s.beginRead(ctx); r != nil {
			return r
		}
	}
	resp := &response{}
	var err error
	switch req.Op {
	case opGet:
		resp.Value, err = s.fsm.get(req.Key)
	case opMultiGet:
		resp.Values, err = s.fsm.multiGet(req.Keys)
	case opExists:
		resp.Bool, err = s.fsm.exists(req.Key)
	case opRange, opRangeEntries:
		var kvs []KV
		kvs, err = s.fsm.rangeEntries(req.First, req.FirstInc, req.Last, req.LastInc, req.Max, req.Op == opRangeEntries)
		if req.Op == opRange {
			for _, kv := range kvs {
				resp.Keys = append(resp.Keys, kv.Key)
			}
		} else {
			resp.Entries = kvs
		}
	case opPrefixKeys:
		resp.Keys, err = s.fsm.prefixKeys(req.Key, req.Max)
	}
	if req.Consistency == Linearizable {
		// Confirm leadership after reading: had another master
		// acknowledged a write before the read, this fails.
		if r := s.endRead(ctx, term); r != nil {
			return r
		}
	}
	if err != nil {
		return errResponse(err)
	}
	return resp
}

// beginRead makes sure this node is the master and has applied every
// entry committed before its term (one barrier per term).
func (s *Server) beginRead(ctx context.Context) (uint64, *response) {
	if r := s.notLeader(); r != nil {
		return 0, r
	}
	term := s.raft.CurrentTerm()
	if s.readyTerm.Load() == term {
		return term, nil
	}
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if s.readyTerm.Load() == term {
		return term, nil
	}
	if err := waitFuture(ctx, s.raft.Barrier(applyTimeout)); err != nil {
		return 0, s.leaderError(err)
	}
	if s.raft.CurrentTerm() != term {
		return 0, &response{Status: StatusUnavailable, Msg: "mastership changed during a read"}
	}
	s.readyTerm.Store(term)
	return term, nil
}

func (s *Server) endRead(ctx context.Context, term uint64) *response {
	if err := waitFuture(ctx, s.raft.VerifyLeader()); err != nil {
		return s.leaderError(err)
	}
	if s.raft.CurrentTerm() != term {
		return &response{Status: StatusUnavailable, Msg: "mastership changed during a read"}
	}
	return nil
}

// notLeader returns the redirect for a request that needs the master, or
// nil on the master.
func (s *Server) notLeader() *response {
	if s.raft.State() == raft.Leader {
		return nil
	}
	_, id := s.raft.LeaderWithID()
	if id == "" || string(id) == s.node.ID {
		return &response{Status: StatusNoMaster, Msg: fmt.Sprintf("node %s knows no master (election in progress?)", s.node.ID)}
	}
	return &response{Status: StatusNotMaster, Master: s.nodeInfo(string(id)), Msg: fmt.Sprintf("node %s is not the master; %s is", s.node.ID, id)}
}

// leaderError maps a failed raft future to a response the client retries.
func (s *Server) leaderError(err error) *response {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		if r := s.notLeader(); r != nil {
			return r
		}
		return &response{Status: StatusUnavailable, Msg: err.Error()}
	case errors.Is(err, raft.ErrRaftShutdown):
		return &response{Status: StatusUnavailable, Msg: fmt.Sprintf("node %s is shutting down", s.node.ID)}
	}
	return &response{Status: StatusUnavailable, Msg: err.Error()}
}

// waitFuture waits for a raft future or for ctx.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// apply proposes a command on the master and waits until it is applied.
func (s *Server) apply(ctx context.Context, c *command) (*applyResult, *response) {
	if r := s.notLeader(); r != nil {
		return nil, r
	}
	f := s.raft.Apply(c.encode(), applyTimeout)
	if err := waitFuture(ctx, f); err != nil {
		return nil, s.leaderError(err)
	}
	res, ok := f.Response().(*applyResult)
	if !ok || res == nil {
		return nil, &response{Status: StatusInternal, Msg: fmt.Sprintf("unexpected apply result %T", f.Response())}
	}
	return res, nil
}

func (s *Server) propose(ctx context.Context, c *command) *response {
	res, r := s.apply(ctx, c)
	if r != nil {
		return r
	}
	return &response{Status: res.Status, Msg: res.Msg, Value: res.Value, Count: res.Count}
}

// nodeInfo returns what this node knows of node id's addresses: from
// add-node records, the config file and the raft configuration.
func (s *Server) nodeInfo(id string) NodeInfo {
	ni := NodeInfo{ID: id}
	if n, ok := s.cfg.Node(id); ok {
		ni.Client, ni.Raft = n.Client, n.Raft
	}
	if ms, err := s.fsm.members(); err == nil {
		if m, ok := ms[id]; ok {
			ni.Client = m.Client
			if m.Raft != "" {
				ni.Raft = m.Raft
			}
		}
	}
	return ni
}

func (s *Server) members() ([]Member, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	var out []Member
	for _, sv := range f.Configuration().Servers {
		ni := s.nodeInfo(string(sv.ID))
		ni.Raft = string(sv.Address)
		out = append(out, Member{NodeInfo: ni, Voter: sv.Suffrage == raft.Voter})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s *Server) addNode(ctx context.Context, n NodeInfo, learner bool) *response {
	if err := validName("node id", n.ID); err != nil {
		return &response{Status: StatusBadRequest, Msg: err.Error()}
	}
	for _, a := range []string{n.Client, n.Raft} {
		if err := validAddr(a); err != nil {
			return &response{Status: StatusBadRequest, Msg: fmt.Sprintf("node %s: %v", n.ID, err)}
		}
	}
	if r := s.notLeader(); r != nil {
		return r
	}
	if !learner {
		if r := s.checkJoiner(ctx, n); r != nil {
			return r
		}
	}
	if r := s.propose(ctx, &command{Type: cmdSetMember, Node: n}); r.Status != StatusOK {
		return r
	}
	var f raft.IndexFuture
	if learner {
		f = s.raft.AddNonvoter(raft.ServerID(n.ID), raft.ServerAddress(n.Raft), 0, membershipTimeout)
	} else {
		f = s.raft.AddVoter(raft.ServerID(n.ID), raft.ServerAddress(n.Raft), 0, membershipTimeout)
	}
	if err := waitFuture(ctx, f); err != nil {
		return s.leaderError(err)
	}
	s.log.Info("arakoon node added", "id", n.ID, "raft", n.Raft, "client", n.Client, "learner", learner)
	return &response{}
}

func (s *Server) removeNode(ctx context.Context, id string) *response {
	if r := s.notLeader(); r != nil {
		return r
	}
	ms, err := s.members()
	if err != nil {
		return errResponse(err)
	}
	found := false
	for _, m := range ms {
		found = found || m.ID == id
	}
	if !found {
		return &response{Status: StatusNotFound, Msg: fmt.Sprintf("node %q is not a member of cluster %q", id, s.cfg.Cluster)}
	}
	if r := s.propose(ctx, &command{Type: cmdRemoveMember, Node: NodeInfo{ID: id}}); r.Status != StatusOK {
		return r
	}
	if err := waitFuture(ctx, s.raft.RemoveServer(raft.ServerID(id), 0, membershipTimeout)); err != nil {
		return s.leaderError(err)
	}
	s.log.Info("arakoon node removed", "id", id)
	return &response{}
}

// Statistics describes one node.
type Statistics struct {
	Cluster           string            `json:"cluster"`
	Node              string            `json:"node"`
	State             string            `json:"state"` // Leader, Follower, Candidate, Shutdown
	Master            string            `json:"master"`
	Term              uint64            `json:"term"`
	LastIndex         uint64            `json:"last_index"`
	CommitIndex       uint64            `json:"commit_index"`
	AppliedIndex      uint64            `json:"applied_index"`
	LastSnapshotIndex uint64            `json:"last_snapshot_index"`
	Snapshots         int               `json:"snapshots"`
	SnapshotRestores  uint64            `json:"snapshot_restores"` // since the node started
	Keys              int               `json:"keys"`
	Sessions          uint64            `json:"sessions"`
	StoreBytes        int64             `json:"store_bytes"`
	Members           []Member          `json:"members"`
	Started           time.Time         `json:"started"`
	UptimeSeconds     float64           `json:"uptime_seconds"`
	Ops               map[string]uint64 `json:"ops"`
	Raft              map[string]string `json:"raft"`
}

// Statistics returns the node's view of itself and of the cluster.
func (s *Server) Statistics() (*Statistics, error) {
	fs, err := s.fsm.stats()
	if err != nil {
		return nil, err
	}
	_, master := s.raft.LeaderWithID()
	st := &Statistics{
		Cluster: s.cfg.Cluster, Node: s.node.ID, State: s.raft.State().String(), Master: string(master),
		Term: s.raft.CurrentTerm(), LastIndex: s.raft.LastIndex(), CommitIndex: s.raft.CommitIndex(),
		AppliedIndex: s.fsm.applied.Load(), SnapshotRestores: s.fsm.restores.Load(), Keys: fs.Keys, Sessions: fs.Sessions, StoreBytes: fs.DBBytes,
		Started: s.started, UptimeSeconds: time.Since(s.started).Seconds(),
		Ops: map[string]uint64{}, Raft: s.raft.Stats(),
	}
	if metas, err := s.snaps.List(); err == nil {
		st.Snapshots = len(metas)
		if len(metas) > 0 {
			st.LastSnapshotIndex = metas[0].Index
		}
	}
	st.Members, _ = s.members()
	for i := range s.ops {
		if n := s.ops[i].Load(); n > 0 {
			st.Ops[op(i).String()] = n
		}
	}
	return st, nil
}

// checkJoiner refuses to add a voter that would cost the cluster its
// quorum: one that does not answer at its client address as a node of this
// cluster with that id and raft address. Raft counts a new voter in the
// quorum at once; an unreachable one (a typo, a node not started, an
// attacker's address) leaves a 1-node cluster needing 2 votes of which it
// can only ever get 1.
func (s *Server) checkJoiner(ctx context.Context, n NodeInfo) *response {
	if ms, err := s.members(); err == nil {
		for _, m := range ms {
			if m.ID == n.ID && m.Raft == n.Raft && m.Voter {
				return nil // already a voter there: nothing changes
			}
		}
	}
	cc := ClientConfig{Cluster: s.cfg.Cluster, DialTimeout: 2 * time.Second, AttemptTimeout: 5 * time.Second}
	if s.tls != nil {
		cc.TLS = s.tls.Peer
	}
	cn, err := dial(ctx, n.Client, cc)
	if err != nil {
		// Not "unavailable": the client would retry what only the
		// operator can fix.
		return &response{Status: StatusBadRequest, Msg: fmt.Sprintf(
			"refusing to add node %s: it does not answer at %s (%v); adding a voter that cannot vote would cost the cluster its quorum: start it with `ovs arakoon serve --join` first",
			n.ID, n.Client, err)}
	}
	cn.close(errors.New("checked"))
	if cn.peer.ID != n.ID {
		return &response{Status: StatusBadRequest, Msg: fmt.Sprintf(
			"refusing to add node %s: the node at %s is %q", n.ID, n.Client, cn.peer.ID)}
	}
	if cn.peer.Raft != "" && cn.peer.Raft != n.Raft {
		return &response{Status: StatusBadRequest, Msg: fmt.Sprintf(
			"refusing to add node %s with raft address %s: the node says its raft address is %s", n.ID, n.Raft, cn.peer.Raft)}
	}
	return nil
}

// secure runs the server side of the TLS handshake on a client
// connection. A client that speaks the plain protocol is told why it is
// refused in a frame it understands.
func (s *Server) secure(ctx context.Context, nc net.Conn) (net.Conn, error) {
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	first, err := br.Peek(1)
	if err != nil {
		return nil, err
	}
	if first[0] == ProtocolVersion {
		var id uint64
		if h, err := br.Peek(frameHeaderSize); err == nil {
			id = binary.BigEndian.Uint64(h[2:10])
		}
		bw := bufio.NewWriter(nc)
		r := &response{Status: StatusUnauthorized, Msg: fmt.Sprintf(
			"node %s requires TLS with the cluster's credentials (the secret: --secret-file, $OVS_SECRET, or secret_file in the cluster file)", s.node.ID)}
		if writeFrame(bw, byte(r.Status), id, r.encode(opHello)) == nil {
			bw.Flush()
		}
		return nil, errors.New("plain (unauthenticated) protocol")
	}
	tc := tls.Server(&peekedConn{Conn: nc, r: br}, s.tls.Client)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return tc, nil
}

// peekedConn reads through the buffer that peeked at the connection.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tlsStream is the raft transport's stream layer over TLS: peers must hold
// the cluster's credentials, so nobody else can vote, append entries or
// install snapshots.
type tlsStream struct {
	ln             net.Listener
	server, client *tls.Config
}

func (t *tlsStream) Accept() (net.Conn, error) {
	c, err := t.ln.Accept()
	if err != nil {
		return nil, err
	}
	// The handshake runs on the first read, in raft's goroutine for the
	// connection, so a slow peer holds up no other.
	return tls.Server(c, t.server), nil
}

func (t *tlsStream) Close() error   { return t.ln.Close() }
func (t *tlsStream) Addr() net.Addr { return t.ln.Addr() }

func (t *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: t.client}
	return d.DialContext(ctx, "tcp", string(address))
}
