package volumedriver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// testEnv is a host: a volume dir and a backend dir.
type testEnv struct {
	t       *testing.T
	dir     string
	backend *scos.LocalDir
	opts    Options
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	root := t.TempDir()
	b, err := scos.NewLocalDir(filepath.Join(root, "backend"))
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{t: t, dir: filepath.Join(root, "volumes"), backend: b,
		opts: Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GarbageGrace: 50 * time.Millisecond, AutoSyncInterval: time.Second,
			// Scrubs run when a test asks for them (see TestGarbageTriggersScrub).
			ScrubGarbageRatio: -1}}
}

func (e *testEnv) open() *Driver {
	e.t.Helper()
	d, err := Open(context.Background(), e.dir, e.backend, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// crash abandons a driver the way kill -9 would: nothing is flushed or
// checkpointed; data handed to the kernel stays.
func crash(d *Driver) {
	for _, v := range d.vols {
		v.stopOnce.Do(func() { close(v.stop) })
		v.wg.Wait()
		v.mu.Lock()
		v.closed = true
		v.closeFilesLocked()
		v.mu.Unlock()
	}
	if d.cache != nil {
		d.cache.Close()
	}
}

// model is what the volume must read back.
type model struct{ data []byte }

func (m *model) write(p []byte, off int64) { copy(m.data[off:], p) }

func check(t *testing.T, v *Volume, m *model) {
	t.Helper()
	got := make([]byte, len(m.data))
	if err := v.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m.data) {
		for i := range got {
			if got[i] != m.data[i] {
				t.Fatalf("mismatch at byte %d (cluster %d): got %d want %d", i, i/4096, got[i], m.data[i])
			}
		}
	}
}

func randomWrites(t *testing.T, v *Volume, m *model, rng *rand.Rand, n int, maxLen int) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i++ {
		l := 1 + rng.IntN(maxLen)
		if rng.IntN(2) == 0 {
			l = (l + 4095) / 4096 * 4096
		}
		off := rng.Int64N(int64(len(m.data) - l))
		if rng.IntN(2) == 0 {
			off &^= 4095
		}
		p := make([]byte, l)
		for j := range p {
			p[j] = byte(rng.IntN(255) + 1)
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		m.write(p, off)
	}
}

func TestReadWriteTrim(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	const size = 64 << 20
	if _, err := d.Create(ctx, "vd1", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("vd1")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(1, 2))
	randomWrites(t, v, m, rng, 300, 200_000)
	check(t, v, m)

	for _, tc := range []struct {
		off, n int64
		noHole bool
	}{{4096, 8192, false}, {100, 10000, false}, {1 << 20, 3<<20 + 77, true}, {size - 4096, 4096, false}} {
		var err error
		if tc.noHole {
			err = v.WriteZeroes(ctx, tc.off, tc.n, true, false)
		} else {
			err = v.Trim(ctx, tc.off, tc.n)
		}
		if err != nil {
			t.Fatal(err)
		}
		clear(m.data[tc.off : tc.off+tc.n])
	}
	check(t, v, m)

	// Out of range I/O is refused with an error that maps to ENOSPC.
	if err := v.WriteAt(ctx, make([]byte, 4096), size-100, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past end: %v", err)
	}
	if err := v.ReadAt(ctx, make([]byte, 10), size); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past end: %v", err)
	}
}

func TestExtents(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	if _, err := d.Create(ctx, "thin", 1<<40, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("thin")
	ext, err := v.Extents(ctx, 0, 1<<40)
	if err != nil || len(ext) != 1 || ext[0].Mapped || ext[0].Length != 1<<40 {
		t.Fatalf("fresh 1 TiB vdisk: %+v %v", ext, err)
	}
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{1}, 8192), 1<<30, false); err != nil {
		t.Fatal(err)
	}
	ext, err = v.Extents(ctx, 0, 1<<40)
	want := []Extent{{1 << 30, false}, {8192, true}, {1<<40 - 1<<30 - 8192, false}}
	if err != nil || len(ext) != 3 || ext[0] != want[0] || ext[1] != want[1] || ext[2] != want[2] {
		t.Fatalf("extents %+v %v, want %+v", ext, err, want)
	}
	// A query that starts inside a cluster reports from its own offset.
	ext, _ = v.Extents(ctx, 1<<30+100, 200)
	if len(ext) != 1 || ext[0] != (Extent{200, true}) {
		t.Fatalf("unaligned query %+v", ext)
	}
}

func TestRestartClean(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 32 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	randomWrites(t, v, m, rand.New(rand.NewPCG(3, 4)), 200, 100_000)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	defer d.Close()
	v, err := d.Volume("a")
	if err != nil {
		t.Fatal(err)
	}
	check(t, v, m)
	randomWrites(t, v, m, rand.New(rand.NewPCG(5, 6)), 50, 100_000)
	check(t, v, m)
}

// TestRestartAfterCrash: every acknowledged write survives a crash of the
// process, flushed or not: it was handed to the kernel before WriteAt
// returned.
func TestRestartAfterCrash(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.MetadataCacheBytes = 1 // smallest page cache: pages are evicted all the time
	d := e.open()
	const size = 128 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(7, 8))
	// Enough data to roll several SCOs and a TLog over.
	randomWrites(t, v, m, rng, 600, 300_000)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	randomWrites(t, v, m, rng, 100, 50_000)
	crash(d)
	d = e.open()
	v, _ = d.Volume("a")
	check(t, v, m)
	// And again, after a crash of the restarted volume: this time all
	// flushed.
	m = &model{data: readAll(t, v)}
	randomWrites(t, v, m, rng, 100, 50_000)
	v.Flush(ctx)
	crash(d)
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	check(t, v, m)
}

func readAll(t *testing.T, v *Volume) []byte {
	t.Helper()
	got := make([]byte, v.Size())
	if err := v.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

// checkEither: every cluster holds its flushed content or its latest
// (writes after the last flush may or may not have survived a crash).
func checkEither(t *testing.T, v *Volume, flushed, latest []byte) {
	t.Helper()
	got := readAll(t, v)
	for c := 0; c < len(got); c += 4096 {
		g := got[c : c+4096]
		if !bytes.Equal(g, flushed[c:c+4096]) && !bytes.Equal(g, latest[c:c+4096]) {
			t.Fatalf("cluster %d holds neither its flushed nor its latest content", c/4096)
		}
	}
}

// TestCrashDropsTornRecords: records after the last flush whose data never
// reached the SCO are dropped, not served as garbage.
func TestCrashDropsTornRecords(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 8 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	randomWrites(t, v, m, rand.New(rand.NewPCG(9, 9)), 20, 8192)
	v.Flush(ctx)
	old := append([]byte(nil), m.data[:4096]...)
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{0xee}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	v.writeTLogBufLocked()
	sco := v.cur
	v.mu.Unlock()
	// Power loss: the SCO lost its last cluster (never fsynced).
	fi, _ := sco.f.Stat()
	crash(d)
	if err := os.Truncate(v.scoPath(sco.num), fi.Size()-4096); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	copy(m.data, old)
	check(t, v, m)
}

func TestRestoreFromBackend(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.WriteBufferBytes = 8 << 20 // evict: reads must come from the backend
	d := e.open()
	const size = 96 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	d.Create(ctx, "b", 1<<30, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(10, 11))
	randomWrites(t, v, m, rng, 400, 300_000)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	check(t, v, m) // partly from the backend after eviction
	synced := append([]byte(nil), m.data...)
	randomWrites(t, v, m, rng, 30, 50_000) // not synced
	crash(d)
	if err := os.RemoveAll(e.dir); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	defer d.Close()
	names := d.Names()
	if len(names) != 2 || names[0] != "a" || names[1] != "b" {
		t.Fatalf("vdisks after moving host: %v", names)
	}
	v, _ = d.Volume("a")
	// The writes after the sync may have been uploaded by the auto-sync.
	checkEither(t, v, synced, m.data)
	// It takes writes again without reusing SCO names.
	m = &model{data: readAll(t, v)}
	randomWrites(t, v, m, rng, 100, 100_000)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	check(t, v, m)
}

func TestBitRotInWriteBufferIsServedFromBackend(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.ReadCacheBytes = -1
	d := e.open()
	defer d.Close()
	d.Create(ctx, "a", 8<<20, CreateOptions{})
	v, _ := d.Volume("a")
	data := bytes.Repeat([]byte("rot!"), 1024)
	v.WriteAt(ctx, data, 0, false)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the local copy.
	path := v.scoPath(1)
	b, _ := os.ReadFile(path)
	b[100] ^= 0xff
	os.WriteFile(path, b, 0o644)
	got := make([]byte, 4096)
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after bit rot: %v", err)
	}
	// Rot in the backend copy too: an error, never bad data.
	obj := filepath.Join(e.backend.Root(), v.ns, "00_00000001_00")
	b, _ = os.ReadFile(obj)
	b[100] ^= 0xff
	os.WriteFile(obj, b, 0o644)
	if err := v.ReadAt(ctx, got, 0); !errors.Is(err, scos.ErrCorrupt) {
		t.Fatalf("read with both copies rotten: %v", err)
	}
}

func TestDriverErrors(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	defer d.Close()
	if _, err := d.Create(ctx, "x", 1<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"duplicate", func() error { _, err := d.Create(ctx, "x", 1<<20, CreateOptions{}); return err }(), ErrExists},
		{"bad name", func() error { _, err := d.Create(ctx, "../x", 1<<20, CreateOptions{}); return err }(), ErrInvalidArgument},
		{"zero size", func() error { _, err := d.Create(ctx, "y", 0, CreateOptions{}); return err }(), ErrInvalidArgument},
		{"odd size", func() error { _, err := d.Create(ctx, "y", 1000, CreateOptions{}); return err }(), ErrInvalidArgument},
		{"huge", func() error { _, err := d.Create(ctx, "y", 1<<62, CreateOptions{}); return err }(), ErrInvalidArgument},
		{"cluster", func() error { _, err := d.Create(ctx, "y", 1<<20, CreateOptions{ClusterSize: 1000}); return err }(), ErrInvalidArgument},
		{"shrink", func() error { _, err := d.Resize(ctx, "x", 512); return err }(), ErrInvalidArgument},
		{"missing", func() error { _, err := d.Info(ctx, "nope"); return err }(), ErrNotFound},
		{"busy", func() error {
			_, release, _ := d.Acquire("x")
			defer release()
			return d.Delete(ctx, "x", false)
		}(), ErrBusy},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if info, err := d.Resize(ctx, "x", 2<<20); err != nil || info.Size != 2<<20 {
		t.Fatalf("grow: %+v %v", info, err)
	}
	_, release, _ := d.Acquire("x")
	if err := d.Delete(ctx, "x", true); err != nil {
		t.Fatal(err)
	}
	release()
	if l, _ := d.List(ctx); len(l) != 0 {
		t.Fatalf("after delete: %+v", l)
	}
	if nss, _ := e.backend.ListNamespaces(ctx); len(nss) != 0 {
		t.Fatalf("namespaces left: %v", nss)
	}
}

// countingBackend is a test double over a real LocalDir that hides its
// CheapReads (as a remote backend would) and counts ranged reads.
type countingBackend struct {
	scos.Backend
	reads atomic.Int64
}

func (b *countingBackend) ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error {
	b.reads.Add(1)
	return b.Backend.ReadAt(ctx, ns, name, p, off)
}

func TestReadCacheServesRepeatedBackendReads(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	cb := &countingBackend{Backend: e.backend}
	e.opts.WriteBufferBytes = 1 // evict everything uploaded
	d, err := Open(ctx, e.dir, cb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Create(ctx, "a", 16<<20, CreateOptions{})
	v, _ := d.Volume("a")
	data := bytes.Repeat([]byte("cache me"), 512)
	v.WriteAt(ctx, data, 8192, false)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	// ristretto's Set is asynchronous and may be dropped: read until the
	// cache has it, then reads stop reaching the backend.
	waitFor(t, func() bool {
		before := cb.reads.Load()
		if err := v.ReadAt(ctx, got, 8192); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read: %v", err)
		}
		return cb.reads.Load() == before
	})
}

// TestConcurrentWritesSurviveCrash: many writers at once share batches
// (group commit); each write is in the kernel when it returns, whoever
// wrote its batch, so a crash right after loses none of them.
func TestConcurrentWritesSurviveCrash(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 64 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	const writers, perWriter = 32, 300
	var wg sync.WaitGroup
	var failed atomic.Bool
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Writer w owns every writers-th block, so the final
			// content is known whatever the interleaving.
			for i := range perWriter {
				blk := int64(i*writers + w)
				p := bytes.Repeat([]byte{byte(w + 1), byte(i)}, 2048)
				if err := v.WriteAt(ctx, p, blk*4096, false); err != nil {
					t.Error(err)
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() {
		return
	}
	crash(d)
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	got := readAll(t, v)
	for w := range writers {
		for i := range perWriter {
			blk := int64(i*writers + w)
			want := bytes.Repeat([]byte{byte(w + 1), byte(i)}, 2048)
			if !bytes.Equal(got[blk*4096:(blk+1)*4096], want) {
				t.Fatalf("block %d (writer %d, write %d) lost in the crash", blk, w, i)
			}
		}
	}
}

// TestWriteBufferKeepsFewFiles: sealed SCOs in the write buffer hold no
// file descriptor (1000 busy vdisks used to need thousands).
func TestWriteBufferKeepsFewFiles(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.MaxPendingUploadBytes = 1 << 30
	e.opts.UploadConcurrency = 2
	d := e.open()
	defer d.Close()
	if _, err := d.Create(ctx, "a", 256<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	chunk := bytes.Repeat([]byte{0x42}, 1<<20)
	for off := int64(0); off < 80<<20; off += int64(len(chunk)) {
		if err := v.WriteAt(ctx, chunk, off, false); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	scoDir := filepath.Join(v.dir, "sco") + "/"
	open := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, scoDir) {
			open++
		}
	}
	// The open SCO, and those the uploader is reading at the moment.
	if max := 1 + e.opts.UploadConcurrency; open > max {
		t.Errorf("%d SCO files of one vdisk open after 20 SCOs were written, want at most %d", open, max)
	}
}

// TestTransientStateWriteFailure: a state.json that cannot be written
// (here: its temporary file's name is taken by a directory) fails the
// snapshot and the sync that need it, and nothing else; once the cause is
// gone both work, with no restart, and everything survives one.
func TestTransientStateWriteFailure(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	const size = 16 << 20
	if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(21, 22))
	randomWrites(t, v, m, rng, 50, 20_000)

	blocker := filepath.Join(v.dir, "state.json.tmp")
	if err := os.Mkdir(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := v.CreateSnapshot(ctx, "s1", ""); err == nil {
		t.Fatal("snapshot with state.json unwritable: no error")
	}
	if err := v.Sync(ctx); err == nil {
		t.Fatal("sync with state.json unwritable: no error")
	}
	if st := v.info().State; st != "ok" {
		t.Fatalf("state %q after a failed state.json write, want ok", st)
	}
	randomWrites(t, v, m, rng, 50, 20_000)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	check(t, v, m)

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if _, err := v.CreateSnapshot(ctx, "s1", ""); err != nil {
		t.Fatalf("snapshot once state.json is writable again: %v", err)
	}
	randomWrites(t, v, m, rng, 50, 20_000)
	if err := v.Sync(ctx); err != nil {
		t.Fatalf("sync once state.json is writable again: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = e.open()
	defer d.Close()
	v, _ = d.Volume("a")
	check(t, v, m)
	if snaps := v.Snapshots(); len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Errorf("snapshots after restart: %+v, want s1", snaps)
	}
}
