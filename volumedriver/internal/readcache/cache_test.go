package readcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

const cs = 4096

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openT(t testing.TB, dir string, size int64, mod ...func(*Options)) *Cache {
	t.Helper()
	o := Options{Dir: dir, Size: size, Logger: quiet()}
	for _, m := range mod {
		m(&o)
	}
	c, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// cluster is recognisable data for (ns, loc).
func cluster(ns string, loc uint64) []byte {
	b := make([]byte, cs)
	for i := 0; i < cs; i += 16 {
		binary.LittleEndian.PutUint64(b[i:], loc)
		copy(b[i+8:i+16], ns)
	}
	return b
}

func flush(t testing.TB, c *Cache) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func fillKeys(t testing.TB, c *Cache, ns string, from, to uint64) {
	t.Helper()
	for loc := from; loc < to; loc++ {
		c.Add(Key{ns, loc}, cluster(ns, loc))
		if (loc-from)%256 == 255 {
			flush(t, c) // stay under the queue bound
		}
	}
	flush(t, c)
}

func mustHit(t testing.TB, c *Cache, ns string, loc uint64) {
	t.Helper()
	buf := make([]byte, cs)
	if !c.Get(Key{ns, loc}, buf) {
		t.Fatalf("%s/%d: miss, want a hit (stats %+v)", ns, loc, c.Stats())
	}
	if !bytes.Equal(buf, cluster(ns, loc)) {
		t.Fatalf("%s/%d: wrong data served", ns, loc)
	}
}

func mustMiss(t testing.TB, c *Cache, ns string, loc uint64) {
	t.Helper()
	if c.Get(Key{ns, loc}, make([]byte, cs)) {
		t.Fatalf("%s/%d: hit, want a miss", ns, loc)
	}
}

func TestHitVerified(t *testing.T) {
	c := openT(t, t.TempDir(), 4<<20)
	fillKeys(t, c, "vd-a", 1, 10)
	for loc := uint64(1); loc < 10; loc++ {
		mustHit(t, c, "vd-a", loc)
	}
	mustMiss(t, c, "vd-a", 10)
	mustMiss(t, c, "vd-b", 1)
	// A caller asking with another length gets a miss, not other bytes.
	if c.Get(Key{"vd-a", 1}, make([]byte, 2*cs)) || c.Get(Key{"vd-a", 1}, make([]byte, cs/2)) {
		t.Fatal("hit with the wrong length")
	}
	st := c.Stats()
	if st.Hits != 9 || st.Fills != 9 || st.Corrupt != 0 || st.Bytes != 9*cs {
		t.Fatalf("stats %+v", st)
	}
}

// findEntry returns the segment file and offset of key's entry.
func findEntry(t *testing.T, c *Cache, ns string, loc uint64) (string, int64) {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	p, ok := c.index[keyHash(c.tokens[ns], loc)]
	if !ok {
		t.Fatalf("%s/%d not indexed", ns, loc)
	}
	return c.segs[p>>48].path, int64(uint32(p))
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestFlippedByteDropped(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   int64 // from the start of the entry
	}{
		{"first byte", 0},
		{"middle byte", cs / 2},
		{"last byte", cs - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openT(t, t.TempDir(), 4<<20)
			fillKeys(t, c, "vd-a", 1, 4)
			path, off := findEntry(t, c, "vd-a", 2)
			flipByte(t, path, off+tc.at)
			mustMiss(t, c, "vd-a", 2)
			if st := c.Stats(); st.Corrupt != 1 || st.Bytes != 2*cs {
				t.Fatalf("stats after the flipped byte: %+v", st)
			}
			mustMiss(t, c, "vd-a", 2) // dropped: not read (nor counted) again
			if st := c.Stats(); st.Corrupt != 1 {
				t.Fatalf("corrupt counted twice: %+v", st)
			}
			mustHit(t, c, "vd-a", 1)
			mustHit(t, c, "vd-a", 3)
			// The refetched copy is cached anew and served.
			c.Add(Key{"vd-a", 2}, cluster("vd-a", 2))
			flush(t, c)
			mustHit(t, c, "vd-a", 2)
		})
	}
}

func TestRestartKeepsWarm(t *testing.T) {
	dir := t.TempDir()
	c := openT(t, dir, 4<<20)
	fillKeys(t, c, "vd-a", 1, 100)
	fillKeys(t, c, "vd-b", 1, 10)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = openT(t, dir, 4<<20)
	for loc := uint64(1); loc < 100; loc++ {
		mustHit(t, c, "vd-a", loc)
	}
	mustHit(t, c, "vd-b", 9)
	if st := c.Stats(); st.Bytes != 108*cs {
		t.Fatalf("bytes after restart: %+v", st)
	}
	// New fills after a restart go to a new segment and survive the next.
	fillKeys(t, c, "vd-c", 1, 5)
	c.Close()
	c = openT(t, dir, 4<<20)
	mustHit(t, c, "vd-c", 4)
	mustHit(t, c, "vd-a", 50)
}

func TestKilledLosesOnlyOpenSegment(t *testing.T) {
	dir := t.TempDir()
	// 4 segments of 256 KiB: 60 entries each.
	c := openT(t, dir, 1<<20)
	fillKeys(t, c, "vd-a", 1, 100) // fills segment 1, 40 in segment 2
	// A kill once the first segment's seal (beside the writer) is done:
	// the writer stops, the open segment is not sealed.
	c.mu.Lock()
	c.broken = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	c.sealing.Wait()
	c.closeFiles()
	c.closing.Do(func() {})

	c = openT(t, dir, 1<<20)
	hits := 0
	for loc := uint64(1); loc < 100; loc++ {
		if c.Get(Key{"vd-a", loc}, make([]byte, cs)) {
			hits++
		}
	}
	if hits == 0 || hits == 99 {
		t.Fatalf("%d hits after a kill: want the sealed segment's and not the open one's", hits)
	}
	mustHit(t, c, "vd-a", 1)
	if st := c.Stats(); st.Corrupt != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDamagedFilesDropped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		warm   bool // vd-a/1 still a hit
	}{
		{"intact", func(*testing.T, string) {}, true},
		{"namespace table flipped", func(t *testing.T, dir string) { flipByte(t, filepath.Join(dir, tableFile), 12) }, false},
		{"namespace table truncated", func(t *testing.T, dir string) {
			os.Truncate(filepath.Join(dir, tableFile), 11)
		}, false},
		{"namespace table missing", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, tableFile)) }, false},
		{"segment header flipped", func(t *testing.T, dir string) { flipByte(t, filepath.Join(dir, segName(0)), 30) }, false},
		{"segment header version", func(t *testing.T, dir string) { flipByte(t, filepath.Join(dir, segName(0)), 8) }, false},
		{"summary flipped", func(t *testing.T, dir string) {
			f, _ := os.Open(filepath.Join(dir, segName(0)))
			hb := make([]byte, segHeaderSize)
			f.ReadAt(hb, 0)
			f.Close()
			h, err := decodeSegHeader(hb)
			if err != nil {
				t.Fatal(err)
			}
			flipByte(t, filepath.Join(dir, segName(0)), int64(h.summaryOff)+3)
		}, false},
		{"segment truncated", func(t *testing.T, dir string) { os.Truncate(filepath.Join(dir, segName(0)), 100) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := openT(t, dir, 4<<20)
			fillKeys(t, c, "vd-a", 1, 10)
			c.Close()
			tc.damage(t, dir)
			c = openT(t, dir, 4<<20)
			if tc.warm {
				mustHit(t, c, "vd-a", 1)
			} else {
				mustMiss(t, c, "vd-a", 1)
			}
			// Whatever happened, the cache works afterwards.
			fillKeys(t, c, "vd-a", 20, 30)
			mustHit(t, c, "vd-a", 25)
		})
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

func TestStaysWithinSize(t *testing.T) {
	for _, size := range []int64{MinSize, 1 << 20, 3<<20 + 12345} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			dir := t.TempDir()
			c := openT(t, dir, size, func(o *Options) { o.NoAdmission = true })
			n := uint64(4 * size / cs)
			fillKeys(t, c, "vd-a", 1, n)
			st := c.Stats()
			if st.Capacity > size || st.Bytes > st.Capacity || st.Evictions == 0 {
				t.Fatalf("size %d: stats %+v", size, st)
			}
			// Segment files plus the namespace table (a few bytes).
			if got := dirBytes(t, dir); got > size+4096 {
				t.Fatalf("the cache takes %d bytes on disk, more than its size %d", got, size)
			}
			mustHit(t, c, "vd-a", n-1) // the newest are in
			mustMiss(t, c, "vd-a", 1)  // the oldest went
			c.Close()
			// Reopened smaller: the files shrink with it.
			c = openT(t, dir, MinSize)
			if got := dirBytes(t, dir); got > MinSize+4096 {
				t.Fatalf("after shrinking to %d the cache takes %d bytes", MinSize, got)
			}
		})
	}
}

func TestInvalidate(t *testing.T) {
	dir := t.TempDir()
	c := openT(t, dir, 4<<20)
	fillKeys(t, c, "vd-a", 1, 10)
	fillKeys(t, c, "vd-b", 1, 10)
	c.Invalidate("vd-a")
	mustMiss(t, c, "vd-a", 1)
	mustHit(t, c, "vd-b", 1)
	c.Close()
	c = openT(t, dir, 4<<20)
	mustMiss(t, c, "vd-a", 1) // and not back after a restart
	mustHit(t, c, "vd-b", 1)
	// The same names with new contents (a vdisk created again under the
	// same id): only the new data is served.
	for loc := uint64(1); loc < 10; loc++ {
		c.Add(Key{"vd-a", loc}, cluster("new", loc))
	}
	flush(t, c)
	buf := make([]byte, cs)
	if !c.Get(Key{"vd-a", 3}, buf) || !bytes.Equal(buf, cluster("new", 3)) {
		t.Fatal("the new data of an invalidated namespace is not served")
	}
	c.Close()
	c = openT(t, dir, 4<<20)
	if !c.Get(Key{"vd-a", 3}, buf) || !bytes.Equal(buf, cluster("new", 3)) {
		t.Fatal("after a restart the old data of an invalidated namespace came back")
	}
}

func TestDrop(t *testing.T) {
	c := openT(t, t.TempDir(), 4<<20)
	fillKeys(t, c, "vd-a", 1, 3)
	c.Drop(Key{"vd-a", 1})
	c.Drop(Key{"vd-x", 1})
	mustMiss(t, c, "vd-a", 1)
	mustHit(t, c, "vd-a", 2)
}

func TestQueueFullDrops(t *testing.T) {
	c := openT(t, t.TempDir(), 4<<20, func(o *Options) { o.QueueLen = 1 })
	for loc := uint64(0); loc < 1000; loc++ {
		c.Add(Key{"vd-a", loc}, cluster("vd-a", loc)) // never blocks
	}
	flush(t, c)
	if st := c.Stats(); st.Dropped == 0 || st.Fills+st.Dropped != 1000 {
		t.Fatalf("stats %+v", st)
	}
}

// Readers run against the writer and segment reclaims; every hit must be
// the right data (run with -race).
func TestConcurrentReaders(t *testing.T) {
	c := openT(t, t.TempDir(), MinSize, func(o *Options) { o.NoAdmission = true })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, cs)
			for i := uint64(0); ctx.Err() == nil; i++ {
				loc := (i*7 + uint64(r)) % 300
				if c.Get(Key{"vd-a", loc}, buf) && !bytes.Equal(buf, cluster("vd-a", loc)) {
					t.Errorf("wrong data for %d", loc)
					return
				}
				if i%3 == 0 {
					c.Add(Key{"vd-a", loc}, cluster("vd-a", loc))
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			c.Stats()
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	if st := c.Stats(); st.Corrupt != 0 || st.Hits == 0 || st.Evictions == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestOpenRefusesTooSmall(t *testing.T) {
	if _, err := Open(Options{Dir: t.TempDir(), Size: MinSize - 1}); err == nil {
		t.Fatal("a cache below the minimum size opened")
	}
}

// TestGetCRC: with the caller's CRC, an entry of other data and a flipped
// byte are both dropped, never served; the right CRC is a hit.
func TestGetCRC(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flip    bool
		wrong   bool // ask with another cluster's CRC
		wantHit bool
	}{
		{"hit", false, false, true},
		{"other data", false, true, false},
		{"flipped byte", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openT(t, t.TempDir(), 4<<20)
			fillKeys(t, c, "vd-a", 1, 4)
			if tc.flip {
				path, off := findEntry(t, c, "vd-a", 2)
				flipByte(t, path, off+cs/3)
			}
			want := crc(cluster("vd-a", 2))
			if tc.wrong {
				want = crc(cluster("vd-a", 3))
			}
			buf := make([]byte, cs)
			if got := c.GetCRC(Key{"vd-a", 2}, buf, want); got != tc.wantHit {
				t.Fatalf("GetCRC hit %v, want %v", got, tc.wantHit)
			}
			if tc.wantHit {
				if !bytes.Equal(buf, cluster("vd-a", 2)) {
					t.Fatal("wrong data served")
				}
				return
			}
			if st := c.Stats(); st.Corrupt != 1 || st.Bytes != 2*cs {
				t.Fatalf("stats %+v, want the entry dropped and counted corrupt", st)
			}
			mustMiss(t, c, "vd-a", 2)
		})
	}
}

// AddRun keeps a run of clusters as entries loc, loc+1, ...; the CRCs it
// is given are the entries' (GetCRC serves only data that has the CRC
// asked for), and malformed runs are ignored.
func TestAddRun(t *testing.T) {
	c := openT(t, t.TempDir(), 4<<20)
	var run []byte
	var crcs []uint32
	for loc := uint64(10); loc < 20; loc++ {
		run = append(run, cluster("vd-a", loc)...)
		crcs = append(crcs, crc(cluster("vd-a", loc)))
	}
	c.AddRun(Key{"vd-a", 10}, cs, run, crcs)
	c.AddRun(Key{"vd-b", 10}, cs, run, nil) // CRCs computed by the writer
	for _, bad := range []struct {
		size int
		data []byte
		crcs []uint32
	}{
		{0, run, nil}, {cs + 1, run, nil}, {cs, run[:cs+7], nil}, {cs, run, crcs[:3]}, {2 << 20, make([]byte, 2<<20), nil}, {cs, nil, nil},
	} {
		c.AddRun(Key{"vd-c", 10}, bad.size, bad.data, bad.crcs)
	}
	flush(t, c)
	for _, ns := range []string{"vd-a", "vd-b"} {
		for loc := uint64(10); loc < 20; loc++ {
			buf := make([]byte, cs)
			if !c.GetCRC(Key{ns, loc}, buf, crc(cluster("vd-a", loc))) || !bytes.Equal(buf, cluster("vd-a", loc)) {
				t.Fatalf("%s/%d: not served, or not its data (stats %+v)", ns, loc, c.Stats())
			}
		}
		mustMiss(t, c, ns, 9)
		mustMiss(t, c, ns, 20)
	}
	mustMiss(t, c, "vd-c", 10)
	if st := c.Stats(); st.Fills != 20 || st.Corrupt != 0 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	// A CRC that is not the data's: the entry is refused when asked for
	// with the data's CRC, and dropped.
	bad := append([]uint32(nil), crcs...)
	bad[3] ^= 1
	c.AddRun(Key{"vd-d", 10}, cs, run, bad)
	flush(t, c)
	if c.GetCRC(Key{"vd-d", 13}, make([]byte, cs), crcs[3]) {
		t.Fatal("an entry recorded with another CRC was served")
	}
	if !c.GetCRC(Key{"vd-d", 12}, make([]byte, cs), crcs[2]) {
		t.Fatal("the run's other entries were lost with the bad one")
	}
}

// The queue is bounded in bytes too: runs past QueueBytes are dropped (and
// counted per entry), never blocking the reader.
func TestQueueBytesDrops(t *testing.T) {
	c := openT(t, t.TempDir(), 16<<20, func(o *Options) { o.QueueBytes = 64 << 10 })
	run := make([]byte, 16*cs)
	for i := range 200 {
		c.AddRun(Key{"vd-a", uint64(i * 16)}, cs, run, nil)
	}
	flush(t, c)
	if st := c.Stats(); st.Dropped == 0 || st.Dropped%16 != 0 || st.Fills+st.Dropped != 200*16 {
		t.Fatalf("stats %+v", st)
	}
	if n := c.queued.Load(); n != 0 {
		t.Fatalf("%d bytes still counted as queued after a flush", n)
	}
}

// Seen: a key asked for once (a scan's first pass) is not seen; asked for
// again it is, from the namespace's first lookup on (the namespace gets
// its token then), and a namespace invalidated starts counting afresh.
func TestSeen(t *testing.T) {
	c := openT(t, t.TempDir(), 4<<20)
	buf := make([]byte, cs)
	k := Key{"vd-new", 7}
	if c.Seen(k) {
		t.Fatal("seen before any lookup")
	}
	c.Get(k, buf)
	if c.Seen(k) {
		t.Fatal("seen after one lookup")
	}
	if c.Seen(Key{"vd-new", 8}) {
		t.Fatal("a neighbour counts as seen")
	}
	c.Get(k, buf)
	if !c.Seen(k) {
		t.Fatal("not seen after two lookups")
	}
	c.Invalidate("vd-new")
	if c.Seen(k) {
		t.Fatal("seen in an invalidated namespace")
	}
}

// TestGetRunCRC: a run looked up at once serves the clusters the cache
// holds with the caller's CRCs and no others: gaps, an entry of other
// data, and a flipped byte are misses (the last two dropped); each
// cluster counts as one access (Seen after two runs).
func TestGetRunCRC(t *testing.T) {
	c := openT(t, t.TempDir(), 4<<20)
	fillKeys(t, c, "vd-a", 10, 14) // 10..13; 14 and 15 missing
	c.Add(Key{"vd-a", 16}, cluster("vd-a", 99))
	flush(t, c)
	path, off := findEntry(t, c, "vd-a", 12)
	flipByte(t, path, off+100)

	const n = 8 // 10..17
	want := make([]uint32, n)
	for i := range want {
		want[i] = crc(cluster("vd-a", 10+uint64(i)))
	}
	buf := make([]byte, n*cs)
	hit := make([]bool, n)
	got := c.GetRunCRC(Key{"vd-a", 10}, cs, buf, want, hit)
	wantHit := []bool{true, true, false, true, false, false, false, false}
	if got != 3 || !slices.Equal(hit, wantHit) {
		t.Fatalf("hits %d %v, want 3 %v", got, hit, wantHit)
	}
	for i, h := range hit {
		if h && !bytes.Equal(buf[i*cs:(i+1)*cs], cluster("vd-a", 10+uint64(i))) {
			t.Fatalf("cluster %d: wrong data served", 10+i)
		}
	}
	if st := c.Stats(); st.Corrupt != 2 || st.Hits != 3 || st.Misses != 5 {
		t.Fatalf("stats: %+v, want 2 corrupt (flipped, other data), 3 hits, 5 misses", st)
	}
	mustMiss(t, c, "vd-a", 12) // dropped
	if c.Seen(Key{"vd-a", 17}) {
		t.Fatal("seen after one run")
	}
	c.GetRunCRC(Key{"vd-a", 10}, cs, buf, want, hit)
	if !c.Seen(Key{"vd-a", 17}) || !c.Seen(Key{"vd-a", 10}) {
		t.Fatal("not seen after two runs")
	}
	if c.GetRunCRC(Key{"vd-a", 10}, cs, buf[:cs], want, hit) != 0 {
		t.Fatal("a buffer of the wrong size was served")
	}
}
