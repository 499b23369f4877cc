// Package api is the OVS REST API (/api/v1): the HTTP server over the volume
// driver's vdisk operations, a Go client for it, and the size syntax
// (ParseSize, FormatSize) that the API and the CLI share.
//
// Endpoints:
//
//	GET    /api/v1/health                200 {"status":"ok"} once ready (the backend can take a
//	                                     new vdisk's data), 503 before and while it cannot
//	GET    /api/v1/health/checks         200 health.Report (Options.HealthChecks; 404 without it)
//	GET    /api/v1/health/clock          200 ClockResponse: this node's time (clock-skew check)
//	POST   /api/v1/vdisks                201 VolumeInfo; body CreateRequest
//	GET    /api/v1/vdisks                200 [VolumeInfo...] sorted by name
//	GET    /api/v1/vdisks/{name}         200 VolumeInfo
//	DELETE /api/v1/vdisks/{name}?force=  204; force deletes a vdisk in use
//	POST   /api/v1/vdisks/{name}/resize  200 VolumeInfo; body {"size": ...}
//	POST   /api/v1/vdisks/{name}/rename  200 VolumeInfo; body {"name": ...} (rename.go)
//	PATCH  /api/v1/vdisks/{name}         200 VolumeInfo; body {"size": ...}
//	POST   /api/v1/vdisks/{name}/sync    200 VolumeInfo (or {} if it could not be read after the sync)
//
//	POST   /api/v1/vdisks/{name}/snapshots             201 SnapshotInfo; body SnapshotRequest (optional)
//	GET    /api/v1/vdisks/{name}/snapshots             200 [SnapshotInfo...] oldest first
//	DELETE /api/v1/vdisks/{name}/snapshots/{snapshot}  204
//	POST   /api/v1/vdisks/{name}/rollback              200 VolumeInfo (or {}, as for sync); body RollbackRequest
//	POST   /api/v1/vdisks/{name}/clones                201 VolumeInfo of the clone; body CloneRequest
//	POST   /api/v1/vdisks/{name}/flatten               200 VolumeInfo
//	POST   /api/v1/vdisks/{name}/template              200 VolumeInfo
//	POST   /api/v1/vdisks/{name}/scrub                 200 ScrubResult
//
//	GET    /api/v1/capacity              200 CapacityResponse (Options.Capacity; 404 without it)
//	GET    /ui/...                       the web dashboard (Options.UI); GET / redirects to /ui/
//
//	GET    /api/v1/jobs                  200 [Job...] oldest first
//	GET    /api/v1/jobs/{id}             200 Job
//
// flatten, scrub, move and the backend's repair, scrub, rebalance and
// decommission take ?async=true: they run as a job and answer 202 Job at
// once (see jobs.go).
//
// Sizes in request bodies are a JSON integer (bytes) or a string in the
// ParseSize syntax ("10GiB"). Every error is a JSON ErrorResponse.
//
// Every request passes the checks of guard.go: Host must be an IP
// address, localhost or a configured name; a browser's cross-origin
// requests are refused; mutating calls and bodies must be
// application/json; with RequireToken, mutating calls need a bearer
// token. Bodies are bounded in size and time, every call has a deadline,
// and Listener caps the connections.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ovs-storage/ovs/framework/health"
	"github.com/ovs-storage/ovs/volumedriver"
)

// VDisks is the vdisk lifecycle the API serves: what it needs from the
// volume driver. *volumedriver.Driver implements it, and so does *Client.
//
// Operations on a template (a read-only vdisk) that would change it fail
// with ErrReadOnly.
type VDisks interface {
	Create(ctx context.Context, name string, size int64, opts volumedriver.CreateOptions) (volumedriver.VolumeInfo, error)
	List(ctx context.Context) ([]volumedriver.VolumeInfo, error)
	Info(ctx context.Context, name string) (volumedriver.VolumeInfo, error)
	// Delete fails with ErrBusy if a client has the vdisk open, unless force.
	Delete(ctx context.Context, name string, force bool) error
	// Resize grows a vdisk; a shrink fails with ErrInvalidArgument.
	Resize(ctx context.Context, name string, size int64) (volumedriver.VolumeInfo, error)
	// Sync returns once every write flushed before the call is on the backend.
	Sync(ctx context.Context, name string) error

	// CreateSnapshot snapshots vdisk; an empty snapshot name is generated.
	// Metadata over volumedriver.MaxSnapshotMetadata fails with
	// ErrInvalidArgument, a taken name with ErrExists.
	CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (volumedriver.SnapshotInfo, error)
	// ListSnapshots lists a vdisk's snapshots, oldest first.
	ListSnapshots(ctx context.Context, vdisk string) ([]volumedriver.SnapshotInfo, error)
	// DeleteSnapshot fails with an error matching ErrNotFound for an
	// unknown snapshot, ErrBusy for one with clones.
	DeleteSnapshot(ctx context.Context, vdisk, snapshot string) error
	// Rollback returns vdisk to snapshot, discarding later snapshots and
	// writes. It fails with ErrBusy if a client has the vdisk open, unless
	// force.
	Rollback(ctx context.Context, vdisk, snapshot string, force bool) error
	// Clone creates vdisk name from snapshot of parent. An empty snapshot
	// means the latest snapshot of parent, which must then be a template.
	Clone(ctx context.Context, name, parent, snapshot string) (volumedriver.VolumeInfo, error)
	// Flatten makes a clone independent of its parent.
	Flatten(ctx context.Context, name string) (volumedriver.VolumeInfo, error)
	// SetTemplate turns a vdisk into a read-only template.
	SetTemplate(ctx context.Context, name string) (volumedriver.VolumeInfo, error)
	// Scrub gives back the backend space of data no snapshot and not the
	// current state can see any more.
	Scrub(ctx context.Context, name string) (volumedriver.ScrubResult, error)
}

// DefaultMaxBodyBytes is the default limit on a request body.
const DefaultMaxBodyBytes = 1 << 20

// healthCheckTimeout bounds the Ready check of one health request.
const healthCheckTimeout = 3 * time.Second

// Options tune a Server. The zero value is fine.
type Options struct {
	// Logger receives request logs (debug level) and internal errors.
	// Nil means slog.Default().
	Logger *slog.Logger
	// MaxBodyBytes limits request bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// BodyTimeout: a request body must arrive within this (default
	// DefaultBodyTimeout).
	BodyTimeout time.Duration
	// RequestTimeout is the deadline of a call (default
	// DefaultRequestTimeout); LongRequestTimeout that of the calls that
	// wait for uploads or copy data: sync, rollback, clone, flatten,
	// template, scrub and the mounted handlers (default
	// DefaultLongRequestTimeout).
	RequestTimeout     time.Duration
	LongRequestTimeout time.Duration
	// ReadHeaderTimeout and IdleTimeout are HTTPServer's (defaults
	// DefaultReadHeaderTimeout, DefaultIdleTimeout).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	// MaxConns caps the open connections of Listener (default
	// DefaultMaxConns).
	MaxConns int

	// AllowedHosts are names (besides IP addresses and localhost) that
	// requests may carry in Host.
	AllowedHosts []string
	// RequireToken makes every mutating call need a bearer token that
	// Tokens verifies (set it when the API listens beyond loopback). A
	// token that is sent is always checked.
	RequireToken bool
	Tokens       TokenVerifier

	// Ready, if set, is asked by the health check once SetReady(true):
	// the server is healthy only if it returns nil (the backend can take
	// a new vdisk's data, say).
	Ready func(ctx context.Context) error
	// Mounts serves other handlers (the backend admin API) under path
	// prefixes, behind the same checks, limits and deadlines.
	Mounts map[string]http.Handler
	// Cluster, if set, serves the node routes (list nodes, move a vdisk)
	// and lists only this node's vdisks for ?scope=node.
	Cluster Cluster
	// Capacity, if set, reports the backend's space for GET
	// /api/v1/capacity (404 without it).
	Capacity func(ctx context.Context) (BackendSpace, error)
	// HealthChecks, if set, runs the health checks for GET
	// /api/v1/health/checks (404 without it).
	HealthChecks func(ctx context.Context) health.Report
	// UI, if set, is the web dashboard: served for GET /ui/..., and GET /
	// redirects there.
	UI http.Handler
	// Jobs runs the ?async=true calls; nil makes one that lives as long
	// as the process.
	Jobs *JobStore
	// Schedules, if set, serves the snapshot and scrub schedules
	// (schedule.go; 404 without it).
	Schedules Schedules
	// IOStats, if set, gives GET /api/v1/stats its per-vdisk counters
	// (stats.go); Metrics, if set, serves GET /metrics (404 without).
	IOStats func() map[string]volumedriver.IOStats
	Metrics http.Handler
	// Attachments, if set, records which host has a vdisk attached
	// (attachment.go; 404 without it).
	Attachments Attachments
}

// CreateRequest is the body of POST /api/v1/vdisks. The server also
// accepts sizes as strings such as "10GiB" (see ParseSize).
type CreateRequest struct {
	Name          string `json:"name"`
	Size          int64  `json:"size"`
	ClusterSize   int    `json:"cluster_size,omitempty"`
	SCOMultiplier int    `json:"sco_multiplier,omitempty"`
}

// ResizeRequest is the body of a resize. The server also accepts the size
// as a string such as "20GiB".
type ResizeRequest struct {
	Size int64 `json:"size"`
}

// SnapshotRequest is the body of POST /api/v1/vdisks/{name}/snapshots. Both
// fields are optional, and so is the body: without a name, the driver
// generates one.
type SnapshotRequest struct {
	Name     string `json:"name,omitempty"`
	Metadata string `json:"metadata,omitempty"` // at most volumedriver.MaxSnapshotMetadata bytes
}

// RollbackRequest is the body of POST /api/v1/vdisks/{name}/rollback.
type RollbackRequest struct {
	Snapshot string `json:"snapshot"`
	// Force rolls back a vdisk that a client has open; the client sees
	// its data change under it.
	Force bool `json:"force,omitempty"`
}

// CloneRequest is the body of POST /api/v1/vdisks/{parent}/clones.
type CloneRequest struct {
	Name string `json:"name"` // the new vdisk
	// Snapshot of the parent to clone; empty means the latest snapshot of
	// a template.
	Snapshot string `json:"snapshot,omitempty"`
}

// HealthResponse is the body of GET /api/v1/health.
type HealthResponse struct {
	Status string `json:"status"` // "ok", "starting" or "unavailable"
}

// Server serves the REST API. Create it with NewServer and mount Handler()
// in an http.Server (set ReadHeaderTimeout there).
type Server struct {
	vdisks  VDisks
	log     *slog.Logger
	maxBody int64
	ready   atomic.Bool
	mux     *http.ServeMux
	handler http.Handler

	bodyTimeout, timeout, longTimeout time.Duration
	readHeaderTimeout, idleTimeout    time.Duration
	maxConns                          int
	allowedHosts                      []string
	requireToken                      bool
	tokens                            TokenVerifier
	readyCheck                        func(context.Context) error
	mounts                            map[string]http.Handler
	cluster                           Cluster
	capacityFn                        func(context.Context) (BackendSpace, error)
	healthChecksFn                    func(context.Context) health.Report
	jobs                              *JobStore
	schedules                         Schedules
	ioStats                           func() map[string]volumedriver.IOStats
	metricsHandler                    http.Handler
	attachments                       Attachments
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// NewServer returns a server over vdisks. It answers the health check with
// 503 until SetReady(true).
func NewServer(vdisks VDisks, opts Options) *Server {
	s := &Server{
		vdisks:  vdisks,
		log:     opts.Logger,
		maxBody: opts.MaxBodyBytes,
		mux:     http.NewServeMux(),

		bodyTimeout:       orDefault(opts.BodyTimeout, DefaultBodyTimeout),
		timeout:           orDefault(opts.RequestTimeout, DefaultRequestTimeout),
		longTimeout:       orDefault(opts.LongRequestTimeout, DefaultLongRequestTimeout),
		readHeaderTimeout: orDefault(opts.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		idleTimeout:       orDefault(opts.IdleTimeout, DefaultIdleTimeout),
		maxConns:          orDefault(opts.MaxConns, DefaultMaxConns),
		allowedHosts:      opts.AllowedHosts,
		requireToken:      opts.RequireToken,
		tokens:            opts.Tokens,
		readyCheck:        opts.Ready,
		mounts:            opts.Mounts,
		cluster:           opts.Cluster,
		capacityFn:        opts.Capacity,
		healthChecksFn:    opts.HealthChecks,
		jobs:              opts.Jobs,
		schedules:         opts.Schedules,
		ioStats:           opts.IOStats,
		metricsHandler:    opts.Metrics,
		attachments:       opts.Attachments,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.jobs == nil {
		s.jobs = NewJobStore(context.Background(), JobOptions{Logger: s.log})
	}
	s.mux.HandleFunc("GET /api/v1/health", s.health)
	s.mux.HandleFunc("GET /api/v1/health/checks", s.healthChecks)
	s.mux.HandleFunc("GET /api/v1/health/clock", s.clock)
	s.mux.HandleFunc("GET /api/v1/vdisks", s.listVDisks)
	s.mux.HandleFunc("POST /api/v1/vdisks", s.createVDisk)
	s.mux.HandleFunc("GET /api/v1/vdisks/{name}", s.getVDisk)
	s.mux.HandleFunc("DELETE /api/v1/vdisks/{name}", s.deleteVDisk)
	s.mux.HandleFunc("PATCH /api/v1/vdisks/{name}", s.resizeVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/resize", s.resizeVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/sync", s.syncVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/rename", s.renameVDisk)
	s.mux.HandleFunc("GET /api/v1/vdisks/{name}/snapshots", s.listSnapshots)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/snapshots", s.createSnapshot)
	s.mux.HandleFunc("DELETE /api/v1/vdisks/{name}/snapshots/{snapshot}", s.deleteSnapshot)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/rollback", s.rollbackVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/clones", s.cloneVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/flatten", s.flattenVDisk)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/template", s.setTemplate)
	s.mux.HandleFunc("POST /api/v1/vdisks/{name}/scrub", s.scrubVDisk)
	s.mux.HandleFunc("GET /api/v1/capacity", s.capacity)
	s.mux.HandleFunc("GET /api/v1/stats", s.stats)
	s.mux.HandleFunc("GET /metrics", s.metrics)
	s.clusterRoutes()
	if opts.UI != nil {
		s.mux.Handle("GET /ui/", opts.UI)
		s.mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	}
	s.jobRoutes()
	s.scheduleRoutes()
	s.attachmentRoutes()
	s.handler = s.logRequests(s.recoverPanics(s.guard(http.HandlerFunc(s.route))))
	return s
}

// Handler returns the API's http.Handler.
func (s *Server) Handler() http.Handler { return s.handler }

// SetReady sets what the health check reports.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Ready reports what SetReady last set.
func (s *Server) Ready() bool { return s.ready.Load() }

// route dispatches to the mux, answering unknown routes and wrong methods
// with JSON instead of the mux's plain text.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	r = markForwarded(r)
	if m := s.mountFor(r.URL.Path); m != nil {
		m.ServeHTTP(w, r)
		return
	}
	h, pattern := s.mux.Handler(r)
	if pattern != "" {
		s.mux.ServeHTTP(w, r) // sets the path values, follows redirects
		return
	}
	// The mux's own 404 or 405: find out which, then answer in JSON.
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		allow := rec.header.Get("Allow")
		w.Header().Set("Allow", allow)
		s.writeJSON(w, http.StatusMethodNotAllowed, ErrorResponse{
			Error: fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow),
			Code:  CodeMethodNotAllowed,
		})
		return
	}
	s.writeJSON(w, http.StatusNotFound, ErrorResponse{
		Error: fmt.Sprintf("no such API endpoint: %s %s", r.Method, r.URL.Path),
		Code:  CodeUnknownRoute,
	})
}

// headerRecorder captures a status and headers and drops the body.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header { return h.header }
func (h *headerRecorder) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}
func (h *headerRecorder) Write(p []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	return len(p), nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		s.writeJSON(w, http.StatusServiceUnavailable, struct {
			HealthResponse
			ErrorResponse
		}{HealthResponse{"starting"}, ErrorResponse{"the server is starting", CodeUnavailable}})
		return
	}
	if s.readyCheck != nil {
		ctx, cancel := context.WithTimeout(r.Context(), healthCheckTimeout)
		err := s.readyCheck(ctx)
		cancel()
		if err != nil {
			s.writeJSON(w, http.StatusServiceUnavailable, struct {
				HealthResponse
				ErrorResponse
			}{HealthResponse{"unavailable"}, ErrorResponse{"not ready: " + err.Error(), CodeUnavailable}})
			return
		}
	}
	s.writeJSON(w, http.StatusOK, HealthResponse{Status: "ok"})
}

func (s *Server) listVDisks(w http.ResponseWriter, r *http.Request) {
	list := s.vdisks.List
	if r.URL.Query().Get("scope") == "node" && s.cluster != nil {
		list = s.cluster.ListLocal
	}
	infos, err := list(r.Context())
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	infos = slices.Clone(infos)
	if infos == nil {
		infos = []volumedriver.VolumeInfo{}
	}
	slices.SortFunc(infos, func(a, b volumedriver.VolumeInfo) int { return strings.Compare(a.Name, b.Name) })
	s.writeJSON(w, http.StatusOK, infos)
}

func (s *Server) createVDisk(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name          string          `json:"name"`
		Size          json.RawMessage `json:"size"`
		ClusterSize   json.RawMessage `json:"cluster_size"`
		SCOMultiplier *int            `json:"sco_multiplier"`
	}
	if err := s.decodeBody(w, r, &body); err != nil {
		s.writeError(w, r, err, "")
		return
	}
	if body.Name == "" {
		s.writeError(w, r, badRequest(`"name" is required`), "")
		return
	}
	size, err := sizeField("size", body.Size, true)
	if err != nil {
		s.writeError(w, r, err, body.Name)
		return
	}
	clusterSize, err := sizeField("cluster_size", body.ClusterSize, false)
	if err != nil {
		s.writeError(w, r, err, body.Name)
		return
	}
	if clusterSize > 1<<30 {
		s.writeError(w, r, badRequest(`"cluster_size" %d is too large`, clusterSize), body.Name)
		return
	}
	opts := volumedriver.CreateOptions{ClusterSize: int(clusterSize)}
	if body.SCOMultiplier != nil {
		if *body.SCOMultiplier < 0 {
			s.writeError(w, r, badRequest(`"sco_multiplier" must not be negative`), body.Name)
			return
		}
		opts.SCOMultiplier = *body.SCOMultiplier
	}
	info, err := s.vdisks.Create(r.Context(), body.Name, size, opts)
	if err != nil {
		s.writeError(w, r, err, body.Name)
		return
	}
	w.Header().Set("Location", "/api/v1/vdisks/"+url.PathEscape(info.Name))
	s.writeJSON(w, http.StatusCreated, info)
}

func (s *Server) getVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	info, err := s.vdisks.Info(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

func (s *Server) deleteVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		var err error
		if force, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, badRequest(`invalid value %q for query parameter "force" (use true or false)`, v), name)
			return
		}
	}
	if err := s.vdisks.Delete(r.Context(), name, force); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) resizeVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var body struct {
		Size json.RawMessage `json:"size"`
	}
	if err := s.decodeBody(w, r, &body); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	size, err := sizeField("size", body.Size, true)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	info, err := s.vdisks.Resize(r.Context(), name, size)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

func (s *Server) syncVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.vdisks.Sync(r.Context(), name); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeInfoAfter(w, r, "sync", name)
}

// writeInfoAfter answers a successful operation op on vdisk name with the
// vdisk's VolumeInfo, or with {} if it cannot be read: the operation itself
// succeeded, so the answer says so.
func (s *Server) writeInfoAfter(w http.ResponseWriter, r *http.Request, op, name string) {
	info, err := s.vdisks.Info(r.Context(), name)
	if err != nil {
		s.log.DebugContext(r.Context(), "api: info after "+op+" failed", "vdisk", name, "err", err)
		s.writeJSON(w, http.StatusOK, struct{}{})
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	snaps, err := s.vdisks.ListSnapshots(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if snaps == nil {
		snaps = []volumedriver.SnapshotInfo{}
	}
	s.writeJSON(w, http.StatusOK, snaps) // in the driver's order: oldest first
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var body SnapshotRequest
	if err := s.decodeOptionalBody(w, r, &body); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	snap, err := s.vdisks.CreateSnapshot(r.Context(), name, body.Name, body.Metadata)
	if err != nil {
		s.writeError(w, r, snapshotError(err, name, body.Name, volumedriver.ErrExists), name)
		return
	}
	w.Header().Set("Location", snapshotPath(name, snap.Name))
	s.writeJSON(w, http.StatusCreated, snap)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	name, snap := r.PathValue("name"), r.PathValue("snapshot")
	if err := s.vdisks.DeleteSnapshot(r.Context(), name, snap); err != nil {
		s.writeError(w, r, snapshotError(err, name, snap, volumedriver.ErrBusy), name)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) rollbackVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var body RollbackRequest
	if err := s.decodeBody(w, r, &body); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if body.Snapshot == "" {
		s.writeError(w, r, badRequest(`"snapshot" is required: the snapshot to roll back to`), name)
		return
	}
	if err := s.vdisks.Rollback(r.Context(), name, body.Snapshot, body.Force); err != nil {
		s.writeError(w, r, snapshotError(err, name, body.Snapshot), name)
		return
	}
	s.writeInfoAfter(w, r, "rollback", name)
}

func (s *Server) cloneVDisk(w http.ResponseWriter, r *http.Request) {
	parent := r.PathValue("name")
	var body CloneRequest
	if err := s.decodeBody(w, r, &body); err != nil {
		s.writeError(w, r, err, parent)
		return
	}
	if body.Name == "" {
		s.writeError(w, r, badRequest(`"name" is required: the name of the new vdisk`), parent)
		return
	}
	info, err := s.vdisks.Clone(r.Context(), body.Name, parent, body.Snapshot)
	if err != nil {
		about := parent
		if err == volumedriver.ErrExists {
			about = body.Name // a bare ErrExists is about the new name
		}
		s.writeError(w, r, snapshotError(err, parent, body.Snapshot), about)
		return
	}
	w.Header().Set("Location", vdiskPath(info.Name))
	s.writeJSON(w, http.StatusCreated, info)
}

func (s *Server) flattenVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.asJob(w, r, "flatten", name, func(ctx context.Context) (any, error) { return s.vdisks.Flatten(ctx, name) }) {
		return
	}
	info, err := s.vdisks.Flatten(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

func (s *Server) setTemplate(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	info, err := s.vdisks.SetTemplate(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

func (s *Server) scrubVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.asJob(w, r, "scrub", name, func(ctx context.Context) (any, error) { return s.vdisks.Scrub(ctx, name) }) {
		return
	}
	res, err := s.vdisks.Scrub(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, res)
}

// decodeBody decodes a single JSON object from the request body into dst,
// rejecting unknown fields, trailing data and bodies over the limit.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	return s.decode(w, r, dst, false)
}

// decodeOptionalBody is decodeBody for a body whose fields are all
// optional: an empty body leaves dst as it is.
func (s *Server) decodeOptionalBody(w http.ResponseWriter, r *http.Request, dst any) error {
	return s.decode(w, r, dst, true)
}

func (s *Server) decode(w http.ResponseWriter, r *http.Request, dst any, optional bool) error {
	r.Body = http.MaxBytesReader(w, r.Body, s.maxBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		if optional && err == io.EOF {
			return nil
		}
		return s.bodyError(err)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return s.bodyError(err)
		}
		return badRequest("request body must hold a single JSON object, found more data after it")
	}
	return nil
}

func (s *Server) bodyError(err error) error {
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mbe):
		return &httpError{http.StatusRequestEntityTooLarge, CodeTooLarge,
			fmt.Sprintf("request body is larger than %s", FormatSize(mbe.Limit))}
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty; expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is not valid JSON: it ends too early")
	case errors.As(err, &se):
		return badRequest("request body is not valid JSON: %s (at byte %d)", strings.TrimPrefix(se.Error(), "json: "), se.Offset)
	case errors.As(err, &te):
		if te.Field == "" {
			return badRequest("request body must be a JSON object, not %s", jsonKind(te.Value))
		}
		return badRequest("field %q must be %s, not %s", te.Field, goKind(te), jsonKind(te.Value))
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if strings.HasPrefix(msg, "unknown field ") {
		return badRequest("request body has an %s", msg)
	}
	return badRequest("request body is not valid: %s", msg)
}

func jsonKind(v string) string {
	switch v {
	case "object", "array", "string", "number":
		return "a JSON " + v
	case "bool":
		return "a boolean"
	}
	if strings.HasPrefix(v, "number") {
		return "the number " + strings.TrimSpace(strings.TrimPrefix(v, "number"))
	}
	return v
}

func goKind(te *json.UnmarshalTypeError) string {
	if te.Type == nil {
		return "something else"
	}
	switch te.Type.Kind().String() {
	case "string":
		return "a string"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "bool":
		return "true or false"
	case "struct", "map":
		return "a JSON object"
	case "slice", "array":
		return "a JSON array"
	}
	return "a " + te.Type.String()
}

// sizeField parses a size field given as a JSON integer of bytes or a
// string in ParseSize syntax. An absent or null field is 0, or an error if
// required.
func sizeField(field string, raw json.RawMessage, required bool) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		if required {
			return 0, badRequest("%q is required: a number of bytes or a string such as \"10GiB\"", field)
		}
		return 0, nil
	}
	if raw[0] == '"' {
		var text string
		if err := json.Unmarshal(raw, &text); err != nil {
			return 0, badRequest("%q is not a valid JSON string", field)
		}
		n, err := ParseSize(text)
		if err != nil {
			var se *SizeError
			if errors.As(err, &se) {
				return 0, badRequest("invalid %s %q: %s", field, se.Input, se.Reason)
			}
			return 0, badRequest("invalid %s: %v", field, err)
		}
		return n, nil
	}
	if raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9') {
		n, err := strconv.ParseInt(string(raw), 10, 64)
		var ne *strconv.NumError
		switch {
		case errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange):
			return 0, badRequest("%q %s is too large", field, raw)
		case err != nil:
			return 0, badRequest("%q must be a whole number of bytes, not %s", field, raw)
		case n < 0:
			return 0, badRequest("%q must not be negative", field)
		case n == 0 && required:
			return 0, badRequest("%q must be greater than zero", field)
		}
		return n, nil
	}
	return 0, badRequest("%q must be a number of bytes or a string such as \"10GiB\"", field)
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		s.log.Error("api: encoding response", "err", err)
		status = http.StatusInternalServerError
		body, _ = json.Marshal(ErrorResponse{Error: "cannot encode the response", Code: CodeInternal})
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError answers with err as an ErrorResponse. name is the vdisk the
// request is about, if any.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error, name string) {
	status, code := classify(err)
	msg := errorMessage(err, name)
	switch {
	case status == http.StatusInternalServerError:
		s.log.ErrorContext(r.Context(), "api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	case code == CodeCanceled || code == CodeTimeout:
		s.log.DebugContext(r.Context(), "api: request aborted", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	s.writeJSON(w, status, ErrorResponse{Error: msg, Code: code})
}

func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := w.(*statusWriter)
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.ErrorContext(r.Context(), "api: panic serving request",
				"method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
			if sw.status == 0 {
				s.writeJSON(sw, http.StatusInternalServerError, ErrorResponse{Error: "internal server error", Code: CodeInternal})
			}
		}()
		next.ServeHTTP(sw, r)
	})
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		next.ServeHTTP(sw, r)
		if !s.log.Enabled(r.Context(), slog.LevelDebug) {
			return
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		s.log.LogAttrs(r.Context(), slog.LevelDebug, "api: request",
			slog.String("method", r.Method),
			slog.String("path", r.URL.RequestURI()),
			slog.Int("status", status),
			slog.Int64("bytes", sw.bytes),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote", r.RemoteAddr))
	})
}

// statusWriter records the status and body size of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
