package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// diskCacheMetrics returns the ovs_read_cache_disk_* series of /metrics
// (name without the prefix -> value).
func diskCacheMetrics(t *testing.T, c *cluster) map[string]float64 {
	t.Helper()
	resp, err := http.Get(c.APIURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if rest, isRC := strings.CutPrefix(name, "ovs_read_cache_disk_"); ok && isRC {
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("metric %q: %v", sc.Text(), err)
			}
			out[rest] = v
		}
	}
	return out
}

// TestDiskReadCache: on the erasure-coded backend, data written past a
// small write buffer is read twice (from the ASDs; the second pass fills
// the disk read cache, the first being a scan); after a clean restart it is read from the disk cache, and a
// byte flipped in a cache file meanwhile is caught by its CRC and read
// from the ASDs instead, never served.
func TestDiskReadCache(t *testing.T) {
	needTools(t, "nbdcopy")
	c := startClusterWith(t, "--write-buffer", "8MiB", "--read-cache", "1MiB", "--read-cache-disk", "64MiB")
	c.create("rc", "32MiB")
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	data := makeImage(t, src, 32*MiB, 16)
	mustRun(t, 5*time.Minute, "nbdcopy", "--flush", src, c.UnixURI("rc"))
	c.ovsOK("vdisk", "sync", "rc")
	waitFor(t, time.Minute, "the write buffer to let go of the uploaded SCOs", func() bool {
		var vi struct {
			WriteBuffer int64 `json:"write_buffer_bytes"`
		}
		if err := json.Unmarshal([]byte(c.ovsOK("vdisk", "info", "rc", "-o", "json")), &vi); err != nil {
			t.Fatal(err)
		}
		return vi.WriteBuffer <= 8*MiB
	})
	readBack := func(what string) {
		t.Helper()
		os.Remove(back)
		mustRun(t, 5*time.Minute, "nbdcopy", c.UnixURI("rc"), back)
		got, err := os.ReadFile(back)
		if err != nil {
			t.Fatal(err)
		}
		if d := firstDiff(got, data); d >= 0 {
			t.Fatalf("%s: differs at offset %d", what, d)
		}
	}
	// The first pass is a scan (nbdcopy's requests are long runs): the
	// cache admits a run only once it has been read before. The second
	// pass fills it.
	readBack("cold read")
	readBack("second read")
	m := diskCacheMetrics(t, c)
	if m["capacity_bytes"] == 0 || m["capacity_bytes"] > 64<<20 {
		t.Fatalf("disk read cache capacity %v, want at most 64 MiB: %v", m["capacity_bytes"], m)
	}
	waitFor(t, time.Minute, "the disk read cache to take the cold read", func() bool {
		return diskCacheMetrics(t, c)["fills_total"] > 0
	})
	c.stop()

	// Flip one byte of a cached cluster: a non-zero 4 KiB block of the
	// image, found in a segment file.
	segs, _ := filepath.Glob(filepath.Join(c.Dir, "volumes", "readcache", "seg-*"))
	flipped := false
	for off := int64(0); off < int64(len(data)) && !flipped; off += 4096 {
		blk := data[off : off+4096]
		if bytes.Count(blk, []byte{0}) > 2048 {
			continue
		}
		for _, p := range segs {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if i := bytes.Index(b, blk); i >= 0 {
				b[i+1234] ^= 0x10
				if err := os.WriteFile(p, b, 0o600); err != nil {
					t.Fatal(err)
				}
				flipped = true
				break
			}
		}
	}
	if !flipped {
		t.Fatal("no cached cluster found in the disk read cache's files")
	}

	c.start()
	readBack("read after a restart with a flipped byte in the cache")
	m = diskCacheMetrics(t, c)
	if m["hits_total"] == 0 {
		t.Errorf("no disk read cache hits after the restart: %v", m)
	}
	if m["corrupt_total"] != 1 {
		t.Errorf("corrupt entries %v, want 1 (the flipped byte): %v", m["corrupt_total"], m)
	}
	t.Logf("disk read cache after the restart: %v", m)
}
