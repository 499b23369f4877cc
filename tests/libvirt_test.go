package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLibvirtGuest runs a Linux guest under a real libvirtd (qemu TCG,
// <domain type='qemu'>) on ovs vdisks, as issue 13 asks:
//
//  1. boot with a vdisk as its disk (ovs libvirt disk-xml), mkfs.ext4,
//     write files, note their checksums, power off;
//  2. boot again: e2fsck -fn clean, checksums match; hot-plug a second
//     vdisk (ovs libvirt attach), the guest sees /dev/vdb and writes to
//     it; bad input changes nothing; the quiesce hook; detach;
//  3. boot with the reconnect-capable definition (disk-xml --reconnect):
//     kill -9 of ovs up while the guest writes, restart; the guest carries
//     on, and afterwards the filesystem checks clean and every file the
//     guest fsync'd is intact. The same kill in boot 2, with libvirt's own
//     disk, pauses the guest (error_policy='stop') until it is resumed.
//
// The guest is driven over its serial console, a unix socket qemu
// connects to.
func TestLibvirtGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test; skipped in -short mode")
	}
	g := needGuestWith(t, guestSpec{init: libvirtGuestInit, modules: guestModules,
		binaries: []string{"mkfs.ext4", "e2fsck"}})
	uri := startLibvirtd(t)
	c := startCluster(t, "--backend", "local")
	c.create("lvroot", "256MiB")
	c.create("lvdata", "64MiB")
	c.create("lvother", "64MiB")
	lv := func(args ...string) cliResult {
		t.Helper()
		return c.cli(append(args, "--connect", uri)...)
	}
	dir := t.TempDir()
	dom := fmt.Sprintf("ovs-test-%d", os.Getpid())
	virsh := func(args ...string) (string, error) {
		return run(t, 2*time.Minute, "", "virsh", append([]string{"-c", uri}, args...)...)
	}
	t.Cleanup(func() {
		virsh("destroy", dom)
		virsh("undefine", dom)
	})

	// --- boot 1: a libvirt NBD disk; make the filesystem and files.
	rootXML := c.ovsOK("libvirt", "disk-xml", "lvroot", "--target", "vda")
	if !strings.Contains(rootXML, `protocol="nbd"`) || !strings.Contains(rootXML, c.NBDAddr[strings.LastIndex(c.NBDAddr, ":")+1:]) {
		t.Fatalf("disk-xml: no NBD source at the node's address %s:\n%s", c.NBDAddr, rootXML)
	}
	t.Logf("disk-xml:\n%s", rootXML)
	gc := defineAndStart(t, virsh, dom, dir, g, rootXML, "")
	gc.ok(t, "mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0,nodiscard /dev/vda", 3*time.Minute)
	gc.ok(t, "mount -t ext4 /dev/vda /mnt && mkdir /mnt/data /mnt/w", time.Minute)
	gc.ok(t, `for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/mnt/data/f$i bs=64k count=$((i*3)) 2>/dev/null || echo BAD; done; sync`, 3*time.Minute)
	sums1 := gc.ok(t, "cd /mnt/data && sha256sum f* && cd /", time.Minute)
	gc.ok(t, "umount /mnt", time.Minute)
	gc.powerOff(t, virsh, dom)
	if n := strings.Count(sums1, "  f"); n != 6 {
		t.Fatalf("boot 1: want 6 checksums, got %q", sums1)
	}

	// --- boot 2: check, hot-plug, bad input, quiesce, detach.
	gc = startDomain(t, virsh, dom, dir)
	gc.ok(t, "e2fsck -fn /dev/vda", 3*time.Minute)
	gc.ok(t, "mount -t ext4 /dev/vda /mnt", time.Minute)
	if sums2 := gc.ok(t, "cd /mnt/data && sha256sum f* && cd /", time.Minute); sums2 != sums1 {
		t.Errorf("checksums after a reboot differ:\nbefore %q\nafter  %q", sums1, sums2)
	}
	r := lv("libvirt", "attach", dom, "lvdata")
	if r.Code != 0 || !strings.Contains(r.Stdout, "vdb") {
		t.Fatalf("attach: %v", r)
	}
	gc.ok(t, "i=0; while [ ! -b /dev/vdb ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vdb ]", 3*time.Minute)
	dataSum := strings.Fields(gc.ok(t, "dd if=/dev/urandom of=/tmp/d bs=64k count=16 2>/dev/null && dd if=/tmp/d of=/dev/vdb bs=64k oflag=direct conv=fsync 2>/dev/null && sha256sum /tmp/d", 2*time.Minute))
	for _, inactive := range []bool{false, true} {
		if l := domblklist(t, virsh, dom, inactive); !strings.Contains(l, "vdb") || !strings.Contains(l, "lvdata") {
			t.Errorf("after attach, vdb is not in the domain (inactive %v):\n%s", inactive, l)
		}
	}

	badInput(t, lv, virsh, dom)
	quiesceCases(t, c, lv, dom)

	r = lv("libvirt", "detach", dom, "lvdata")
	if r.Code != 0 {
		t.Fatalf("detach: %v", r)
	}
	gc.ok(t, "i=0; while [ -b /dev/vdb ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; [ ! -b /dev/vdb ]", 3*time.Minute)
	for _, inactive := range []bool{false, true} {
		if l := domblklist(t, virsh, dom, inactive); strings.Contains(l, "vdb") {
			t.Errorf("after detach, vdb is still in the domain (inactive %v):\n%s", inactive, l)
		}
	}
	// What the guest wrote to vdb is on the vdisk.
	back := filepath.Join(dir, "data.img")
	mustRun(t, time.Minute, "nbdcopy", c.TCPURI("lvdata"), back)
	data, err := os.ReadFile(back)
	if err != nil || len(data) < 1<<20 {
		t.Fatalf("reading lvdata back: %v (%d bytes)", err, len(data))
	}
	sum := sha256.Sum256(data[:1<<20])
	if len(dataSum) == 0 || hex.EncodeToString(sum[:]) != dataSum[0] {
		t.Errorf("lvdata holds %x, the guest wrote %v", sum[:8], dataSum)
	}
	// The libvirt disk's error_policy='stop': kill -9 of ovs up pauses
	// the guest instead of failing its I/O; after the restart, a resume
	// carries on (qemu retries the failed requests and reconnects).
	gc.send(t, "writer 20 &")
	gc.waitDone(t, 3, 4*time.Minute)
	c.kill9()
	var state string
	waitFor(t, 3*time.Minute, "the guest to pause on the I/O error", func() bool {
		state, _ = virsh("domstate", dom, "--reason")
		return strings.Contains(state, "paused")
	})
	t.Logf("after kill -9 with %d files fsync'd: %s", len(gc.done()), strings.TrimSpace(state))
	c.start()
	// qemu's NBD client (without reconnect-delay) reconnects in the
	// background when a request finds no connection, and fails that
	// request: the guest may pause again once, until the connection is
	// there. Resume while it pauses.
	resumes := 0
	waitFor(t, 6*time.Minute, "the guest to finish writing after resume", func() bool {
		if strings.Contains(gc.text(), "ALLDONE") {
			return true
		}
		if st, _ := virsh("domstate", dom); strings.Contains(st, "paused") {
			if out, err := virsh("resume", dom); err != nil {
				t.Fatalf("virsh resume: %v\n%s", err, out)
			}
			resumes++
		}
		time.Sleep(time.Second)
		return false
	})
	t.Logf("the guest finished after %d resumes", resumes)
	gc.ok(t, "umount /mnt", time.Minute)
	stopDone := gc.done()
	gc.powerOff(t, virsh, dom)
	verifyGuestFiles(t, g, c.TCPURI("lvroot"), dir, "/w", stopDone, "kill -9 of ovs up under error_policy='stop'")

	// --- boot 3: qemu's NBD client with reconnect-delay; kill -9 ovs up
	// while the guest writes.
	recXML := c.ovsOK("libvirt", "disk-xml", "lvroot", "--reconnect", "120")
	t.Logf("disk-xml --reconnect:\n%s", recXML)
	gc = defineAndStart(t, virsh, dom, dir, g, "", recXML)
	r = lv("libvirt", "detach", dom, "lvroot")
	expectCLIError(t, "detach of a <qemu:commandline> disk", r, "commandline")
	gc.ok(t, "mount -t ext4 /dev/vda /mnt", time.Minute)
	const files = 40
	gc.send(t, fmt.Sprintf("writer %d &", files))
	gc.waitDone(t, 10, 4*time.Minute)
	t.Logf("the guest has fsync'd %d files; kill -9 of ovs up", len(gc.done()))
	c.kill9()
	c.start()
	gc.waitLine(t, "ALLDONE", 6*time.Minute)
	gc.ok(t, "umount /mnt", time.Minute)
	done := gc.done()
	gc.powerOff(t, virsh, dom)
	if len(done) != files {
		t.Errorf("the guest fsync'd %d of %d files", len(done), files)
	}
	verifyGuestFiles(t, g, c.TCPURI("lvroot"), dir, "/w", done, "kill -9 of ovs up under a libvirt guest")
	// The files of boot 1 too.
	want1 := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(sums1), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			want1[f[1]] = f[0]
		}
	}
	verifyGuestFiles(t, g, c.TCPURI("lvroot"), dir, "/data", want1, "the files of the first boot")
}

// badInput: each command fails with a clear message and the domain's
// disks, running and persistent, stay as they were. lvdata is attached as
// vdb at this point.
func badInput(t *testing.T, lv func(...string) cliResult, virsh func(...string) (string, error), dom string) {
	live, config := domblklist(t, virsh, dom, false), domblklist(t, virsh, dom, true)
	for _, tc := range []struct {
		name     string
		args     []string
		keywords []string
	}{
		{"unknown domain", []string{"libvirt", "attach", "no-such-domain", "lvother"}, []string{"domain", "not found"}},
		{"unknown vdisk", []string{"libvirt", "attach", dom, "no-such-vdisk"}, []string{"not found", "no-such-vdisk"}},
		{"vdisk already attached", []string{"libvirt", "attach", dom, "lvdata"}, []string{"already attached"}},
		{"target in use", []string{"libvirt", "attach", dom, "lvother", "--target", "vda"}, []string{"in use"}},
		{"bad target", []string{"libvirt", "attach", dom, "lvother", "--target", "sda"}, []string{"target"}},
		{"bad error policy", []string{"libvirt", "attach", dom, "lvother", "--error-policy", "ignore"}, []string{"error policy"}},
		{"unknown option", []string{"libvirt", "attach", dom, "lvother", "--bogus"}, []string{"unknown flag"}},
		{"detach unknown disk", []string{"libvirt", "detach", dom, "vdq"}, []string{"no disk"}},
		{"detach unknown domain", []string{"libvirt", "detach", "no-such-domain", "vdb"}, []string{"domain", "not found"}},
		{"disk-xml unknown vdisk", []string{"libvirt", "disk-xml", "no-such-vdisk"}, []string{"not found"}},
		{"disk-xml bad reconnect", []string{"libvirt", "disk-xml", "lvother", "--reconnect", "0"}, []string{"reconnect"}},
		{"missing argument", []string{"libvirt", "attach", dom}, []string{"VDISK"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectCLIError(t, tc.name, lv(tc.args...), tc.keywords...)
			if l := domblklist(t, virsh, dom, false); l != live {
				t.Errorf("the running domain's disks changed:\nbefore\n%s\nafter\n%s", live, l)
			}
			if l := domblklist(t, virsh, dom, true); l != config {
				t.Errorf("the persistent definition's disks changed:\nbefore\n%s\nafter\n%s", config, l)
			}
		})
	}
}

// quiesceCases: the guest has no qemu guest agent, so --quiesce fails
// clearly and takes no snapshot; --quiesce-optional takes it unfrozen.
func quiesceCases(t *testing.T, c *cluster, lv func(...string) cliResult, dom string) {
	r := lv("vdisk", "snapshot", "create", "lvroot", "q1", "--quiesce", dom)
	expectCLIError(t, "--quiesce without a guest agent", r, "agent")
	r = lv("vdisk", "snapshot", "create", "lvother", "q1", "--quiesce", dom)
	expectCLIError(t, "--quiesce of a vdisk the domain does not have", r, "not a disk")
	r = lv("vdisk", "snapshot", "create", "lvroot", "q2", "--quiesce", dom, "--quiesce-optional")
	if r.Code != 0 {
		t.Errorf("--quiesce-optional: %v", r)
	}
	list := c.ovsOK("vdisk", "snapshot", "list", "lvroot")
	if strings.Contains(list, "q1") || !strings.Contains(list, "q2") {
		t.Errorf("snapshots of lvroot: want q2 and no q1:\n%s", list)
	}
}

// domblklist is virsh domblklist: the domain's disks (targets and
// sources), of the running domain or the persistent definition.
func domblklist(t *testing.T, virsh func(...string) (string, error), dom string, inactive bool) string {
	t.Helper()
	args := []string{"domblklist", dom}
	if inactive {
		args = append(args, "--inactive")
	}
	out, err := virsh(args...)
	if err != nil {
		t.Fatalf("virsh domblklist: %v\n%s", err, out)
	}
	return out
}

// libvirtGuestInit is the guest's /init: it loads the modules, turns
// the console's echo off and runs each line it reads from the console.
// writer N writes N files of 64 KiB to 512 KiB of random data into /mnt/w,
// fsyncs each file and the directory and only then prints
// "DONE name sha256" (the sum of the source in RAM, never read back).
const libvirtGuestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin:/usr/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /$m || echo "FAIL insmod $m"; done
writer() {
	mkdir -p /mnt/w
	i=0
	while [ $i -lt $1 ]; do
		name=$(printf f%04d $i)
		dd if=/dev/urandom of=/tmp/src bs=64k count=$((RANDOM % 8 + 1)) 2>/dev/null
		sum=$(sha256sum /tmp/src)
		dd if=/tmp/src of=/mnt/w/$name bs=64k conv=fsync 2>/dev/null || { echo "FAIL writing $name"; return 1; }
		sync /mnt/w || { echo "FAIL fsync /mnt/w"; return 1; }
		echo "DONE $name ${sum%% *}"
		i=$((i+1))
	done
	echo "ALLDONE"
}
stty -echo 2>/dev/null
echo READY
while read -r line; do eval "$line"; done
echo "FAIL console closed"
poweroff -f
`

// startLibvirtd makes sure a libvirtd serves qemu:///system: one that
// already runs (a host with systemd), else virtlogd and libvirtd started
// here without systemd and stopped at the end. It returns the URI.
func startLibvirtd(t *testing.T) string {
	t.Helper()
	const uri = "qemu:///system"
	needTools(t, "virsh")
	if out, err := exec.Command("virsh", "-c", uri, "version").CombinedOutput(); err == nil {
		t.Logf("using the running libvirtd: %s", strings.TrimSpace(string(out)))
		return uri
	}
	if os.Geteuid() != 0 {
		missingTool(t, "starting libvirtd for qemu:///system needs root")
	}
	var bins []string
	for _, n := range []string{"virtlogd", "libvirtd"} {
		p := sbinTool(n)
		if p == "" {
			missingTool(t, "%s not found (Debian package libvirt-daemon-system)", n)
		}
		bins = append(bins, p)
	}
	logDir := t.TempDir()
	for i, bin := range bins {
		name := filepath.Base(bin)
		logf, err := os.Create(filepath.Join(logDir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin)
		cmd.Stdout, cmd.Stderr = logf, logf
		// Its own process group, and killed if this test process dies.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting %s: %v", name, err)
		}
		logf.Close()
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(logDir, name+".log"))
				t.Logf("%s log:\n%s", name, lastLines(string(b), 30))
			}
		})
		if i == 0 {
			waitFor(t, 30*time.Second, "virtlogd's socket", func() bool {
				_, err := os.Stat("/run/libvirt/virtlogd-sock")
				return err == nil
			})
		}
	}
	waitFor(t, 60*time.Second, "libvirtd to answer", func() bool {
		return exec.Command("virsh", "-c", uri, "version").Run() == nil
	})
	t.Logf("started virtlogd and libvirtd")
	return uri
}

// domainXML is the test domain: TCG (qemu64), 256 MiB, direct kernel boot
// of the test guest, the serial console on a unix socket the test
// listens on. qemu runs as root (a static DAC label, no relabelling) so
// that it can read the kernel and the test's files where they are.
func domainXML(name string, g guestKit, console, disk, qemuArgs string) string {
	return fmt.Sprintf(`<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
    %s
    <serial type='unix'>
      <source mode='connect' path='%s'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  %s
</domain>
`, name, g.kernel, g.initrd, g.qemu, disk, console, qemuArgs)
}

// defineAndStart defines the domain (replacing an earlier definition) and
// boots it.
func defineAndStart(t *testing.T, virsh func(...string) (string, error), dom, dir string, g guestKit, disk, qemuArgs string) *guestConsole {
	t.Helper()
	sock := filepath.Join(dir, "console.sock")
	path := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(path, []byte(domainXML(dom, g, sock, disk, qemuArgs)), 0o644); err != nil {
		t.Fatal(err)
	}
	// A definition without the old one's UUID cannot replace it.
	virsh("undefine", dom)
	if out, err := virsh("define", path); err != nil {
		t.Fatalf("virsh define: %v\n%s", err, out)
	}
	return startDomain(t, virsh, dom, dir)
}

// startDomain listens on the console socket, starts the domain and waits
// for the guest's READY.
func startDomain(t *testing.T, virsh func(...string) (string, error), dom, dir string) *guestConsole {
	t.Helper()
	sock := filepath.Join(dir, "console.sock")
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if out, err := virsh("start", dom); err != nil {
		t.Fatalf("virsh start: %v\n%s", err, out)
	}
	l.(*net.UnixListener).SetDeadline(time.Now().Add(time.Minute))
	conn, err := l.Accept()
	if err != nil {
		t.Fatalf("qemu did not connect to the console socket: %v", err)
	}
	gc := newGuestConsole(t, conn)
	gc.waitLine(t, "READY", 3*time.Minute)
	return gc
}

// guestConsole is the guest's serial console: everything it prints is
// logged, DONE lines collected, and commands run one at a time.
type guestConsole struct {
	conn    net.Conn
	mu      sync.Mutex
	log     bytes.Buffer
	sums    map[string]string
	changed chan struct{} // closed and replaced on every line
	closed  chan struct{}
	start   time.Time
	seq     int
}

func newGuestConsole(t *testing.T, conn net.Conn) *guestConsole {
	gc := &guestConsole{conn: conn, sums: map[string]string{}, changed: make(chan struct{}),
		closed: make(chan struct{}), start: time.Now()}
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			gc.line(strings.TrimRight(sc.Text(), "\r"))
		}
		close(gc.closed)
	}()
	t.Cleanup(func() {
		conn.Close()
		if t.Failed() {
			t.Logf("guest console:\n%s", lastLines(gc.text(), 60))
		}
	})
	return gc
}

func (gc *guestConsole) line(l string) {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	fmt.Fprintf(&gc.log, "[%7.3fs] %s\n", time.Since(gc.start).Seconds(), l)
	if m := doneLine.FindStringSubmatch(l); m != nil {
		gc.sums[m[1]] = m[2]
	}
	close(gc.changed)
	gc.changed = make(chan struct{})
}

func (gc *guestConsole) text() string {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	return gc.log.String()
}

func (gc *guestConsole) done() map[string]string {
	gc.mu.Lock()
	defer gc.mu.Unlock()
	m := make(map[string]string, len(gc.sums))
	for k, v := range gc.sums {
		m[k] = v
	}
	return m
}

func (gc *guestConsole) send(t *testing.T, cmd string) {
	t.Helper()
	gc.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := gc.conn.Write([]byte(cmd + "\n")); err != nil {
		t.Fatalf("writing to the guest console: %v", err)
	}
}

// waitFor waits until cond holds for the console's text after offset
// from; it fails on a FAIL line, a closed console or the timeout.
func (gc *guestConsole) waitFor(t *testing.T, what string, from int, timeout time.Duration, cond func(text string) bool) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		gc.mu.Lock()
		text, ch := gc.log.String()[from:], gc.changed
		gc.mu.Unlock()
		if cond(text) {
			return text
		}
		if i := strings.Index(text, "FAIL "); i >= 0 {
			t.Fatalf("the guest failed while %s: %s", what, lastLines(text[i:], 5))
		}
		select {
		case <-ch:
		case <-gc.closed:
			t.Fatalf("the guest's console closed while %s", what)
		case <-deadline:
			t.Fatalf("the guest did not finish %s within %v", what, timeout)
		}
	}
}

func (gc *guestConsole) waitLine(t *testing.T, text string, timeout time.Duration) {
	t.Helper()
	gc.waitFor(t, "printing "+text, 0, timeout, func(s string) bool { return strings.Contains(s, text) })
}

func (gc *guestConsole) waitDone(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	gc.waitFor(t, fmt.Sprintf("fsyncing %d files", n), 0, timeout, func(string) bool { return len(gc.done()) >= n })
}

var consoleStamp = regexp.MustCompile(`^\[[ 0-9.]+s\] `)

// ok runs cmd in the guest and fails the test unless it exits 0; it
// returns what cmd printed.
func (gc *guestConsole) ok(t *testing.T, cmd string, timeout time.Duration) string {
	t.Helper()
	gc.seq++
	mark := fmt.Sprintf("@@%d", gc.seq)
	// The marker line holds the exit status; an echoed command would
	// show "$?" there, not digits.
	re := regexp.MustCompile(regexp.QuoteMeta(mark) + ` (\d+)@@`)
	gc.mu.Lock()
	from := gc.log.Len()
	gc.mu.Unlock()
	gc.send(t, fmt.Sprintf(`%s; echo "%s $?@@"`, cmd, mark))
	text := gc.waitFor(t, "running "+cmd, from, timeout, re.MatchString)
	loc := re.FindStringSubmatchIndex(text)
	rc, _ := strconv.Atoi(text[loc[2]:loc[3]])
	var out []string
	for _, l := range strings.Split(text[:loc[0]], "\n") {
		l = consoleStamp.ReplaceAllString(l, "")
		if l != "" {
			out = append(out, l)
		}
	}
	printed := strings.Join(out, "\n")
	if n := len(out); n > 0 {
		printed += "\n"
	}
	if rc != 0 {
		t.Fatalf("in the guest, %q exited %d:\n%s", cmd, rc, printed)
	}
	return printed
}

// powerOff powers the guest off and waits until libvirt has it shut off.
func (gc *guestConsole) powerOff(t *testing.T, virsh func(...string) (string, error), dom string) {
	t.Helper()
	gc.send(t, "poweroff -f")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		out, _ := virsh("domstate", dom)
		if strings.Contains(out, "shut off") {
			gc.conn.Close()
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the guest did not power off: %s", out)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
