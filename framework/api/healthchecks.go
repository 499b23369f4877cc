package api

import (
	"context"
	"net/http"
	"time"

	"github.com/ovs-storage/ovs/framework/health"
)

// ClockResponse is the body of GET /api/v1/health/clock: the node's time,
// which the other nodes' clock-skew check compares with theirs.
type ClockResponse struct {
	Time time.Time `json:"time"`
}

// healthChecks serves GET /api/v1/health/checks: the report of every
// health check, always 200 (the report's status says how healthy; a
// monitoring tool reads it, `ovs health` turns it into its exit code).
// It is read-only, so it needs no token.
func (s *Server) healthChecks(w http.ResponseWriter, r *http.Request) {
	if s.healthChecksFn == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server runs no health checks"}, "")
		return
	}
	s.writeJSON(w, http.StatusOK, s.healthChecksFn(r.Context()))
}

// clock serves GET /api/v1/health/clock.
func (s *Server) clock(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, ClockResponse{Time: time.Now().UTC()})
}

// HealthChecks runs the server's health checks (GET
// /api/v1/health/checks).
func (c *Client) HealthChecks(ctx context.Context) (health.Report, error) {
	var rep health.Report
	err := c.do(ctx, http.MethodGet, "/api/v1/health/checks", nil, nil, &rep)
	return rep, err
}

// Clock returns the server's time (GET /api/v1/health/clock).
func (c *Client) Clock(ctx context.Context) (time.Time, error) {
	var resp ClockResponse
	err := c.do(ctx, http.MethodGet, "/api/v1/health/clock", nil, nil, &resp)
	return resp.Time, err
}
