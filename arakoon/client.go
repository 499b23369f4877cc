package arakoon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// ClientConfig tells a client where a cluster's nodes are.
type ClientConfig struct {
	Cluster string     // checked against each node's cluster name
	Nodes   []NodeInfo // ID and Client address of each node (Raft unused)
	Logger  *slog.Logger
	// TLS, if set, is the client side of the TLS every connection starts
	// with: the cluster's credentials (see ServerOptions.TLS). A node that
	// requires them refuses a client without.
	TLS *tls.Config

	DialTimeout    time.Duration // one connection attempt; default 2s
	AttemptTimeout time.Duration // one try of a request on one node; default 10s
	// RetryTimeout bounds how long a request is retried across nodes and
	// leader changes when its context has no earlier deadline; default 30s.
	RetryTimeout time.Duration
	// MaxInFlight bounds the client's concurrent mutations; default 256.
	MaxInFlight int
}

// Client talks to an arakoon cluster. It finds the master, follows it
// when it changes, retries on network errors and leader changes until the
// context is done, and never applies a mutation twice: each client has a
// session in the replicated state, and each mutation a sequence number
// whose result the cluster remembers for retries. A Client is safe for
// concurrent use; Close it when done.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	mu     sync.Mutex
	nodes  []NodeInfo       // known nodes; grows with redirects
	conns  map[string]*conn // by client address
	master string           // client address of the presumed master
	next   int              // round robin when the master is unknown
	closed bool

	regMu   sync.Mutex // serializes session registration
	seqMu   sync.Mutex
	session uint64
	seq     uint64
	pending map[uint64]struct{} // mutations in flight
	window  chan struct{}
}

// NewClient returns a client of the cluster; it connects lazily.
func NewClient(cc ClientConfig) (*Client, error) {
	if cc.Cluster == "" {
		return nil, errors.New("arakoon client: no cluster name")
	}
	if len(cc.Nodes) == 0 {
		return nil, errors.New("arakoon client: no nodes")
	}
	for _, n := range cc.Nodes {
		if err := validAddr(n.Client); err != nil {
			return nil, fmt.Errorf("arakoon client: node %q: %w", n.ID, err)
		}
	}
	if cc.DialTimeout <= 0 {
		cc.DialTimeout = 2 * time.Second
	}
	if cc.AttemptTimeout <= 0 {
		cc.AttemptTimeout = 10 * time.Second
	}
	if cc.RetryTimeout <= 0 {
		cc.RetryTimeout = 30 * time.Second
	}
	if cc.MaxInFlight <= 0 {
		cc.MaxInFlight = 256
	}
	if cc.MaxInFlight > maxResultsPerSession {
		cc.MaxInFlight = maxResultsPerSession
	}
	log := cc.Logger
	if log == nil {
		log = discardLogger()
	}
	c := &Client{
		cfg: cc, log: log, nodes: append([]NodeInfo{}, cc.Nodes...),
		conns: map[string]*conn{}, pending: map[uint64]struct{}{},
		window: make(chan struct{}, cc.MaxInFlight),
		next:   rand.IntN(len(cc.Nodes)),
	}
	return c, nil
}

// Close ends the client's session (best effort) and its connections.
func (c *Client) Close() error {
	c.seqMu.Lock()
	sess := c.session
	c.seqMu.Unlock()
	if sess != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c.do(ctx, &request{Op: opCloseSession, Session: sess})
		cancel()
	}
	c.mu.Lock()
	c.closed = true
	conns := c.conns
	c.conns = map[string]*conn{}
	c.mu.Unlock()
	for _, cn := range conns {
		cn.close(errClientClosed)
	}
	return nil
}

var errClientClosed = errors.New("arakoon client closed")

// ReadOption changes how a read is served.
type ReadOption func(*request)

// AllowStale serves the read from any node's local state, without
// confirming it is current: for monitoring, not for decisions.
func AllowStale() ReadOption {
	return func(r *request) { r.Consistency = Stale }
}

// ReadFrom serves the read (stale) from the given node only.
func ReadFrom(nodeID string) ReadOption {
	return func(r *request) { r.Consistency, r.Node = Stale, nodeID }
}

func readRequest(o op, opts []ReadOption) *request {
	r := &request{Op: o}
	for _, f := range opts {
		f(r)
	}
	return r
}

// Get returns key's value, or an error matching ErrNotFound.
func (c *Client) Get(ctx context.Context, key []byte, opts ...ReadOption) ([]byte, error) {
	if e := validKey("key", key); e != nil {
		return nil, e
	}
	r := readRequest(opGet, opts)
	r.Key = key
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	return resp.Value, nil
}

// MultiGetOption returns the values of keys, nil for a missing key.
func (c *Client) MultiGetOption(ctx context.Context, keys [][]byte, opts ...ReadOption) ([][]byte, error) {
	for _, k := range keys {
		if e := validKey("key", k); e != nil {
			return nil, e
		}
	}
	r := readRequest(opMultiGet, opts)
	r.Keys = keys
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	if len(resp.Values) != len(keys) {
		return nil, fmt.Errorf("arakoon: multi_get of %d keys answered %d values", len(keys), len(resp.Values))
	}
	return resp.Values, nil
}

// MultiGet returns the values of keys, all read at one point in time;
// if any key is missing it fails with ErrNotFound.
func (c *Client) MultiGet(ctx context.Context, keys [][]byte, opts ...ReadOption) ([][]byte, error) {
	vs, err := c.MultiGetOption(ctx, keys, opts...)
	if err != nil {
		return nil, err
	}
	for i, v := range vs {
		if v == nil {
			return nil, errorf(StatusNotFound, "key %q", keys[i])
		}
	}
	return vs, nil
}

// Exists reports whether key exists.
func (c *Client) Exists(ctx context.Context, key []byte, opts ...ReadOption) (bool, error) {
	if e := validKey("key", key); e != nil {
		return false, e
	}
	r := readRequest(opExists, opts)
	r.Key = key
	resp, err := c.call(ctx, r)
	if err != nil {
		return false, err
	}
	return resp.Bool, nil
}

// PrefixEnd is the smallest key after every key starting with prefix (the
// exclusive Last of a Range over the prefix), or nil when there is none
// (the prefix is empty or all 0xff).
func PrefixEnd(prefix []byte) []byte {
	b := bytes.Clone(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return b[:i+1]
		}
	}
	return nil
}

// Range selects keys in order from First to Last. A nil bound is open;
// Max > 0 limits the number of keys.
type Range struct {
	First          []byte
	FirstInclusive bool
	Last           []byte
	LastInclusive  bool
	Max            int
}

func (rg Range) request(o op, opts []ReadOption) (*request, error) {
	for _, b := range [][]byte{rg.First, rg.Last} {
		if len(b) > MaxKeySize {
			return nil, validKey("range bound", b)
		}
	}
	r := readRequest(o, opts)
	r.First, r.FirstInc, r.Last, r.LastInc = rg.First, rg.FirstInclusive, rg.Last, rg.LastInclusive
	if rg.Max > 0 {
		r.Max = uint64(rg.Max)
	}
	return r, nil
}

// Range returns the keys in rg.
func (c *Client) Range(ctx context.Context, rg Range, opts ...ReadOption) ([][]byte, error) {
	r, err := rg.request(opRange, opts)
	if err != nil {
		return nil, err
	}
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	return resp.Keys, nil
}

// RangeEntries returns the keys in rg with their values.
func (c *Client) RangeEntries(ctx context.Context, rg Range, opts ...ReadOption) ([]KV, error) {
	r, err := rg.request(opRangeEntries, opts)
	if err != nil {
		return nil, err
	}
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	return resp.Entries, nil
}

// PrefixKeys returns the keys starting with prefix in order, at most max
// of them if max > 0.
func (c *Client) PrefixKeys(ctx context.Context, prefix []byte, max int, opts ...ReadOption) ([][]byte, error) {
	if len(prefix) > MaxKeySize {
		return nil, validKey("prefix", prefix)
	}
	r := readRequest(opPrefixKeys, opts)
	r.Key = nonNil(prefix)
	if max > 0 {
		r.Max = uint64(max)
	}
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	return resp.Keys, nil
}

// Set stores value under key.
func (c *Client) Set(ctx context.Context, key, value []byte) error {
	_, err := c.mutate(ctx, mutation{Op: opSet, Key: key, Value: nonNil(value)})
	return err
}

// Delete removes key; it fails with ErrNotFound if key does not exist.
func (c *Client) Delete(ctx context.Context, key []byte) error {
	_, err := c.mutate(ctx, mutation{Op: opDelete, Key: key})
	return err
}

// DeletePrefix removes every key starting with prefix and returns how
// many there were.
func (c *Client) DeletePrefix(ctx context.Context, prefix []byte) (int, error) {
	resp, err := c.mutate(ctx, mutation{Op: opDeletePrefix, Key: nonNil(prefix)})
	if err != nil {
		return 0, err
	}
	return int(resp.Count), nil
}

// TestAndSet sets key to wanted (nil deletes it) if its value is expected
// (nil: if it is absent), atomically. It returns the value before (nil if
// absent) and whether the swap took place.
func (c *Client) TestAndSet(ctx context.Context, key, expected, wanted []byte) (old []byte, swapped bool, err error) {
	resp, err := c.mutate(ctx, mutation{Op: opTestAndSet, Key: key, Expected: expected, Wanted: wanted})
	if err != nil {
		return nil, false, err
	}
	if expected == nil {
		return resp.Value, resp.Value == nil, nil
	}
	return resp.Value, resp.Value != nil && bytes.Equal(resp.Value, expected), nil
}

// Sequence is an atomic batch: all its steps apply, or none. Asserts see
// the effect of the steps before them.
type Sequence struct {
	Updates []Update
}

// Set adds a set step.
func (s *Sequence) Set(key, value []byte) *Sequence {
	s.Updates = append(s.Updates, Update{Kind: UpdateSet, Key: key, Value: nonNil(value)})
	return s
}

// Delete adds a delete step; the sequence fails if key is missing then.
func (s *Sequence) Delete(key []byte) *Sequence {
	s.Updates = append(s.Updates, Update{Kind: UpdateDelete, Key: key})
	return s
}

// DeletePrefix adds a step removing every key starting with prefix.
func (s *Sequence) DeletePrefix(prefix []byte) *Sequence {
	s.Updates = append(s.Updates, Update{Kind: UpdateDeletePrefix, Key: nonNil(prefix)})
	return s
}

// Assert adds a step that fails the sequence unless key's value is value
// (nil: unless key is absent).
func (s *Sequence) Assert(key, value []byte) *Sequence {
	s.Updates = append(s.Updates, Update{Kind: UpdateAssert, Key: key, Value: value})
	return s
}

// AssertExists adds a step that fails the sequence unless key exists.
func (s *Sequence) AssertExists(key []byte) *Sequence {
	s.Updates = append(s.Updates, Update{Kind: UpdateAssertExists, Key: key})
	return s
}

// Sequence applies seq atomically. A failed assert is ErrAssertionFailed,
// a delete of a missing key ErrNotFound; either way nothing changed.
func (c *Client) Sequence(ctx context.Context, seq *Sequence) error {
	_, err := c.mutate(ctx, mutation{Op: opSequence, Updates: seq.Updates})
	return err
}

// Nop appends a no-op to the log and waits until it is applied: when it
// returns, the master has applied everything before it.
func (c *Client) Nop(ctx context.Context) error {
	_, err := c.call(ctx, &request{Op: opNop})
	return err
}

// WhoMaster returns the master, confirmed by the master itself.
func (c *Client) WhoMaster(ctx context.Context) (NodeInfo, error) {
	resp, err := c.call(ctx, &request{Op: opWhoMaster})
	if err != nil {
		return NodeInfo{}, err
	}
	return resp.Node, nil
}

// Statistics returns the statistics of node nodeID, or of the master if
// nodeID is empty.
func (c *Client) Statistics(ctx context.Context, nodeID string) (*Statistics, error) {
	r := &request{Op: opStatistics, Node: nodeID}
	if nodeID == "" {
		m, err := c.WhoMaster(ctx)
		if err != nil {
			return nil, err
		}
		r.Node = m.ID
	}
	resp, err := c.call(ctx, r)
	if err != nil {
		return nil, err
	}
	var st Statistics
	if err := json.Unmarshal(resp.JSON, &st); err != nil {
		return nil, fmt.Errorf("arakoon: statistics: %w", err)
	}
	return &st, nil
}

// Members returns the raft configuration as the master sees it.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	m, err := c.WhoMaster(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := c.call(ctx, &request{Op: opMembers, Node: m.ID})
	if err != nil {
		return nil, err
	}
	return resp.Members, nil
}

// AddNode adds a node to the live cluster, as a voter or a learner. The
// node must be started with join (it must not bootstrap a cluster).
func (c *Client) AddNode(ctx context.Context, n NodeInfo, learner bool) error {
	_, err := c.call(ctx, &request{Op: opAddNode, NodeInfo: n, Learner: learner})
	if err == nil {
		c.learn(n)
	}
	return err
}

// RemoveNode removes a node from the live cluster.
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	req := &request{Op: opRemoveNode, NodeID: id}
	_, err := c.call(ctx, req)
	if errors.Is(err, ErrNotFound) && req.ambiguous {
		// An earlier try whose answer was lost (removing the master
		// makes it step down mid-call) removed it: the removal is done.
		return nil
	}
	return err
}

// mutate sends a mutation under the client's session.
func (c *Client) mutate(ctx context.Context, m mutation) (*response, error) {
	if e := m.validate(); e != nil {
		return nil, e
	}
	select {
	case c.window <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("arakoon %s: %w", m.Op, ctx.Err())
	}
	defer func() { <-c.window }()
	for renewed := false; ; renewed = true {
		sess, err := c.ensureSession(ctx)
		if err != nil {
			return nil, err
		}
		seq, lowest := c.beginSeq()
		req := &request{Op: m.Op, Session: sess, Seq: seq, Lowest: lowest, Mutation: m}
		resp, err := c.call(ctx, req)
		c.endSeq(seq)
		if !errors.Is(err, ErrSessionExpired) {
			return resp, err
		}
		if req.ambiguous || renewed {
			// An earlier try may have been applied before the session
			// was evicted: trying again could apply it twice.
			return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		c.log.Info("arakoon session expired; registering a new one", "session", sess)
		c.dropSession(sess)
	}
}

func (c *Client) ensureSession(ctx context.Context) (uint64, error) {
	c.seqMu.Lock()
	s := c.session
	c.seqMu.Unlock()
	if s != 0 {
		return s, nil
	}
	c.regMu.Lock()
	defer c.regMu.Unlock()
	c.seqMu.Lock()
	s = c.session
	c.seqMu.Unlock()
	if s != 0 {
		return s, nil
	}
	resp, err := c.call(ctx, &request{Op: opRegisterSession})
	if err != nil {
		return 0, fmt.Errorf("arakoon: register session: %w", err)
	}
	c.seqMu.Lock()
	c.session = resp.Count
	c.seqMu.Unlock()
	return resp.Count, nil
}

func (c *Client) dropSession(s uint64) {
	c.seqMu.Lock()
	if c.session == s {
		c.session = 0
	}
	c.seqMu.Unlock()
}

func (c *Client) beginSeq() (seq, lowest uint64) {
	c.seqMu.Lock()
	defer c.seqMu.Unlock()
	c.seq++
	seq = c.seq
	c.pending[seq] = struct{}{}
	lowest = seq
	for q := range c.pending {
		lowest = min(lowest, q)
	}
	return seq, lowest
}

func (c *Client) endSeq(seq uint64) {
	c.seqMu.Lock()
	delete(c.pending, seq)
	c.seqMu.Unlock()
}

// protocolError is a response the client cannot read: retrying elsewhere
// will not help.
type protocolError struct{ err error }

func (e *protocolError) Error() string { return "arakoon protocol error: " + e.err.Error() }
func (e *protocolError) Unwrap() error { return e.err }

// call sends a request to the right node, following redirects and
// retrying until it gets an answer or the context is done.
func (c *Client) call(ctx context.Context, req *request) (*response, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RetryTimeout)
		defer cancel()
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.Status != StatusOK {
		return resp, &Error{Status: resp.Status, Msg: resp.Msg}
	}
	return resp, nil
}

// targeted requests go to one node: stale reads from a named node,
// statistics and members.
func (r *request) targeted() bool { return r.Node != "" }

func (c *Client) do(ctx context.Context, req *request) (*response, error) {
	backoff := 5 * time.Millisecond
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, 500*time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			if lastErr == nil {
				lastErr = err
			}
			if req.ambiguous && req.Op.mutating() {
				return nil, fmt.Errorf("arakoon %s: %w after %d tries: %w (last error: %v)", req.Op, ErrOutcomeUnknown, attempt, err, lastErr)
			}
			return nil, fmt.Errorf("arakoon %s: %w after %d tries (last error: %v)", req.Op, err, attempt, lastErr)
		}
		addr, err := c.pick(req)
		if err != nil {
			return nil, err
		}
		cn, err := c.connect(ctx, addr)
		if err != nil {
			var pe *protocolError
			if errors.Is(err, ErrWrongCluster) || errors.Is(err, ErrUnauthorized) || errors.As(err, &pe) {
				return nil, err
			}
			lastErr = err
			c.unreachable(addr)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		resp, err := cn.call(actx, req)
		cancel()
		if err != nil {
			var pe *protocolError
			var e *Error
			switch {
			case errors.As(err, &pe):
				return nil, err
			case errors.As(err, &e): // refused before sending (too large)
				return nil, err
			}
			// The request may have reached the node and been applied.
			req.ambiguous = true
			lastErr = fmt.Errorf("%s: %v", addr, err)
			if ctx.Err() == nil {
				c.unreachable(addr)
				c.drop(addr, cn)
			}
			continue
		}
		switch resp.Status {
		case StatusNotMaster:
			lastErr = &Error{Status: resp.Status, Msg: resp.Msg}
			if req.targeted() {
				return resp, nil
			}
			if resp.Master.Client != "" && resp.Master.Client != addr {
				c.learn(resp.Master)
				c.setMaster(resp.Master.Client)
				if attempt < 2 {
					backoff = 0
				}
			} else {
				c.unreachable(addr)
			}
			continue
		case StatusNoMaster, StatusUnavailable:
			if resp.Status == StatusUnavailable {
				req.ambiguous = true // e.g. leadership lost while committing
			}
			lastErr = &Error{Status: resp.Status, Msg: resp.Msg}
			if req.targeted() && resp.Status == StatusNoMaster {
				return resp, nil
			}
			c.unreachable(addr)
			continue
		}
		if !req.targeted() && req.Consistency == Linearizable && resp.Status != StatusWrongCluster {
			c.setMaster(addr)
		}
		return resp, nil
	}
}

// pick chooses the node for the next try.
func (c *Client) pick(req *request) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return "", errClientClosed
	}
	if req.targeted() {
		for _, n := range c.nodes {
			if n.ID == req.Node {
				return n.Client, nil
			}
		}
		return "", fmt.Errorf("arakoon: no node %q in cluster %q", req.Node, c.cfg.Cluster)
	}
	if c.master != "" {
		return c.master, nil
	}
	c.next = (c.next + 1) % len(c.nodes)
	return c.nodes[c.next].Client, nil
}

func (c *Client) setMaster(addr string) {
	c.mu.Lock()
	c.master = addr
	c.mu.Unlock()
}

// unreachable forgets addr as the master, so the next try goes elsewhere.
func (c *Client) unreachable(addr string) {
	c.mu.Lock()
	if c.master == addr {
		c.master = ""
	}
	c.mu.Unlock()
}

// learn adds a node met in a redirect or added by AddNode.
func (c *Client) learn(n NodeInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range c.nodes {
		if k.Client == n.Client || (n.ID != "" && k.ID == n.ID) {
			if k.ID == "" || k.ID == n.ID {
				c.nodes[i].ID = n.ID
				c.nodes[i].Client = n.Client
			}
			return
		}
	}
	c.nodes = append(c.nodes, n)
}

func (c *Client) connect(ctx context.Context, addr string) (*conn, error) {
	c.mu.Lock()
	if cn, ok := c.conns[addr]; ok && !cn.broken() {
		c.mu.Unlock()
		return cn, nil
	}
	c.mu.Unlock()
	cn, err := dial(ctx, addr, c.cfg)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cn.close(errClientClosed)
		return nil, errClientClosed
	}
	if old, ok := c.conns[addr]; ok && !old.broken() {
		cn.close(errClientClosed)
		return old, nil
	}
	c.conns[addr] = cn
	return cn, nil
}

func (c *Client) drop(addr string, cn *conn) {
	c.mu.Lock()
	if c.conns[addr] == cn {
		delete(c.conns, addr)
	}
	c.mu.Unlock()
	cn.close(errors.New("dropped after an error"))
}

// conn is one multiplexed connection to a node.
type conn struct {
	addr    string
	nc      net.Conn
	bw      *bufio.Writer
	wmu     sync.Mutex
	timeout time.Duration

	peer NodeInfo // the node, as its hello answered

	mu     sync.Mutex
	calls  map[uint64]*pendingCall
	nextID uint64
	err    error
}

type pendingCall struct {
	op op
	ch chan callResult
}

type callResult struct {
	resp *response
	err  error
}

func dial(ctx context.Context, addr string, cfg ClientConfig) (*conn, error) {
	d := net.Dialer{Timeout: cfg.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		// Not wrapped: the caller reports the cluster, not one dial.
		return nil, fmt.Errorf("connect to %s: %v", addr, err)
	}
	if cfg.TLS != nil {
		hctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
		tc := tls.Client(nc, cfg.TLS)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			nc.Close()
			var ne net.Error
			if isTLSRefusal(err) || !errors.As(err, &ne) && !errors.Is(err, io.EOF) && ctx.Err() == nil {
				// Refused credentials, a node that is not of this
				// cluster, or one that does not speak TLS: trying
				// again will not help.
				return nil, &Error{Status: StatusUnauthorized, Msg: fmt.Sprintf("TLS with %s: %v", addr, err)}
			}
			return nil, fmt.Errorf("TLS with %s: %v", addr, err)
		}
		nc = tc
	}
	cn := &conn{addr: addr, nc: nc, bw: bufio.NewWriterSize(nc, 64<<10), timeout: cfg.AttemptTimeout, calls: map[uint64]*pendingCall{}}
	go cn.readLoop()
	hctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	resp, err := cn.call(hctx, &request{Op: opHello, Cluster: cfg.Cluster})
	if err == nil && resp.Status != StatusOK {
		err = &Error{Status: resp.Status, Msg: resp.Msg}
	}
	if err != nil {
		cn.close(err)
		if isTLSRefusal(err) {
			// In TLS 1.3 the client hears that the node refused its
			// certificate only on its first read.
			return nil, &Error{Status: StatusUnauthorized, Msg: fmt.Sprintf("TLS with %s: %v", addr, err)}
		}
		return nil, fmt.Errorf("hello to %s: %w", addr, err)
	}
	cn.peer = resp.Node
	return cn, nil
}

func (cn *conn) broken() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.err != nil
}

// close fails every pending call with err.
func (cn *conn) close(err error) {
	cn.mu.Lock()
	if cn.err != nil {
		cn.mu.Unlock()
		return
	}
	cn.err = err
	calls := cn.calls
	cn.calls = nil
	cn.mu.Unlock()
	cn.nc.Close()
	for _, pc := range calls {
		pc.ch <- callResult{err: err}
	}
}

func (cn *conn) readLoop() {
	br := bufio.NewReaderSize(cn.nc, 64<<10)
	for {
		f, err := readFrame(br)
		if err != nil {
			cn.close(fmt.Errorf("connection to %s: %w", cn.addr, err))
			return
		}
		cn.mu.Lock()
		pc := cn.calls[f.ID]
		delete(cn.calls, f.ID)
		cn.mu.Unlock()
		if pc == nil {
			if f.ID == 0 && Status(f.Kind) != StatusOK {
				// The node rejected a frame it could not attribute.
				cn.close(fmt.Errorf("node %s closed the connection: %s", cn.addr, f.Payload))
				return
			}
			continue // abandoned by its caller
		}
		resp, err := decodeResponse(f.ID, pc.op, Status(f.Kind), f.Payload)
		if err != nil {
			err = &protocolError{fmt.Errorf("from %s: %w", cn.addr, err)}
		}
		pc.ch <- callResult{resp: resp, err: err}
	}
}

// call sends one request and waits for its response.
func (cn *conn) call(ctx context.Context, req *request) (*response, error) {
	payload := req.encode()
	if len(payload) > MaxFrameSize {
		return nil, errorf(StatusTooLarge, "the %s request of %d bytes exceeds the %d MiB frame limit", req.Op, len(payload), MaxFrameSize>>20)
	}
	pc := &pendingCall{op: req.Op, ch: make(chan callResult, 1)}
	cn.mu.Lock()
	if cn.err != nil {
		err := cn.err
		cn.mu.Unlock()
		return nil, err
	}
	cn.nextID++
	id := cn.nextID
	cn.calls[id] = pc
	cn.mu.Unlock()

	cn.wmu.Lock()
	cn.nc.SetWriteDeadline(time.Now().Add(cn.timeout))
	err := writeFrame(cn.bw, byte(req.Op), id, payload)
	if err == nil {
		err = cn.bw.Flush()
	}
	cn.wmu.Unlock()
	if err != nil {
		cn.close(fmt.Errorf("write to %s: %w", cn.addr, err))
		return nil, err
	}
	select {
	case r := <-pc.ch:
		return r.resp, r.err
	case <-ctx.Done():
		cn.mu.Lock()
		if cn.calls != nil {
			delete(cn.calls, id)
		}
		cn.mu.Unlock()
		return nil, ctx.Err()
	}
}

// isTLSRefusal reports whether err is the peer refusing the TLS session
// (an alert such as bad_certificate or certificate_required).
func isTLSRefusal(err error) bool {
	var ae tls.AlertError
	var oe *net.OpError
	// crypto/tls reports a received alert as a net.OpError "remote error".
	return errors.As(err, &ae) || errors.As(err, &oe) && oe.Op == "remote error"
}
