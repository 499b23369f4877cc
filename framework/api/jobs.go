package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/volumedriver"
)

// Jobs: a long call (scrub, flatten, move, the backend's repair, scrub,
// rebalance and decommission) made with ?async=true runs in the
// background, under the node's lifetime rather than the request's, and
// is answered at once with 202 and a Job; GET /api/v1/jobs/{id} reports
// its progress and, once it is over, its result: the body the call would
// have answered with, or its error. Jobs live in the memory of the node
// that runs them; finished ones are forgotten after a while.

// Job states.
const (
	JobRunning = "running"
	JobDone    = "done"
	JobFailed  = "failed"
)

// Job is a long call run in the background, as the API reports it.
type Job struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`   // "scrub", "flatten", "move", "backend repair", ...
	Target string `json:"target"` // the vdisk, ASD or "backend" it works on
	// Stage, Done, Total and Unit are the operation's progress: Done of
	// Total units ("bytes", "objects", ...) of the current stage; Total 0
	// when the stage's size is not known.
	Stage        string    `json:"stage"`
	Done         int64     `json:"done"`
	Total        int64     `json:"total"`
	Unit         string    `json:"unit,omitempty"`
	StageStarted time.Time `json:"stage_started,omitzero"`
	State        string    `json:"state"` // JobRunning, JobDone or JobFailed
	// Error, Code and Status are a failed call's ErrorResponse and the
	// HTTP status it would have been answered with.
	Error  string `json:"error,omitempty"`
	Code   string `json:"code,omitempty"`
	Status int    `json:"status,omitempty"`
	// Result is the call's normal JSON answer once it is done.
	Result   json.RawMessage `json:"result,omitempty"`
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished,omitzero"`
}

// DefaultJobKeep is how long a finished job is kept; DefaultMaxJobs how
// many jobs (running or finished) a node keeps at most.
const (
	DefaultJobKeep = 30 * time.Minute
	DefaultMaxJobs = 200
)

// JobOptions tune a JobStore. The zero value is fine.
type JobOptions struct {
	Logger *slog.Logger
	// Keep is how long a finished job stays listed (default
	// DefaultJobKeep); MaxJobs bounds the jobs kept (default
	// DefaultMaxJobs): past it the oldest finished jobs go, and a new job
	// is refused while all are running.
	Keep    time.Duration
	MaxJobs int
}

// JobStore runs and keeps the jobs of a node. A server makes its own if
// Options.Jobs is nil; a node makes one with its lifetime context and
// passes it in, so that its mounted handlers (Async) share it.
type JobStore struct {
	log     *slog.Logger
	keep    time.Duration
	maxJobs int
	now     func() time.Time // time.Now, but tests move it

	base   context.Context // the node's lifetime: jobs end with it
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	jobs   map[string]*job
	closed bool
}

type job struct {
	Job                       // ID, Kind, Target, Started: fixed; the rest under JobStore.mu
	tracker *progress.Tracker // the live progress
}

// NewJobStore returns a store whose jobs run under ctx (the node's
// lifetime): they are canceled when it is done, or by Close.
func NewJobStore(ctx context.Context, opts JobOptions) *JobStore {
	base, cancel := context.WithCancel(ctx)
	s := &JobStore{log: opts.Logger, keep: orDefault(opts.Keep, DefaultJobKeep), maxJobs: orDefault(opts.MaxJobs, DefaultMaxJobs),
		now: time.Now, base: base, cancel: cancel, jobs: map[string]*job{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s
}

// Close cancels the running jobs and waits, until ctx is done, for them to
// end. Jobs started afterwards are refused.
func (s *JobStore) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("jobs still running at shutdown: %w", ctx.Err())
	}
}

// outcome is how a job's call ended: a JSON body and a status.
type outcome struct {
	status int
	body   []byte
}

// start runs fn as a job of kind on target. The job's context keeps the
// request's values (a forwarded call stays forwarded) but not its
// cancellation or deadline: it ends with the store's context.
func (s *JobStore) start(r *http.Request, kind, target string, fn func(ctx context.Context) outcome) (Job, error) {
	id, err := newJobID()
	if err != nil {
		return Job{}, err
	}
	j := &job{Job: Job{ID: id, Kind: kind, Target: target, State: JobRunning, Started: s.now().UTC()}, tracker: progress.New()}
	s.mu.Lock()
	if s.closed || s.base.Err() != nil {
		s.mu.Unlock()
		return Job{}, &httpError{http.StatusServiceUnavailable, CodeUnavailable, "the node is shutting down: no new jobs"}
	}
	if !s.makeRoomLocked() {
		s.mu.Unlock()
		return Job{}, &httpError{http.StatusServiceUnavailable, CodeUnavailable,
			fmt.Sprintf("%d jobs are running, the most this node keeps; wait for one to finish", s.maxJobs)}
	}
	s.jobs[id] = j
	s.wg.Add(1)
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stop := context.AfterFunc(s.base, cancel)
	ctx = progress.With(ctx, j.tracker)
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer stop()
		out := s.run(ctx, j, fn)
		s.finish(j, out)
	}()
	return s.snapshot(j), nil
}

// run calls fn, turning a panic into a failed job: the job runs outside
// the server's own panic guard.
func (s *JobStore) run(ctx context.Context, j *job, fn func(context.Context) outcome) (out outcome) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("api: job panicked", "job", j.ID, "kind", j.Kind, "target", j.Target, "panic", v)
			body, _ := json.Marshal(ErrorResponse{Error: "internal error", Code: CodeInternal})
			out = outcome{http.StatusInternalServerError, body}
		}
	}()
	return fn(ctx)
}

func (s *JobStore) finish(j *job, out outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j.Finished = s.now().UTC()
	j.Status = out.status
	if out.status >= 200 && out.status <= 299 {
		j.State = JobDone
		if body := bytes.TrimSpace(out.body); json.Valid(body) {
			j.Result = body
		}
		return
	}
	j.State = JobFailed
	var er ErrorResponse
	if json.Unmarshal(out.body, &er) == nil && er.Error != "" {
		j.Error, j.Code = er.Error, er.Code
	} else {
		j.Error = fmt.Sprintf("HTTP %d %s", out.status, http.StatusText(out.status))
	}
	s.log.Debug("api: job failed", "job", j.ID, "kind", j.Kind, "target", j.Target, "err", j.Error)
}

// makeRoomLocked drops expired jobs, then the oldest finished ones while
// the store is full; false if it is full of running jobs.
func (s *JobStore) makeRoomLocked() bool {
	now := s.now()
	var finished []*job
	for id, j := range s.jobs {
		if j.State == JobRunning {
			continue
		}
		if now.Sub(j.Finished) > s.keep {
			delete(s.jobs, id)
			continue
		}
		finished = append(finished, j)
	}
	slices.SortFunc(finished, func(a, b *job) int { return a.Finished.Compare(b.Finished) })
	for len(s.jobs) >= s.maxJobs && len(finished) > 0 {
		delete(s.jobs, finished[0].ID)
		finished = finished[1:]
	}
	return len(s.jobs) < s.maxJobs
}

func (s *JobStore) snapshot(j *job) Job {
	s.mu.Lock()
	out := j.Job
	s.mu.Unlock()
	p := j.tracker.Snapshot()
	out.Stage, out.Done, out.Total, out.Unit, out.StageStarted = p.Stage, p.Done, p.Total, p.Unit, p.StageStarted
	if out.State == JobDone && out.Total > 0 {
		out.Done = out.Total // a stage that ended early (nothing left to do) is complete too
	}
	return out
}

// Get returns the job with id.
func (s *JobStore) Get(id string) (Job, bool) {
	s.mu.Lock()
	j := s.jobs[id]
	expired := j != nil && j.State != JobRunning && s.now().Sub(j.Finished) > s.keep
	s.mu.Unlock()
	if j == nil || expired {
		return Job{}, false
	}
	return s.snapshot(j), true
}

// List returns the jobs kept, oldest first.
func (s *JobStore) List() []Job {
	s.mu.Lock()
	s.makeRoomLocked()
	js := make([]*job, 0, len(s.jobs))
	for _, j := range s.jobs {
		js = append(js, j)
	}
	s.mu.Unlock()
	out := make([]Job, 0, len(js))
	for _, j := range js {
		out = append(out, s.snapshot(j))
	}
	slices.SortFunc(out, func(a, b Job) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func newJobID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("job id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// isAsync reports whether the request asks to run as a job.
func isAsync(r *http.Request) (bool, error) {
	v := r.URL.Query().Get("async")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest(`invalid value %q for query parameter "async" (use true or false)`, v)
	}
	return b, nil
}

// Async wraps a mounted handler (the backend admin API): a POST with
// ?async=true is served by h in the background as a job of kind
// prefix+" "+what (the last element of the path: "repair",
// "decommission", ...), and answered with 202 and the Job; everything
// else goes to h as it is. Put it behind the mount's own authentication,
// so that a refused call is refused at once.
func (s *JobStore) Async(prefix string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		async, err := isAsync(r)
		if err != nil || !async || r.Method != http.MethodPost {
			if err != nil {
				writeJobError(w, err)
				return
			}
			h.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, DefaultMaxBodyBytes+1))
		if err != nil || len(body) > DefaultMaxBodyBytes {
			writeJobError(w, badRequest("reading the request body: too large or cut off"))
			return
		}
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		kind, target := prefix+" "+parts[len(parts)-1], prefix
		if len(parts) >= 3 {
			target = parts[len(parts)-2] // /v1/asds/{id}/decommission
		}
		j, err := s.start(r, kind, target, func(ctx context.Context) outcome {
			r2 := r.Clone(ctx)
			r2.Body = io.NopCloser(bytes.NewReader(body))
			rec := &recorder{header: http.Header{}}
			h.ServeHTTP(rec, r2)
			return outcome{orDefault(rec.status, http.StatusOK), rec.body.Bytes()}
		})
		if err != nil {
			writeJobError(w, err)
			return
		}
		writeJobAccepted(w, j)
	})
}

// recorder keeps what a handler run as a job answers.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if r.body.Len()+len(p) > maxResponseBytes {
		return 0, fmt.Errorf("job result over %d bytes", maxResponseBytes)
	}
	return r.body.Write(p)
}

func writeJobAccepted(w http.ResponseWriter, j Job) {
	body, _ := json.Marshal(j)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", jobPath(j.ID))
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(append(body, '\n'))
}

func writeJobError(w http.ResponseWriter, err error) {
	status, code := classify(err)
	body, _ := json.Marshal(ErrorResponse{Error: err.Error(), Code: code})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

func jobPath(id string) string { return "/api/v1/jobs/" + id }

// --- the server's side

func (s *Server) jobRoutes() {
	s.mux.HandleFunc("GET /api/v1/jobs", s.listJobs)
	s.mux.HandleFunc("GET /api/v1/jobs/{id}", s.getJob)
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, http.StatusOK, s.jobs.List())
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	j, ok := s.jobs.Get(id)
	if !ok {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeNotFound, fmt.Sprintf("job %q not found (finished jobs are kept for a while only)", id)}, "")
		return
	}
	s.writeJSON(w, http.StatusOK, j)
}

// asJob runs op as a job if the request asks for ?async=true and answers
// 202; it reports whether it did (or answered an error), so that the
// handler does nothing more. name is the vdisk, for error messages.
func (s *Server) asJob(w http.ResponseWriter, r *http.Request, kind, name string, op func(ctx context.Context) (any, error)) bool {
	async, err := isAsync(r)
	if err != nil {
		s.writeError(w, r, err, name)
		return true
	}
	if !async {
		return false
	}
	j, err := s.jobs.start(r, kind, name, func(ctx context.Context) outcome {
		v, err := op(ctx)
		if err != nil {
			status, code := classify(err)
			body, _ := json.Marshal(ErrorResponse{Error: errorMessage(err, name), Code: code})
			return outcome{status, body}
		}
		body, err := json.Marshal(v)
		if err != nil {
			body, _ = json.Marshal(ErrorResponse{Error: "cannot encode the result", Code: CodeInternal})
			return outcome{http.StatusInternalServerError, body}
		}
		return outcome{http.StatusOK, body}
	})
	if err != nil {
		s.writeError(w, r, err, name)
		return true
	}
	w.Header().Set("Location", jobPath(j.ID))
	s.writeJSON(w, http.StatusAccepted, j)
	return true
}

// --- the client's side

// StartJob POSTs in (nil: no body) to path with ?async=true and returns
// the job the server started. path is under the API root, such as
// "/api/v1/vdisks/a/scrub" or "/api/v1/backend/v1/repair".
func (c *Client) StartJob(ctx context.Context, path string, query url.Values, in any) (Job, error) {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("async", "true")
	var j Job
	if err := c.do(ctx, http.MethodPost, path, q, in, &j); err != nil {
		return Job{}, err
	}
	if j.ID == "" {
		return Job{}, fmt.Errorf("POST %s?async=true: the server did not start a job (is it an older version?)", path)
	}
	return j, nil
}

// ScrubJob starts a scrub of vdisk name as a job.
func (c *Client) ScrubJob(ctx context.Context, name string) (Job, error) {
	if err := checkName(name); err != nil {
		return Job{}, err
	}
	return c.StartJob(ctx, vdiskPath(name)+"/scrub", nil, nil)
}

// FlattenJob starts a flatten of vdisk name as a job.
func (c *Client) FlattenJob(ctx context.Context, name string) (Job, error) {
	if err := checkName(name); err != nil {
		return Job{}, err
	}
	return c.StartJob(ctx, vdiskPath(name)+"/flatten", nil, nil)
}

// MoveJob starts a move of vdisk name to node to as a job.
func (c *Client) MoveJob(ctx context.Context, name, to string, force bool) (Job, error) {
	if err := checkName(name); err != nil {
		return Job{}, err
	}
	return c.StartJob(ctx, vdiskPath(name)+"/move", nil, MoveRequest{To: to, Force: force})
}

// Job returns the job with id.
func (c *Client) Job(ctx context.Context, id string) (Job, error) {
	var j Job
	if id == "" {
		return j, fmt.Errorf("job id must not be empty: %w", volumedriver.ErrInvalidArgument)
	}
	err := c.do(ctx, http.MethodGet, jobPath(url.PathEscape(id)), nil, nil, &j)
	return j, err
}

// Jobs lists the jobs the node keeps, oldest first.
func (c *Client) Jobs(ctx context.Context) ([]Job, error) {
	var js []Job
	err := c.do(ctx, http.MethodGet, "/api/v1/jobs", nil, nil, &js)
	return js, err
}

// WaitJob polls job id every interval until it is over, calling seen (if
// not nil) with every state it gets, and returns the last. A failed job
// is returned with a nil error: JobResult turns it into the call's error.
func (c *Client) WaitJob(ctx context.Context, id string, every time.Duration, seen func(Job)) (Job, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		j, err := c.Job(ctx, id)
		if err != nil {
			return j, err
		}
		if seen != nil {
			seen(j)
		}
		if j.State != JobRunning {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C:
		}
	}
}

// JobResult decodes a finished job's result into out (if not nil), or
// returns its error as the *APIError the call made without async would
// have returned.
func JobResult(j Job, out any) error {
	switch j.State {
	case JobDone:
		if out == nil || len(j.Result) == 0 {
			return nil
		}
		if err := json.Unmarshal(j.Result, out); err != nil {
			return fmt.Errorf("the result of job %s (%s) is not the JSON expected: %w", j.ID, j.Kind, err)
		}
		return nil
	case JobFailed:
		return &APIError{Status: j.Status, Code: j.Code, Message: j.Error}
	}
	return fmt.Errorf("job %s (%s) is still %s", j.ID, j.Kind, j.State)
}
