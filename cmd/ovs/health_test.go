package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/framework/health"
)

// startHealthAPI serves the REST API with health checks that report
// statuses, one check per status.
func startHealthAPI(t *testing.T, statuses ...health.Status) string {
	t.Helper()
	var checks []health.Check
	for i, st := range statuses {
		checks = append(checks, health.Check{Name: "check-" + string(rune('a'+i)), Run: func(context.Context) health.Result {
			return health.Result{Status: st, Message: "it is " + st.String() + "\nreally"}
		}})
	}
	r := &health.Runner{Checks: checks, Node: "n1"}
	s := api.NewServer(apitest.NewFakeVDisks(), api.Options{Logger: slog.New(slog.DiscardHandler), HealthChecks: r.Run})
	s.SetReady(true)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts.URL
}

func TestCLIHealth(t *testing.T) {
	for _, tc := range []struct {
		name     string
		statuses []health.Status
		wantCode int
		has      []string
	}{
		{"ok", []health.Status{health.OK, health.OK}, 0, []string{"check-a  ok", "it is ok really", "OK (node n1)"}},
		{"warning", []health.Status{health.OK, health.Warning}, 1, []string{"check-b  warning", "WARNING (node n1)"}},
		{"error", []health.Status{health.Error, health.Warning}, 2, []string{"check-a  error", "ERROR (node n1)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := startHealthAPI(t, tc.statuses...)
			stdout, stderr, code := runOVS("health", "--api", url)
			if code != tc.wantCode || stderr != "" {
				t.Fatalf("exit %d (want %d), stderr %q, stdout:\n%s", code, tc.wantCode, stderr, stdout)
			}
			if !strings.HasPrefix(stdout, "CHECK") {
				t.Errorf("no header:\n%s", stdout)
			}
			for _, h := range tc.has {
				if !strings.Contains(stdout, h) {
					t.Errorf("stdout lacks %q:\n%s", h, stdout)
				}
			}
			stdout, _, code = runOVS("health", "-o", "json", "--api", url)
			var rep health.Report
			if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != tc.wantCode {
				t.Fatalf("-o json: exit %d, %v:\n%s", code, err, stdout)
			}
			if rep.Status.ExitCode() != tc.wantCode || len(rep.Checks) != len(tc.statuses) {
				t.Errorf("-o json: %+v", rep)
			}
		})
	}
}

func TestCLIHealthUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	stdout, stderr, code := runOVS("health", "--api", "http://"+addr)
	if code != 2 || stdout != "" || !strings.Contains(stderr, "cannot reach the API at http://"+addr) {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestCLIHealthNoChecks(t *testing.T) {
	url, _ := startAPI(t) // an API without health checks: 404
	_, stderr, code := runOVS("health", "--api", url)
	if code != 2 || !strings.Contains(stderr, "could not run the health checks") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
