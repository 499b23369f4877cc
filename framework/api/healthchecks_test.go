package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/framework/health"
)

func TestHealthChecks(t *testing.T) {
	report := health.Report{Status: health.Warning, Node: "n1", Time: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC),
		Checks: []health.CheckResult{
			{Name: "asds", Result: health.Result{Status: health.Warning, Message: "5 of 6 active ASDs up; down: asd-3",
				Details: map[string]any{"up": float64(5)}}},
			{Name: "arakoon", Result: health.Result{Status: health.OK, Message: "leader a"}},
		}}
	tests := []struct {
		name       string
		fn         func(context.Context) health.Report
		wantStatus int
	}{
		{name: "no health checks", wantStatus: http.StatusNotFound},
		{name: "a report", fn: func(context.Context) health.Report { return report }, wantStatus: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// RequireToken: the checks are read-only and need none.
			s := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				HealthChecks: tt.fn, RequireToken: true})
			s.SetReady(true)
			ts := httptest.NewServer(s.Handler())
			defer ts.Close()
			got, err := NewClient(ts.URL, nil).HealthChecks(context.Background())
			if tt.wantStatus != http.StatusOK {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Status != tt.wantStatus || ae.Code != CodeUnknownRoute {
					t.Fatalf("err = %v; want HTTP %d", err, tt.wantStatus)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != health.Warning || got.Node != "n1" || !got.Time.Equal(report.Time) || len(got.Checks) != 2 {
				t.Fatalf("report = %+v", got)
			}
			if c, _ := got.Check("asds"); c.Status != health.Warning || c.Message != report.Checks[0].Message || c.Details["up"] != float64(5) {
				t.Errorf("asds = %+v", c)
			}
		})
	}
}

func TestClock(t *testing.T) {
	s := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	before := time.Now()
	got, err := NewClient(ts.URL, nil).Clock(context.Background())
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if got.Before(before.Add(-time.Millisecond)) || got.After(after.Add(time.Millisecond)) {
		t.Fatalf("clock %v outside [%v, %v]", got, before, after)
	}
}
