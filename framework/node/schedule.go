package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/framework/schedule"
	"github.com/ovs-storage/ovs/volumedriver"
)

// The node runs one schedule.Scheduler over its volume driver: it takes
// the automatic snapshots of the vdisks this node owns, prunes them, and
// scrubs them on schedule. The driver's own interval scrubber is off (the
// schedule decides when a scrub runs); its garbage-ratio trigger stays,
// for the overwrites between scheduled scrubs.

// defaultScrubEvery is the scrub period of vdisks whose vpool sets none:
// the node's scrub_interval (default 1h, as the driver had it; negative:
// none).
func defaultScrubEvery(cfg Config) time.Duration {
	switch d := cfg.Driver.ScrubInterval; {
	case d < 0:
		return 0
	case d == 0:
		return time.Hour
	default:
		return d
	}
}

// scheduleSource is the Scheduler's view of the model: the vdisks this
// node owns, with their plans and last scheduled scrubs.
type scheduleSource struct {
	store        *model.Store
	self         string
	defaultScrub time.Duration
	log          *slog.Logger
	// bad remembers the vdisks whose schedule was logged as unreadable.
	bad map[string]string
}

var _ schedule.Source = (*scheduleSource)(nil)

func (s *scheduleSource) Owned(ctx context.Context) ([]schedule.Target, error) {
	c, err := s.store.Cluster(ctx)
	if err != nil {
		return nil, err
	}
	all, err := s.store.VDisks(ctx)
	if err != nil {
		return nil, err
	}
	scrubbed, err := s.store.ScrubbedAll(ctx)
	if err != nil {
		return nil, err
	}
	var out []schedule.Target
	for _, ov := range all {
		if ov.OwnerRaw == nil || ov.Owner.Node != s.self || ov.State != model.VDiskReady {
			continue
		}
		p, err := schedule.Resolve(c.VPool.Schedule, ov.Schedule, s.defaultScrub)
		if err != nil {
			// The API checks what it stores: this is a record from
			// elsewhere. The vdisk waits for a fix; the others go on.
			if s.bad[ov.Name] != err.Error() {
				s.bad[ov.Name] = err.Error()
				s.log.Error("the schedule of a vdisk cannot be read; it is skipped", "vdisk", ov.Name, "err", err)
			}
			continue
		}
		delete(s.bad, ov.Name)
		out = append(out, schedule.Target{Name: ov.Name, Plan: p, Scrubbed: scrubbed[ov.ID], Ref: ov})
	}
	return out, nil
}

func (s *scheduleSource) SetScrubbed(ctx context.Context, t schedule.Target, at time.Time) error {
	ov, ok := t.Ref.(model.OwnedVDisk)
	if !ok {
		return fmt.Errorf("scrub of %s: no owner record", t.Name)
	}
	return s.store.SetScrubbed(ctx, ov.ID, ov.OwnerRaw, at)
}

// startScheduler runs the node's scheduler over drv until ctx is done or
// the returned stop is called; stop returns once it has stopped, so that
// no snapshot or scrub is under way when the driver closes.
func startScheduler(ctx context.Context, cfg Config, store *model.Store, drv *volumedriver.Driver, log *slog.Logger) (stop func()) {
	log = log.With("component", "schedule")
	src := &scheduleSource{store: store, self: cfg.ID, defaultScrub: defaultScrubEvery(cfg), log: log, bad: map[string]string{}}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		schedule.New(drv, src, schedule.Options{Logger: log, Tick: cfg.Intervals.Schedule}).Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// schedules serves the schedule routes of the REST API from the model;
// any node answers for every vdisk.
type schedules struct {
	store        *model.Store
	defaultScrub time.Duration
}

var _ api.Schedules = (*schedules)(nil)

func (s *schedules) VPoolSchedule(ctx context.Context) (api.ScheduleInfo, error) {
	c, err := s.store.Cluster(ctx)
	if err != nil {
		return api.ScheduleInfo{}, err
	}
	p, err := schedule.Resolve(c.VPool.Schedule, model.Schedule{}, s.defaultScrub)
	if err != nil {
		return api.ScheduleInfo{}, fmt.Errorf("the vpool's schedule: %w", err)
	}
	return api.ScheduleInfo{Set: c.VPool.Schedule, Effective: p.Schedule()}, nil
}

func (s *schedules) SetVPoolSchedule(ctx context.Context, sch model.Schedule) (api.ScheduleInfo, error) {
	if err := s.store.SetVPoolSchedule(ctx, sch); err != nil {
		return api.ScheduleInfo{}, err
	}
	return s.VPoolSchedule(ctx)
}

func (s *schedules) VDiskSchedule(ctx context.Context, name string) (api.ScheduleInfo, error) {
	c, err := s.store.Cluster(ctx)
	if err != nil {
		return api.ScheduleInfo{}, err
	}
	ov, err := s.store.VDisk(ctx, name)
	if errors.Is(err, model.ErrNotFound) {
		return api.ScheduleInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	if err != nil {
		return api.ScheduleInfo{}, err
	}
	p, err := schedule.Resolve(c.VPool.Schedule, ov.Schedule, s.defaultScrub)
	if err != nil {
		return api.ScheduleInfo{}, fmt.Errorf("the schedule of vdisk %s: %w", name, err)
	}
	vpool := c.VPool.Schedule
	return api.ScheduleInfo{VDisk: name, Set: ov.Schedule, VPool: &vpool, Effective: p.Schedule()}, nil
}

func (s *schedules) SetVDiskSchedule(ctx context.Context, name string, sch model.Schedule) (api.ScheduleInfo, error) {
	err := s.store.SetVDiskSchedule(ctx, name, sch)
	if errors.Is(err, model.ErrNotFound) {
		return api.ScheduleInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	if err != nil {
		return api.ScheduleInfo{}, err
	}
	return s.VDiskSchedule(ctx, name)
}
