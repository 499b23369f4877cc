package iscsi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
	"github.com/ovs-storage/ovs/volumedriver/internal/memdev"
	"github.com/ovs-storage/ovs/volumedriver/iscsi/scsi"
)

// memDev is an in-memory block device for the target's tests.
type memDev struct{ *memdev.Pages }

func (d memDev) ReadAt(_ context.Context, p []byte, off int64) error { d.Read(p, off); return nil }
func (d memDev) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.Write(p, off)
	return nil
}
func (d memDev) Flush(context.Context) error                { return nil }
func (d memDev) Trim(_ context.Context, off, n int64) error { d.Zero(off, n, false); return nil }
func (d memDev) WriteZeroes(_ context.Context, off, n int64, noHole, _ bool) error {
	d.Zero(off, n, noHole)
	return nil
}
func (d memDev) BlockStatus(_ context.Context, off, n int64) ([]blockdev.Extent, error) {
	return d.Extents(off, n, false), nil
}

// memTargets serves in-memory LUs, with CHAP secrets by target name
// ("" for discovery).
type memTargets struct {
	lus    map[string]*scsi.LU
	chap   map[string]CHAP
	opened atomic.Int32 // OpenLU calls
}

func (m *memTargets) ListTargets(context.Context) ([]string, error) {
	var out []string
	for n := range m.lus {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

func (m *memTargets) OpenLU(_ context.Context, name string) (*scsi.LU, func(), error) {
	m.opened.Add(1)
	lu, ok := m.lus[name]
	if !ok {
		return nil, nil, errors.New("no such vdisk")
	}
	return lu, func() {}, nil
}

func (m *memTargets) CHAP(_ context.Context, target string) (CHAP, error) {
	return m.chap[target], nil
}

func newMemLU(dev blockdev.Device) *scsi.LU {
	return &scsi.LU{Dev: dev, Product: "vd1", Serial: "vd1serial", ID: [8]byte{0x60, 1},
		PR: scsi.NewReservations(&scsi.MemPRStore{})}
}

func startTarget(t *testing.T) (*Server, string) {
	t.Helper()
	return startTargetWith(t, &memTargets{lus: map[string]*scsi.LU{"vd1": newMemLU(memDev{memdev.New(64 << 20)})}}, Options{})
}

// startTargetWith serves targets on a free loopback port until the test
// ends.
func startTargetWith(t *testing.T, targets Targets, opts Options) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	s := NewServer(targets, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, ln.Addr().String()
}

// testWriter sends the server's logs to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(b, "\n"))
	return len(b), nil
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian libiscsi-bin)", name)
	}
	return p
}

// TestLibiscsiClients: libiscsi's own tools discover the target and
// inquire its LUN.
func TestLibiscsiClients(t *testing.T) {
	s, addr := startTarget(t)
	out, err := exec.Command(needTool(t, "iscsi-ls"), "-s", "iscsi://"+addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), s.IQN("vd1")) {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	t.Logf("iscsi-ls:\n%s", out)
	out, err = exec.Command(needTool(t, "iscsi-inq"), "iscsi://"+addr+"/"+s.IQN("vd1")+"/0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OVS") {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	t.Logf("iscsi-inq:\n%s", out)
}

// TestIscsiTestCU runs libiscsi's test suite against the target when
// OVS_ISCSI_CU is set (it takes minutes; the end-to-end test runs it
// against a real vdisk and Linux tgt).
func TestIscsiTestCU(t *testing.T) {
	if os.Getenv("OVS_ISCSI_CU") == "" {
		t.Skip("OVS_ISCSI_CU not set")
	}
	s, addr := startTarget(t)
	url := "iscsi://" + addr + "/" + s.IQN("vd1") + "/0"
	// The URL twice: the multipath tests use two sessions at once.
	args := []string{"--test=" + os.Getenv("OVS_ISCSI_CU"), url, url}
	if os.Getenv("OVS_ISCSI_CU_DATALOSS") != "" {
		args = append([]string{"--dataloss"}, args...)
	}
	if extra := os.Getenv("OVS_ISCSI_CU_ARGS"); extra != "" { // e.g. -V
		args = append(strings.Fields(extra), args...)
	}
	cmd := exec.Command(needTool(t, "iscsi-test-cu"), args...)
	out, _ := cmd.CombinedOutput()
	t.Logf("%s", out)
}

// TestLibiscsiCHAP: libiscsi's clients log in with CHAP (one-way and
// mutual, URL credentials) and are refused with a wrong secret, both to a
// target and for discovery.
func TestLibiscsiCHAP(t *testing.T) {
	inq, ls := needTool(t, "iscsi-inq"), needTool(t, "iscsi-ls")
	targets := &memTargets{
		lus: map[string]*scsi.LU{"vd1": newMemLU(memDev{memdev.New(1 << 20)})},
		chap: map[string]CHAP{
			"vd1": {User: "alice", Secret: "alice-secret-0123", MutualUser: "vd1-target", MutualSecret: "target-secret-4567"},
			"":    {User: "disco", Secret: "discovery-secret-89"},
		},
	}
	s, addr := startTargetWith(t, targets, Options{})
	iqn := s.IQN("vd1")
	for _, tc := range []struct {
		name string
		tool string
		url  string
		ok   bool
	}{
		{"one-way", inq, "iscsi://alice%alice-secret-0123@" + addr + "/" + iqn + "/0", true},
		{"wrong secret", inq, "iscsi://alice%wrong-secret-0000@" + addr + "/" + iqn + "/0", false},
		{"no credentials", inq, "iscsi://" + addr + "/" + iqn + "/0", false},
		{"mutual", inq, "iscsi://alice%alice-secret-0123@" + addr + "/" + iqn + "/0?target_user=vd1-target&target_password=target-secret-4567", true},
		{"mutual, the target's secret wrong", inq, "iscsi://alice%alice-secret-0123@" + addr + "/" + iqn + "/0?target_user=vd1-target&target_password=not-the-target", false},
		{"discovery", ls, "iscsi://disco%discovery-secret-89@" + addr, true},
		{"discovery, wrong secret", ls, "iscsi://disco%wrong-secret-0000@" + addr, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, tc.tool, tc.url).CombinedOutput()
			if tc.ok && (err != nil || !strings.Contains(string(out), "OVS") && !strings.Contains(string(out), iqn)) {
				t.Fatalf("%s: %v\n%s", tc.tool, err, out)
			}
			if !tc.ok && err == nil {
				t.Fatalf("%s logged in:\n%s", tc.tool, out)
			}
			if ctx.Err() != nil {
				t.Fatalf("%s hung", tc.tool)
			}
		})
	}
}

// TestQemuImg: qemu's libiscsi driver, many commands in flight (qemu-img
// bench, 32 deep) with CRC32C header digests and CHAP: an image converted
// into the target compares equal.
func TestQemuImg(t *testing.T) {
	qemu := needTool(t, "qemu-img")
	targets := &memTargets{
		lus:  map[string]*scsi.LU{"vd1": newMemLU(memDev{memdev.New(16 << 20)})},
		chap: map[string]CHAP{"vd1": {User: "qemu", Secret: "qemu-secret-0123"}},
	}
	s, addr := startTargetWith(t, targets, Options{})
	host, port, _ := net.SplitHostPort(addr)
	opts := "driver=iscsi,transport=tcp,portal=" + host + ":" + port + ",target=" + s.IQN("vd1") +
		",lun=0,header-digest=crc32c,user=qemu,password=qemu-secret-0123"
	img := filepath.Join(t.TempDir(), "src.raw")
	src := make([]byte, 16<<20)
	for i := range src {
		src[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(img, src, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, qemu, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("convert", "-n", "-f", "raw", "-t", "none", "--target-image-opts", img, opts)
	run("compare", "--image-opts", "driver=raw,file.driver=file,file.filename="+img, "driver=raw,file."+strings.ReplaceAll(opts, ",", ",file."))
	t.Logf("%s", run("bench", "-w", "-c", "4000", "-d", "32", "-s", "4096", "--image-opts", opts))
	t.Logf("%s", run("bench", "-c", "4000", "-d", "32", "-s", "4096", "--image-opts", opts))
}
