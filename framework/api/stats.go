package api

import (
	"context"
	"net/http"
	"time"

	"github.com/ovs-storage/ovs/volumedriver"
)

// StatsResponse is the body of GET /api/v1/stats: the cumulative I/O
// counters of the vdisks this node serves, at Time. A reader computes
// rates (IOPS, throughput) from two samples; a counter smaller than in the
// previous sample means the vdisk was brought up again (moved, restarted)
// and its counters restarted from zero.
type StatsResponse struct {
	Time   time.Time             `json:"time"` // RFC 3339 with nanoseconds
	VDisks map[string]VDiskStats `json:"vdisks"`
}

// VDiskStats are one vdisk's cumulative I/O counters (trim includes
// write-zeroes).
type VDiskStats struct {
	ReadOps    uint64 `json:"read_ops"`
	WriteOps   uint64 `json:"write_ops"`
	FlushOps   uint64 `json:"flush_ops"`
	TrimOps    uint64 `json:"trim_ops"`
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
}

// StatsFromIO condenses the driver's I/O statistics to the API's.
func StatsFromIO(now time.Time, io map[string]volumedriver.IOStats) StatsResponse {
	out := StatsResponse{Time: now.UTC(), VDisks: make(map[string]VDiskStats, len(io))}
	for name, s := range io {
		out.VDisks[name] = VDiskStats{
			ReadOps: s.Read.Ops, WriteOps: s.Write.Ops, FlushOps: s.Flush.Ops, TrimOps: s.Trim.Ops,
			ReadBytes: s.Read.Bytes, WriteBytes: s.Write.Bytes,
		}
	}
	return out
}

// stats serves GET /api/v1/stats.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	if s.ioStats == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server does not report I/O statistics"}, "")
		return
	}
	s.writeJSON(w, http.StatusOK, StatsFromIO(time.Now(), s.ioStats()))
}

// metrics serves GET /metrics: Prometheus's plain GET passes the guard
// (no Origin, no body, not mutating, so no token).
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.metricsHandler == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server does not serve metrics"}, "")
		return
	}
	s.metricsHandler.ServeHTTP(w, r)
}

// Stats returns the node's cumulative per-vdisk I/O counters.
func (c *Client) Stats(ctx context.Context) (StatsResponse, error) {
	var out StatsResponse
	err := c.do(ctx, http.MethodGet, "/api/v1/stats", nil, nil, &out)
	return out, err
}
