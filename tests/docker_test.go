package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The Docker volume plugin (plugins/docker) under a real dockerd (Debian
// docker.io) that the test starts on its own data root, exec root and
// socket, with no network of its own (--bridge=none, --iptables=false).
// Its image is busybox-static imported with `docker import`: no registry.

const dockerTimeout = 3 * time.Minute

// dockerd is a Docker daemon started by a test.
type dockerd struct {
	t    *testing.T
	dir  string
	sock string
	cmd  *exec.Cmd
	done chan struct{}
}

func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	// Short paths: containerd's socket under the exec root must fit in
	// a sun_path.
	dir, err := os.MkdirTemp("", "ovsdk-")
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerd{t: t, dir: dir, sock: filepath.Join(dir, "d.sock"), done: make(chan struct{})}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("dockerd", "--data-root", filepath.Join(dir, "root"), "--exec-root", filepath.Join(dir, "x"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "-H", "unix://"+d.sock,
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	logf.Close()
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(d.stop)
	waitFor(t, 60*time.Second, "dockerd to answer", func() bool {
		_, err := d.run("version")
		return err == nil
	})
	return d
}

// run runs the docker CLI against this daemon.
func (d *dockerd) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", append([]string{"-H", "unix://" + d.sock}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (d *dockerd) ok(args ...string) string {
	d.t.Helper()
	out, err := d.run(args...)
	d.t.Logf("$ docker %s -> %s", strings.Join(args, " "), errOrOK(err))
	if err != nil {
		d.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// fails runs a docker command that must fail with an error saying each
// of words.
func (d *dockerd) fails(what string, words []string, args ...string) {
	d.t.Helper()
	out, err := d.run(args...)
	d.t.Logf("$ docker %s -> %s: %s", strings.Join(args, " "), errOrOK(err), strings.TrimSpace(out))
	if err == nil {
		d.t.Fatalf("%s: docker %s succeeded:\n%s", what, strings.Join(args, " "), out)
	}
	for _, w := range words {
		if !strings.Contains(out, w) {
			d.t.Fatalf("%s: the error does not say %q:\n%s", what, w, out)
		}
	}
}

func (d *dockerd) stop() {
	select {
	case <-d.done:
	default:
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(60 * time.Second):
			d.t.Errorf("dockerd did not stop within 60s of SIGTERM; killing it")
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	}
	if d.t.Failed() {
		b, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		d.t.Logf("dockerd log:\n%s", b)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.t.Logf("removing dockerd's directory: %v", err)
	}
}

// importBusybox makes the image ovs-busybox:e2e from busybox-static.
func (d *dockerd) importBusybox() string {
	d.t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		d.t.Fatal(err)
	}
	root := filepath.Join(d.t.TempDir(), "rootfs")
	for _, dir := range []string{"bin", "tmp", "data", "proc", "sys", "dev", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			d.t.Fatal(err)
		}
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755); err != nil {
		d.t.Fatal(err)
	}
	for _, app := range []string{"sh", "cat", "echo", "md5sum", "sha256sum", "dd", "sync", "sleep", "ls", "cd", "test", "cmp"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", app)); err != nil {
			d.t.Fatal(err)
		}
	}
	tarball := filepath.Join(d.t.TempDir(), "rootfs.tar")
	mustRun(d.t, time.Minute, "tar", "-C", root, "-cf", tarball, ".")
	const image = "ovs-busybox:e2e"
	d.ok("import", tarball, image)
	return image
}

// startDockerPlugin runs `ovs docker-plugin serve` and waits for its
// socket; cleanup stops it.
func startDockerPlugin(t *testing.T, c *cluster, socket, host string) string {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state-"+host)
	logPath := filepath.Join(t.TempDir(), "plugin-"+host+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ovsBin, "docker-plugin", "serve", "--api", c.APIURL(), "--socket", socket,
		"--state", state, "--host-id", host, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("docker plugin %s did not stop on SIGTERM", host)
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("docker plugin %s log:\n%s", host, b)
		}
	})
	waitFor(t, 30*time.Second, "the docker plugin's socket", func() bool {
		conn, err := net.Dial("unix", socket)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return state
}

// pluginCall sends one volume plugin request to the plugin at socket, as
// dockerd does, and returns the "Err" of the answer.
func pluginCall(t *testing.T, socket, method string, body any) string {
	t.Helper()
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
	b, _ := json.Marshal(body)
	resp, err := hc.Post("http://plugin/VolumeDriver."+method, "application/vnd.docker.plugins.v1.2+json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("plugin %s: %v", method, err)
	}
	defer resp.Body.Close()
	var out struct{ Err string }
	json.NewDecoder(resp.Body).Decode(&out)
	return out.Err
}

func TestDockerVolumePlugin(t *testing.T) {
	needTools(t, "dockerd", "docker", "nbdfuse", "nbdkit", "losetup", "mkfs.ext4", "blkid", "busybox", "tar")
	if os.Geteuid() != 0 {
		t.Skip("the Docker volume plugin mounts filesystems: needs root")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("%s: %v", dev, err)
		}
	}
	c := startCluster(t)

	// Docker finds a plugin by its socket in /run/docker/plugins: the
	// driver is "ovs" unless another plugin has that name here.
	driver := "ovs"
	if _, err := os.Stat("/run/docker/plugins/ovs.sock"); err == nil {
		driver = fmt.Sprintf("ovs-e2e-%d", os.Getpid())
	}
	socket := "/run/docker/plugins/" + driver + ".sock"
	state := startDockerPlugin(t, c, socket, "h1")
	// A second host's plugin, on a socket dockerd does not know: the test
	// drives it with the plugin protocol itself.
	socket2 := filepath.Join(t.TempDir(), "h2.sock")
	startDockerPlugin(t, c, socket2, "h2")

	d := startDockerd(t)
	image := d.importBusybox()
	run := func(args ...string) string {
		return d.ok(append([]string{"run", "--rm", "--network", "none"}, args...)...)
	}

	d.ok("volume", "create", "-d", driver, "--opt", "size=1GiB", "v1")
	if in := c.info("docker-v1"); in.Size != 1<<30 {
		t.Fatalf("vdisk docker-v1 is %d bytes, want 1 GiB", in.Size)
	}
	if out := d.ok("volume", "ls", "-q"); !strings.Contains(out, "v1") {
		t.Fatalf("docker volume ls:\n%s", out)
	}

	// Bad input: clear errors, nothing made.
	d.fails("unknown option", []string{"unknown option sise"}, "volume", "create", "-d", driver, "--opt", "sise=1GiB", "v2")
	d.fails("bad size", []string{"option size", "lots"}, "volume", "create", "-d", driver, "--opt", "size=lots", "v3")
	d.fails("bad clone source", []string{"VDISK@SNAPSHOT"}, "volume", "create", "-d", driver, "--opt", "from=nothing", "v4")
	for _, v := range c.list() {
		if v.Name != "docker-v1" {
			t.Fatalf("a refused create left vdisk %s", v.Name)
		}
	}

	// A container writes, another reads it back.
	sum := run("-v", "v1:/data", image, "sh", "-c",
		"dd if=/dev/urandom of=/data/f bs=1M count=8 2>/dev/null && cd /data && md5sum f > f.md5 && sync && cat f.md5")
	if !strings.Contains(sum, " f") {
		t.Fatalf("writer's checksum: %q", sum)
	}
	if out := run("-v", "v1:/data", image, "sh", "-c", "cd /data && md5sum -c f.md5"); !strings.Contains(out, "f: OK") {
		t.Fatalf("second container's check:\n%s", out)
	}

	// A container holds the volume mounted across what follows.
	d.ok("run", "-d", "--name", "holder", "--network", "none", "-v", "v1:/data", image, "sleep", "3600")
	t.Cleanup(func() { d.run("rm", "-f", "holder") })
	if got := pluginCall(t, socket2, "Mount", map[string]string{"Name": "v1", "ID": "other"}); !strings.Contains(got, "h1 has it") {
		t.Fatalf("a second host's mount while h1 has it: %q", got)
	}
	if got := pluginCall(t, socket2, "Remove", map[string]string{"Name": "v1"}); !strings.Contains(got, "mounted on host h1") {
		t.Fatalf("a second host's remove while h1 has it: %q", got)
	}
	d.fails("remove in use", []string{"in use"}, "volume", "rm", "v1")
	c.info("docker-v1") // still there

	// ovs up restarts under the mounted volume: its I/O waits and goes on.
	c.stop()
	c.start()
	out := d.ok("exec", "holder", "sh", "-c", "cd /data && md5sum -c f.md5 && echo after-restart > g && sync && cat g")
	if !strings.Contains(out, "f: OK") || !strings.Contains(out, "after-restart") {
		t.Fatalf("the held volume after ovs up restarted:\n%s", out)
	}
	d.ok("rm", "-f", "holder")

	// And a new container after the restart reads everything.
	if out := run("-v", "v1:/data", image, "sh", "-c", "cd /data && md5sum -c f.md5 && cat g"); !strings.Contains(out, "f: OK") || !strings.Contains(out, "after-restart") {
		t.Fatalf("third container after the restart:\n%s", out)
	}

	// Unmounted everywhere now: the second host may mount it.
	if got := pluginCall(t, socket2, "Mount", map[string]string{"Name": "v1", "ID": "other"}); got != "" {
		t.Fatalf("h2's mount once h1 let go: %q", got)
	}
	if got := pluginCall(t, socket2, "Unmount", map[string]string{"Name": "v1", "ID": "other"}); got != "" {
		t.Fatalf("h2's unmount: %q", got)
	}

	d.ok("volume", "rm", "v1")
	for _, v := range c.list() {
		if v.Name == "docker-v1" {
			t.Fatal("docker volume rm left vdisk docker-v1")
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "volumes")); len(ents) != 0 {
		t.Fatalf("the plugin's state dir keeps %d entries after the volume's removal", len(ents))
	}
}
