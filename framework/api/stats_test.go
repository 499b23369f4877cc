package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/volumedriver"
)

func statsServer(t *testing.T, withSources bool) *httptest.Server {
	t.Helper()
	tokens := NewTokenFile(filepath.Join(t.TempDir(), TokenFileName))
	if _, err := CreateToken(tokens.path); err != nil {
		t.Fatal(err)
	}
	// A token is required on mutating calls (the API beyond loopback):
	// scrapes and stats reads must not need one.
	opts := Options{Logger: slog.New(slog.DiscardHandler), RequireToken: true, Tokens: tokens}
	if withSources {
		var st volumedriver.IOStats
		st.Read.Ops, st.Read.Bytes = 2, 8192
		st.Write.Ops, st.Write.Bytes = 5, 20480
		st.Flush.Ops, st.Trim.Ops, st.Trim.Bytes = 1, 3, 1<<20
		opts.IOStats = func() map[string]volumedriver.IOStats { return map[string]volumedriver.IOStats{"a": st} }
		opts.Metrics = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			io.WriteString(w, "ovs_vdisk_ops_total{op=\"write\",vdisk=\"a\"} 5\n")
		})
	}
	srv := httptest.NewServer(NewServer(apitest.NewFakeVDisks(), opts).Handler())
	t.Cleanup(srv.Close)
	return srv
}

// TestMetricsPassesTheGuard: Prometheus's scrape (a plain GET with its own
// Accept and scrape-timeout headers, no token, no Origin) gets the
// metrics handler's answer.
func TestMetricsPassesTheGuard(t *testing.T) {
	srv := statsServer(t, true)
	for _, tc := range []struct {
		name       string
		method     string
		header     map[string]string
		wantStatus int
	}{
		{"prometheus scrape", http.MethodGet, map[string]string{
			"User-Agent":                          "Prometheus/2.53.0",
			"Accept":                              "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
			"Accept-Encoding":                     "gzip",
			"X-Prometheus-Scrape-Timeout-Seconds": "10",
		}, http.StatusOK},
		{"curl", http.MethodGet, nil, http.StatusOK},
		{"head", http.MethodHead, nil, http.StatusOK},
		{"post", http.MethodPost, map[string]string{"Content-Type": "application/json"}, http.StatusUnauthorized}, // mutating: token first
		{"cross-site browser", http.MethodGet, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+"/metrics", nil)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("%s: %s", resp.Status, body)
			}
			if tc.wantStatus == http.StatusOK && tc.method == http.MethodGet && !strings.Contains(string(body), `ovs_vdisk_ops_total{op="write",vdisk="a"} 5`) {
				t.Fatalf("body: %s", body)
			}
		})
	}
}

// TestStatsShape: GET /api/v1/stats has exactly the shape the dashboard
// reads, and the client decodes it.
func TestStatsShape(t *testing.T) {
	srv := statsServer(t, true)
	before := time.Now()
	resp, err := http.Get(srv.URL + "/api/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", resp.Status, body)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if keys := sortedKeys(raw); strings.Join(keys, ",") != "time,vdisks" {
		t.Fatalf("top-level keys %v: %s", keys, body)
	}
	var ts string
	if err := json.Unmarshal(raw["time"], &ts); err != nil {
		t.Fatal(err)
	}
	if tm, err := time.Parse(time.RFC3339Nano, ts); err != nil || tm.Before(before.Add(-time.Second)) {
		t.Fatalf("time %q: %v", ts, err)
	}
	var vdisks map[string]map[string]uint64
	if err := json.Unmarshal(raw["vdisks"], &vdisks); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	want := map[string]uint64{"read_ops": 2, "write_ops": 5, "flush_ops": 1, "trim_ops": 3, "read_bytes": 8192, "write_bytes": 20480}
	if len(vdisks) != 1 || len(vdisks["a"]) != len(want) {
		t.Fatalf("vdisks: %s", raw["vdisks"])
	}
	for k, v := range want {
		if vdisks["a"][k] != v {
			t.Errorf("%s = %d, want %d", k, vdisks["a"][k], v)
		}
	}

	c := NewClient(srv.URL, nil)
	st, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.VDisks["a"].WriteOps != 5 || st.Time.IsZero() {
		t.Fatalf("client: %+v", st)
	}
}

func TestStatsAndMetricsWithoutSources(t *testing.T) {
	srv := statsServer(t, false)
	for _, p := range []string{"/metrics", "/api/v1/stats"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		var e ErrorResponse
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || err != nil || e.Code != CodeUnknownRoute {
			t.Fatalf("%s: %s %+v %v", p, resp.Status, e, err)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
