package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// An acknowledged write must survive kill -9 of the storage process (the
// quality bar in DESIGN.md §5; issue 8 item 0): the reply goes out only
// once the data and its TLog record are in the kernel. A client that
// reconnects (qemu's NBD driver with reconnect-delay) and flushes on the
// restarted process never learns that acknowledged writes vanished, so
// these tests look at the data itself.

// TestAckedWritesSurviveKill9 keeps 64 unflushed 4 KiB writes in flight
// with libnbd, logs each write the server acknowledged, kills ovs up with
// SIGKILL mid-stream and, after a restart, reads every logged write back.
// The "no crash" case (ovs up, a clean restart) and the "nbdkit kill -9"
// case (nbdkit's file plugin, which writes to the kernel before it
// replies) check the writer and the checker themselves.
func TestAckedWritesSurviveKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	py := needPython(t)
	const (
		nblocks   = 131072 // 512 MiB region, each block written at most once
		inflight  = 64
		killAfter = 20000 // acknowledged writes before the kill
	)
	for _, tc := range crashCases {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.server(t, GiB)
			uri := srv.uri()
			logPath := filepath.Join(t.TempDir(), "acked.log")
			n := int64(nblocks)
			if !tc.kill {
				n = 16384 // the writer uses the region up and stops
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			wr := exec.CommandContext(ctx, py, nbdioScript(t), "aio-write", uri,
				"11", "0", fmt.Sprint(n), fmt.Sprint(inflight), logPath)
			lines, wErr, stopWriter := streamLines(t, wr)
			defer stopWriter()
			var acked, issued int64 = 0, -1
			exhausted, ended := false, false
			parse := func(line string) {
				f := strings.Fields(line)
				switch {
				case len(f) == 2 && f[0] == "ACKED":
					acked, _ = strconv.ParseInt(f[1], 10, 64)
				case len(f) == 2 && f[0] == "ISSUED":
					issued, _ = strconv.ParseInt(f[1], 10, 64)
				case len(f) == 1 && f[0] == "EXHAUSTED":
					exhausted = true
				default:
					t.Logf("writer: %s", line)
				}
			}
			next := func(what string) bool {
				select {
				case line, ok := <-lines:
					if !ok {
						ended = true
						return false
					}
					parse(line)
					return true
				case <-ctx.Done():
					t.Fatalf("writer: no progress while %s (acked %d): %s", what, acked, wErr.String())
					return false
				}
			}
			if tc.kill {
				for acked < killAfter && !exhausted && next("waiting for the kill") {
				}
				if acked < killAfter {
					t.Fatalf("writer stopped after %d acknowledged writes, before the kill: %s",
						acked, wErr.String())
				}
				srv.kill9()
			}
			for !ended && next("waiting for the end") {
			}
			wr.Wait()
			if issued < 0 || acked > issued {
				t.Fatalf("writer did not report what it did (issued %d, acked %d): %s",
					issued, acked, wErr.String())
			}
			if !tc.kill && (!exhausted || acked != n) {
				t.Fatalf("without a crash every write should be acknowledged: %d of %d", acked, n)
			}
			t.Logf("%d writes sent, %d acknowledged", issued, acked)
			check := func(when string) {
				out, err := run(t, 5*time.Minute, "", py, nbdioScript(t), "aio-check", uri,
					"11", "0", fmt.Sprint(n), fmt.Sprint(issued), logPath)
				if err != nil {
					t.Errorf("%s: acknowledged writes are missing (%v):\n%s", when, err, out)
					return
				}
				t.Logf("%s: %s", when, strings.TrimSpace(out))
			}
			if tc.kill {
				srv.start()
				check("after kill -9 and restart")
				return
			}
			check("before restart")
			srv.stop()
			srv.start()
			check("after a clean restart")
		})
	}
}

// TestGuestFsyncSurvivesKill9 is the same promise seen from a real guest:
// a Linux guest under qemu (TCG) on an ovs vdisk, attached with qemu's NBD
// driver and reconnect-delay, writes files, fsyncs each one and says so
// on its serial console. ovs up is killed with SIGKILL twice and restarted
// on the same data directory and socket within the reconnect delay; qemu
// reconnects and the guest finishes without noticing. Then every file the
// guest reported fsync'd must hold exactly what it wrote.
//
// Each kill lands while a file is half written: the guest has written (and
// the server acknowledged) the first half with O_DIRECT, pauses, then
// writes the second half and fsyncs on the restarted process, as any
// program that writes now and fsyncs later would. A kill at a random moment
// would mostly fall between files, where nothing unflushed is in flight.
//
// Two more cases check the test itself: "no crash" runs the same guest,
// pauses included, on ovs without killing anything; "nbdkit kill -9" kills
// and restarts nbdkit's file plugin instead of ovs up, a server that hands
// each write to the kernel before replying and so must pass.
func TestGuestFsyncSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	g := needGuest(t)
	for _, tc := range crashCases {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.server(t, guestDisk)
			guestFsyncRun(t, g, srv, tc.kill)
		})
	}
}

// crashServer is the NBD server the test kills: ovs up, or nbdkit as a
// reference that keeps the promise.
type crashServer struct {
	name   string // for messages
	socket string
	export string
	// kill9 kills the server with SIGKILL; stop stops it cleanly; start
	// starts it again on the same data and socket.
	kill9, stop, start func()
}

func (s crashServer) uri() string {
	return "nbd+unix:///" + s.export + "?socket=" + s.socket
}

// ovsCrashServer is a vdisk of size bytes on `ovs up` with the local
// backend (the fastest; the write path under test is the same).
func ovsCrashServer(t *testing.T, size int64) crashServer {
	t.Helper()
	c := startClusterWith(t, "--backend", "local")
	c.create("crash", fmt.Sprintf("%dMiB", size/MiB))
	return crashServer{name: "ovs up", socket: c.Socket, export: "crash",
		kill9: c.kill9, stop: c.stop, start: c.start}
}

// startNbdkitFile serves a file of size bytes with nbdkit's file plugin.
func startNbdkitFile(t *testing.T, size int64) crashServer {
	t.Helper()
	needTools(t, "nbdkit")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "nbd.sock")
	if len(socket) > 100 { // sun_path holds 108 bytes
		sd, err := os.MkdirTemp("", "ovs-sock-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sd) })
		socket = filepath.Join(sd, "nbd.sock")
	}
	var cmd *exec.Cmd
	start := func() {
		os.Remove(socket) // left by a killed nbdkit
		cmd = exec.Command("nbdkit", "--foreground", "--unix", socket, "file", "file="+img)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting nbdkit: %v", err)
		}
		waitFor(t, 30*time.Second, "nbdkit to listen on "+socket, func() bool {
			conn, err := net.Dial("unix", socket)
			if err != nil {
				return false
			}
			conn.Close()
			return true
		})
	}
	start()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	kill9 := func() {
		cmd.Process.Kill()
		cmd.Wait()
		t.Logf("nbdkit (pid %d) killed with SIGKILL", cmd.Process.Pid)
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	return crashServer{name: "nbdkit", socket: socket, export: "crash",
		kill9: kill9, stop: stop, start: start}
}

// guestDisk is the size of the guest's disk; its files take about 70 MiB.
const guestDisk = 512 * MiB

func guestFsyncRun(t *testing.T, g guestKit, srv crashServer, kill bool) {
	const files = 120
	pauses := []int{40, 81} // files during which the server is killed
	var pauseArg []string
	for _, p := range pauses {
		pauseArg = append(pauseArg, strconv.Itoa(p))
	}
	uri := srv.uri()

	// An empty ext4 made on the host: busybox's mke2fs makes only ext2.
	dir := t.TempDir()
	fsImg := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(fsImg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fsImg, guestDisk); err != nil {
		t.Fatal(err)
	}
	mustRun(t, time.Minute, g.mkfs, "-q", "-F", "-b", "4096",
		"-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", fsImg)
	mustRun(t, 2*time.Minute, "nbdcopy", "--flush", fsImg, uri)
	os.Remove(fsImg)

	gs := bootGuest(t, g, srv.socket, srv.export, fmt.Sprintf("ovs_files=%d", files),
		"ovs_pause="+strings.Join(pauseArg, ","))
	for _, p := range pauses {
		name := fmt.Sprintf("f%04d", p)
		gs.waitLine(t, "PAUSE "+name, 4*time.Minute)
		if !kill {
			continue
		}
		t.Logf("guest has fsync'd %d files and half written %s; killing %s",
			gs.doneCount(), name, srv.name)
		srv.kill9()
		if _, ok := gs.done()[name]; ok {
			// The guest pauses for seconds; this only happens on a
			// machine too slow for the test to mean anything.
			t.Fatalf("%s was fsync'd before %s was killed", name, srv.name)
		}
		srv.start()
	}
	gs.waitExit(t, 5*time.Minute)
	done := gs.done()
	if !gs.finished() {
		t.Errorf("the guest did not finish its %d files (%d reported fsync'd); console:\n%s",
			files, len(done), gs.console(8<<10))
	}

	verifyGuestFiles(t, g, uri, dir, "/data", done, fmt.Sprintf("%s killed: %v", srv.name, kill))
}

// verifyGuestFiles reads the guest's ext4 back from the vdisk at uri, on
// the host: e2fsck -fn must find it clean, and every file of done (name ->
// sha256) in directory fsDir of the filesystem must hold what the guest
// wrote. what is the circumstance, for messages.
func verifyGuestFiles(t *testing.T, g guestKit, uri, dir, fsDir string, done map[string]string, what string) {
	t.Helper()
	back := filepath.Join(dir, "back.img")
	mustRun(t, 2*time.Minute, "nbdcopy", uri, back)
	defer os.Remove(back)
	if out, err := run(t, 2*time.Minute, "", g.e2fsck, "-fn", back); err != nil {
		t.Errorf("the guest's filesystem is damaged (%s; e2fsck -fn: %v):\n%s", what, err, lastLines(out, 40))
	}
	files2, err := os.MkdirTemp(dir, "files-")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, 2*time.Minute, g.debugfs, "-R", "rdump "+fsDir+" "+files2, back)

	names := make([]string, 0, len(done))
	for name := range done {
		names = append(names, name)
	}
	sort.Strings(names)
	var bad []string
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(files2, filepath.Base(fsDir), name))
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: missing (%v)", name, err))
			continue
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != done[name] {
			bad = append(bad, fmt.Sprintf("%s: sha256 %s, the guest wrote %s (%d bytes, %d of its 4 KiB blocks are zeros)",
				name, got[:16], done[name][:16], len(data), zeroBlocks(data)))
		}
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d files the guest fsync'd came back wrong (%s):\n%s",
			len(bad), len(done), what, strings.Join(bad, "\n"))
		return
	}
	t.Logf("all %d fsync'd files came back intact", len(done))
}

func zeroBlocks(data []byte) int {
	var zero [4096]byte
	n := 0
	for i := 0; i < len(data); i += 4096 {
		if bytes.Equal(data[i:min(i+4096, len(data))], zero[:min(4096, len(data)-i)]) {
			n++
		}
	}
	return n
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = append([]string{"..."}, l[len(l)-n:]...)
	}
	return strings.Join(l, "\n")
}

const guestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "FAIL $*"; poweroff -f; sleep 60; }
for m in $(cat /modules); do insmod /$m || fail "insmod $m"; done
i=0
while [ ! -b /dev/vda ]; do
	i=$((i+1)); [ $i -gt 300 ] && fail "no /dev/vda"
	sleep 0.1
done
mount -t ext4 /dev/vda /mnt || fail "mount /dev/vda"
mkdir -p /mnt/data && sync /mnt /mnt/data || fail "mkdir /mnt/data"
echo "READY"
i=0
while [ $i -lt ${ovs_files:-10} ]; do
	name=$(printf f%04d $i)
	f=/mnt/data/$name
	n=$((RANDOM % 16 + 1))
	case ",$ovs_pause," in *,$i,*) n=16 ;; esac
	dd if=/dev/urandom of=/tmp/src bs=64k count=$n 2>/dev/null || fail "urandom"
	sum=$(sha256sum /tmp/src) || fail "sha256sum"
	case ",$ovs_pause," in
	*,$i,*)
		dd if=/tmp/src of=$f bs=4k count=128 oflag=direct 2>/dev/null || fail "writing $name"
		echo "PAUSE $name"
		sleep 3
		dd if=/tmp/src of=$f bs=4k skip=128 seek=128 oflag=direct conv=notrunc,fsync 2>/dev/null ||
			fail "writing $name"
		;;
	*)
		if [ $((i % 2)) = 1 ]; then
			dd if=/tmp/src of=$f bs=4k oflag=direct conv=fsync 2>/dev/null || fail "writing $name"
		else
			dd if=/tmp/src of=$f bs=64k conv=fsync 2>/dev/null || fail "writing $name"
		fi
		;;
	esac
	sync /mnt/data || fail "fsync /mnt/data"
	echo "DONE $name ${sum%% *}"
	i=$((i+1))
done
umount /mnt || fail "umount /mnt"
echo "ALLDONE"
poweroff -f
`

// guestRun is a running guest: its console is logged and its DONE lines
// collected.
type guestRun struct {
	mu       sync.Mutex
	log      bytes.Buffer
	doneSums map[string]string
	end      bool // ALLDONE seen
	fail     string
	start    time.Time
	changed  chan struct{} // closed and replaced on every console line
	exited   chan struct{}
	exitErr  error
}

var doneLine = regexp.MustCompile(`DONE (f\d+) ([0-9a-f]{64})`)

// bootGuest starts qemu (TCG: the host's /dev/kvm may not boot this
// kernel) with the vdisk as a virtio disk through qemu's own NBD client,
// which reconnects for up to reconnect-delay seconds after losing the
// server and then replays the requests it had in flight. No network.
func bootGuest(t *testing.T, g guestKit, socket, export string, params ...string) *guestRun {
	t.Helper()
	gs := &guestRun{doneSums: map[string]string{}, changed: make(chan struct{}), exited: make(chan struct{})}
	args := []string{
		"-accel", "tcg", "-cpu", "qemu64", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", g.kernel, "-initrd", g.initrd,
		"-append", "console=ttyS0 quiet panic=-1 " + strings.Join(params, " "),
		"-blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=" + socket +
			",export=" + export + ",reconnect-delay=60",
		"-device", "virtio-blk-pci,drive=disk0",
	}
	cmd := exec.Command(g.qemu, args...)
	cmd.Stdin = nil
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	t.Logf("qemu (pid %d): %s %s", cmd.Process.Pid, g.qemu, strings.Join(args, " "))
	start := time.Now()
	gs.start = start
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			gs.line(strings.TrimRight(sc.Text(), "\r"))
		}
		io.Copy(io.Discard, stdout)
		gs.exitErr = cmd.Wait()
		close(gs.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-gs.exited:
		default:
			cmd.Process.Kill()
			<-gs.exited
		}
		t.Logf("guest ran %v", time.Since(start).Round(time.Second))
		if t.Failed() {
			t.Logf("guest console:\n%s", gs.console(16<<10))
		}
	})
	return gs
}

func (gs *guestRun) line(l string) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	fmt.Fprintf(&gs.log, "[%7.3fs] %s\n", time.Since(gs.start).Seconds(), l)
	if m := doneLine.FindStringSubmatch(l); m != nil {
		gs.doneSums[m[1]] = m[2]
	}
	if strings.Contains(l, "ALLDONE") {
		gs.end = true
	}
	if i := strings.Index(l, "FAIL "); i >= 0 && gs.fail == "" {
		gs.fail = l[i:]
	}
	close(gs.changed)
	gs.changed = make(chan struct{})
}

func (gs *guestRun) doneCount() int {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return len(gs.doneSums)
}

func (gs *guestRun) done() map[string]string {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	m := make(map[string]string, len(gs.doneSums))
	for k, v := range gs.doneSums {
		m[k] = v
	}
	return m
}

func (gs *guestRun) finished() bool {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return gs.end
}

func (gs *guestRun) console(max int) string {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	b := gs.log.Bytes()
	if len(b) > max {
		return "...\n" + string(b[len(b)-max:])
	}
	return string(b)
}

// waitLine waits until the guest has printed a line holding text.
func (gs *guestRun) waitLine(t *testing.T, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		gs.mu.Lock()
		seen := strings.Contains(gs.log.String(), text)
		got, fail, ch := len(gs.doneSums), gs.fail, gs.changed
		gs.mu.Unlock()
		if fail != "" {
			t.Fatalf("the guest failed: %s", fail)
		}
		if seen {
			return
		}
		select {
		case <-ch:
		case <-gs.exited:
			t.Fatalf("qemu exited (%v) after %d files, before printing %q", gs.exitErr, got, text)
		case <-deadline:
			t.Fatalf("the guest did not print %q within %v (%d files fsync'd)", text, timeout, got)
		}
	}
}

// waitExit waits for the guest to power off.
func (gs *guestRun) waitExit(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-gs.exited:
		if gs.exitErr != nil {
			t.Errorf("qemu exited with %v", gs.exitErr)
		}
	case <-time.After(timeout):
		t.Fatalf("the guest did not power off within %v (%d files fsync'd)", timeout, gs.doneCount())
	}
	gs.mu.Lock()
	fail := gs.fail
	gs.mu.Unlock()
	if fail != "" {
		t.Errorf("the guest failed: %s", fail)
	}
}

// crashCase is one run of a crash test: against ovs with or without a
// kill -9, or against nbdkit's file plugin killed the same way (the control
// that shows the test can pass with a server that keeps acknowledged
// writes).
type crashCase struct {
	name   string
	nbdkit bool
	kill   bool
}

var crashCases = []crashCase{
	{"no crash", false, false},
	{"nbdkit kill -9", true, true},
	{"kill -9", false, true},
}

func (tc crashCase) server(t *testing.T, size int64) crashServer {
	if tc.nbdkit {
		return startNbdkitFile(t, size)
	}
	return ovsCrashServer(t, size)
}
