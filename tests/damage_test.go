package tests

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// damageInfo is the part of `ovs vdisk info -o json` the damage test reads.
type damageInfo struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// damageState is the part of a vdisk's state.json the test needs to find
// the files to damage.
type damageState struct {
	OpenTLog     string `json:"open_tlog"`
	OpenFirstSCO uint32 `json:"open_first_sco"`
}

// TestDamagedHostLocalFiles corrupts, truncates or deletes each host-local
// file of a vdisk (metadata store, state.json, open TLog, an SCO not yet on
// the backend) while `ovs up` is stopped, starts it again, and reads every
// cluster back with libnbd: each must hold what was written, or, for
// exactly the clusters of a lost SCO, fail with EIO while the vdisk says
// it is degraded and names the SCO. Nothing may read as other data.
func TestDamagedHostLocalFiles(t *testing.T) {
	py := needPython(t)
	script, err := filepath.Abs(filepath.Join("testdata", "damage.py"))
	if err != nil {
		t.Fatal(err)
	}
	const (
		size   = 32 << 20
		synced = 8 << 20  // written, flushed and synced to the backend
		local  = 12 << 20 // then written and flushed, not synced: three SCOs
	)
	type damage func(t *testing.T, dir string, st damageState)
	flip := func(t *testing.T, path string, off int64) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if off >= int64(len(b)) {
			t.Fatalf("%s has %d bytes, cannot flip byte %d", path, len(b), off)
		}
		b[off] ^= 0x04
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	truncate := func(t *testing.T, path string, frac int64) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, fi.Size()*frac/100); err != nil {
			t.Fatal(err)
		}
	}
	remove := func(t *testing.T, path string) {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	scoPath := func(dir string, n uint32) string {
		return filepath.Join(dir, "sco", fmt.Sprintf("00_%08x_00", n))
	}
	const pageSlot = 24 + 256*12 // one metadata page on disk
	cases := []struct {
		name    string
		damage  damage
		lostSCO bool // the middle SCO of the unsynced data is lost
	}{
		{"untouched", func(*testing.T, string, damageState) {}, false},
		{"md-deleted", func(t *testing.T, dir string, _ damageState) { remove(t, filepath.Join(dir, "md")) }, false},
		{"md-truncated", func(t *testing.T, dir string, _ damageState) { truncate(t, filepath.Join(dir, "md"), 20) }, false},
		{"md-page-zeroed", func(t *testing.T, dir string, _ damageState) {
			p := filepath.Join(dir, "md")
			b, err := os.ReadFile(p)
			if err != nil || len(b) < 4*pageSlot {
				t.Fatalf("md: %d bytes, %v", len(b), err)
			}
			clear(b[2*pageSlot : 3*pageSlot])
			os.WriteFile(p, b, 0o600)
		}, false},
		{"md-bit-flip", func(t *testing.T, dir string, _ damageState) { flip(t, filepath.Join(dir, "md"), 5*pageSlot+500) }, false},
		{"state-deleted", func(t *testing.T, dir string, _ damageState) { remove(t, filepath.Join(dir, "state.json")) }, false},
		{"state-truncated", func(t *testing.T, dir string, _ damageState) { truncate(t, filepath.Join(dir, "state.json"), 50) }, false},
		{"state-garbage", func(t *testing.T, dir string, _ damageState) {
			os.WriteFile(filepath.Join(dir, "state.json"), []byte("\x00\x00garbage"), 0o600)
		}, false},
		{"open-tlog-truncated", func(t *testing.T, dir string, st damageState) {
			truncate(t, filepath.Join(dir, "tlog", st.OpenTLog), 50)
		}, false},
		{"open-tlog-corrupted", func(t *testing.T, dir string, st damageState) {
			flip(t, filepath.Join(dir, "tlog", st.OpenTLog), 8+32*100+12)
		}, false},
		{"open-tlog-deleted", func(t *testing.T, dir string, st damageState) {
			remove(t, filepath.Join(dir, "tlog", st.OpenTLog))
		}, false},
		{"sco-deleted", func(t *testing.T, dir string, st damageState) {
			remove(t, scoPath(dir, st.OpenFirstSCO+1))
		}, true},
	}

	c := startCluster(t, "--backend", "local", "--auto-sync", "1h", "--scrub-interval", "0")
	work := t.TempDir()
	rng := rand.New(rand.NewPCG(8, 8))
	content := make([]byte, size)
	for i := 0; i < synced+local; i += 8 {
		v := rng.Uint64() | 1 // never a zero word: zeros must not pass for data
		for j := 0; j < 8; j++ {
			content[i+j] = byte(v >> (8 * j))
		}
	}
	image := filepath.Join(work, "expected.img")
	if err := os.WriteFile(image, content, 0o600); err != nil {
		t.Fatal(err)
	}
	pyRun := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := run(t, 5*time.Minute, work, py, append([]string{script}, args...)...)
		if err != nil {
			t.Fatalf("damage.py %s: %v\n%s", args[0], err, out)
		}
		return out
	}
	info := func(name string) damageInfo {
		t.Helper()
		var di damageInfo
		out := c.ovsOK("vdisk", "info", name, "-o", "json")
		if err := json.Unmarshal([]byte(out), &di); err != nil {
			t.Fatalf("vdisk info %s: %v in %q", name, err, out)
		}
		return di
	}
	ids := map[string]string{}
	for _, tc := range cases {
		c.create(tc.name, "32MiB")
		pyRun(t, "write", c.UnixURI(tc.name), image, "0", strconv.Itoa(synced))
		c.ovsOK("vdisk", "sync", tc.name)
		pyRun(t, "write", c.UnixURI(tc.name), image, strconv.Itoa(synced), strconv.Itoa(local))
		ids[tc.name] = info(tc.name).ID
	}
	c.stop()

	lostSCOs := map[string]string{}
	for _, tc := range cases {
		dir := filepath.Join(c.Dir, "volumes", ids[tc.name])
		b, err := os.ReadFile(filepath.Join(dir, "state.json"))
		if err != nil {
			t.Fatal(err)
		}
		var st damageState
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if tc.lostSCO {
			lostSCOs[tc.name] = fmt.Sprintf("00_%08x_00", st.OpenFirstSCO+1)
		}
		tc.damage(t, dir, st)
	}
	c.start()

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := pyRun(t, "check", c.UnixURI(tc.name), image)
			var eio, bad []int
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(line)
				if len(f) == 2 && (f[0] == "EIO" || f[0] == "BAD") {
					n, _ := strconv.Atoi(f[1])
					if f[0] == "EIO" {
						eio = append(eio, n)
					} else {
						bad = append(bad, n)
					}
				}
			}
			if len(bad) > 0 {
				t.Errorf("%d clusters read wrong data (first: cluster %d)", len(bad), bad[0])
			}
			state := info(tc.name).State
			if !tc.lostSCO {
				if len(eio) > 0 {
					t.Errorf("%d clusters fail with EIO (first: %d); nothing was lost", len(eio), eio[0])
				}
				if state != "ok" {
					t.Errorf("state %q, want ok", state)
				}
				return
			}
			// Exactly one SCO's worth of clusters (4 MiB), all in the
			// unsynced range.
			if len(eio) != 1024 {
				t.Errorf("%d clusters fail with EIO, want the 1024 of the lost SCO", len(eio))
			}
			for _, n := range eio {
				if n < synced/4096 || n >= (synced+local)/4096 {
					t.Errorf("cluster %d fails with EIO; it was synced or never written", n)
					break
				}
			}
			if !strings.HasPrefix(state, "degraded") || !strings.Contains(state, lostSCOs[tc.name]) {
				t.Errorf("state %q should say degraded and name SCO %s", state, lostSCOs[tc.name])
			}
		})
	}
}
