package fs

import (
	"bytes"
	"context"
	"fmt"
	iofs "io/fs"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/volumedriver"
)

// fakeVDisks is an in-memory cluster of vdisks, with the driver's rules
// (sector-sized vdisks that only grow, EBUSY with clones).
type fakeVDisks struct {
	mu     sync.Mutex
	disks  map[string]*fakeDisk // by name
	nextID int
	resize int // resizes done
}

type fakeDisk struct {
	id      string
	data    []byte
	created time.Time
	snaps   map[string][]byte
	order   []string
	clones  int
	flushes int
}

func newFakeVDisks() *fakeVDisks { return &fakeVDisks{disks: map[string]*fakeDisk{}} }

func (f *fakeVDisks) info(name string, d *fakeDisk) VDiskInfo {
	return VDiskInfo{Name: name, ID: d.id, Size: int64(len(d.data)), Created: d.created}
}

func (f *fakeVDisks) get(name string) (*fakeDisk, error) {
	d := f.disks[name]
	if d == nil {
		return nil, fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	return d, nil
}

func (f *fakeVDisks) List(ctx context.Context) ([]VDiskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []VDiskInfo
	for n, d := range f.disks {
		out = append(out, f.info(n, d))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeVDisks) Info(ctx context.Context, name string) (VDiskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.get(name)
	if err != nil {
		return VDiskInfo{}, err
	}
	return f.info(name, d), nil
}

func (f *fakeVDisks) Create(ctx context.Context, name string, size int64) (VDiskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.disks[name] != nil {
		return VDiskInfo{}, fmt.Errorf("%w: %s", volumedriver.ErrExists, name)
	}
	if size <= 0 || size%512 != 0 {
		return VDiskInfo{}, fmt.Errorf("%w: size %d", volumedriver.ErrInvalidArgument, size)
	}
	f.nextID++
	d := &fakeDisk{id: fmt.Sprintf("id%d", f.nextID), data: make([]byte, size), created: time.Unix(1e9, 0), snaps: map[string][]byte{}}
	f.disks[name] = d
	return f.info(name, d), nil
}

func (f *fakeVDisks) Resize(ctx context.Context, name string, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.get(name)
	if err != nil {
		return err
	}
	if size%512 != 0 || size < int64(len(d.data)) {
		return fmt.Errorf("%w: size %d", volumedriver.ErrInvalidArgument, size)
	}
	d.data = append(d.data, make([]byte, size-int64(len(d.data)))...)
	f.resize++
	return nil
}

func (f *fakeVDisks) Delete(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.get(name)
	if err != nil {
		return err
	}
	if d.clones > 0 {
		return fmt.Errorf("%w: %s has clones", volumedriver.ErrBusy, name)
	}
	delete(f.disks, name)
	return nil
}

func (f *fakeVDisks) Rename(ctx context.Context, from, to string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.get(from)
	if err != nil {
		return err
	}
	if f.disks[to] != nil {
		return fmt.Errorf("%w: %s", volumedriver.ErrExists, to)
	}
	delete(f.disks, from)
	f.disks[to] = d
	return nil
}

func (f *fakeVDisks) Open(ctx context.Context, name string) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.get(name); err != nil {
		return nil, err
	}
	return &fakeDevice{f: f, name: name}, nil
}

func (f *fakeVDisks) snapshot(name, snap string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.disks[name]
	d.snaps[snap] = bytes.Clone(d.data)
	d.order = append(d.order, snap)
}

func (f *fakeVDisks) Snapshots(ctx context.Context, name string) ([]SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.get(name)
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, s := range d.order {
		out = append(out, SnapshotInfo{Name: s, Created: time.Unix(2e9, 0)})
	}
	return out, nil
}

func (f *fakeVDisks) OpenSnapshot(ctx context.Context, name, id, snap string) (SnapshotDevice, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.get(name)
	if err != nil {
		return nil, err
	}
	data, ok := d.snaps[snap]
	if !ok || d.id != id {
		return nil, fmt.Errorf("%w: %s@%s", volumedriver.ErrNotFound, name, snap)
	}
	return fakeSnap(data), nil
}

type fakeDevice struct {
	f    *fakeVDisks
	name string
}

func (d *fakeDevice) disk() (*fakeDisk, error) { return d.f.get(d.name) }

func (d *fakeDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	k, err := d.disk()
	if err != nil {
		return err
	}
	if off+int64(len(p)) > int64(len(k.data)) {
		return volumedriver.ErrOutOfRange
	}
	copy(p, k.data[off:])
	return nil
}

func (d *fakeDevice) WriteAt(ctx context.Context, p []byte, off int64) error {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	k, err := d.disk()
	if err != nil {
		return err
	}
	if off+int64(len(p)) > int64(len(k.data)) {
		return volumedriver.ErrOutOfRange
	}
	copy(k.data[off:], p)
	return nil
}

func (d *fakeDevice) Flush(ctx context.Context) error {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	k, err := d.disk()
	if err == nil {
		k.flushes++
	}
	return err
}

func (d *fakeDevice) Trim(ctx context.Context, off, length int64) error {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	k, err := d.disk()
	if err != nil {
		return err
	}
	clear(k.data[off : off+length])
	return nil
}

func (d *fakeDevice) Close() error { return nil }

type fakeSnap []byte

func (s fakeSnap) Size() int64 { return int64(len(s)) }
func (s fakeSnap) ReadAt(ctx context.Context, p []byte, off int64) error {
	copy(p, s[off:])
	return nil
}
func (s fakeSnap) Close() error { return nil }

// fakeStore is an in-memory Store with arakoon's atomic asserts.
type fakeStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func newFakeStore() *fakeStore { return &fakeStore{m: map[string][]byte{}} }

func (s *fakeStore) Get(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, fmt.Errorf("%w: %s", iofs.ErrNotExist, key)
	}
	return bytes.Clone(v), nil
}

func (s *fakeStore) Range(ctx context.Context, prefix string) ([]Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Entry
	for k, v := range s.m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, Entry{Key: k, Value: bytes.Clone(v)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (s *fakeStore) Apply(ctx context.Context, ops ...Op) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range ops {
		if op.Kind != OpAssert {
			continue
		}
		v, ok := s.m[op.Key]
		if op.Value == nil && ok || op.Value != nil && (!ok || !bytes.Equal(v, op.Value)) {
			return fmt.Errorf("%w: %s", ErrConflict, op.Key)
		}
	}
	for _, op := range ops {
		switch op.Kind {
		case OpSet:
			s.m[op.Key] = bytes.Clone(op.Value)
		case OpDelete:
			delete(s.m, op.Key)
		}
	}
	return nil
}
