package tests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Debian packages of the clients the tests use.
var toolPackage = map[string]string{
	"nbdinfo":  "libnbd-bin",
	"nbdcopy":  "libnbd-bin",
	"qemu-img": "qemu-utils",
	"qemu-io":  "qemu-utils",
	"fio":      "fio",
	"nbdkit":   "nbdkit",

	"qemu-system-x86_64": "qemu-system-x86",

	"iscsi-inq":     "libiscsi-bin",
	"iscsi-ls":      "libiscsi-bin",
	"iscsi-test-cu": "libiscsi-bin",
	"tgtd":          "tgt",
	"tgtadm":        "tgt",
	"prometheus":    "prometheus",
	"dockerd":       "docker.io",
	"nbdfuse":       "libnbd-bin",
	"losetup":       "mount",
	"nfs-ls":        "libnfs-utils",
	"nfs-cp":        "libnfs-utils",
	"nfs-cat":       "libnfs-utils",
}

// missingTool skips the test, or fails it when OVS_REQUIRE_TOOLS=1.
func missingTool(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("OVS_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s (OVS_REQUIRE_TOOLS=1; run `make deps`)", msg)
	}
	t.Skipf("%s; skipping (set OVS_REQUIRE_TOOLS=1 to fail instead, `make deps` installs it)", msg)
}

// needTools checks that each named client is in PATH.
func needTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missingTool(t, "%s not found (Debian package %s)", n, toolPackage[n])
		}
	}
}

var fioNBD = sync.OnceValue(func() error {
	out, err := exec.Command("fio", "--enghelp=nbd").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("uri")) {
		return fmt.Errorf("fio has no nbd ioengine: %v %s", err, bytes.TrimSpace(out))
	}
	return nil
})

// needFio checks for fio with its nbd ioengine.
func needFio(t *testing.T) {
	t.Helper()
	needTools(t, "fio")
	if err := fioNBD(); err != nil {
		missingTool(t, "%v", err)
	}
}

// pythonNBD finds a python3 that has libnbd's binding (`import nbd`), which
// is what nbdsh runs. Debian's is /usr/bin/python3 with python3-libnbd; a
// python3 earlier in PATH (pyenv, venv) usually lacks it.
var pythonNBD = sync.OnceValues(func() (string, error) {
	cands := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	for _, p := range cands {
		if exec.Command(p, "-c", "import nbd").Run() == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no python3 with libnbd's binding (Debian package python3-libnbd) in %v", cands)
})

// needPython returns the python3 that runs testdata/nbdio.py.
func needPython(t *testing.T) string {
	t.Helper()
	p, err := pythonNBD()
	if err != nil {
		missingTool(t, "%v", err)
	}
	return p
}

func nbdioScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "nbdio.py"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// run runs a client in dir (a fresh temp dir if ""), returns its combined
// output and error. It is killed after timeout.
func run(t *testing.T, timeout time.Duration, dir, name string, args ...string) (string, error) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("killed after %v: %w", timeout, err)
	}
	t.Logf("$ %s %s -> %v in %v", name, strings.Join(args, " "), errOrOK(err),
		time.Since(start).Round(time.Millisecond))
	return string(out), err
}

func errOrOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// mustRun is run, failing the test on error.
func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := run(t, timeout, "", name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// --- a held-open NBD connection ------------------------------------------------

// nbdSession is a libnbd connection in a child python process
// (testdata/nbdio.py session), driven line by line.
type nbdSession struct {
	t      *testing.T
	uri    string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
	size   int64
	closed bool
}

const sessionTimeout = 2 * time.Minute

// openNBD connects to uri and keeps the connection open until close (or
// the end of the test).
func openNBD(t *testing.T, uri string) *nbdSession {
	t.Helper()
	py := needPython(t)
	s := &nbdSession{t: t, uri: uri, lines: make(chan string, 16), stderr: new(bytes.Buffer)}
	s.cmd = exec.Command(py, nbdioScript(t), "session", uri)
	s.cmd.Stderr = s.stderr
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(s.close)
	line, err := s.next()
	if err != nil || !strings.HasPrefix(line, "CONNECTED ") {
		t.Fatalf("connecting to %s: %q %v", uri, line, err)
	}
	s.size, _ = strconv.ParseInt(strings.TrimPrefix(line, "CONNECTED "), 10, 64)
	return s
}

func (s *nbdSession) next() (string, error) {
	select {
	case line, ok := <-s.lines:
		if !ok {
			return "", fmt.Errorf("nbd session ended: %s", strings.TrimSpace(s.stderr.String()))
		}
		return line, nil
	case <-time.After(sessionTimeout):
		return "", fmt.Errorf("nbd session: no answer within %v", sessionTimeout)
	}
}

// call sends one command and returns the text after "OK", or an error.
func (s *nbdSession) call(format string, args ...any) (string, error) {
	cmd := fmt.Sprintf(format, args...)
	if _, err := fmt.Fprintln(s.stdin, cmd); err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	line, err := s.next()
	if err != nil {
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	if rest, ok := strings.CutPrefix(line, "OK"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", fmt.Errorf("%s on %s: %s", cmd, s.uri, strings.TrimPrefix(line, "ERR "))
}

// write fills [off, off+n) with b and flushes.
func (s *nbdSession) write(off, n int64, b byte) error {
	_, err := s.call("write %d %d %d", off, n, b)
	return err
}

// check verifies that [off, off+n) reads as b.
func (s *nbdSession) check(off, n int64, b byte) error {
	_, err := s.call("check %d %d %d", off, n, b)
	return err
}

func (s *nbdSession) mustWrite(off, n int64, b byte) {
	s.t.Helper()
	if err := s.write(off, n, b); err != nil {
		s.t.Fatal(err)
	}
}

func (s *nbdSession) mustCheck(off, n int64, b byte) {
	s.t.Helper()
	if err := s.check(off, n, b); err != nil {
		s.t.Error(err)
	}
}

// close ends the connection (NBD_CMD_DISC) and waits for the process.
func (s *nbdSession) close() {
	if s.closed {
		return
	}
	s.closed = true
	fmt.Fprintln(s.stdin, "quit")
	s.stdin.Close()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// --- data --------------------------------------------------------------------

// makeImage writes a raw image of size bytes to path and returns its
// content: random data with zero regions (every fourth MiB, and one 4 KiB
// block in eight elsewhere), so that copies must handle both.
func makeImage(t *testing.T, path string, size int64, seed uint64) []byte {
	t.Helper()
	var key [32]byte
	copy(key[:], fmt.Sprintf("ovs-e2e-%d", seed))
	rnd := rand.NewChaCha8(key)
	data := make([]byte, size)
	rnd.Read(data)
	const mib, blk = 1 << 20, 4 << 10
	for off := int64(0); off < size; off += blk {
		if (off/mib)%4 == 3 || (off/blk)%8 == 5 {
			clear(data[off:min(off+blk, size)])
		}
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// firstDiff returns the first offset where a and b differ, or -1.
func firstDiff(a, b []byte) int64 {
	n := min(len(a), len(b))
	for i := 0; i < n; i += 4096 {
		j := min(i+4096, n)
		if !bytes.Equal(a[i:j], b[i:j]) {
			for k := i; k < j; k++ {
				if a[k] != b[k] {
					return int64(k)
				}
			}
		}
	}
	if len(a) != len(b) {
		return int64(n)
	}
	return -1
}

const (
	KiB int64 = 1 << 10
	MiB int64 = 1 << 20
	GiB int64 = 1 << 30
)

// streamLines starts cmd and sends each line of its stdout to lines,
// closed at EOF; stderr collects its standard error. stop kills the
// process and waits for it.
func streamLines(t *testing.T, cmd *exec.Cmd) (lines <-chan string, stderr *bytes.Buffer, stop func()) {
	t.Helper()
	stderr = new(bytes.Buffer)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}()
	return ch, stderr, func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
}
