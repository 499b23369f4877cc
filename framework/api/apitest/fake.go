// Package apitest provides FakeVDisks, an in-memory test double of
// api.VDisks for tests of the API, its client and the CLI.
package apitest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/volumedriver"
)

// Call records one call to FakeVDisks.
type Call struct {
	Method string // "Create", "List", "Info", "Delete", "Resize", "Sync"
	Name   string
	Size   int64
	Opts   volumedriver.CreateOptions
	Force  bool
}

// FakeVDisks is an in-memory test double of api.VDisks that keeps the
// driver's error contract: ErrExists for a taken name, ErrNotFound for an
// unknown one, ErrInvalidArgument for a bad size or a shrink, ErrBusy when
// deleting a vdisk with clients without force. It is safe for concurrent
// use. The zero value is not usable; call NewFakeVDisks.
type FakeVDisks struct {
	mu     sync.Mutex
	disks  map[string]*volumedriver.VolumeInfo
	errs   map[string]error
	calls  []Call
	nextID int
	now    func() time.Time
}

// NewFakeVDisks returns an empty FakeVDisks.
func NewFakeVDisks() *FakeVDisks {
	return &FakeVDisks{
		disks: map[string]*volumedriver.VolumeInfo{},
		errs:  map[string]error{},
		now:   func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) },
	}
}

// SetClients sets how many frontend clients a vdisk has open.
func (f *FakeVDisks) SetClients(name string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.disks[name]; ok {
		d.Clients = n
	}
}

// SetPending sets the written and pending-upload byte counts of a vdisk.
// Sync resets pending to 0.
func (f *FakeVDisks) SetPending(name string, written, pending int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d, ok := f.disks[name]; ok {
		d.WrittenBytes, d.PendingUploadBytes, d.WriteBufferBytes = written, pending, pending
	}
}

// FailWith makes every later call of method (e.g. "List") return err;
// a nil err clears it.
func (f *FakeVDisks) FailWith(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.errs, method)
		return
	}
	f.errs[method] = err
}

// Calls returns the calls made so far.
func (f *FakeVDisks) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// begin records a call and returns the injected error for it, if any.
// The caller holds f.mu.
func (f *FakeVDisks) begin(ctx context.Context, c Call) error {
	f.calls = append(f.calls, c)
	if err := ctx.Err(); err != nil {
		return err
	}
	return f.errs[c.Method]
}

func (f *FakeVDisks) lookup(name string) (*volumedriver.VolumeInfo, error) {
	d, ok := f.disks[name]
	if !ok {
		return nil, failf(volumedriver.ErrNotFound, "vdisk %q not found", name)
	}
	return d, nil
}

// Create implements api.VDisks.
func (f *FakeVDisks) Create(ctx context.Context, name string, size int64, opts volumedriver.CreateOptions) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Create", Name: name, Size: size, Opts: opts}); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrInvalidArgument, "invalid vdisk name %q", name)
	}
	if _, ok := f.disks[name]; ok {
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrExists, "vdisk %q already exists", name)
	}
	cluster, mult := opts.ClusterSize, opts.SCOMultiplier
	if cluster == 0 {
		cluster = 4096
	}
	if mult == 0 {
		mult = 1024
	}
	switch {
	case cluster < 4096 || cluster > 65536 || cluster&(cluster-1) != 0:
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrInvalidArgument, "cluster size %d is not a power of two from 4 KiB to 64 KiB", cluster)
	case size <= 0 || size%int64(cluster) != 0:
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrInvalidArgument, "size %d is not a positive multiple of the cluster size %d", size, cluster)
	}
	f.nextID++
	d := &volumedriver.VolumeInfo{
		Name:        name,
		ID:          fmt.Sprintf("00000000-0000-0000-0000-%012d", f.nextID),
		Size:        size,
		ClusterSize: cluster,
		SCOSize:     int64(cluster) * int64(mult),
		CreatedAt:   f.now(),
	}
	f.disks[name] = d
	return *d, nil
}

// List implements api.VDisks. The order is deliberately not by name.
func (f *FakeVDisks) List(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "List"}); err != nil {
		return nil, err
	}
	var out []volumedriver.VolumeInfo // nil when empty, as a driver may return
	for _, d := range f.disks {
		out = append(out, *d)
	}
	return out, nil
}

// Info implements api.VDisks.
func (f *FakeVDisks) Info(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Info", Name: name}); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	d, err := f.lookup(name)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	return *d, nil
}

// Delete implements api.VDisks.
func (f *FakeVDisks) Delete(ctx context.Context, name string, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Delete", Name: name, Force: force}); err != nil {
		return err
	}
	d, err := f.lookup(name)
	if err != nil {
		return err
	}
	if d.Clients > 0 && !force {
		return failf(volumedriver.ErrBusy, "vdisk %q is in use by %d client(s)", name, d.Clients)
	}
	delete(f.disks, name)
	return nil
}

// Resize implements api.VDisks.
func (f *FakeVDisks) Resize(ctx context.Context, name string, size int64) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Resize", Name: name, Size: size}); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	d, err := f.lookup(name)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	switch {
	case size < d.Size:
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrInvalidArgument, "cannot shrink vdisk %q from %d to %d bytes", name, d.Size, size)
	case size%int64(d.ClusterSize) != 0:
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrInvalidArgument, "size %d is not a multiple of the cluster size %d", size, d.ClusterSize)
	}
	d.Size = size
	return *d, nil
}

// Sync implements api.VDisks: it marks all pending data uploaded.
func (f *FakeVDisks) Sync(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Sync", Name: name}); err != nil {
		return err
	}
	d, err := f.lookup(name)
	if err != nil {
		return err
	}
	d.PendingUploadBytes = 0
	return nil
}

// fakeError is an error with a clean message that matches a driver sentinel.
type fakeError struct {
	msg      string
	sentinel error
}

func (e *fakeError) Error() string { return e.msg }
func (e *fakeError) Unwrap() error { return e.sentinel }

func failf(sentinel error, format string, args ...any) error {
	return &fakeError{msg: fmt.Sprintf(format, args...), sentinel: sentinel}
}
