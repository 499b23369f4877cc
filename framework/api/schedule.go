package api

import (
	"context"
	"net/http"

	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/framework/schedule"
)

// Schedule routes (Options.Schedules; 404 without it):
//
//	GET /api/v1/schedule                 200 ScheduleInfo of the vpool
//	PUT /api/v1/schedule                 200 ScheduleInfo; body model.Schedule (replaces it)
//	GET /api/v1/vdisks/{name}/schedule   200 ScheduleInfo of the vdisk
//	PUT /api/v1/vdisks/{name}/schedule   200 ScheduleInfo; body model.Schedule (replaces its override)
//
// A PUT replaces the whole schedule: a field left out ("") is not set
// (the default for the vpool, the vpool's for a vdisk). Fields are
// checked with schedule.Check; a bad one is 400 invalid_argument.

// Schedules is what the API serves about automatic snapshots and scrubs.
type Schedules interface {
	VPoolSchedule(ctx context.Context) (ScheduleInfo, error)
	SetVPoolSchedule(ctx context.Context, s model.Schedule) (ScheduleInfo, error)
	// VDiskSchedule fails with an error matching
	// volumedriver.ErrNotFound for an unknown vdisk.
	VDiskSchedule(ctx context.Context, name string) (ScheduleInfo, error)
	SetVDiskSchedule(ctx context.Context, name string, s model.Schedule) (ScheduleInfo, error)
}

// ScheduleInfo is the answer of the schedule routes.
type ScheduleInfo struct {
	// VDisk is the vdisk's name ("" for the vpool's schedule).
	VDisk string `json:"vdisk,omitempty"`
	// Set is what was set: the vpool's schedule, or the vdisk's
	// override. An empty field is not set.
	Set model.Schedule `json:"set"`
	// VPool is the vpool's schedule (for a vdisk).
	VPool *model.Schedule `json:"vpool,omitempty"`
	// Effective is what the scheduler applies, every field set (for the
	// vpool: to a vdisk that overrides nothing).
	Effective model.Schedule `json:"effective"`
}

func (s *Server) scheduleRoutes() {
	s.mux.HandleFunc("GET /api/v1/schedule", s.getSchedule)
	s.mux.HandleFunc("PUT /api/v1/schedule", s.putSchedule)
	s.mux.HandleFunc("GET /api/v1/vdisks/{name}/schedule", s.getSchedule)
	s.mux.HandleFunc("PUT /api/v1/vdisks/{name}/schedule", s.putSchedule)
}

var errNoSchedules = &httpError{http.StatusNotFound, CodeUnknownRoute, "this server has no schedules"}

func (s *Server) getSchedule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name") // "": the vpool's
	if s.schedules == nil {
		s.writeError(w, r, errNoSchedules, "")
		return
	}
	var in ScheduleInfo
	var err error
	if name == "" {
		in, err = s.schedules.VPoolSchedule(r.Context())
	} else {
		in, err = s.schedules.VDiskSchedule(r.Context(), name)
	}
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, in)
}

func (s *Server) putSchedule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.schedules == nil {
		s.writeError(w, r, errNoSchedules, "")
		return
	}
	var req model.Schedule
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if err := schedule.Check(req); err != nil {
		s.writeError(w, r, badRequest("schedule: %v", err), name)
		return
	}
	var in ScheduleInfo
	var err error
	if name == "" {
		in, err = s.schedules.SetVPoolSchedule(r.Context(), req)
	} else {
		in, err = s.schedules.SetVDiskSchedule(r.Context(), name, req)
	}
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, in)
}

// --- client

func schedulePath(vdisk string) string {
	if vdisk == "" {
		return "/api/v1/schedule"
	}
	return vdiskPath(vdisk) + "/schedule"
}

// Schedule returns vdisk's schedule, or the vpool's for vdisk "".
func (c *Client) Schedule(ctx context.Context, vdisk string) (ScheduleInfo, error) {
	var out ScheduleInfo
	err := c.do(ctx, http.MethodGet, schedulePath(vdisk), nil, nil, &out)
	return out, err
}

// SetSchedule replaces vdisk's schedule override, or the vpool's
// schedule for vdisk "".
func (c *Client) SetSchedule(ctx context.Context, vdisk string, s model.Schedule) (ScheduleInfo, error) {
	var out ScheduleInfo
	err := c.do(ctx, http.MethodPut, schedulePath(vdisk), nil, s, &out)
	return out, err
}
