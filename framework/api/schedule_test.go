package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/framework/schedule"
	"github.com/ovs-storage/ovs/volumedriver"
)

// memSchedules keeps schedules in memory, for vdisk "a" only.
type memSchedules struct {
	mu    sync.Mutex
	vpool model.Schedule
	a     model.Schedule
}

func (m *memSchedules) info(vdisk string) (ScheduleInfo, error) {
	vp := m.vpool
	set := vp
	if vdisk != "" {
		set = m.a
	}
	p, err := schedule.Resolve(vp, set, 0)
	if err != nil {
		return ScheduleInfo{}, err
	}
	in := ScheduleInfo{VDisk: vdisk, Set: set, Effective: p.Schedule()}
	if vdisk != "" {
		in.VPool = &vp
	}
	return in, nil
}

func (m *memSchedules) VPoolSchedule(ctx context.Context) (ScheduleInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.info("")
}

func (m *memSchedules) SetVPoolSchedule(ctx context.Context, s model.Schedule) (ScheduleInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vpool = s
	return m.info("")
}

func (m *memSchedules) VDiskSchedule(ctx context.Context, name string) (ScheduleInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if name != "a" {
		return ScheduleInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	return m.info(name)
}

func (m *memSchedules) SetVDiskSchedule(ctx context.Context, name string, s model.Schedule) (ScheduleInfo, error) {
	m.mu.Lock()
	if name == "a" {
		m.a = s
	}
	m.mu.Unlock()
	return m.VDiskSchedule(ctx, name)
}

func TestScheduleRoutes(t *testing.T) {
	ctx := context.Background()
	srv := NewServer(apitest.NewFakeVDisks(), Options{Schedules: &memSchedules{}})
	srv.SetReady(true)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c := NewClient(hs.URL, nil)

	in, err := c.Schedule(ctx, "")
	if err != nil || in.Effective != (model.Schedule{Snapshots: "off", Retention: "1h:24h,24h:7d,7d:28d", Scrub: "off"}) {
		t.Fatalf("default vpool schedule: %+v %v", in, err)
	}
	if in, err = c.SetSchedule(ctx, "", model.Schedule{Snapshots: "daily"}); err != nil || in.Effective.Snapshots != "daily" {
		t.Fatalf("set the vpool's: %+v %v", in, err)
	}
	in, err = c.SetSchedule(ctx, "a", model.Schedule{Retention: "1h:6h"})
	if err != nil || in.VDisk != "a" || in.VPool == nil || in.VPool.Snapshots != "daily" ||
		in.Effective != (model.Schedule{Snapshots: "daily", Retention: "1h:6h", Scrub: "off"}) {
		t.Fatalf("set a's: %+v %v", in, err)
	}

	tests := []struct {
		name  string
		vdisk string
		s     model.Schedule
		want  error
		code  string
	}{
		{"bad period", "", model.Schedule{Snapshots: "sometimes"}, volumedriver.ErrInvalidArgument, CodeInvalidArgument},
		{"bad rule", "a", model.Schedule{Retention: "1h"}, volumedriver.ErrInvalidArgument, CodeInvalidArgument},
		{"too short", "a", model.Schedule{Scrub: "1s"}, volumedriver.ErrInvalidArgument, CodeInvalidArgument},
		{"unknown vdisk", "b", model.Schedule{Scrub: "1h"}, volumedriver.ErrNotFound, CodeNotFound},
	}
	for _, tc := range tests {
		_, err := c.SetSchedule(ctx, tc.vdisk, tc.s)
		var ae *APIError
		if !errors.Is(err, tc.want) || !errors.As(err, &ae) || ae.Code != tc.code {
			t.Errorf("%s: %v, want %v (%s)", tc.name, err, tc.want, tc.code)
		}
	}
	if in, err := c.Schedule(ctx, "a"); err != nil || in.Set != (model.Schedule{Retention: "1h:6h"}) {
		t.Fatalf("a's schedule changed by refused calls: %+v %v", in, err)
	}

	// A server without schedules has no such routes.
	bare := httptest.NewServer(NewServer(apitest.NewFakeVDisks(), Options{}).Handler())
	defer bare.Close()
	_, err = NewClient(bare.URL, nil).Schedule(ctx, "")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != CodeUnknownRoute {
		t.Fatalf("schedule on a server without schedules: %v", err)
	}
}
