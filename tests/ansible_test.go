package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
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

// TestAnsibleRollout is the Ansible issue's end-to-end test: Debian's
// ansible-playbook rolls ansible/ out on 3 hosts that are containers
// running systemd as PID 1 (a debootstrap rootfs, `docker import`ed into
// a dockerd the test runs itself, no registry), reached with the
// community.docker.docker_api connection. site.yml forms the cluster; fio
// --verify goes through each host's NBD; a second site.yml run changes
// nothing; upgrade.yml to a newly built binary runs under fio verify jobs
// with no error, and every host then runs the new binary.
//
// It takes minutes (the first run also debootstraps the rootfs, cached in
// ~/.cache/ovs-test), so it runs from `make test-ansible`, which sets
// OVS_TEST_ANSIBLE=1, and not again from the rest of the e2e tests.
func TestAnsibleRollout(t *testing.T) {
	if os.Getenv("OVS_TEST_ANSIBLE") != "1" {
		t.Skip("the Ansible rollout test runs from `make test-ansible` (OVS_TEST_ANSIBLE=1)")
	}
	if os.Geteuid() != 0 {
		missingTool(t, "the Ansible test runs dockerd and debootstrap: it needs root")
	}
	needTools(t, "ansible-playbook", "ansible-lint", "dockerd", "docker", "debootstrap", "tar", "go")
	needFio(t)
	ansibleDir, err := filepath.Abs("../ansible")
	if err != nil {
		t.Fatal(err)
	}

	// The second binary builds while the first is rolled out.
	v2 := "ansible-upgrade-" + strconv.Itoa(rand.IntN(1<<30))
	v2Bin := filepath.Join(t.TempDir(), "ovs")
	v2Built := make(chan error, 1)
	go func() {
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+v2, "-o", v2Bin, "./cmd/ovs")
		cmd.Dir = filepath.Dir(ansibleDir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
		v2Built <- err
	}()
	waitV2 := sync.OnceValue(func() error { return <-v2Built })
	t.Cleanup(func() { _ = waitV2() })

	t.Run("lint", func(t *testing.T) {
		out, err := run(t, 5*time.Minute, ansibleDir, "ansible-lint", "--nocolor")
		if err != nil {
			t.Fatalf("ansible-lint: %v\n%s", err, out)
		}
		if !strings.Contains(out, "production") {
			t.Errorf("ansible-lint did not run the production profile:\n%s", out)
		}
	})

	rootfs := ansibleRootfs(t)
	d := startTestDockerd(t)
	d.docker(t, 5*time.Minute, "import", "-c", `CMD ["/sbin/init"]`, rootfs, ansibleImage)
	hosts := d.startHosts(t, 3)

	dir := t.TempDir()
	inv := filepath.Join(dir, "hosts.yml")
	writeAnsibleInventory(t, inv, d, hosts, ovsBin, filepath.Join(dir, "credentials", "ovs-secret"))
	play := func(t *testing.T, playbook string, extra ...string) map[string]int {
		t.Helper()
		return ansiblePlaybook(t, ansibleDir, d, append([]string{"-i", inv, playbook}, extra...)...)
	}

	t.Run("site", func(t *testing.T) {
		changed := play(t, "site.yml")
		for _, h := range hosts {
			if changed[h.name] == 0 {
				t.Errorf("%s: the first site.yml run changed nothing", h.name)
			}
		}
		nodes := d.nodeList(t, hosts[0])
		for _, h := range hosts {
			if nodes[h.name] != "up" {
				t.Errorf("node %s is %q after site.yml: %v", h.name, nodes[h.name], nodes)
			}
		}
	})
	if t.Failed() {
		d.dumpJournals(t, hosts)
		t.FailNow()
	}

	// One vdisk per host, owned there; each is written and verified
	// through another host's NBD (forwarded to its owner).
	for _, h := range hosts {
		d.ovsOK(t, h, "vdisk", "create", "v"+strings.TrimPrefix(h.name, "h"), "--size", "256MiB")
	}
	t.Run("fio-each-host", func(t *testing.T) {
		for i, h := range hosts {
			vd := "v" + strconv.Itoa((i+1)%len(hosts)+1)
			out, err := run(t, 5*time.Minute, "", "fio", ansibleFioArgs(h.nbdURI(vd), vd)...)
			if err != nil || !strings.Contains(out, "err= 0") {
				t.Fatalf("fio through %s on %s: %v\n%s", h.name, vd, err, out)
			}
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		changed := play(t, "site.yml")
		for _, h := range hosts {
			if n, ok := changed[h.name]; !ok || n != 0 {
				t.Errorf("second site.yml run: %s changed=%d (in recap: %v), want 0", h.name, n, ok)
			}
		}
	})

	t.Run("upgrade", func(t *testing.T) {
		if err := waitV2(); err != nil {
			t.Fatalf("building the new binary: %v", err)
		}
		// A client's NBD connection ends when the node it is connected
		// to restarts (qemu reconnects; fio does not), so fio runs through
		// h3 while h1 and h2 are upgraded, then through h1 while h3 is:
		// back-to-back verify jobs on vdisks that move away from the
		// upgraded node and back.
		phases := []struct {
			limit  string
			client *ansibleHost
			vdisks []string
		}{
			{"h1:h2", hosts[2], []string{"v1", "v2"}},
			{"h3", hosts[0], []string{"v3", "v1"}},
		}
		for _, ph := range phases {
			var uris []string
			for _, vd := range ph.vdisks {
				uris = append(uris, ph.client.nbdURI(vd))
			}
			loop := startFioLoop(uris)
			play(t, "upgrade.yml", "-e", "ovs_binary_src="+v2Bin, "--limit", ph.limit)
			runs, err := loop.stop()
			if err != nil {
				t.Fatalf("fio through %s during the upgrade of %s: %v", ph.client.name, ph.limit, err)
			}
			if runs == 0 {
				t.Fatalf("no fio verify job finished during the upgrade of %s", ph.limit)
			}
			t.Logf("upgrade of %s: %d fio verify runs through %s, all without error", ph.limit, runs, ph.client.name)
		}
		for _, h := range hosts {
			if out := d.ovsOK(t, h, "version"); !strings.Contains(out, v2) {
				t.Errorf("%s: ovs version says %q, want %s", h.name, out, v2)
			}
			// The daemons run the new file, not the replaced one: they
			// started after it was installed. (/proc/PID/exe of the ovs
			// user's daemons is not readable without CAP_SYS_PTRACE.)
			for _, unit := range []string{"ovs-node", "ovs-arakoon"} {
				out := d.exec(t, h, "sh", "-c", `echo $(date -d "$(systemctl show -p ExecMainStartTimestamp --value `+unit+`)" +%s) $(stat -c %Z /usr/local/bin/ovs)`)
				var started, installed int64
				if _, err := fmt.Sscan(out, &started, &installed); err != nil || started < installed {
					t.Errorf("%s: %s started at %d, the binary was installed at %d (%q, %v)", h.name, unit, started, installed, out, err)
				}
			}
		}
		owners := d.vdiskOwners(t, hosts[1])
		for _, h := range hosts {
			vd := "v" + strings.TrimPrefix(h.name, "h")
			if owners[vd] != h.name {
				t.Errorf("after the upgrade %s is owned by %q, want %s (moved back)", vd, owners[vd], h.name)
			}
		}
	})
	if t.Failed() {
		d.dumpJournals(t, hosts)
	}
}

const ansibleImage = "ovs-ansible-test:bookworm"

// ansibleRootfsPackages go into the hosts' rootfs: systemd as PID 1 and
// the python3 that Ansible's modules run on.
var ansibleRootfsPackages = []string{"systemd", "systemd-sysv", "dbus", "python3", "iproute2", "procps"}

// ansibleRootfs returns a tarball of a Debian bookworm minbase rootfs with
// ansibleRootfsPackages, made with debootstrap the first time and cached
// (in $OVS_TEST_CACHE, else ~/.cache/ovs-test) under a name that changes
// with the package list.
func ansibleRootfs(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("OVS_TEST_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache", "ovs-test")
	}
	sum := sha256.Sum256([]byte("bookworm minbase " + strings.Join(ansibleRootfsPackages, ",")))
	tarball := filepath.Join(cache, "ansible-rootfs-"+hex.EncodeToString(sum[:6])+".tar")
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	work, err := os.MkdirTemp(cache, "debootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	root := filepath.Join(work, "rootfs")
	start := time.Now()
	mustRun(t, 30*time.Minute, "debootstrap", "--variant=minbase", "--include="+strings.Join(ansibleRootfsPackages, ","),
		"bookworm", root, "http://deb.debian.org/debian")
	// A container gets its machine id at boot, and needs no getty.
	for _, f := range []string{"etc/machine-id", "var/lib/dbus/machine-id"} {
		_ = os.Remove(filepath.Join(root, f))
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(work, "rootfs.tar")
	mustRun(t, 10*time.Minute, "tar", "-C", root, "-cf", tmp, ".")
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("rootfs made with debootstrap in %v, cached as %s", time.Since(start).Round(time.Second), tarball)
	return tarball
}

// testDockerd is a dockerd of the test's own: its own data root, exec root
// and socket, no iptables, no default bridge; one user-defined bridge
// network with a private /24 for the hosts.
type testDockerd struct {
	dir    string
	sock   string
	subnet string // "172.29.N", the hosts are .11, .12, ...
	net    string
}

func startTestDockerd(t *testing.T) *testDockerd {
	t.Helper()
	// A short path: the socket's must fit in sockaddr_un.
	dir, err := os.MkdirTemp("/tmp", "ovs-ans-")
	if err != nil {
		t.Fatal(err)
	}
	d := &testDockerd{dir: dir, sock: filepath.Join(dir, "docker.sock")}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dockerd", "--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"-H", "unix://"+d.sock, "--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
		"--containerd-namespace", filepath.Base(dir), "--containerd-plugins-namespace", filepath.Base(dir)+"-plugins")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dockerd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// Containers first (their systemd stops the daemons), then the
		// daemon, which unmounts their layers and stops its containerd.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := d.cmd(ctx, "ps", "-aq").Output(); err == nil && len(strings.Fields(string(out))) > 0 {
			_ = d.cmd(ctx, append([]string{"rm", "-f"}, strings.Fields(string(out))...)...).Run()
		}
		if d.net != "" {
			_ = d.cmd(ctx, "network", "rm", d.net).Run()
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil && len(b) > 4000 {
				t.Logf("dockerd log tail:\n%s", b[len(b)-4000:])
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := d.cmd(ctx, "info").Run()
		cancel()
		if err == nil {
			break
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("dockerd exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd did not answer: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	// A private /24 that no route of this machine uses yet; the bridge
	// takes .1, the hosts .11 on.
	routes, _ := exec.Command("ip", "-4", "route").Output()
	for try := 0; ; try++ {
		n := 16 + rand.IntN(230)
		d.subnet = "172.29." + strconv.Itoa(n)
		if strings.Contains(string(routes), d.subnet+".") {
			continue
		}
		d.net = "ovsans" + strconv.Itoa(n)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := d.cmd(ctx, "network", "create", "--driver", "bridge", "--subnet", d.subnet+".0/24",
			"-o", "com.docker.network.bridge.name="+d.net, d.net).CombinedOutput()
		cancel()
		if err == nil {
			break
		}
		if try > 5 {
			d.net = ""
			t.Fatalf("docker network create: %v\n%s", err, out)
		}
	}
	return d
}

func (d *testDockerd) cmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.sock)
	return cmd
}

func (d *testDockerd) docker(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := d.cmd(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type ansibleHost struct {
	name, addr string
}

func (h *ansibleHost) nbdURI(vdisk string) string { return "nbd://" + h.addr + ":10809/" + vdisk }

// startHosts runs n containers h1..hn with systemd as PID 1. systemd
// manages its services' cgroups under the container's own (the cgroup
// mounts of the machine, bind-mounted).
func (d *testDockerd) startHosts(t *testing.T, n int) []*ansibleHost {
	t.Helper()
	var hosts []*ansibleHost
	for i := 1; i <= n; i++ {
		h := &ansibleHost{name: "h" + strconv.Itoa(i), addr: d.subnet + "." + strconv.Itoa(10+i)}
		d.docker(t, 2*time.Minute, "run", "-d", "--name", h.name, "--hostname", h.name, "--network", d.net, "--ip", h.addr,
			"--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", ansibleImage)
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, _ := d.cmd(ctx, "exec", h.name, "systemctl", "is-system-running").Output()
			cancel()
			state := strings.TrimSpace(string(out))
			if state == "running" || state == "degraded" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: systemd is %q after 2 minutes", h.name, state)
			}
			time.Sleep(time.Second)
		}
	}
	return hosts
}

// exec runs a command in host h.
func (d *testDockerd) exec(t *testing.T, h *ansibleHost, args ...string) string {
	t.Helper()
	return d.docker(t, 5*time.Minute, append([]string{"exec", h.name}, args...)...)
}

// ovsOK runs the ovs CLI in host h against its own API, with its token.
func (d *testDockerd) ovsOK(t *testing.T, h *ansibleHost, args ...string) string {
	t.Helper()
	return d.exec(t, h, append([]string{"env", "OVS_DATA=/var/lib/ovs/node", "/usr/local/bin/ovs",
		"--api", "http://" + h.addr + ":8800"}, args...)...)
}

func (d *testDockerd) nodeList(t *testing.T, h *ansibleHost) map[string]string {
	t.Helper()
	var nodes []struct{ ID, State string }
	out := d.ovsOK(t, h, "node", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("node list: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, n := range nodes {
		m[n.ID] = n.State
	}
	return m
}

func (d *testDockerd) vdiskOwners(t *testing.T, h *ansibleHost) map[string]string {
	t.Helper()
	var vs []struct{ Name, Owner string }
	out := d.ovsOK(t, h, "vdisk", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatalf("vdisk list: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, v := range vs {
		m[v.Name] = v.Owner
	}
	return m
}

func (d *testDockerd) dumpJournals(t *testing.T, hosts []*ansibleHost) {
	t.Helper()
	for _, h := range hosts {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, _ := d.cmd(ctx, "exec", h.name, "journalctl", "--no-pager", "-n", "60", "-u", "ovs-node", "-u", "ovs-arakoon").CombinedOutput()
		cancel()
		t.Logf("%s journal:\n%s", h.name, out)
	}
}

// writeAnsibleInventory: every host is an arakoon member and a storage
// router with 2 ASDs, reached through the test's dockerd.
func writeAnsibleInventory(t *testing.T, path string, d *testDockerd, hosts []*ansibleHost, bin, secretFile string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `all:
  vars:
    ansible_connection: community.docker.docker_api
    ansible_docker_docker_host: unix://%s
    ovs_binary_src: %s
    ovs_secret_file: %s
    ovs_cluster_id: anstest
    ovs_node_driver: {read_cache: 32MiB, write_buffer: 256MiB}
  children:
    arakoon: {hosts: {%[4]s}}
    storagerouters: {hosts: {%[4]s}}
    asds: {hosts: {}}
  hosts:
`, d.sock, bin, secretFile, hostNames(hosts))
	for _, h := range hosts {
		fmt.Fprintf(&b, "    %s: {ovs_address: %s, ovs_site: dc1}\n", h.name, h.addr)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func hostNames(hosts []*ansibleHost) string {
	var names []string
	for _, h := range hosts {
		names = append(names, h.name+": ")
	}
	return strings.Join(names, ", ")
}

var recapLine = regexp.MustCompile(`(?m)^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)`)

// ansiblePlaybook runs ansible-playbook in dir and returns changed= of
// each host from the PLAY RECAP; a failed or unreachable host fails t.
func ansiblePlaybook(t *testing.T, dir string, d *testDockerd, args ...string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ansible-playbook", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1", "ANSIBLE_FORCE_COLOR=0", "DOCKER_HOST=unix://"+d.sock,
		"ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("$ ansible-playbook %s -> %v in %v", strings.Join(args, " "), errOrOK(err), time.Since(start).Round(time.Second))
	changed := map[string]int{}
	for _, m := range recapLine.FindAllStringSubmatch(string(out), -1) {
		c, _ := strconv.Atoi(m[3])
		changed[m[1]] = c
		if m[4] != "0" || m[5] != "0" {
			err = fmt.Errorf("%s: unreachable=%s failed=%s", m[1], m[4], m[5])
		}
	}
	if err != nil || len(changed) == 0 {
		t.Fatalf("ansible-playbook %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// The recap and the slowest tasks, for the record.
	if i := strings.LastIndex(string(out), "PLAY RECAP"); i >= 0 {
		t.Logf("%s", out[i:])
	}
	return changed
}

// ansibleFioArgs write 32 MiB at random and verify it, on one vdisk.
func ansibleFioArgs(uri, name string) []string {
	return []string{"--name=" + name, "--ioengine=nbd", "--uri=" + uri, "--rw=randwrite", "--bs=4k", "--iodepth=8",
		"--size=32m", "--verify=crc32c", "--verify_fatal=1"}
}

// fioLoop runs fio verify jobs (one per uri, in one fio) back to back
// until stopped.
type fioLoop struct {
	stopCh chan struct{}
	done   chan struct{}
	runs   int
	err    error
	mu     sync.Mutex
}

func startFioLoop(uris []string) *fioLoop {
	l := &fioLoop{stopCh: make(chan struct{}), done: make(chan struct{})}
	var args []string
	for i, u := range uris {
		args = append(args, ansibleFioArgs(u, "j"+strconv.Itoa(i))...)
	}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stopCh:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			out, err := exec.CommandContext(ctx, "fio", args...).CombinedOutput()
			cancel()
			if err == nil && strings.Count(string(out), "err= 0") != len(uris) {
				err = fmt.Errorf("not every job ended with err= 0")
			}
			l.mu.Lock()
			if err != nil {
				l.err = fmt.Errorf("run %d: %w\n%s", l.runs+1, err, out)
				l.mu.Unlock()
				return
			}
			l.runs++
			l.mu.Unlock()
		}
	}()
	return l
}

// stop waits for the fio run in flight to end and returns how many ran.
func (l *fioLoop) stop() (int, error) {
	close(l.stopCh)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs, l.err
}
