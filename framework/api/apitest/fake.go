// Package apitest provides FakeVDisks, an in-memory test double of
// api.VDisks for tests of the API, its client and the CLI. It models
// vdisks, snapshots, clones and templates; it stores no data.
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
	// Method is "Create", "List", "Info", "Delete", "Resize", "Sync",
	// "CreateSnapshot", "ListSnapshots", "DeleteSnapshot", "Rollback",
	// "Clone", "Flatten", "SetTemplate" or "Scrub".
	Method   string
	Name     string // the vdisk (for Clone: the new one)
	Size     int64
	Opts     volumedriver.CreateOptions
	Force    bool
	Snapshot string
	Metadata string
	Parent   string // Clone's parent
}

// FakeVDisks is an in-memory test double of api.VDisks that keeps the
// driver's error contract: ErrExists for a taken vdisk or snapshot name,
// ErrNotFound for an unknown one, ErrInvalidArgument for a bad size, a
// shrink, a bad snapshot name or metadata over
// volumedriver.MaxSnapshotMetadata, ErrBusy when deleting or rolling back
// a vdisk with clients without force, or deleting what clones are built
// on, ErrReadOnly when snapshotting or rolling back a template. It is safe
// for concurrent use. The zero value is not usable; call NewFakeVDisks.
type FakeVDisks struct {
	mu       sync.Mutex
	disks    map[string]*volumedriver.VolumeInfo
	snaps    map[string][]volumedriver.SnapshotInfo // by vdisk, oldest first
	scrubs   map[string]volumedriver.ScrubResult
	errs     map[string]error
	calls    []Call
	nextID   int
	nextSnap int
	now      func() time.Time
}

// NewFakeVDisks returns an empty FakeVDisks.
func NewFakeVDisks() *FakeVDisks {
	return &FakeVDisks{
		disks:  map[string]*volumedriver.VolumeInfo{},
		snaps:  map[string][]volumedriver.SnapshotInfo{},
		scrubs: map[string]volumedriver.ScrubResult{},
		errs:   map[string]error{},
		now:    func() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) },
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

// SetScrubResult sets what Scrub of vdisk name returns. Without it, Scrub
// reports nothing to do: backend and live bytes all equal to the bytes
// written.
func (f *FakeVDisks) SetScrubResult(name string, r volumedriver.ScrubResult) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scrubs[name] = r
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
	if err := validVDiskName(name); err != nil {
		return volumedriver.VolumeInfo{}, err
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
	d := f.add(volumedriver.VolumeInfo{
		Name:        name,
		Size:        size,
		ClusterSize: cluster,
		SCOSize:     int64(cluster) * int64(mult),
	})
	return *d, nil
}

// add adds vdisk d with a new ID. The caller holds f.mu.
func (f *FakeVDisks) add(d volumedriver.VolumeInfo) *volumedriver.VolumeInfo {
	f.nextID++
	d.ID = fmt.Sprintf("00000000-0000-0000-0000-%012d", f.nextID)
	d.CreatedAt = f.now()
	d.State = "ok"
	f.disks[d.Name] = &d
	return &d
}

func validVDiskName(name string) error {
	if name == "" || strings.ContainsAny(name, "/@ \t\n") {
		return failf(volumedriver.ErrInvalidArgument, "invalid vdisk name %q", name)
	}
	return nil
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
	if clones := f.clones(name, ""); len(clones) > 0 {
		return failf(volumedriver.ErrBusy, "vdisk %q has clones (%s); flatten or delete them first", name, strings.Join(clones, ", "))
	}
	if d.Clients > 0 && !force {
		return failf(volumedriver.ErrBusy, "vdisk %q is in use by %d client(s)", name, d.Clients)
	}
	delete(f.disks, name)
	delete(f.snaps, name)
	delete(f.scrubs, name)
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
	f.sync(d)
	return nil
}

// sync marks everything of d on the backend. The caller holds f.mu.
func (f *FakeVDisks) sync(d *volumedriver.VolumeInfo) {
	d.PendingUploadBytes = 0
	for i := range f.snaps[d.Name] {
		f.snaps[d.Name][i].Synced = true
	}
}

// clones names the vdisks cloned from snapshot of vdisk (from any of its
// snapshots if snapshot is empty), sorted. The caller holds f.mu.
func (f *FakeVDisks) clones(vdisk, snapshot string) []string {
	var out []string
	for name, d := range f.disks {
		p, s, _ := strings.Cut(d.Parent, "@")
		if p == vdisk && (snapshot == "" || s == snapshot) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// findSnapshot returns the index of snapshot of vdisk, or an error
// matching ErrNotFound. The caller holds f.mu.
func (f *FakeVDisks) findSnapshot(vdisk, snapshot string) (int, error) {
	i := slices.IndexFunc(f.snaps[vdisk], func(s volumedriver.SnapshotInfo) bool { return s.Name == snapshot })
	if i < 0 {
		return -1, failf(volumedriver.ErrSnapshotNotFound, "snapshot %q of vdisk %q not found", snapshot, vdisk)
	}
	return i, nil
}

// snapshotted is what the snapshots of vdisk hold. The caller holds f.mu.
func (f *FakeVDisks) snapshotted(vdisk string) int64 {
	var n int64
	for _, s := range f.snaps[vdisk] {
		n += s.WrittenBytes
	}
	return n
}

// validSnapshotName follows the driver: 1-64 of A-Z a-z 0-9 . _ -
func validSnapshotName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// snapshot takes a snapshot of d. The caller holds f.mu and has checked
// the name.
func (f *FakeVDisks) snapshot(d *volumedriver.VolumeInfo, name, metadata string) volumedriver.SnapshotInfo {
	s := volumedriver.SnapshotInfo{
		Name:         name,
		CreatedAt:    f.now(),
		Metadata:     metadata,
		WrittenBytes: max(0, d.WrittenBytes-f.snapshotted(d.Name)),
		Synced:       d.PendingUploadBytes == 0,
	}
	f.snaps[d.Name] = append(f.snaps[d.Name], s)
	d.Snapshots = len(f.snaps[d.Name])
	return s
}

// CreateSnapshot implements api.VDisks. Generated names are snap-1,
// snap-2, ...
func (f *FakeVDisks) CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (volumedriver.SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "CreateSnapshot", Name: vdisk, Snapshot: snapshot, Metadata: metadata}); err != nil {
		return volumedriver.SnapshotInfo{}, err
	}
	d, err := f.lookup(vdisk)
	if err != nil {
		return volumedriver.SnapshotInfo{}, err
	}
	if snapshot == "" {
		f.nextSnap++
		snapshot = fmt.Sprintf("snap-%d", f.nextSnap)
	}
	switch {
	case !validSnapshotName(snapshot):
		return volumedriver.SnapshotInfo{}, failf(volumedriver.ErrInvalidArgument, "invalid snapshot name %q (use 1-64 of A-Z a-z 0-9 . _ -)", snapshot)
	case len(metadata) > volumedriver.MaxSnapshotMetadata:
		return volumedriver.SnapshotInfo{}, failf(volumedriver.ErrInvalidArgument, "snapshot metadata is %d bytes, the limit is %d", len(metadata), volumedriver.MaxSnapshotMetadata)
	case d.Template:
		return volumedriver.SnapshotInfo{}, failf(volumedriver.ErrReadOnly, "vdisk %q is a read-only template", vdisk)
	}
	if _, err := f.findSnapshot(vdisk, snapshot); err == nil {
		return volumedriver.SnapshotInfo{}, failf(volumedriver.ErrExists, "snapshot %q of vdisk %q already exists", snapshot, vdisk)
	}
	return f.snapshot(d, snapshot, metadata), nil
}

// ListSnapshots implements api.VDisks. It returns nil when there are none,
// as a driver may.
func (f *FakeVDisks) ListSnapshots(ctx context.Context, vdisk string) ([]volumedriver.SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "ListSnapshots", Name: vdisk}); err != nil {
		return nil, err
	}
	if _, err := f.lookup(vdisk); err != nil {
		return nil, err
	}
	return slices.Clone(f.snaps[vdisk]), nil
}

// DeleteSnapshot implements api.VDisks.
func (f *FakeVDisks) DeleteSnapshot(ctx context.Context, vdisk, snapshot string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "DeleteSnapshot", Name: vdisk, Snapshot: snapshot}); err != nil {
		return err
	}
	d, err := f.lookup(vdisk)
	if err != nil {
		return err
	}
	i, err := f.findSnapshot(vdisk, snapshot)
	if err != nil {
		return err
	}
	if clones := f.clones(vdisk, snapshot); len(clones) > 0 {
		return failf(volumedriver.ErrBusy, "clones %v are built on %s@%s; flatten or delete them first", clones, vdisk, snapshot)
	}
	snaps := f.snaps[vdisk]
	if i+1 < len(snaps) {
		snaps[i+1].WrittenBytes += snaps[i].WrittenBytes
	}
	f.snaps[vdisk] = slices.Delete(snaps, i, i+1)
	d.Snapshots = len(f.snaps[vdisk])
	return nil
}

// Rollback implements api.VDisks: later snapshots and writes go.
func (f *FakeVDisks) Rollback(ctx context.Context, vdisk, snapshot string, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Rollback", Name: vdisk, Snapshot: snapshot, Force: force}); err != nil {
		return err
	}
	d, err := f.lookup(vdisk)
	if err != nil {
		return err
	}
	// The driver's order of checks.
	if d.Clients > 0 && !force {
		return failf(volumedriver.ErrBusy, "vdisk %q is in use by %d client(s)", vdisk, d.Clients)
	}
	i, notFound := f.findSnapshot(vdisk, snapshot)
	snaps := f.snaps[vdisk]
	if notFound == nil {
		for _, later := range snaps[i+1:] {
			if clones := f.clones(vdisk, later.Name); len(clones) > 0 {
				return failf(volumedriver.ErrBusy, "rolling back would discard snapshot %s, which clones %v are built on", later.Name, clones)
			}
		}
	}
	if d.Template {
		return failf(volumedriver.ErrReadOnly, "vdisk %q is a read-only template", vdisk)
	}
	if notFound != nil {
		return notFound
	}
	f.snaps[vdisk] = snaps[:i+1]
	d.Snapshots = i + 1
	d.WrittenBytes = f.snapshotted(vdisk)
	d.PendingUploadBytes, d.WriteBufferBytes = 0, 0
	return nil
}

// Clone implements api.VDisks.
func (f *FakeVDisks) Clone(ctx context.Context, name, parent, snapshot string) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Clone", Name: name, Parent: parent, Snapshot: snapshot}); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if err := validVDiskName(name); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if _, ok := f.disks[name]; ok {
		return volumedriver.VolumeInfo{}, failf(volumedriver.ErrExists, "vdisk %q already exists", name)
	}
	p, err := f.lookup(parent)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if snapshot == "" {
		snaps := f.snaps[parent]
		if !p.Template || len(snaps) == 0 {
			return volumedriver.VolumeInfo{}, failf(volumedriver.ErrInvalidArgument, "name a snapshot of %s to clone (only templates clone from their latest snapshot)", parent)
		}
		snapshot = snaps[len(snaps)-1].Name
	}
	if _, err := f.findSnapshot(parent, snapshot); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	d := f.add(volumedriver.VolumeInfo{
		Name:        name,
		Size:        p.Size,
		ClusterSize: p.ClusterSize,
		SCOSize:     p.SCOSize,
		Parent:      parent + "@" + snapshot,
	})
	return *d, nil
}

// Flatten implements api.VDisks; a vdisk that is no clone stays as it is.
func (f *FakeVDisks) Flatten(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Flatten", Name: name}); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	d, err := f.lookup(name)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	d.Parent = ""
	return *d, nil
}

// SetTemplate implements api.VDisks: like the driver, it takes a snapshot
// "template-<time>" if anything was written since the last one (or there
// is none), and syncs.
func (f *FakeVDisks) SetTemplate(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "SetTemplate", Name: name}); err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	d, err := f.lookup(name)
	if err != nil {
		return volumedriver.VolumeInfo{}, err
	}
	if d.Template {
		return *d, nil
	}
	if len(f.snaps[name]) == 0 || d.WrittenBytes > f.snapshotted(name) {
		f.snapshot(d, "template-"+f.now().Format("20060102-150405"), "")
	}
	f.sync(d)
	d.Template = true
	return *d, nil
}

// Scrub implements api.VDisks, returning what SetScrubResult set.
func (f *FakeVDisks) Scrub(ctx context.Context, name string) (volumedriver.ScrubResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(ctx, Call{Method: "Scrub", Name: name}); err != nil {
		return volumedriver.ScrubResult{}, err
	}
	d, err := f.lookup(name)
	if err != nil {
		return volumedriver.ScrubResult{}, err
	}
	if r, ok := f.scrubs[name]; ok {
		return r, nil
	}
	return volumedriver.ScrubResult{
		BackendBytesBefore: d.WrittenBytes,
		BackendBytesAfter:  d.WrittenBytes,
		LiveBytes:          d.WrittenBytes,
	}, nil
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
