package nbd

// Tests against real NBD clients: libnbd's nbdinfo, nbdsh and nbdcopy,
// qemu-img, qemu-io and fio's nbd engine. A missing tool skips its test
// unless OVS_REQUIRE_TOOLS=1, which makes it fail instead. On Debian:
//
//	apt-get install -y libnbd-bin nbdkit qemu-utils fio python3-libnbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func requireTools() bool { return os.Getenv("OVS_REQUIRE_TOOLS") == "1" }

// needTool returns the path of an external tool or skips the test.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if requireTools() {
			t.Fatalf("%s not found and OVS_REQUIRE_TOOLS=1: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// toolEnv puts the system's directories first in PATH: nbdsh runs
// "python3 -m nbd", and a python3 from a version manager earlier in PATH
// lacks the distribution's nbd module.
func toolEnv() []string {
	return append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
}

// runTool runs a tool and returns its combined output; it fails the test on
// a non-zero exit.
func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runToolErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runToolErr(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	path := needTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = toolEnv()
	cmd.Dir = t.TempDir() // fio leaves verify state files in its working directory
	out, err := cmd.CombinedOutput()
	return string(out), err
}

const toolDiskSize = 64 << 20

// toolServer serves "disk" (64 MiB, writable) and "ro" (1 MiB, read-only,
// with a pattern in its first 64 KiB) on a unix socket.
type toolServer struct {
	sock string
	disk *fakeDevice
	ro   *fakeDevice
	exp  *fakeExports
}

func startToolServer(t testing.TB) *toolServer {
	t.Helper()
	disk := newFakeDevice(toolDiskSize)
	ro := newFakeDevice(1 << 20)
	ro.WriteAt(context.Background(), pattern(64<<10, 5), 0, false)
	ro.readOnly = true
	exp := newFakeExports(map[string]*fakeDevice{"disk": disk, "ro": ro})
	logger := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ts := startServer(t, exp, Options{Logger: logger})
	return &toolServer{sock: ts.addr, disk: disk, ro: ro, exp: exp}
}

func (s *toolServer) uri(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, s.sock)
}

func TestToolNbdinfoList(t *testing.T) {
	s := startToolServer(t)
	out := runTool(t, "nbdinfo", "--list", s.uri(""))
	for _, want := range []string{`export="disk"`, `export="ro"`, "export-size: 67108864", "export-size: 1048576"} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdinfo --list: no %q in\n%s", want, out)
		}
	}
}

func TestToolNbdinfoJSON(t *testing.T) {
	s := startToolServer(t)
	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name         string   `json:"export-name"`
			Size         int64    `json:"export-size"`
			ReadOnly     bool     `json:"is_read_only"`
			CanFlush     bool     `json:"can_flush"`
			CanFUA       bool     `json:"can_fua"`
			CanTrim      bool     `json:"can_trim"`
			CanZero      bool     `json:"can_zero"`
			CanFastZero  bool     `json:"can_fast_zero"`
			CanMultiConn bool     `json:"can_multi_conn"`
			CanDF        bool     `json:"can_df"`
			CanCache     bool     `json:"can_cache"`
			Contexts     []string `json:"contexts"`
			MinBS        int      `json:"block_size_minimum"`
			PrefBS       int      `json:"block_size_preferred"`
			MaxBS        int      `json:"block_size_maximum"`
		} `json:"exports"`
	}
	check := func(uri string) {
		out := runTool(t, "nbdinfo", "--json", uri)
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
	}
	check(s.uri("disk"))
	if info.Protocol != "newstyle-fixed" || !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %+v", info)
	}
	e := info.Exports[0]
	if e.Size != toolDiskSize || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero ||
		!e.CanFastZero || !e.CanMultiConn || !e.CanDF || !e.CanCache || e.MinBS != 1 || e.PrefBS != 4096 ||
		e.MaxBS != DefaultMaxRequestSize || len(e.Contexts) != 1 || e.Contexts[0] != metaAllocation {
		t.Fatalf("disk: %+v", e)
	}
	check(s.uri("ro"))
	if e := info.Exports[0]; !e.ReadOnly || e.CanTrim || e.CanZero {
		t.Fatalf("ro: %+v", e)
	}

	// The same over TCP.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(s.exp, Options{Logger: testLogger(t)})
	go srv.Serve(context.Background(), l)
	defer srv.Close()
	check("nbd://" + l.Addr().String() + "/disk")
	if e := info.Exports[0]; e.Size != toolDiskSize {
		t.Fatalf("tcp: %+v", e)
	}
}

func TestToolNbdinfoMap(t *testing.T) {
	s := startToolServer(t)
	s.disk.WriteAt(context.Background(), pattern(1<<20, 3), 1<<20, false)
	s.disk.WriteZeroes(context.Background(), 4<<20, 64<<10, true, false)
	out := runTool(t, "nbdinfo", "--map", s.uri("disk"))
	type ext struct {
		off, length int64
		typ         int
		desc        string
	}
	var got []ext
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e ext
		if _, err := fmt.Sscan(line, &e.off, &e.length, &e.typ, &e.desc); err != nil {
			t.Fatalf("nbdinfo --map line %q: %v\n%s", line, err, out)
		}
		got = append(got, e)
	}
	want := []ext{
		{0, 1 << 20, 3, "hole,zero"},
		{1 << 20, 1 << 20, 0, "data"},
		{2 << 20, 2 << 20, 3, "hole,zero"},
		{4 << 20, 64 << 10, 2, "zero"},
		{4<<20 + 64<<10, toolDiskSize - (4<<20 + 64<<10), 3, "hole,zero"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n%s\nwant %v", out, want)
	}
}

func TestToolQemuImgMap(t *testing.T) {
	s := startToolServer(t)
	s.disk.WriteAt(context.Background(), pattern(1<<20, 3), 2<<20, false)
	out := runTool(t, "qemu-img", "map", "-f", "raw", "--output=json", s.uri("disk"))
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var data []string
	var covered int64
	for _, e := range m {
		if e.Start != covered {
			t.Fatalf("qemu-img map: gap at %d\n%s", covered, out)
		}
		covered += e.Length
		if e.Data {
			data = append(data, fmt.Sprintf("%d+%d", e.Start, e.Length))
		} else if !e.Zero {
			t.Fatalf("qemu-img map: hole not reading as zero\n%s", out)
		}
	}
	if covered != toolDiskSize || fmt.Sprint(data) != fmt.Sprint([]string{fmt.Sprintf("%d+%d", 2<<20, 1<<20)}) {
		t.Fatalf("qemu-img map: data %v\n%s", data, out)
	}
}

// nbdshScript exercises the commands through libnbd with its client-side
// checks off, so that bad requests reach the server.
const nbdshScript = `
import errno, os
# nbd.Error.args is (message, errno number).
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(os.environ["NBD_URI"])
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
for f in (h.can_flush, h.can_fua, h.can_trim, h.can_zero, h.can_fast_zero, h.can_multi_conn, h.can_df, h.can_cache):
    assert f(), f.__name__
assert not h.is_read_only()
size = h.get_size()
assert size == 64 << 20, size

buf = bytes(range(256)) * 256
h.pwrite(buf, 0, nbd.CMD_FLAG_FUA)
h.pwrite(buf, 1 << 20)
assert h.pread(len(buf), 0) == buf
assert h.pread(len(buf), 1 << 20, nbd.CMD_FLAG_DF) == buf
h.flush()
h.trim(16384, 0, nbd.CMD_FLAG_FUA)
assert h.pread(16384, 0) == bytes(16384)
h.zero(8192, 32768, nbd.CMD_FLAG_NO_HOLE)
h.zero(8192, 49152, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 32768) == bytes(8192)
assert h.pread(8192, 49152) == bytes(8192)
assert h.pread(8192, 40960) == buf[40960:49152]
try:
    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
    raise AssertionError("fast zero succeeded")
except nbd.Error as e:
    assert e.args[1] == errno.ENOTSUP, e

entries = []
def extent(metacontext, offset, e, err):
    assert metacontext == nbd.CONTEXT_BASE_ALLOCATION
    entries.extend(e)
h.block_status(65536, 0, extent)
# [length, flags] pairs: 16K hole (trimmed), 16K data, 8K zero (allocated),
# 8K data, 8K hole, 8K data.
want = [16384, 3, 16384, 0, 8192, 2, 8192, 0, 8192, 3, 8192, 0]
assert entries == want, entries
entries = []
h.block_status(65536, 0, extent, nbd.CMD_FLAG_REQ_ONE)
assert entries == [16384, 3], entries

def expect_errno(code, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.args[1] == code, (f.__name__, e)
        return
    raise AssertionError(f.__name__ + " succeeded")
expect_errno(errno.EINVAL, h.pread, 4096, size - 1024)
expect_errno(errno.ENOSPC, h.pwrite, b"x" * 4096, size - 1024)
expect_errno(errno.ENOSPC, h.trim, 8192, size - 4096)
expect_errno(errno.ENOSPC, h.zero, 8192, size - 4096)
expect_errno(errno.EINVAL, h.block_status, 8192, size - 4096, extent)
# Still serving after the errors.
assert h.pread(len(buf), 1 << 20) == buf
h.shutdown()
print("nbdsh ok")
`

const nbdshReadOnlyScript = `
import errno, os
h.set_strict_mode(0)
h.connect_uri(os.environ["NBD_URI"])
assert h.is_read_only()
try:
    h.pwrite(b"x" * 4096, 0)
    raise AssertionError("write to read-only export succeeded")
except nbd.Error as e:
    assert e.args[1] == errno.EPERM, e
assert h.pread(4096, 0)[:4] == bytes([5, 12, 19, 26])
h.flush()
h.shutdown()
print("nbdsh ok")
`

func runNbdsh(t *testing.T, uri, script string) {
	t.Helper()
	needTool(t, "nbdsh")
	if out, err := runToolErr(t, "nbdsh", "-c", "pass"); err != nil {
		if requireTools() {
			t.Fatalf("nbdsh does not run: %v\n%s", err, out)
		}
		t.Skipf("nbdsh does not run (python3-libnbd missing?): %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nbdsh", "-c", script)
	cmd.Env = append(toolEnv(), "NBD_URI="+uri)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nbdsh ok") {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}
}

func TestToolNbdsh(t *testing.T) {
	s := startToolServer(t)
	runNbdsh(t, s.uri("disk"), nbdshScript)
	if n := s.disk.fuaWrites.Load(); n < 1 {
		t.Errorf("FUA writes: %d", n)
	}
	if n := s.disk.flushes.Load(); n < 2 {
		t.Errorf("flushes: %d", n)
	}
	runNbdsh(t, s.uri("ro"), nbdshReadOnlyScript)
}

func TestToolQemuIo(t *testing.T) {
	s := startToolServer(t)
	qemuIO := func(cmds ...string) string {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		args = append(args, s.uri("disk"))
		out := runTool(t, "qemu-io", args...)
		for _, bad := range []string{"failed", "error", "Error"} {
			if strings.Contains(out, bad) {
				t.Fatalf("qemu-io: %q in output:\n%s", bad, out)
			}
		}
		return out
	}
	qemuIO(
		"write -P 0xab 0 1M",
		"write -f -P 0xcd 1M 512k", // FUA
		"write -z 2M 1M",
		"write -z -u 3M 1M", // may unmap
		"aio_write -P 0x11 8M 64k",
		"aio_write -P 0x22 9M 64k",
		"aio_flush",
		"discard 12M 1M",
		"flush",
		"read -P 0xab 0 1M",
		"read -P 0xcd 1M 512k",
		"read -P 0 2M 2M",
		"read -P 0 12M 1M",
	)
	// A fresh connection sees the same data.
	qemuIO(
		"read -P 0xab 0 1M",
		"read -P 0x11 8M 64k",
		"read -P 0x22 9M 64k",
		"read -v 1M 16",
	)
	if s.disk.fuaWrites.Load() == 0 {
		t.Error("qemu-io write -f sent no FUA write")
	}
	// A failing pattern check is reported (the checks above mean something).
	if out, _ := runToolErr(t, "qemu-io", "-f", "raw", "-c", "read -P 0x77 0 4k", s.uri("disk")); !strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io did not notice a wrong pattern:\n%s", out)
	}
}

func TestToolFio(t *testing.T) {
	s := startToolServer(t)
	if out, _ := runToolErr(t, "fio", "--enghelp"); !strings.Contains(out, "nbd") {
		if requireTools() {
			t.Fatalf("fio has no nbd engine:\n%s", out)
		}
		t.Skip("fio has no nbd engine")
	}
	args := []string{
		"--name=verify", "--ioengine=nbd", "--uri=" + s.uri("disk"),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16m",
		"--verify=crc32c", "--verify_fatal=1", "--output-format=json",
	}
	type fioOut struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOs int64 `json:"total_ios"`
			} `json:"write"`
			Read struct {
				IOs int64 `json:"total_ios"`
			} `json:"read"`
		} `json:"jobs"`
	}
	parse := func(out string) fioOut {
		var f fioOut
		// fio may print notes before the JSON document.
		if i := strings.Index(out, "{"); i >= 0 {
			out = out[i:]
		}
		if err := json.NewDecoder(strings.NewReader(out)).Decode(&f); err != nil || len(f.Jobs) != 1 || f.Jobs[0].Error != 0 {
			t.Fatalf("fio output (%v):\n%s", err, out)
		}
		return f
	}
	// Write with verification of what was written, then a separate verify
	// pass on a new connection.
	f := parse(runTool(t, "fio", args...))
	if w, r := f.Jobs[0].Write.IOs, f.Jobs[0].Read.IOs; w != 4096 || r != 4096 {
		t.Fatalf("fio write pass: %d writes, %d verify reads", w, r)
	}
	f = parse(runTool(t, "fio", append(args, "--verify_only")...))
	if r := f.Jobs[0].Read.IOs; r != 4096 {
		t.Fatalf("fio verify pass: %d reads", r)
	}
	// Corrupt one block: the verify pass must fail.
	s.disk.WriteAt(context.Background(), make([]byte, 4096), 8<<20, false)
	if out, err := runToolErr(t, "fio", append(args, "--verify_only")...); err == nil {
		t.Fatalf("fio verify passed over corrupted data:\n%s", out)
	}
}

func TestToolNbdcopy(t *testing.T) {
	s := startToolServer(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	img := make([]byte, toolDiskSize)
	copy(img[1<<20:], pattern(3<<20, 7))
	copy(img[40<<20:], pattern(5<<20+123, 9))
	if err := os.WriteFile(src, img, 0o644); err != nil {
		t.Fatal(err)
	}
	// Sparse source: the gaps are holes that nbdcopy zeroes.
	s.disk.WriteAt(context.Background(), bytes.Repeat([]byte{0xff}, 8<<20), 10<<20, false)
	runTool(t, "nbdcopy", "--flush", src, s.uri("disk"))
	dst := filepath.Join(dir, "dst.img")
	runTool(t, "nbdcopy", s.uri("disk"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("nbdcopy round trip differs")
	}
	if out := runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri("disk")); !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	waitFor(t, func() bool { o, r := s.exp.counts("disk"); return o == r })
}
