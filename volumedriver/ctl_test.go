package volumedriver

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// stallBackend blocks every call on namespaces with a given prefix until
// released (or the call's context ends), as a backend whose ASDs stopped
// answering would.
type stallBackend struct {
	scos.Backend
	mu      sync.Mutex
	prefix  string
	release chan struct{}
}

func (b *stallBackend) stall(ns string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.prefix, b.release = ns, make(chan struct{})
}

func (b *stallBackend) unstall() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.release != nil {
		close(b.release)
	}
	b.prefix, b.release = "", nil
}

func (b *stallBackend) wait(ctx context.Context, ns string) error {
	b.mu.Lock()
	prefix, release := b.prefix, b.release
	b.mu.Unlock()
	if prefix == "" || !strings.HasPrefix(ns, prefix) {
		return nil
	}
	select {
	case <-release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *stallBackend) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	if err := b.wait(ctx, ns); err != nil {
		return err
	}
	return b.Backend.Put(ctx, ns, name, data, overwrite)
}

func (b *stallBackend) Get(ctx context.Context, ns, name string) ([]byte, error) {
	if err := b.wait(ctx, ns); err != nil {
		return nil, err
	}
	return b.Backend.Get(ctx, ns, name)
}

func (b *stallBackend) ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error {
	if err := b.wait(ctx, ns); err != nil {
		return err
	}
	return b.Backend.ReadAt(ctx, ns, name, p, off)
}

// TestStalledBackendBlocksOnlyItsVDisk: with the backend stalled for one
// vdisk, a set-template and a clone of an unsynced snapshot of it wait on
// the backend, and meanwhile list, info, create, clone, resize, snapshot,
// delete and client attach of the other vdisks answer at once.
func TestStalledBackendBlocksOnlyItsVDisk(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	sb := &stallBackend{Backend: e.backend}
	d, err := Open(ctx, e.dir, sb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, n := range []string{"a", "b"} {
		if _, err := d.Create(ctx, n, 8<<20, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.CreateSnapshot(ctx, "b", "sb", ""); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	a, _ := d.Volume("a")
	sb.stall(a.ns)
	if err := a.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateSnapshot(ctx, "a", "sa", ""); err != nil {
		t.Fatal(err)
	}

	slow, cancelSlow := context.WithTimeout(ctx, time.Minute)
	defer cancelSlow()
	var wg sync.WaitGroup
	results := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, err := d.Clone(slow, "a-clone", "a", "sa")
		results <- err
	}()
	go func() {
		defer wg.Done()
		_, err := d.SetTemplate(slow, "a")
		results <- err
	}()
	time.Sleep(300 * time.Millisecond) // both are waiting on the backend now
	select {
	case err := <-results:
		t.Fatalf("an operation on the stalled vdisk finished early: %v", err)
	default:
	}

	const bound = 2 * time.Second // generous: each takes milliseconds
	for _, tc := range []struct {
		name string
		op   func(context.Context) error
	}{
		{"list", func(ctx context.Context) error {
			l, err := d.List(ctx)
			if err == nil && len(l) < 2 {
				err = errors.New("short list")
			}
			return err
		}},
		{"info of the stalled vdisk", func(ctx context.Context) error { _, err := d.Info(ctx, "a"); return err }},
		{"info", func(ctx context.Context) error { _, err := d.Info(ctx, "b"); return err }},
		{"create", func(ctx context.Context) error { _, err := d.Create(ctx, "c", 8<<20, CreateOptions{}); return err }},
		{"create the name being cloned", func(ctx context.Context) error {
			if _, err := d.Create(ctx, "a-clone", 8<<20, CreateOptions{}); !errors.Is(err, ErrExists) {
				return errors.New("want ErrExists")
			}
			return nil
		}},
		{"attach", func(ctx context.Context) error {
			_, release, err := d.Acquire("b")
			if err == nil {
				release()
			}
			return err
		}},
		{"resize", func(ctx context.Context) error { _, err := d.Resize(ctx, "b", 16<<20); return err }},
		{"snapshot", func(ctx context.Context) error { _, err := d.CreateSnapshot(ctx, "b", "sb2", ""); return err }},
		{"clone", func(ctx context.Context) error { _, err := d.Clone(ctx, "b-clone", "b", "sb"); return err }},
		{"delete", func(ctx context.Context) error { return d.Delete(ctx, "c", false) }},
		{"names", func(ctx context.Context) error { _ = d.Names(); return nil }},
	} {
		cctx, cancel := context.WithTimeout(ctx, bound)
		start := time.Now()
		err := tc.op(cctx)
		cancel()
		if err != nil {
			t.Errorf("%s while another vdisk waits on the backend: %v (after %v)", tc.name, err, time.Since(start))
		}
	}

	sb.unstall()
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("operation on the once-stalled vdisk: %v", err)
		}
	}
	if info, err := d.Info(ctx, "a"); err != nil || !info.Template {
		t.Errorf("a after set-template: %+v, %v", info, err)
	}
	if info, err := d.Info(ctx, "a-clone"); err != nil || info.Parent != "a@sa" {
		t.Errorf("a-clone: %+v, %v", info, err)
	}
}
