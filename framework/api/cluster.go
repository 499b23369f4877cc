package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/ovs-storage/ovs/volumedriver"
)

// Cluster is what the API serves about the nodes of a cluster. A server
// without one answers the node routes with 404.
type Cluster interface {
	// Nodes lists the cluster's nodes with their state.
	Nodes(ctx context.Context) ([]NodeInfo, error)
	// Move hands a vdisk to another node (force: without the owner's
	// help, when it is down).
	Move(ctx context.Context, name, to string, force bool) (MoveResult, error)
	// Adopt brings up, now, a vdisk the model gives this node.
	Adopt(ctx context.Context, name string) (volumedriver.VolumeInfo, error)
	// ListLocal lists the vdisks this node serves itself.
	ListLocal(ctx context.Context) ([]volumedriver.VolumeInfo, error)
	// SetDTL sets a vdisk's DTL mode (sync, async or none).
	SetDTL(ctx context.Context, name, mode string) (volumedriver.VolumeInfo, error)
	// SetCHAP sets the iSCSI CHAP secrets of vdisk name's target, or of
	// discovery sessions for name "" (User "": none).
	SetCHAP(ctx context.Context, name string, c CHAPRequest) error
}

// CHAPRequest is the body of PUT /api/v1/vdisks/{name}/iscsi-chap and
// PUT /api/v1/iscsi/discovery-chap. User/Secret are what the initiator
// proves; MutualUser/MutualSecret, if set, what the target proves. An
// empty User removes CHAP. The secrets are never returned.
type CHAPRequest struct {
	User         string `json:"user"`
	Secret       string `json:"secret"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// Validate checks the secrets as initiators need them: RFC 7143 asks for
// at least 96 bits of secret (12 bytes), Windows' initiator takes 12 to 16
// characters; the two directions must differ (a target that reused the
// initiator's secret would let a reflection attack through).
func (c CHAPRequest) Validate() error {
	switch {
	case c.User == "" && (c.Secret != "" || c.MutualUser != "" || c.MutualSecret != ""):
		return badRequest("CHAP: a secret without a user name")
	case c.User == "":
		return nil
	case len(c.Secret) < 12 || len(c.Secret) > 255:
		return badRequest("CHAP: the secret must be 12 to 255 bytes (RFC 7143: at least 96 bits), not %d", len(c.Secret))
	case (c.MutualUser == "") != (c.MutualSecret == ""):
		return badRequest("CHAP: mutual CHAP needs both a user name and a secret")
	case c.MutualUser != "" && (len(c.MutualSecret) < 12 || len(c.MutualSecret) > 255):
		return badRequest("CHAP: the mutual secret must be 12 to 255 bytes, not %d", len(c.MutualSecret))
	case c.MutualUser != "" && c.MutualSecret == c.Secret:
		return badRequest("CHAP: the mutual secret must differ from the initiator's")
	}
	return nil
}

// DTLRequest is the body of POST /api/v1/vdisks/{name}/dtl.
type DTLRequest struct {
	Mode string `json:"mode"`
}

// NodeInfo is a node (storage router) as GET /api/v1/nodes lists it.
type NodeInfo struct {
	ID       string    `json:"id"`
	Site     string    `json:"site"`
	State    string    `json:"state"` // "up" or "down" (no heartbeat lately)
	API      string    `json:"api"`
	NBD      string    `json:"nbd,omitempty"`
	Forward  string    `json:"forward,omitempty"`
	DTL      string    `json:"dtl,omitempty"`
	ISCSI    string    `json:"iscsi,omitempty"`
	ASDs     []string  `json:"asds,omitempty"`
	VDisks   int       `json:"vdisks"` // vdisks it owns
	Joined   time.Time `json:"joined"`
	LastSeen time.Time `json:"last_seen,omitempty"`
}

// MoveRequest is the body of POST /api/v1/vdisks/{name}/move.
type MoveRequest struct {
	To    string `json:"to"`
	Force bool   `json:"force,omitempty"`
}

// MoveResult is the answer of a move.
type MoveResult struct {
	VDisk string `json:"vdisk"`
	From  string `json:"from"`
	To    string `json:"to"`
	Epoch uint64 `json:"epoch"`
	// Took is the whole move; HeldIO how long I/O waited at the old
	// owner while it handed the vdisk over.
	Took   time.Duration `json:"took_ns"`
	HeldIO time.Duration `json:"held_io_ns"`
	// Release is the old owner's last upload, Adopt the new owner's
	// restore from the backend: most of HeldIO.
	Release time.Duration `json:"release_ns,omitempty"`
	Adopt   time.Duration `json:"adopt_ns,omitempty"`
}

// ErrUnavailable: the call reached a node that cannot serve it now (the
// vdisk is moving between nodes); retry.
var ErrUnavailable = errors.New("unavailable")

// forwardedHeader marks a call one node passes on to another, so that it
// is passed on no further.
const forwardedHeader = "X-Ovs-Forwarded"

type forwardedKey struct{}

// IsForwarded reports whether the call in ctx was passed on by another
// node.
func IsForwarded(ctx context.Context) bool { return ctx.Value(forwardedKey{}) != nil }

func markForwarded(r *http.Request) *http.Request {
	if r.Header.Get(forwardedHeader) == "" {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), forwardedKey{}, true))
}

func (s *Server) clusterRoutes() {
	s.mux.HandleFunc("GET /api/v1/nodes", s.listNodes)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/move", s.moveVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/adopt", s.adoptVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/dtl", s.setDTL)
	s.mux.HandleFunc("PUT /api/v1/vdisks/{name}/iscsi-chap", s.setCHAP)
	s.mux.HandleFunc("PUT /api/v1/iscsi/discovery-chap", s.setCHAP)
}

func (s *Server) setCHAP(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name") // "" for discovery
	if s.cluster == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server is not part of a cluster"}, "")
		return
	}
	var req CHAPRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if err := req.Validate(); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if err := s.cluster.SetCHAP(r.Context(), name, req); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setDTL(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.cluster == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server is not part of a cluster"}, "")
		return
	}
	var req DTLRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	in, err := s.cluster.SetDTL(r.Context(), name, req.Mode)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, in)
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	if s.cluster == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server is not part of a cluster"}, "")
		return
	}
	nodes, err := s.cluster.Nodes(r.Context())
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	if nodes == nil {
		nodes = []NodeInfo{}
	}
	s.writeJSON(w, http.StatusOK, nodes)
}

func (s *Server) moveVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.cluster == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server is not part of a cluster"}, "")
		return
	}
	var req MoveRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if req.To == "" {
		s.writeError(w, r, badRequest("move: no target node (\"to\")"), name)
		return
	}
	if s.asJob(w, r, "move", name, func(ctx context.Context) (any, error) { return s.cluster.Move(ctx, name, req.To, req.Force) }) {
		return
	}
	res, err := s.cluster.Move(r.Context(), name, req.To, req.Force)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, res)
}

func (s *Server) adoptVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.cluster == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server is not part of a cluster"}, "")
		return
	}
	in, err := s.cluster.Adopt(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, in)
}

// --- client

// Forwarded returns a copy of c whose calls say they were passed on by
// another node (the receiving node passes them on no further).
func (c *Client) Forwarded() *Client {
	c2 := *c
	c2.forwarded = true
	return &c2
}

// Nodes lists the cluster's nodes.
func (c *Client) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var out []NodeInfo
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes", nil, nil, &out)
	return out, err
}

// Move hands vdisk name to node to.
func (c *Client) Move(ctx context.Context, name, to string, force bool) (MoveResult, error) {
	if err := checkName(name); err != nil {
		return MoveResult{}, err
	}
	var out MoveResult
	err := c.do(ctx, http.MethodPost, vdiskPath(name)+"/move", nil, MoveRequest{To: to, Force: force}, &out)
	return out, err
}

// Adopt asks the node to bring up a vdisk the model gives it.
func (c *Client) Adopt(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	return c.postInfo(ctx, name, "/adopt")
}

// SetDTL sets vdisk name's DTL mode.
func (c *Client) SetDTL(ctx context.Context, name, mode string) (volumedriver.VolumeInfo, error) {
	var out volumedriver.VolumeInfo
	err := c.do(ctx, http.MethodPost, vdiskPath(name)+"/dtl", nil, DTLRequest{Mode: mode}, &out)
	return out, err
}

// SetCHAP sets the iSCSI CHAP secrets of vdisk name's target (name "":
// of discovery); a zero c removes them.
func (c *Client) SetCHAP(ctx context.Context, name string, chap CHAPRequest) error {
	path := "/api/v1/iscsi/discovery-chap"
	if name != "" {
		path = vdiskPath(name) + "/iscsi-chap"
	}
	return c.do(ctx, http.MethodPut, path, nil, chap, nil)
}

// ListLocal lists the vdisks the node serves itself.
func (c *Client) ListLocal(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	var out []volumedriver.VolumeInfo
	err := c.do(ctx, http.MethodGet, "/api/v1/vdisks", map[string][]string{"scope": {"node"}}, nil, &out)
	return out, err
}
