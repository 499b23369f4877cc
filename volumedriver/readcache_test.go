package volumedriver

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/ovs-storage/ovs/scos"
)

// rcEnv: a backend that is not local (countingBackend), a write buffer
// that keeps nothing uploaded, no memory cache (so that reads reach the
// disk cache), and a 4 MiB disk cache.
func rcEnv(t *testing.T) (*testEnv, *countingBackend) {
	e := newTestEnv(t)
	e.opts.WriteBufferBytes = 1
	e.opts.ReadCacheBytes = -1
	e.opts.ReadCacheDiskBytes = 4 << 20
	return e, &countingBackend{Backend: e.backend}
}

func (e *testEnv) openWith(b scos.Backend) *Driver {
	e.t.Helper()
	d, err := Open(context.Background(), e.dir, b, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// stamp is cluster i's data in generation gen: unique in the whole test.
func stamp(gen string, i int) []byte {
	b := make([]byte, DefaultClusterSize)
	for o := 0; o < len(b); o += 16 {
		copy(b[o:o+8], gen)
		binary.LittleEndian.PutUint64(b[o+8:], uint64(i))
	}
	return b
}

func writeStamps(t *testing.T, v *Volume, gen string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if err := v.WriteAt(ctx, stamp(gen, i), int64(i)*DefaultClusterSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The write buffer lets go of what is uploaded (WriteBufferBytes 1).
	waitFor(t, func() bool { return v.info().WriteBufferBytes <= DefaultClusterSize*int64(v.scoClusters) })
}

// readStamps reads n clusters, checks them against gen, and returns how
// many reads reached the backend.
func readStamps(t *testing.T, d *Driver, v *Volume, cb *countingBackend, gen string, n int) int64 {
	t.Helper()
	ctx := context.Background()
	before := cb.reads.Load()
	got := make([]byte, DefaultClusterSize)
	for i := range n {
		if err := v.ReadAt(ctx, got, int64(i)*DefaultClusterSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, stamp(gen, i)) {
			t.Fatalf("cluster %d: not the data of %q (stale or wrong data served)", i, gen)
		}
	}
	if d.rc != nil {
		if err := d.rc.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return cb.reads.Load() - before
}

func TestDiskReadCacheWarmAcrossRestart(t *testing.T) {
	ctx := context.Background()
	e, cb := rcEnv(t)
	d := e.openWith(cb)
	if _, err := d.Create(ctx, "a", 16<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := d.Volume("a")
	const n = 64
	writeStamps(t, v, "first", n)
	if got := readStamps(t, d, v, cb, "first", n); got == 0 {
		t.Fatal("the cold pass did not reach the backend")
	}
	if got := readStamps(t, d, v, cb, "first", n); got != 0 {
		t.Fatalf("warm pass: %d backend reads, want 0", got)
	}
	st := d.ReadCacheStats()
	if !st.Enabled || st.Hits < n || st.Corrupt != 0 || st.Bytes != n*DefaultClusterSize {
		t.Fatalf("stats %+v", st)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = e.openWith(cb)
	defer d.Close()
	v, _ = d.Volume("a")
	if got := readStamps(t, d, v, cb, "first", n); got != 0 {
		t.Fatalf("after a restart: %d backend reads, want 0 (the cache should be warm)", got)
	}
	if st := d.ReadCacheStats(); st.Hits != n {
		t.Fatalf("stats after restart %+v", st)
	}
}

// A byte flipped in a segment file is found by the CRC on the next hit:
// the entry is dropped, the read goes to the backend and returns the
// right data.
func TestDiskReadCacheFlippedByte(t *testing.T) {
	ctx := context.Background()
	e, cb := rcEnv(t)
	d := e.openWith(cb)
	defer d.Close()
	d.Create(ctx, "a", 16<<20, CreateOptions{})
	v, _ := d.Volume("a")
	writeStamps(t, v, "flip", 8)
	readStamps(t, d, v, cb, "flip", 8)
	// Find cluster 5's data in the segment files and flip a byte of it.
	want := stamp("flip", 5)
	segs, _ := filepath.Glob(filepath.Join(e.dir, readCacheDir, "seg-*"))
	found := false
	for _, p := range segs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, want); i >= 0 {
			b[i+100] ^= 1
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			found = true
			break
		}
	}
	if !found {
		t.Fatal("cluster 5 is not in the cache files")
	}
	if got := readStamps(t, d, v, cb, "flip", 8); got != 1 {
		t.Fatalf("%d backend reads, want 1 (the damaged cluster only)", got)
	}
	if st := d.ReadCacheStats(); st.Corrupt != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Refetched and cached again.
	if got := readStamps(t, d, v, cb, "flip", 8); got != 0 {
		t.Fatalf("%d backend reads after the refetch, want 0", got)
	}
}

// Rollback, delete-and-create-again and scrub make SCO names stand for
// other data or go away; the cache must never serve what it held of them.
// The backstop (the metadata's CRC) is not what saves these cases:
// Corrupt stays 0, so the invalidation did.
func TestDiskReadCacheNeverStale(t *testing.T) {
	ctx := context.Background()
	const n = 32
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, e *testEnv, cb *countingBackend, d *Driver) (*Driver, *Volume, string)
	}{
		{"rollback then restore reuses SCO numbers", func(t *testing.T, e *testEnv, cb *countingBackend, d *Driver) (*Driver, *Volume, string) {
			v, _ := d.Volume("a")
			if _, err := v.CreateSnapshot(ctx, "s1", ""); err != nil {
				t.Fatal(err)
			}
			writeStamps(t, v, "later", n)
			readStamps(t, d, v, cb, "later", n) // cached: SCOs after s1
			if err := d.Rollback(ctx, "a", "s1", false); err != nil {
				t.Fatal(err)
			}
			readStamps(t, d, v, cb, "early", n)
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			// The discarded SCOs leave the backend; then the host loses
			// the vdisk's local state, so that it is restored from the
			// backend and numbers its next SCOs as the discarded ones.
			waitFor(t, func() bool {
				objs, _ := e.backend.List(ctx, v.ns, "")
				for _, o := range objs {
					if n, err := scos.ParseSCOName(o.Name); err == nil && n.Number > 1 {
						return false
					}
				}
				return true
			})
			id := v.id
			d.Close()
			os.RemoveAll(filepath.Join(e.dir, id))
			d = e.openWith(cb)
			v, _ = d.Volume("a")
			writeStamps(t, v, "after", n)
			return d, v, "after"
		}},
		{"delete and create again under the same id", func(t *testing.T, e *testEnv, cb *countingBackend, d *Driver) (*Driver, *Volume, string) {
			if err := d.Delete(ctx, "a", false); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Create(ctx, "a", 16<<20, CreateOptions{ID: "fixed-id"}); err != nil {
				t.Fatal(err)
			}
			v, _ := d.Volume("a")
			writeStamps(t, v, "again", n)
			return d, v, "again"
		}},
		{"scrub rewrites the SCOs", func(t *testing.T, e *testEnv, cb *countingBackend, d *Driver) (*Driver, *Volume, string) {
			v, _ := d.Volume("a")
			// Overwrite every other cluster: the first SCO is half
			// garbage and gets rewritten.
			for i := 0; i < n; i += 2 {
				if err := v.WriteAt(ctx, stamp("scrubbed", i), int64(i)*DefaultClusterSize, false); err != nil {
					t.Fatal(err)
				}
			}
			for i := 1; i < n; i += 2 {
				if err := v.WriteAt(ctx, stamp("scrubbed", i), int64(i)*DefaultClusterSize, false); err != nil {
					t.Fatal(err)
				}
			}
			if err := v.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Scrub(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			return d, v, "scrubbed"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, cb := rcEnv(t)
			d := e.openWith(cb)
			if _, err := d.Create(ctx, "a", 16<<20, CreateOptions{ID: "fixed-id"}); err != nil {
				t.Fatal(err)
			}
			v, _ := d.Volume("a")
			writeStamps(t, v, "early", n)
			readStamps(t, d, v, cb, "early", n)
			readStamps(t, d, v, cb, "early", n)
			d, v, gen := tc.run(t, e, cb, d)
			// d is opened again below: close whichever is open last.
			defer func() { d.Close() }()
			readStamps(t, d, v, cb, gen, n)
			readStamps(t, d, v, cb, gen, n)
			if st := d.ReadCacheStats(); st.Corrupt != 0 {
				t.Fatalf("the cache held stale entries that only the CRC caught: %+v", st)
			}
			// And after a restart.
			d.Close()
			d = e.openWith(cb)
			v, _ = d.Volume("a")
			readStamps(t, d, v, cb, gen, n)
			if st := d.ReadCacheStats(); st.Corrupt != 0 {
				t.Fatalf("after a restart: %+v", st)
			}
		})
	}
}

// A clone reads what it shares with its parent from the parent's cached
// entries.
func TestDiskReadCacheSharedWithClone(t *testing.T) {
	ctx := context.Background()
	e, cb := rcEnv(t)
	d := e.openWith(cb)
	defer d.Close()
	d.Create(ctx, "a", 16<<20, CreateOptions{})
	v, _ := d.Volume("a")
	writeStamps(t, v, "parent", 16)
	if _, err := v.CreateSnapshot(ctx, "s", ""); err != nil {
		t.Fatal(err)
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	readStamps(t, d, v, cb, "parent", 16)
	if _, err := d.Clone(ctx, "c", "a", "s"); err != nil {
		t.Fatal(err)
	}
	c, _ := d.Volume("c")
	if got := readStamps(t, d, c, cb, "parent", 16); got != 0 {
		t.Fatalf("the clone made %d backend reads for clusters its parent has cached", got)
	}
}

// A local backend's reads are local already: no disk cache.
func TestDiskReadCacheOffForLocalBackend(t *testing.T) {
	e := newTestEnv(t)
	e.opts.ReadCacheDiskBytes = 4 << 20
	d := e.open()
	defer d.Close()
	if d.ReadCacheStats().Enabled {
		t.Fatal("disk cache on in front of a local backend")
	}
	if _, err := os.Stat(filepath.Join(e.dir, readCacheDir)); err == nil {
		t.Fatal("disk cache files created for a local backend")
	}
}
