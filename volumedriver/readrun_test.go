package volumedriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ovs-storage/ovs/scos"
)

// rangeRead is one backend.ReadAt a recordingBackend saw.
type rangeRead struct {
	ns, name string
	off      int64
	n        int
}

// recordingBackend records ReadAt calls; corruptRanged flips a byte at
// that object offset in reads longer than one cluster (a bad path that a
// single cluster read does not take), corruptAll in every read covering
// it; hook runs before each read.
type recordingBackend struct {
	scos.Backend
	mu            sync.Mutex
	reads         []rangeRead
	corruptRanged int64
	corruptAll    bool
	hook          func(ns string)
}

func (b *recordingBackend) ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error {
	b.mu.Lock()
	b.reads = append(b.reads, rangeRead{ns, name, off, len(p)})
	hook, at, all := b.hook, b.corruptRanged, b.corruptAll
	b.mu.Unlock()
	if hook != nil {
		hook(ns)
	}
	if err := b.Backend.ReadAt(ctx, ns, name, p, off); err != nil {
		return err
	}
	if at >= off && at < off+int64(len(p)) && (all || len(p) > 4096) {
		p[at-off] ^= 0xff
	}
	return nil
}

func (b *recordingBackend) take() []rangeRead {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.reads
	b.reads = nil
	return r
}

// openRecording opens a driver whose every uploaded SCO leaves the write
// buffer and that has no memory or disk read cache, so that every read of
// synced data reaches the backend.
func openRecording(t *testing.T) (*Driver, *recordingBackend) {
	t.Helper()
	e := newTestEnv(t)
	rb := &recordingBackend{Backend: e.backend, corruptRanged: -1}
	e.opts.WriteBufferBytes = 1
	e.opts.ReadCacheBytes = -1
	d, err := Open(context.Background(), e.dir, rb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, rb
}

func randData(seed uint64, n int) []byte {
	p := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(p)
	return p
}

// writeSynced writes p at off and waits until it has left the write buffer.
func writeSynced(t *testing.T, v *Volume, p []byte, off int64) {
	t.Helper()
	ctx := context.Background()
	if err := v.WriteAt(ctx, p, off, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { v.Sync(ctx); return v.info().WriteBufferBytes == 0 })
}

func TestBackendRunsCoalesced(t *testing.T) {
	const cs = 4096
	for _, tc := range []struct {
		name      string
		off, n    int64
		rewrite   bool // every other cluster of the range rewritten later (another SCO)
		wantReads int
	}{
		{"1 MiB in one SCO", 0, 1 << 20, false, 1},
		{"bounded at 1 MiB", 0, 3 << 20, false, 3},
		{"split at the SCO boundary", 4<<20 - 64<<10, 128 << 10, false, 2},
		{"alternating SCOs not merged", 0, 16 * cs, true, 16},
		{"unaligned", 100, 64<<10 + 1, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d, rb := openRecording(t)
			d.Create(ctx, "a", 16<<20, CreateOptions{})
			v, _ := d.Volume("a")
			m := &model{data: make([]byte, 16<<20)}
			p := randData(1, 8<<20)
			m.write(p, 0)
			writeSynced(t, v, p, 0)
			if tc.rewrite {
				for c := int64(0); c < 16; c += 2 {
					q := randData(uint64(100+c), cs)
					if err := v.WriteAt(ctx, q, c*cs, false); err != nil {
						t.Fatal(err)
					}
					m.write(q, c*cs)
				}
				writeSynced(t, v, nil, 0)
			}
			rb.take()
			got := make([]byte, tc.n)
			if err := v.ReadAt(ctx, got, tc.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, m.data[tc.off:tc.off+tc.n]) {
				t.Fatal("data read differs from data written")
			}
			reads := rb.take()
			if len(reads) != tc.wantReads {
				t.Fatalf("%d backend reads, want %d: %+v", len(reads), tc.wantReads, reads)
			}
			for _, r := range reads {
				if r.n > maxBackendRun || r.n%cs != 0 {
					t.Fatalf("backend read of %d bytes", r.n)
				}
			}
		})
	}
}

func TestBackendRunCorruptClusterFallsBack(t *testing.T) {
	const cs = 4096
	for _, tc := range []struct {
		name    string
		all     bool // the single cluster read is bad too
		wantErr error
	}{
		{"single read good", false, nil},
		{"single read bad", true, scos.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d, rb := openRecording(t)
			d.Create(ctx, "a", 16<<20, CreateOptions{})
			v, _ := d.Volume("a")
			p := randData(2, 1<<20)
			writeSynced(t, v, p, 0)
			rb.mu.Lock()
			rb.corruptRanged, rb.corruptAll = 5*cs+17, tc.all
			rb.mu.Unlock()
			rb.take()
			got := make([]byte, 64<<10)
			err := v.ReadAt(ctx, got, 0)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("read: %v, want %v", err, tc.wantErr)
			}
			if err == nil && !bytes.Equal(got, p[:len(got)]) {
				t.Fatal("bad data served")
			}
			reads := rb.take()
			if len(reads) != 2 || reads[0].n != len(got) || reads[1].off != 5*cs || reads[1].n != cs {
				t.Fatalf("backend reads %+v, want the range then cluster 5 alone", reads)
			}
		})
	}
}

func TestCloneRunsReadAncestorNamespace(t *testing.T) {
	const cs = 4096
	ctx := context.Background()
	d, rb := openRecording(t)
	d.Create(ctx, "p", 16<<20, CreateOptions{})
	p, _ := d.Volume("p")
	pdata := randData(3, 1<<20)
	writeSynced(t, p, pdata, 0)
	if _, err := d.CreateSnapshot(ctx, "p", "s", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Clone(ctx, "c", "p", "s"); err != nil {
		t.Fatal(err)
	}
	c, _ := d.Volume("c")
	own := randData(4, cs)
	writeSynced(t, c, own, 10*cs)
	want := append([]byte(nil), pdata...)
	copy(want[10*cs:], own)
	rb.take()
	got := make([]byte, 1<<20)
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("clone reads other data than its parent's with its own write")
	}
	reads := rb.take()
	type span struct {
		ns       string
		off, len int64
	}
	var spans []span
	for _, r := range reads {
		spans = append(spans, span{r.ns, r.off, int64(r.n)})
	}
	wantSpans := []span{{p.ns, 0, 10 * cs}, {c.ns, 0, cs}, {p.ns, 11 * cs, (256 - 11) * cs}}
	if len(spans) != len(wantSpans) {
		t.Fatalf("backend reads %+v, want %+v", spans, wantSpans)
	}
	for i := range spans {
		if spans[i] != wantSpans[i] {
			t.Fatalf("backend reads %+v, want %+v", spans, wantSpans)
		}
	}
}

// TestFlattenRunsClientWriteWins: flatten copies runs with one read each;
// a client write that lands while a run is being read wins over the copy.
func TestFlattenRunsClientWriteWins(t *testing.T) {
	const cs = 4096
	ctx := context.Background()
	d, rb := openRecording(t)
	d.Create(ctx, "p", 16<<20, CreateOptions{})
	p, _ := d.Volume("p")
	pdata := randData(5, 2<<20)
	writeSynced(t, p, pdata, 0)
	d.CreateSnapshot(ctx, "p", "s", "")
	if _, err := d.Clone(ctx, "c", "p", "s"); err != nil {
		t.Fatal(err)
	}
	c, _ := d.Volume("c")
	want := append([]byte(nil), pdata...)
	client := randData(6, cs)
	copy(want[7*cs:], client)
	var once atomic.Bool
	rb.mu.Lock()
	rb.hook = func(ns string) {
		if ns == p.ns && once.CompareAndSwap(false, true) {
			// In the middle of the first run being copied.
			if err := c.WriteAt(ctx, client, 7*cs, false); err != nil {
				t.Error(err)
			}
		}
	}
	rb.mu.Unlock()
	rb.take()
	if _, err := d.Flatten(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	var parentReads int
	for _, r := range rb.take() {
		if r.ns == p.ns {
			parentReads++
		}
	}
	if parentReads != 2 {
		t.Fatalf("flatten read the parent %d times for 2 MiB, want 2", parentReads)
	}
	check(t, c, &model{data: append(want, make([]byte, 14<<20)...)})
	// Cut loose: nothing of the parent is read any more.
	writeSynced(t, c, nil, 0)
	rb.take()
	check(t, c, &model{data: append(want, make([]byte, 14<<20)...)})
	for _, r := range rb.take() {
		if r.ns != c.ns {
			t.Fatalf("flattened clone read %+v", r)
		}
	}
}

// TestDiskCacheServesRuns: a ranged read read twice fills the disk cache
// per cluster (once, it is a scan); the run read again comes from it without a backend read, and a
// run with one cluster dropped from it reads just that cluster.
func TestDiskCacheServesRuns(t *testing.T) {
	const cs = 4096
	ctx := context.Background()
	e := newTestEnv(t)
	rb := &recordingBackend{Backend: e.backend, corruptRanged: -1}
	e.opts.WriteBufferBytes, e.opts.ReadCacheBytes, e.opts.ReadCacheDiskBytes = 1, -1, 64<<20
	d, err := Open(ctx, e.dir, rb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Create(ctx, "a", 16<<20, CreateOptions{})
	v, _ := d.Volume("a")
	p := randData(7, 1<<20)
	writeSynced(t, v, p, 0)
	got := make([]byte, 1<<20)
	for _, pass := range []struct {
		name      string
		before    func()
		wantReads []rangeRead
	}{
		// A 1 MiB run is a scan: read once, it is not kept; read again,
		// it is.
		{"cold", func() {}, []rangeRead{{v.ns, "", 0, 1 << 20}}},
		{"second", func() { d.rc.Flush(ctx) }, []rangeRead{{v.ns, "", 0, 1 << 20}}},
		{"warm", func() { d.rc.Flush(ctx) }, nil},
		{"one dropped", func() { d.rc.Drop(diskCacheKey(v.ns, scos.SCOName{Number: 1}, 9)) },
			[]rangeRead{{v.ns, "", 9 * cs, cs}}},
	} {
		pass.before()
		rb.take()
		if err := v.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("%s: wrong data", pass.name)
		}
		reads := rb.take()
		for i := range reads {
			reads[i].name = ""
		}
		if len(reads) != len(pass.wantReads) || (len(reads) > 0 && reads[0] != pass.wantReads[0]) {
			t.Fatalf("%s: backend reads %+v, want %+v", pass.name, reads, pass.wantReads)
		}
	}
}

// windowBackend is a recordingBackend that reads windows clipped to the
// object's end (as the EC backend does), recording them as ranged reads.
type windowBackend struct{ *recordingBackend }

func (b windowBackend) ReadAtMost(ctx context.Context, ns, name string, p []byte, off int64) (int, error) {
	st, err := b.Backend.Stat(ctx, ns, name)
	if err != nil {
		return 0, err
	}
	n := int(min(int64(len(p)), st.Size-off))
	if n <= 0 {
		return 0, fmt.Errorf("read %s/%s at %d: past the end (%d bytes)", ns, name, off, st.Size)
	}
	return n, b.ReadAt(ctx, ns, name, p[:n], off)
}

// TestMissWindow: a lone cluster that misses every cache is read with its
// aligned 64 KiB window, which fills the disk cache: its neighbours are
// then hits. A window that ends with its SCO is clipped there, and a
// neighbour whose window bytes were damaged is caught by its CRC on the
// hit and read again, never served.
func TestMissWindow(t *testing.T) {
	const cs = 4096
	ctx := context.Background()
	e := newTestEnv(t)
	rb := windowBackend{&recordingBackend{Backend: e.backend, corruptRanged: -1}}
	e.opts.WriteBufferBytes, e.opts.ReadCacheBytes, e.opts.ReadCacheDiskBytes = 1, -1, 64<<20
	d, err := Open(ctx, e.dir, rb, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Create(ctx, "a", 16<<20, CreateOptions{})
	v, _ := d.Volume("a")
	// 100 clusters: one SCO of 400 KiB, its last window clipped at 36 KiB.
	p := randData(9, 100*cs)
	writeSynced(t, v, p, 0)
	got := make([]byte, cs)
	for _, step := range []struct {
		name     string
		cluster  int
		before   func()
		wantRead *rangeRead
	}{
		{"cold", 5, func() {}, &rangeRead{v.ns, "", 0, missWindow}},
		{"neighbour", 15, func() { d.rc.Flush(ctx) }, nil},
		{"next window", 16, func() {}, &rangeRead{v.ns, "", missWindow, missWindow}},
		{"clipped window", 99, func() {}, &rangeRead{v.ns, "", 6 * missWindow, 4 * cs}},
		{"clipped neighbour", 96, func() { d.rc.Flush(ctx) }, nil},
		// Cluster 40's window comes back with a byte of cluster 41
		// flipped: 40 is served, 41 is cached damaged, caught on its hit
		// and read on its own.
		{"damaged window", 40, func() {
			rb.mu.Lock()
			rb.corruptRanged, rb.corruptAll = 41*cs+7, true
			rb.mu.Unlock()
		}, &rangeRead{v.ns, "", 2 * missWindow, missWindow}},
		{"damaged neighbour", 41, func() {
			d.rc.Flush(ctx)
			rb.mu.Lock()
			rb.corruptRanged = -1
			rb.mu.Unlock()
		}, &rangeRead{v.ns, "", 2 * missWindow, missWindow}},
	} {
		step.before()
		rb.take()
		if err := v.ReadAt(ctx, got, int64(step.cluster)*cs); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if !bytes.Equal(got, p[step.cluster*cs:(step.cluster+1)*cs]) {
			t.Fatalf("%s: wrong data", step.name)
		}
		reads := rb.take()
		for i := range reads {
			reads[i].name = ""
		}
		switch {
		case step.wantRead == nil && len(reads) != 0,
			step.wantRead != nil && (len(reads) != 1 || reads[0] != *step.wantRead):
			t.Fatalf("%s: backend reads %+v, want %+v", step.name, reads, step.wantRead)
		}
	}
	if st := d.ReadCacheStats(); st.Corrupt != 1 {
		t.Fatalf("corrupt entries %d, want 1 (the damaged neighbour): %+v", st.Corrupt, st)
	}
}
