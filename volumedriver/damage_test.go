package volumedriver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// logBuffer collects a driver's log so that tests can check that damage
// was reported.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (e *testEnv) captureLog() *logBuffer {
	lb := &logBuffer{}
	e.opts.Logger = slog.New(slog.NewTextHandler(lb, nil))
	return lb
}

// spreadWrites writes a distinct cluster every stride clusters, so that
// many metadata pages hold entries.
func spreadWrites(t *testing.T, v *Volume, m *model, seed uint64, stride int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	for off := int64(0); off+4096 <= int64(len(m.data)); off += stride * 4096 {
		p := make([]byte, 4096)
		for i := range p {
			p[i] = byte(rng.IntN(255) + 1)
		}
		if err := v.WriteAt(context.Background(), p, off, false); err != nil {
			t.Fatal(err)
		}
		m.write(p, off)
	}
}

func volumeDir(t *testing.T, d *Driver, name string) string {
	t.Helper()
	v, err := d.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v.dir
}

// TestDamagedMetadataIsRebuilt: whatever happens to the metadata store file
// after a checkpoint, the vdisk reads what was written (rebuilt from the
// TLogs), says so in the log, and never reads zeros where data was.
func TestDamagedMetadataIsRebuilt(t *testing.T) {
	slotOf := func(no int64) int64 { return no * pageSlotSize }
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, md string)
	}{
		{"deleted", func(t *testing.T, md string) { os.Remove(md) }},
		{"truncated to nothing", func(t *testing.T, md string) { os.Truncate(md, 0) }},
		{"truncated to half", func(t *testing.T, md string) {
			fi, _ := os.Stat(md)
			os.Truncate(md, fi.Size()/2)
		}},
		{"page zeroed", func(t *testing.T, md string) {
			writeAt(t, md, make([]byte, pageSlotSize), slotOf(3))
		}},
		{"page hole punched", func(t *testing.T, md string) {
			// A page that reads as a hole: the same as never written
			// to a reader that does not check.
			b, _ := os.ReadFile(md)
			clear(b[slotOf(5):slotOf(6)])
			os.WriteFile(md, b, 0o644)
		}},
		{"bit flip in an entry", func(t *testing.T, md string) {
			flipByte(t, md, slotOf(2)+pageHeaderSize+100)
		}},
		{"bit flip in a header", func(t *testing.T, md string) {
			flipByte(t, md, slotOf(4)+17)
		}},
		{"stale page from an older generation", func(t *testing.T, md string) {
			// A whole valid page of another slot copied over: the page
			// number check and the digest catch it.
			b, _ := os.ReadFile(md)
			copy(b[slotOf(1):slotOf(2)], b[slotOf(7):slotOf(8)])
			binary.LittleEndian.PutUint64(b[slotOf(1)+8:], 1)
			binary.LittleEndian.PutUint32(b[slotOf(1)+4:], crc32c(b[slotOf(1)+8:slotOf(2)]))
			os.WriteFile(md, b, 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newTestEnv(t)
			logs := e.captureLog()
			d := e.open()
			const size = 64 << 20 // 64 pages of metadata
			if _, err := d.Create(ctx, "a", size, CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			v, _ := d.Volume("a")
			m := &model{data: make([]byte, size)}
			spreadWrites(t, v, m, 1, 61)
			if err := v.Sync(ctx); err != nil { // some history on the backend
				t.Fatal(err)
			}
			spreadWrites(t, v, m, 2, 37) // and some only local
			dir := volumeDir(t, d, "a")
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, filepath.Join(dir, "md"))
			d = e.open()
			// d is opened again below: close the last one.
			defer func() { d.Close() }()
			v, err := d.Volume("a")
			if err != nil {
				t.Fatalf("vdisk not up: %v", err)
			}
			check(t, v, m)
			if !strings.Contains(logs.String(), "metadata store is damaged") {
				t.Errorf("damage not logged:\n%s", logs.String())
			}
			if info, _ := d.Info(ctx, "a"); info.State != "ok" {
				t.Errorf("state %q after the rebuild", info.State)
			}
			// And it keeps what it rebuilt across another restart.
			d.Close()
			d = e.open()
			v, _ = d.Volume("a")
			check(t, v, m)
		})
	}
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off >= int64(len(b)) {
		t.Fatalf("%s has %d bytes; cannot flip byte %d", path, len(b), off)
	}
	b[off] ^= 0x10
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMetadataCorruptionAtRuntimeIsRebuilt: a page that rots in the file
// while the volume runs (evicted from the small page cache, then read
// back) is rebuilt from the TLogs; reads get the data, not EIO forever.
func TestMetadataCorruptionAtRuntimeIsRebuilt(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.MetadataCacheBytes = 1 // 16 pages cached
	logs := e.captureLog()
	d := e.open()
	// d is opened again below: close the last one.
	defer func() { d.Close() }()
	const size = 256 << 20 // 256 pages
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	spreadWrites(t, v, m, 3, 101)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	check(t, v, m) // pulls every page through the cache
	v.mu.Lock()
	_, cached := v.md.pages[0]
	v.mu.Unlock()
	if cached {
		t.Fatal("page 0 should have been evicted")
	}
	flipByte(t, filepath.Join(v.dir, "md"), pageHeaderSize+40)
	check(t, v, m)
	if !strings.Contains(logs.String(), "rebuilding the vdisk's metadata") {
		t.Errorf("rebuild not logged:\n%s", logs.String())
	}
	if info, _ := d.Info(ctx, "a"); info.State != "ok" {
		t.Errorf("state %q", info.State)
	}
	// Writes go on, and survive a restart.
	spreadWrites(t, v, m, 4, 53)
	d.Close()
	d = e.open()
	v, _ = d.Volume("a")
	check(t, v, m)
}

// TestMetadataUnrebuildableFailsLoudly: when the TLogs needed to rebuild a
// damaged metadata store are gone too, the vdisk is failed, with a
// reason, rather than served as zeros.
func TestMetadataUnrebuildableFailsLoudly(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	d := e.open()
	d.Create(ctx, "a", 16<<20, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, 16<<20)}
	spreadWrites(t, v, m, 5, 7)
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	dir, ns := v.dir, v.ns
	d.Close()
	os.Remove(filepath.Join(dir, "md"))
	objs, _ := e.backend.List(ctx, ns, tlogPrefix)
	for _, o := range objs {
		e.backend.Delete(ctx, ns, o.Name)
		os.Remove(filepath.Join(dir, "tlog", o.Name))
	}
	d = e.open()
	defer d.Close()
	if _, err := d.Volume("a"); err == nil {
		t.Fatal("vdisk came up without its metadata or TLogs")
	}
	info, err := d.Info(ctx, "a")
	if err != nil || !strings.HasPrefix(info.State, "failed: ") {
		t.Fatalf("info %+v %v, want a failed state", info, err)
	}
}

// TestStateJSONDamageKeepsLocalWrites: without a readable state.json, the
// writes in the local TLogs and SCOs that never reached the backend are
// recovered, not wiped.
func TestStateJSONDamageKeepsLocalWrites(t *testing.T) {
	for _, tc := range []struct {
		name   string
		crash  bool
		damage func(path string)
	}{
		{"deleted after a clean stop", false, func(p string) { os.Remove(p) }},
		{"deleted after a crash", true, func(p string) { os.Remove(p) }},
		{"truncated", false, func(p string) { os.Truncate(p, 10) }},
		{"garbage", true, func(p string) { os.WriteFile(p, []byte("{\"format\":1,\"config\":{}}"), 0o644) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newTestEnv(t)
			logs := e.captureLog()
			e.opts.AutoSyncInterval = 1 << 40
			d := e.open()
			const size = 160 << 20
			d.Create(ctx, "a", size, CreateOptions{})
			v, _ := d.Volume("a")
			m := &model{data: make([]byte, size)}
			rng := rand.New(rand.NewPCG(11, 12))
			randomWrites(t, v, m, rng, 100, 200_000)
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			// More than one TLog's worth that stays local: the
			// uploader is stopped.
			v.mu.Lock()
			v.closed = true // stops the uploader picking up new TLogs
			v.mu.Unlock()
			v.stopOnce.Do(func() { close(v.stop) })
			v.wg.Wait()
			v.mu.Lock()
			v.closed = false
			v.mu.Unlock()
			randomWrites(t, v, m, rng, 700, 400_000)
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			v.mu.Lock()
			sealed, uploaded := len(v.state.Sealed), v.uploadedCount
			v.mu.Unlock()
			if sealed-uploaded < 1 {
				t.Fatalf("want a sealed TLog that is not uploaded: %d sealed, %d uploaded", sealed, uploaded)
			}
			dir := v.dir
			if tc.crash {
				crash(d)
			} else if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(filepath.Join(dir, "state.json"))
			d = e.open()
			// d is opened again below: close the last one.
			defer func() { d.Close() }()
			v, err := d.Volume("a")
			if err != nil {
				t.Fatalf("vdisk not up: %v\n%s", err, logs.String())
			}
			check(t, v, m)
			if !strings.Contains(logs.String(), "state.json") {
				t.Errorf("not logged:\n%s", logs.String())
			}
			// The recovered writes reach the backend: a host without
			// the local state sees them.
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			d.Close()
			os.RemoveAll(e.dir)
			d = e.open()
			v, _ = d.Volume("a")
			check(t, v, m)
		})
	}
}

// TestLostUnsyncedSCO: an SCO file that disappears from the write buffer
// before it was uploaded costs exactly its clusters: they read as EIO,
// everything else reads as written, and the vdisk says which SCO it lost.
func TestLostUnsyncedSCO(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(path string)
	}{
		{"deleted", func(p string) { os.Remove(p) }},
		{"truncated", func(p string) { os.Truncate(p, 4096) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newTestEnv(t)
			e.opts.AutoSyncInterval = 1 << 40
			e.opts.ReadCacheBytes = -1
			logs := e.captureLog()
			d := e.open()
			const size = 32 << 20
			d.Create(ctx, "a", size, CreateOptions{})
			v, _ := d.Volume("a")
			synced := bytes.Repeat([]byte{0x5a}, 8<<20)
			if err := v.WriteAt(ctx, synced, 0, false); err != nil {
				t.Fatal(err)
			}
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			// Two more SCOs, flushed but not uploaded: [8, 12) MiB
			// lands in one, [12, 16) MiB in the next.
			a := bytes.Repeat([]byte{0xa1}, 4<<20)
			b := bytes.Repeat([]byte{0xb2}, 4<<20)
			v.WriteAt(ctx, a, 8<<20, false)
			v.WriteAt(ctx, b, 12<<20, false)
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			v.mu.Lock()
			lostNum := v.nextSCO - 2 // the SCO holding a
			v.mu.Unlock()
			path := v.scoPath(lostNum)
			d.Close()
			tc.damage(path)
			d = e.open()
			// d is opened again below: close the last one.
			defer func() { d.Close() }()
			v, err := d.Volume("a")
			if err != nil {
				t.Fatalf("vdisk not up: %v", err)
			}
			got := make([]byte, 8<<20)
			if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, synced) {
				t.Fatalf("synced data: %v", err)
			}
			got = make([]byte, 4<<20)
			if err := v.ReadAt(ctx, got, 12<<20); err != nil || !bytes.Equal(got, b) {
				t.Fatalf("intact unsynced SCO: %v", err)
			}
			one := make([]byte, 4096)
			if err := v.ReadAt(ctx, one, 8<<20+(2<<20)); !errors.Is(err, ErrDataLost) {
				t.Fatalf("read of a lost cluster: %v, want ErrDataLost", err)
			}
			if tc.name == "truncated" {
				if err := v.ReadAt(ctx, one, 8<<20); err != nil || !bytes.Equal(one, a[:4096]) {
					t.Fatalf("first cluster of the truncated SCO: %v", err)
				}
			}
			name := v.scoName(lostNum).String()
			info, _ := d.Info(ctx, "a")
			if !strings.HasPrefix(info.State, "degraded") || !strings.Contains(info.State, name) {
				t.Errorf("state %q should say degraded and name SCO %s", info.State, name)
			}
			if !strings.Contains(logs.String(), name) {
				t.Errorf("lost SCO not logged")
			}
			// The rest still reaches the backend, and the vdisk takes
			// writes.
			if err := v.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 20<<20, false); err != nil {
				t.Fatal(err)
			}
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			d.Close()
			d = e.open()
			v, _ = d.Volume("a")
			got = make([]byte, 4<<20)
			if err := v.ReadAt(ctx, got, 12<<20); err != nil || !bytes.Equal(got, b) {
				t.Fatalf("intact unsynced SCO after restart: %v", err)
			}
			if err := v.ReadAt(ctx, one, 8<<20+(2<<20)); !errors.Is(err, ErrDataLost) {
				t.Fatalf("lost cluster after restart: %v", err)
			}
		})
	}
}

// TestDamagedOpenTLog: the open TLog truncated, corrupted or deleted after
// a clean stop loses nothing: the records the checkpoint covered are made
// anew from the verified metadata store, and the history that reaches the
// backend rebuilds the same content on another host.
func TestDamagedOpenTLog(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"deleted", func(t *testing.T, p string) { os.Remove(p) }},
		{"truncated to its header", func(t *testing.T, p string) { os.Truncate(p, tlogHeaderSize) }},
		{"truncated in half", func(t *testing.T, p string) {
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2)
		}},
		{"record corrupted", func(t *testing.T, p string) { flipByte(t, p, tlogHeaderSize+10*tlogRecordSize+9) }},
		{"header corrupted", func(t *testing.T, p string) { flipByte(t, p, 2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newTestEnv(t)
			e.opts.AutoSyncInterval = 1 << 40
			d := e.open()
			const size = 32 << 20
			d.Create(ctx, "a", size, CreateOptions{})
			v, _ := d.Volume("a")
			m := &model{data: make([]byte, size)}
			rng := rand.New(rand.NewPCG(21, 22))
			randomWrites(t, v, m, rng, 50, 100_000)
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			randomWrites(t, v, m, rng, 100, 100_000)
			// Trims too: a lost trim must not bring old data back.
			for _, off := range []int64{0, 5 << 20, 17<<20 + 4096} {
				if err := v.Trim(ctx, off, 256<<10); err != nil {
					t.Fatal(err)
				}
				clear(m.data[off : off+256<<10])
			}
			v.mu.Lock()
			open := v.tlogPath(v.tlog.name)
			v.mu.Unlock()
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, open)
			d = e.open()
			v, err := d.Volume("a")
			if err != nil {
				t.Fatalf("vdisk not up: %v", err)
			}
			check(t, v, m)
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			d.Close()
			os.RemoveAll(e.dir) // another host: the backend's history only
			d = e.open()
			defer d.Close()
			v, _ = d.Volume("a")
			check(t, v, m)
		})
	}
}

// TestDamagedOpenTLogAfterCrashFailsLoudly: when the metadata store cannot
// vouch for the flushed records a damaged open TLog lost, the vdisk is
// failed with the reason instead of serving older data for them.
func TestDamagedOpenTLogAfterCrashFailsLoudly(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	e.opts.AutoSyncInterval = 1 << 40
	d := e.open()
	const size = 32 << 20
	d.Create(ctx, "a", size, CreateOptions{})
	v, _ := d.Volume("a")
	m := &model{data: make([]byte, size)}
	randomWrites(t, v, m, rand.New(rand.NewPCG(31, 32)), 100, 100_000)
	v.mu.Lock()
	open := v.tlogPath(v.tlog.name)
	v.mu.Unlock()
	d.Close()
	// The metadata store is damaged too: it cannot vouch for anything.
	os.Remove(filepath.Join(filepath.Dir(filepath.Dir(open)), "md"))
	os.Truncate(open, tlogHeaderSize+5*tlogRecordSize)
	d = e.open()
	defer d.Close()
	if _, err := d.Volume("a"); err == nil {
		t.Fatal("vdisk came up with flushed records lost")
	}
	info, _ := d.Info(ctx, "a")
	if !strings.Contains(info.State, "damaged") {
		t.Fatalf("state %q should say the open TLog is damaged", info.State)
	}
}
