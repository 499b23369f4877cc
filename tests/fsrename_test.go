package tests

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestFSRenameCrash: ovs up dies (a failpoint sends it SIGKILL) in the
// middle of a vdisk rename, once between the arakoon step and the owner's
// volume.json, once right after volume.json; after the restart the vdisk
// is served under exactly one name (arakoon's, the new one), with its
// data, and `ovs vdisk list` agrees with `ls` of the mount.
func TestFSRenameCrash(t *testing.T) {
	needTools(t, "nbdcopy")
	c, mnt := startMounted(t)
	data := make([]byte, 3<<20+5)
	rand.Read(data)
	f, err := os.Create(filepath.Join(mnt, "r0.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	for _, tc := range []struct {
		point, from, to string
		viaMount        bool // mv on the mount, else ovs vdisk rename
	}{
		{"rename-before-volume-json", "r0", "r1", false},
		{"rename-after-volume-json", "r1", "r2", true},
	} {
		c.stop()
		c.Env = []string{"OVS_FAILPOINTS=" + tc.point}
		c.start()
		if tc.viaMount {
			if err := os.Rename(filepath.Join(mnt, tc.from+".raw"), filepath.Join(mnt, tc.to+".raw")); err == nil {
				t.Fatalf("%s: mv on the mount succeeded; the failpoint did not fire", tc.point)
			}
		} else if r := c.cli("vdisk", "rename", tc.from, tc.to); r.Code == 0 {
			t.Fatalf("%s: ovs vdisk rename succeeded; the failpoint did not fire", tc.point)
		}
		waitFor(t, 30*time.Second, "ovs up to die at "+tc.point, func() bool { return !c.running() })
		c.Env = nil
		c.start()

		// Listed under one name, served (not "starting").
		var listed []string
		waitFor(t, time.Minute, "the vdisk to be served under one name", func() bool {
			listed = listed[:0]
			ready := true
			for _, v := range c.list() {
				listed = append(listed, v.Name)
				ready = ready && v.State == "ok"
			}
			return ready
		})
		slices.Sort(listed)
		if !slices.Equal(listed, []string{tc.to}) {
			t.Fatalf("after a crash at %s: ovs vdisk list has %v, want exactly [%s]", tc.point, listed, tc.to)
		}
		ents, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		var files []string
		for _, e := range ents {
			if name, ok := strings.CutSuffix(e.Name(), ".raw"); ok {
				files = append(files, name)
			}
		}
		if !slices.Equal(files, listed) {
			t.Fatalf("after a crash at %s: ls of the mount has %v, ovs vdisk list %v", tc.point, files, listed)
		}
		if r := c.cli("vdisk", "info", tc.from); r.Code == 0 {
			t.Fatalf("after a crash at %s: the old name %s still answers: %s", tc.point, tc.from, r.Stdout)
		}
		got, err := os.ReadFile(filepath.Join(mnt, tc.to+".raw"))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("after a crash at %s: %s.raw reads %d bytes (%v), want the %d written", tc.point, tc.to, len(got), err, len(data))
		}
		out := filepath.Join(t.TempDir(), "nbd.raw")
		mustRun(t, time.Minute, "nbdcopy", c.UnixURI(tc.to), out)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got[:len(data)], data) {
			t.Fatalf("after a crash at %s: NBD reads other data (%v)", tc.point, err)
		}
		t.Logf("crash at %s: %s served as %s only, data intact", tc.point, tc.from, tc.to)
	}
}
