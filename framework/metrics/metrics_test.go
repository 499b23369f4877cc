package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// --- fakes -------------------------------------------------------------------

type fakeVDisks struct {
	stats   map[string]volumedriver.IOStats
	infos   []volumedriver.VolumeInfo
	listErr error
}

func (f *fakeVDisks) IOStats() map[string]volumedriver.IOStats { return f.stats }
func (f *fakeVDisks) List(context.Context) ([]volumedriver.VolumeInfo, error) {
	return f.infos, f.listErr
}

type fakeBackend struct {
	mu        sync.Mutex
	status    ec.Status
	statusErr error
	calls     int
	asds      []ec.ASDStatus
	asdErr    error
}

func (f *fakeBackend) Status(context.Context) (ec.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.status, f.statusErr
}

func (f *fakeBackend) ListASDs(context.Context) ([]ec.ASDStatus, error) { return f.asds, f.asdErr }

type fakeArakoon struct {
	nodes     map[string]*arakoon.Statistics
	master    string
	masterErr error
	hang      map[string]bool // answer only when the context is done
}

func (f *fakeArakoon) Statistics(ctx context.Context, id string) (*arakoon.Statistics, error) {
	if id == "" {
		if f.masterErr != nil {
			return nil, f.masterErr
		}
		id = f.master
	}
	if f.hang[id] {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	st, ok := f.nodes[id]
	if !ok {
		return nil, fmt.Errorf("no node %s", id)
	}
	return st, nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func sampleStats() volumedriver.IOStats {
	var s volumedriver.IOStats
	s.Write.Ops, s.Write.Bytes, s.Write.LatencySum = 3, 12288, 3*time.Millisecond
	for i := range s.Write.Buckets {
		if i >= 4 { // all three within 1ms
			s.Write.Buckets[i] = 3
		}
	}
	s.Read.Ops, s.Read.Bytes, s.Read.Errors = 0, 0, 2
	s.CacheHits, s.CacheMisses = 5, 7
	return s
}

func fullSources() (*fakeVDisks, *fakeBackend, *fakeArakoon) {
	vd := &fakeVDisks{
		stats: map[string]volumedriver.IOStats{"a": sampleStats()},
		infos: []volumedriver.VolumeInfo{
			{Name: "a", Size: 1 << 30, WriteBufferBytes: 4 << 20, PendingUploadBytes: 1 << 20, State: "ok", DTLState: volumedriver.DTLStateStandalone},
			{Name: "broken", State: "failed: gone"},
		},
	}
	be := &fakeBackend{
		status: ec.Status{Objects: 10, Degraded: 2, Unavailable: 1, ASDs: 3, ASDsUp: 2,
			Maintenance: ec.MaintenanceProgress{Task: "repair", Done: 4, Total: 9},
			Counters:    ec.Counters{ObjectsRepaired: 6}},
		asds: []ec.ASDStatus{
			{ID: "asd1", Node: "n1", Health: "up", State: ec.ASDActive, Used: 100, Free: 900, Capacity: 1000},
			{ID: "asd2", Node: "n1", Health: "down", State: ec.ASDActive},
		},
	}
	members := []arakoon.Member{{NodeInfo: arakoon.NodeInfo{ID: "n1"}, Voter: true}, {NodeInfo: arakoon.NodeInfo{ID: "n2"}, Voter: true}}
	ar := &fakeArakoon{master: "n1", nodes: map[string]*arakoon.Statistics{
		"n1": {Node: "n1", State: "Leader", Term: 4, AppliedIndex: 120, Members: members},
		"n2": {Node: "n2", State: "Follower", Term: 4, AppliedIndex: 118, Members: members},
	}}
	return vd, be, ar
}

// gather collects c through a pedantic registry (which checks the metrics
// against their descriptors) and flattens the result to
// `name{label="v",...}` -> value; histograms give _count, _sum and
// _bucket{le=...}.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := func(name string, extra ...string) string {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				ls = append(ls, extra...)
				sort.Strings(ls)
				if len(ls) == 0 {
					return name
				}
				return name + "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key(mf.GetName())] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key(mf.GetName())] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				out[key(mf.GetName()+"_count")] = float64(h.GetSampleCount())
				out[key(mf.GetName()+"_sum")] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					out[key(mf.GetName()+"_bucket", fmt.Sprintf("le=%q", fmt.Sprint(b.GetUpperBound())))] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out
}

func TestCollectorReadsEverySource(t *testing.T) {
	vd, be, ar := fullSources()
	got := gather(t, New(Sources{VDisks: vd, Backend: be, Arakoon: ar, Logger: quiet()}))
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{`ovs_vdisk_ops_total{op="write",vdisk="a"}`, 3},
		{`ovs_vdisk_ops_total{op="read",vdisk="a"}`, 0},
		{`ovs_vdisk_ops_total{op="flush",vdisk="a"}`, 0},
		{`ovs_vdisk_ops_total{op="trim",vdisk="a"}`, 0},
		{`ovs_vdisk_bytes_total{op="write",vdisk="a"}`, 12288},
		{`ovs_vdisk_errors_total{op="read",vdisk="a"}`, 2},
		{`ovs_vdisk_latency_seconds_count{op="write",vdisk="a"}`, 3},
		{`ovs_vdisk_latency_seconds_sum{op="write",vdisk="a"}`, 0.003},
		{`ovs_vdisk_latency_seconds_bucket{le="0.0005",op="write",vdisk="a"}`, 0},
		{`ovs_vdisk_latency_seconds_bucket{le="0.001",op="write",vdisk="a"}`, 3},
		{`ovs_read_cache_hits_total{vdisk="a"}`, 5},
		{`ovs_read_cache_misses_total{vdisk="a"}`, 7},
		{`ovs_vdisk_size_bytes{vdisk="a"}`, 1 << 30},
		{`ovs_vdisk_write_buffer_bytes{vdisk="a"}`, 4 << 20},
		{`ovs_vdisk_pending_upload_bytes{vdisk="a"}`, 1 << 20},
		{`ovs_vdisk_healthy{vdisk="a"}`, 1},
		{`ovs_vdisk_healthy{vdisk="broken"}`, 0},
		{`ovs_vdisk_dtl_state{state="standalone",vdisk="a"}`, 1},
		{`ovs_vdisk_dtl_state{state="ok",vdisk="a"}`, 0},
		{`ovs_vdisk_dtl_state{state="degraded",vdisk="a"}`, 0},
		{`ovs_backend_objects`, 10},
		{`ovs_backend_degraded_objects`, 2},
		{`ovs_backend_unavailable_objects`, 1},
		{`ovs_backend_asds_up`, 2},
		{`ovs_backend_maintenance_running{task="repair"}`, 1},
		{`ovs_backend_maintenance_running{task="scrub"}`, 0},
		{`ovs_backend_maintenance_done`, 4},
		{`ovs_backend_maintenance_total`, 9},
		{`ovs_backend_objects_repaired_total`, 6},
		{`ovs_asd_up{asd="asd1",node="n1"}`, 1},
		{`ovs_asd_up{asd="asd2",node="n1"}`, 0},
		{`ovs_asd_used_bytes{asd="asd1",node="n1"}`, 100},
		{`ovs_asd_free_bytes{asd="asd1",node="n1"}`, 900},
		{`ovs_arakoon_members`, 2},
		{`ovs_arakoon_up{node="n2"}`, 1},
		{`ovs_arakoon_leader{node="n1"}`, 1},
		{`ovs_arakoon_leader{node="n2"}`, 0},
		{`ovs_arakoon_term{node="n1"}`, 4},
		{`ovs_arakoon_applied_index{node="n1"}`, 120},
		{`ovs_arakoon_applied_index{node="n2"}`, 118},
	} {
		v, ok := got[tc.series]
		if !ok {
			t.Errorf("%s missing", tc.series)
			continue
		}
		if v != tc.want {
			t.Errorf("%s = %v, want %v", tc.series, v, tc.want)
		}
	}
	if _, ok := got[`ovs_vdisk_dtl_state{state="ok",vdisk="broken"}`]; ok {
		t.Errorf("a vdisk without a DTL state has dtl_state series")
	}
}

// TestCollectorSourceFailure: a source that fails is left out; the
// others are still there.
func TestCollectorSourceFailure(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		break_  func(*fakeVDisks, *fakeBackend, *fakeArakoon)
		absent  []string
		present []string
	}{
		{"vdisk list", func(v *fakeVDisks, _ *fakeBackend, _ *fakeArakoon) { v.listErr = boom },
			[]string{`ovs_vdisk_write_buffer_bytes{vdisk="a"}`},
			// The I/O statistics need no list.
			[]string{`ovs_vdisk_ops_total{op="write",vdisk="a"}`, `ovs_backend_objects`, `ovs_asd_up{asd="asd1",node="n1"}`, `ovs_arakoon_term{node="n1"}`}},
		{"backend status", func(_ *fakeVDisks, b *fakeBackend, _ *fakeArakoon) { b.statusErr = boom },
			[]string{`ovs_backend_objects`, `ovs_backend_degraded_objects`},
			[]string{`ovs_vdisk_ops_total{op="write",vdisk="a"}`, `ovs_asd_up{asd="asd1",node="n1"}`, `ovs_arakoon_term{node="n1"}`}},
		{"asd list", func(_ *fakeVDisks, b *fakeBackend, _ *fakeArakoon) { b.asdErr = boom },
			[]string{`ovs_asd_up{asd="asd1",node="n1"}`},
			[]string{`ovs_backend_objects`, `ovs_arakoon_term{node="n1"}`}},
		{"arakoon master", func(_ *fakeVDisks, _ *fakeBackend, a *fakeArakoon) { a.masterErr = boom },
			[]string{`ovs_arakoon_term{node="n1"}`, `ovs_arakoon_members`},
			[]string{`ovs_vdisk_ops_total{op="write",vdisk="a"}`, `ovs_backend_objects`, `ovs_asd_up{asd="asd1",node="n1"}`}},
		{"arakoon member", func(_ *fakeVDisks, _ *fakeBackend, a *fakeArakoon) { delete(a.nodes, "n2") },
			[]string{`ovs_arakoon_term{node="n2"}`, `ovs_arakoon_leader{node="n2"}`},
			[]string{`ovs_arakoon_up{node="n2"}`, `ovs_arakoon_term{node="n1"}`, `ovs_arakoon_leader{node="n1"}`}},
		{"arakoon member hangs", func(_ *fakeVDisks, _ *fakeBackend, a *fakeArakoon) { a.hang = map[string]bool{"n2": true} },
			[]string{`ovs_arakoon_term{node="n2"}`},
			[]string{`ovs_arakoon_up{node="n2"}`, `ovs_arakoon_term{node="n1"}`, `ovs_backend_objects`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vd, be, ar := fullSources()
			tc.break_(vd, be, ar)
			got := gather(t, New(Sources{VDisks: vd, Backend: be, Arakoon: ar, Logger: quiet(), Timeout: 100 * time.Millisecond}))
			for _, s := range tc.absent {
				if _, ok := got[s]; ok {
					t.Errorf("%s present", s)
				}
			}
			for _, s := range tc.present {
				if _, ok := got[s]; !ok {
					t.Errorf("%s missing", s)
				}
			}
			if v, ok := got[`ovs_arakoon_up{node="n2"}`]; ok && strings.HasPrefix(tc.name, "arakoon member") && v != 0 {
				t.Errorf("arakoon n2 up = %v with n2 not answering", v)
			}
		})
	}
}

// TestCollectorNilSources: a node without an erasure-coded backend (the
// local-directory one) has no backend metrics and no errors.
func TestCollectorNilSources(t *testing.T) {
	vd, _, _ := fullSources()
	got := gather(t, New(Sources{VDisks: vd, Logger: quiet()}))
	if _, ok := got[`ovs_vdisk_ops_total{op="write",vdisk="a"}`]; !ok {
		t.Fatal("vdisk metrics missing")
	}
	for k := range got {
		if strings.HasPrefix(k, "ovs_backend_") || strings.HasPrefix(k, "ovs_asd_") || strings.HasPrefix(k, "ovs_arakoon_") {
			t.Fatalf("%s without its source", k)
		}
	}
}

// TestCollectorReusesBackendStatus: the backend's Status (a scan of every
// manifest) is read at most once per StatusMaxAge, however often
// Prometheus scrapes.
func TestCollectorReusesBackendStatus(t *testing.T) {
	_, be, _ := fullSources()
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c := New(Sources{Backend: be, Logger: quiet(), StatusMaxAge: 10 * time.Second, Now: func() time.Time { return now }})
	for _, step := range []struct {
		advance time.Duration
		objects int64
		calls   int
		want    float64
	}{
		{0, 10, 1, 10},
		{5 * time.Second, 11, 1, 10}, // reused
		{6 * time.Second, 12, 2, 12}, // 11s old: read again
		{0, 13, 2, 12},
	} {
		now = now.Add(step.advance)
		be.status.Objects = step.objects
		got := gather(t, c)
		if be.calls != step.calls || got["ovs_backend_objects"] != step.want {
			t.Fatalf("after %v: %d Status calls, objects %v; want %d, %v", step.advance, be.calls, got["ovs_backend_objects"], step.calls, step.want)
		}
	}
	// A failed Status is not reused.
	now = now.Add(time.Minute)
	be.statusErr = errors.New("boom")
	if got := gather(t, c); got["ovs_backend_objects"] != 0 {
		t.Fatalf("objects %v from a failed Status", got["ovs_backend_objects"])
	}
	be.statusErr = nil
	if got := gather(t, c); got["ovs_backend_objects"] != 13 {
		t.Fatalf("objects %v after Status recovered", got["ovs_backend_objects"])
	}
}

// TestHandler: the handler answers a plain GET (what Prometheus sends)
// with the text format, runtime metrics included.
func TestHandler(t *testing.T) {
	vd, be, ar := fullSources()
	srv := httptest.NewServer(New(Sources{VDisks: vd, Backend: be, Arakoon: ar, Logger: quiet()}).Handler())
	defer srv.Close()
	for i := range 2 { // a registry per scrape: the second must work too
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
		req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape %d: %s: %s", i, resp.Status, body)
		}
		for _, want := range []string{
			`ovs_vdisk_ops_total{op="write",vdisk="a"} 3`,
			`ovs_asd_up{asd="asd1",node="n1"} 1`,
			`ovs_arakoon_term{node="n1"} 4`,
			"go_goroutines ",
			"process_open_fds ",
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("scrape %d: %q missing from\n%s", i, want, body)
			}
		}
	}
}
