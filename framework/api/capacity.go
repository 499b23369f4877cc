package api

import (
	"context"
	"net/http"
)

// BackendSpace is the backend's space as the node reports it for
// GET /api/v1/capacity (Options.Capacity).
type BackendSpace struct {
	// Backend is the kind of backend: "ec" or "local".
	Backend string
	// RawTotal and RawFree are the bytes of the backend's disks (the ASDs'
	// capacity, or the filesystem of the local-directory backend).
	RawTotal, RawFree int64
	// Efficiency is the share of raw space that holds data: k/(k+m) of
	// the erasure-coded backend's default preset, 1 for a local directory.
	Efficiency float64
}

// CapacityResponse is the body of GET /api/v1/capacity: what a cloud's
// scheduler (Cinder's get_volume_stats) needs to place volumes. It is a
// read-only call, so it needs no token.
type CapacityResponse struct {
	Backend string `json:"backend"`
	// TotalBytes and FreeBytes are data bytes: the raw figures times the
	// efficiency of the default preset.
	TotalBytes int64 `json:"total_bytes"`
	FreeBytes  int64 `json:"free_bytes"`
	// RawTotalBytes and RawFreeBytes are the disks' bytes.
	RawTotalBytes int64   `json:"raw_total_bytes"`
	RawFreeBytes  int64   `json:"raw_free_bytes"`
	Efficiency    float64 `json:"efficiency"`
	// ProvisionedBytes is the sum of the vdisks' sizes (they are thin),
	// VDisks how many there are.
	ProvisionedBytes int64 `json:"provisioned_bytes"`
	VDisks           int   `json:"vdisks"`
}

func (s *Server) capacity(w http.ResponseWriter, r *http.Request) {
	if s.capacityFn == nil {
		s.writeError(w, r, &httpError{http.StatusNotFound, CodeUnknownRoute, "this server does not report its backend's capacity"}, "")
		return
	}
	space, err := s.capacityFn(r.Context())
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	infos, err := s.vdisks.List(r.Context())
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	eff := space.Efficiency
	if eff <= 0 || eff > 1 {
		eff = 1
	}
	resp := CapacityResponse{
		Backend:       space.Backend,
		TotalBytes:    int64(float64(space.RawTotal) * eff),
		FreeBytes:     int64(float64(space.RawFree) * eff),
		RawTotalBytes: space.RawTotal,
		RawFreeBytes:  space.RawFree,
		Efficiency:    eff,
		VDisks:        len(infos),
	}
	for _, in := range infos {
		resp.ProvisionedBytes += in.Size
	}
	s.writeJSON(w, http.StatusOK, resp)
}

// Capacity returns the backend's capacity and the vdisks' provisioned
// size (GET /api/v1/capacity).
func (c *Client) Capacity(ctx context.Context) (CapacityResponse, error) {
	var resp CapacityResponse
	err := c.do(ctx, http.MethodGet, "/api/v1/capacity", nil, nil, &resp)
	return resp, err
}
