package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
)

// fakeClock is a settable now for the job store.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestJobStore(t *testing.T, opts JobOptions) (*JobStore, *fakeClock) {
	t.Helper()
	opts.Logger = slog.New(slog.DiscardHandler)
	s := NewJobStore(context.Background(), opts)
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s.now = clk.now
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return s, clk
}

func waitJob(t *testing.T, s *JobStore, id string) Job {
	t.Helper()
	for range 2000 {
		j, ok := s.Get(id)
		if !ok {
			t.Fatalf("job %s vanished", id)
		}
		if j.State != JobRunning {
			return j
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("job %s did not finish", id)
	return Job{}
}

var bareRequest = httptest.NewRequest(http.MethodPost, "/x", nil)

func TestJobStoreOutcomes(t *testing.T) {
	tests := []struct {
		name      string
		run       func(ctx context.Context) outcome
		wantState string
		wantErr   string
		wantCode  string
		wantRes   string
	}{
		{"done", func(context.Context) outcome { return outcome{200, []byte(`{"n":1}` + "\n")} },
			JobDone, "", "", `{"n":1}`},
		{"no content", func(context.Context) outcome { return outcome{204, nil} }, JobDone, "", "", ""},
		{"failed", func(context.Context) outcome {
			return outcome{404, []byte(`{"error":"vdisk \"x\" not found","code":"not_found"}`)}
		}, JobFailed, `vdisk "x" not found`, CodeNotFound, ""},
		{"failed without a body", func(context.Context) outcome { return outcome{502, nil} },
			JobFailed, "HTTP 502 Bad Gateway", "", ""},
		{"panic", func(context.Context) outcome { panic("boom") }, JobFailed, "internal error", CodeInternal, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestJobStore(t, JobOptions{})
			j, err := s.start(bareRequest, "scrub", "a", tc.run)
			if err != nil {
				t.Fatal(err)
			}
			if j.ID == "" || j.Kind != "scrub" || j.Target != "a" {
				t.Fatalf("started %+v", j)
			}
			j = waitJob(t, s, j.ID)
			if j.State != tc.wantState || j.Error != tc.wantErr || j.Code != tc.wantCode || string(j.Result) != tc.wantRes {
				t.Errorf("job %+v; want state %s, error %q, code %q, result %s", j, tc.wantState, tc.wantErr, tc.wantCode, tc.wantRes)
			}
			if j.Finished.IsZero() {
				t.Error("no finish time")
			}
		})
	}
}

// TestJobStoreProgressAndLifetime: a running job shows the progress its
// call reports; the job outlives its request; store shutdown cancels it.
func TestJobStoreProgressAndLifetime(t *testing.T) {
	s, _ := newTestJobStore(t, JobOptions{})
	reqCtx, endRequest := context.WithCancel(context.Background())
	r := bareRequest.WithContext(reqCtx)
	reported, release := make(chan struct{}), make(chan struct{})
	j, err := s.start(r, "flatten", "c", func(ctx context.Context) outcome {
		pt := progress.From(ctx)
		pt.Start("copy", "bytes", 1000)
		pt.Add(250)
		close(reported)
		<-release
		if ctx.Err() != nil {
			return outcome{503, []byte(`{"error":"canceled","code":"canceled"}`)}
		}
		return outcome{200, []byte(`{}`)}
	})
	if err != nil {
		t.Fatal(err)
	}
	<-reported
	endRequest() // the client went away: the job goes on
	got, _ := s.Get(j.ID)
	if got.State != JobRunning || got.Stage != "copy" || got.Unit != "bytes" || got.Done != 250 || got.Total != 1000 {
		t.Fatalf("running job %+v", got)
	}
	close(release)
	if got = waitJob(t, s, j.ID); got.State != JobDone || got.Done != got.Total {
		t.Fatalf("finished job %+v", got)
	}

	// Close cancels what runs.
	started := make(chan struct{})
	j, err = s.start(bareRequest, "move", "d", func(ctx context.Context) outcome {
		close(started)
		<-ctx.Done()
		return outcome{503, []byte(`{"error":"canceled","code":"canceled"}`)}
	})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(j.ID); got.State != JobFailed || got.Code != CodeCanceled {
		t.Errorf("job after close: %+v", got)
	}
	if _, err := s.start(bareRequest, "scrub", "a", func(context.Context) outcome { return outcome{200, nil} }); err == nil {
		t.Error("a closed store started a job")
	}
}

// TestJobStoreBounds: finished jobs expire; a full store drops the oldest
// finished job and refuses a new one while all are running.
func TestJobStoreBounds(t *testing.T) {
	s, clk := newTestJobStore(t, JobOptions{Keep: time.Minute, MaxJobs: 2})
	quick := func(context.Context) outcome { return outcome{200, []byte(`{}`)} }
	first, _ := s.start(bareRequest, "scrub", "a", quick)
	waitJob(t, s, first.ID)
	clk.add(time.Second)
	second, _ := s.start(bareRequest, "scrub", "b", quick)
	waitJob(t, s, second.ID)
	// Full of finished jobs: the oldest goes.
	third, err := s.start(bareRequest, "scrub", "c", quick)
	if err != nil {
		t.Fatal(err)
	}
	waitJob(t, s, third.ID)
	if _, ok := s.Get(first.ID); ok {
		t.Error("the oldest finished job was kept past the bound")
	}
	if _, ok := s.Get(second.ID); !ok {
		t.Error("a newer finished job was dropped")
	}
	// Expiry.
	clk.add(2 * time.Minute)
	if _, ok := s.Get(second.ID); ok {
		t.Error("an expired job is still there")
	}
	if l := s.List(); len(l) != 0 {
		t.Errorf("expired jobs listed: %+v", l)
	}
	// Full of running jobs: refused.
	block := make(chan struct{})
	defer close(block)
	blocked := func(context.Context) outcome { <-block; return outcome{200, nil} }
	for range 2 {
		if _, err := s.start(bareRequest, "move", "x", blocked); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.start(bareRequest, "move", "y", blocked)
	if status, code := classify(err); status != http.StatusServiceUnavailable || code != CodeUnavailable {
		t.Errorf("start on a store full of running jobs: %v (%d %s)", err, status, code)
	}
}

// TestAsyncOverDriver: scrub and flatten with ?async=true against the
// real driver answer 202 with a job at once; polling it shows the result
// the call without async gives, or its error with the same code.
func TestAsyncOverDriver(t *testing.T) {
	ctx := context.Background()
	backend, err := scos.NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	drv, err := volumedriver.Open(ctx, t.TempDir(), backend, volumedriver.Options{
		ScrubInterval: -1, ScrubGarbageRatio: -1, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	s := NewServer(drv, Options{Logger: slog.New(slog.DiscardHandler)})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	c := NewClient(ts.URL, ts.Client())

	if _, err := c.Create(ctx, "p", 8*MiB, volumedriver.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := drv.Volume("p")
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(strings.Repeat("ovs!", int(MiB/4)))
	for range 2 { // the second round is garbage for the scrub
		if err := v.WriteAt(ctx, data, 0, false); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CreateSnapshot(ctx, "p", "", ""); err != nil {
			t.Fatal(err)
		}
	}
	snaps, _ := c.ListSnapshots(ctx, "p")
	if _, err := c.Clone(ctx, "c", "p", snaps[len(snaps)-1].Name); err != nil {
		t.Fatal(err)
	}

	var seen []Job
	j, err := c.ScrubJob(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if j.Kind != "scrub" || j.Target != "p" || j.ID == "" {
		t.Fatalf("started %+v", j)
	}
	j, err = c.WaitJob(ctx, j.ID, 10*time.Millisecond, func(j Job) { seen = append(seen, j) })
	if err != nil {
		t.Fatal(err)
	}
	var res volumedriver.ScrubResult
	if err := JobResult(j, &res); err != nil || res.BackendBytesBefore == 0 {
		t.Fatalf("scrub job %+v: result %+v, %v", j, res, err)
	}
	if len(seen) == 0 || seen[len(seen)-1].State != JobDone {
		t.Errorf("polls saw %+v", seen)
	}

	j, err = c.FlattenJob(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if j, err = c.WaitJob(ctx, j.ID, 10*time.Millisecond, nil); err != nil {
		t.Fatal(err)
	}
	var info volumedriver.VolumeInfo
	if err := JobResult(j, &info); err != nil || info.Name != "c" || info.Parent != "" {
		t.Fatalf("flatten job %+v: %+v, %v", j, info, err)
	}
	if j.Unit != "" && j.Total > 0 && j.Done != j.Total {
		t.Errorf("finished flatten shows %d of %d", j.Done, j.Total)
	}

	// A call that fails fails the job, with the code the call would have.
	j, err = c.ScrubJob(ctx, "nope")
	if err != nil {
		t.Fatal(err)
	}
	j, _ = c.WaitJob(ctx, j.ID, 10*time.Millisecond, nil)
	if err := JobResult(j, nil); !errors.Is(err, volumedriver.ErrNotFound) {
		t.Errorf("scrub of an unknown vdisk as a job: %+v, %v", j, err)
	}

	list, err := c.Jobs(ctx)
	if err != nil || len(list) != 3 || list[0].Kind != "scrub" || list[1].Kind != "flatten" {
		t.Errorf("jobs %+v, %v", list, err)
	}
	if _, err := c.Job(ctx, "feedface"); !errors.Is(err, volumedriver.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	resp, err := ts.Client().Post(ts.URL+"/api/v1/vdisks/p/scrub?async=perhaps", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("async=perhaps: status %d", resp.StatusCode)
	}
}

// TestAsyncMount: a mounted handler wrapped in Async runs a POST with
// ?async=true as a job whose result is what the handler answered; other
// calls pass through.
func TestAsyncMount(t *testing.T) {
	ctx := context.Background()
	jobs, _ := newTestJobStore(t, JobOptions{})
	admin := http.NewServeMux()
	admin.HandleFunc("POST /v1/repair", func(w http.ResponseWriter, r *http.Request) {
		progress.From(r.Context()).Start("repair", "objects", 3)
		progress.From(r.Context()).Add(3)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"objects":3}`)
	})
	admin.HandleFunc("POST /v1/asds/{id}/decommission", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":"no ASD `+r.PathValue("id")+`","code":"not_found"}`)
	})
	mount := http.StripPrefix("/api/v1/backend", jobs.Async("backend", admin))
	s := NewServer(&panickyVDisks{}, Options{Logger: slog.New(slog.DiscardHandler), Jobs: jobs,
		Mounts: map[string]http.Handler{"/api/v1/backend/": mount}})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	c := NewClient(ts.URL, ts.Client())

	j, err := c.StartJob(ctx, "/api/v1/backend/v1/repair", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Kind != "backend repair" || j.Target != "backend" {
		t.Errorf("started %+v", j)
	}
	j, _ = c.WaitJob(ctx, j.ID, 10*time.Millisecond, nil)
	var rep struct{ Objects int }
	if err := JobResult(j, &rep); err != nil || rep.Objects != 3 || j.Stage != "repair" || j.Done != 3 {
		t.Errorf("repair job %+v: %+v %v", j, rep, err)
	}

	j, err = c.StartJob(ctx, "/api/v1/backend/v1/asds/asd-7/decommission", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Kind != "backend decommission" || j.Target != "asd-7" {
		t.Errorf("started %+v", j)
	}
	j, _ = c.WaitJob(ctx, j.ID, 10*time.Millisecond, nil)
	if err := JobResult(j, nil); !errors.Is(err, volumedriver.ErrNotFound) || !strings.Contains(err.Error(), "asd-7") {
		t.Errorf("failed decommission job %+v: %v", j, err)
	}

	// Without async: the handler answers itself.
	resp, err := ts.Client().Post(ts.URL+"/api/v1/backend/v1/repair", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var direct map[string]int
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &direct) != nil || direct["objects"] != 3 {
		t.Errorf("sync repair: %d %s", resp.StatusCode, body)
	}
}
