package nbd

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
)

// fakeDevice is an in-memory sparse Device test double. Pages that were
// never written (or were trimmed) are holes that read as zeros.
type fakeDevice struct {
	*memdev.Pages
	readOnly bool
	fastZero bool

	// readHook, when set, runs before every ReadAt; it may block.
	readHook func(ctx context.Context, off int64) error
	// failOps maps an operation name ("read", "write", "flush", "trim",
	// "zero", "status") to the error it returns.
	failMu  sync.Mutex
	failOps map[string]error

	reads, writes, fuaWrites, flushes, trims, zeroes atomic.Int64
	active, maxActive                                atomic.Int64
}

func newFakeDevice(size int64) *fakeDevice {
	return &fakeDevice{Pages: memdev.New(size)}
}

func (d *fakeDevice) setFail(op string, err error) {
	d.failMu.Lock()
	defer d.failMu.Unlock()
	if d.failOps == nil {
		d.failOps = map[string]error{}
	}
	if err == nil {
		delete(d.failOps, op)
	} else {
		d.failOps[op] = err
	}
}

func (d *fakeDevice) fail(op string) error {
	d.failMu.Lock()
	defer d.failMu.Unlock()
	return d.failOps[op]
}

func (d *fakeDevice) enter() func() {
	n := d.active.Add(1)
	for {
		m := d.maxActive.Load()
		if n <= m || d.maxActive.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { d.active.Add(-1) }
}

func (d *fakeDevice) check(off, n int64) error {
	if err := d.Check(off, n); err != nil {
		return fmt.Errorf("fakeDevice: %w", err)
	}
	return nil
}

func (d *fakeDevice) ReadOnly() bool { return d.readOnly }
func (d *fakeDevice) FastZero() bool { return d.fastZero }
func (d *fakeDevice) String() string { return fmt.Sprintf("fakeDevice(%d)", d.Size()) }

func (d *fakeDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	defer d.enter()()
	d.reads.Add(1)
	if h := d.readHook; h != nil {
		if err := h(ctx, off); err != nil {
			return err
		}
	}
	if err := d.fail("read"); err != nil {
		return err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.Read(p, off)
	return nil
}

func (d *fakeDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	defer d.enter()()
	d.writes.Add(1)
	if fua {
		d.fuaWrites.Add(1)
	}
	if err := d.fail("write"); err != nil {
		return err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	d.Write(p, off)
	return nil
}

func (d *fakeDevice) Flush(ctx context.Context) error {
	d.flushes.Add(1)
	return d.fail("flush")
}

func (d *fakeDevice) Trim(ctx context.Context, off, length int64) error {
	d.trims.Add(1)
	if err := d.fail("trim"); err != nil {
		return err
	}
	if err := d.check(off, length); err != nil {
		return err
	}
	d.Zero(off, length, false)
	return nil
}

func (d *fakeDevice) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	d.zeroes.Add(1)
	if err := d.fail("zero"); err != nil {
		return err
	}
	if err := d.check(off, length); err != nil {
		return err
	}
	d.Zero(off, length, noHole)
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (d *fakeDevice) BlockStatus(ctx context.Context, off, length int64) ([]Extent, error) {
	if err := d.fail("status"); err != nil {
		return nil, err
	}
	if err := d.check(off, length); err != nil {
		return nil, err
	}
	return d.Extents(off, length, true), nil
}

// fakeExports is an Exports test double over named fakeDevices.
type fakeExports struct {
	mu       sync.Mutex
	devs     map[string]*fakeDevice
	opened   map[string]int
	released map[string]int
	openErr  error
}

func newFakeExports(devs map[string]*fakeDevice) *fakeExports {
	return &fakeExports{devs: devs, opened: map[string]int{}, released: map[string]int{}}
}

func (e *fakeExports) OpenExport(ctx context.Context, name string) (Device, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.openErr != nil {
		return nil, nil, e.openErr
	}
	d, ok := e.devs[name]
	if !ok {
		return nil, nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
	}
	e.opened[name]++
	var once atomic.Bool
	return d, func() {
		if !once.CompareAndSwap(false, true) {
			panic("release called twice")
		}
		e.mu.Lock()
		e.released[name]++
		e.mu.Unlock()
	}, nil
}

func (e *fakeExports) ListExports(ctx context.Context) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := make([]string, 0, len(e.devs))
	for n := range e.devs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (e *fakeExports) counts(name string) (opened, released int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.opened[name], e.released[name]
}
