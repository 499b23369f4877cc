package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/schedulerstats"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/snapshots"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/ovs-storage/ovs/plugins/cinder"
)

// The Debian packages the Cinder test runs (scripts/deps.sh installs them).
var cinderTools = map[string]string{
	"/usr/bin/cinder-api":                   "cinder-api",
	"/usr/bin/cinder-scheduler":             "cinder-scheduler",
	"/usr/bin/cinder-volume":                "cinder-volume",
	"/usr/bin/cinder-manage":                "cinder-common",
	"/usr/lib/rabbitmq/bin/rabbitmq-server": "rabbitmq-server",
	"/usr/bin/epmd":                         "erlang-base",
	"/usr/bin/python3":                      "python3",
}

const (
	cinderProject = "0123456789abcdef0123456789abcdef" // hex: Cinder routes only such ids
	cinderBackend = "ovs"
	cinderHost    = "ovs-cinder-test"
	// cinderWait bounds one Cinder operation (create, snapshot, extend,
	// revert, delete) until its status settles.
	cinderWait = 2 * time.Minute
)

func needCinder(t *testing.T) {
	t.Helper()
	for path, pkg := range cinderTools {
		if _, err := os.Stat(path); err != nil {
			missingTool(t, "%s not found (Debian package %s)", path, pkg)
		}
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import cinder.volume.driver").CombinedOutput(); err != nil {
		missingTool(t, "/usr/bin/python3 cannot import cinder (Debian package python3-cinder): %v %s", err, out)
	}
	needTools(t, "qemu-io")
}

// daemon is a process the test started in its own process group; cleanup
// ends the group (SIGTERM, then SIGKILL) and shows the log's tail if the
// test failed.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startDaemon(t *testing.T, dir, name string, env []string, argv ...string) *daemon {
	t.Helper()
	logPath := filepath.Join(dir, name+".out")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	f.Close()
	d := &daemon{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			d.dumpLog(t)
		}
	})
	return d
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *daemon) stop() {
	pgid := d.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
	}
	// Whatever is left of the group (workers, erl_child_setup...).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-d.done
}

func (d *daemon) dumpLog(t *testing.T) {
	for _, p := range []string{d.log, strings.TrimSuffix(d.log, ".out") + ".log"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		t.Logf("--- tail of %s ---\n%s", p, b)
	}
}

// waitTCP waits until addr accepts connections, or d exits.
func waitTCP(t *testing.T, d *daemon, addr string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, d.name+" listening on "+addr, func() bool {
		if d.exited() {
			t.Fatalf("%s exited before listening on %s", d.name, addr)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// startRabbitMQ runs Debian's rabbitmq-server as root on free loopback
// ports with everything (mnesia, logs, cookie) under dir, beside an epmd
// of its own on a free port: the Erlang distribution then never meets a
// system epmd on 4369 or another test's node. Returns the transport URL.
func startRabbitMQ(t *testing.T, dir string) string {
	t.Helper()
	ports := freePorts(t, 3)
	amqp, dist, epmd := ports[0], ports[1], ports[2]
	rdir := filepath.Join(dir, "rabbitmq")
	for _, d := range []string{rdir, filepath.Join(rdir, "mnesia"), filepath.Join(rdir, "log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n", amqp)
	if err := os.WriteFile(filepath.Join(rdir, "rabbitmq.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rdir, "enabled_plugins"), []byte("[].\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"HOME=" + rdir, // the Erlang cookie
		"ERL_EPMD_PORT=" + strconv.Itoa(epmd),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		// A node name of its own: nothing else on this host answers to it.
		"RABBITMQ_NODENAME=ovstest" + strconv.Itoa(amqp) + "@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(amqp),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(dist),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(rdir, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(rdir, "log"),
		"RABBITMQ_LOGS=-",
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(rdir, "rabbitmq"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(rdir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(rdir, "enabled_plugins"),
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(rdir, "rabbitmq-env.conf"),
		"RABBITMQ_PID_FILE=" + filepath.Join(rdir, "pid"),
	}
	// epmd in the foreground, as our child: rabbit finds it on ERL_EPMD_PORT
	// and does not start a daemon of its own that would outlive the test.
	ep := startDaemon(t, dir, "epmd", env, "/usr/bin/epmd", "-port", strconv.Itoa(epmd), "-address", "127.0.0.1")
	waitTCP(t, ep, net.JoinHostPort("127.0.0.1", strconv.Itoa(epmd)), 30*time.Second)
	rmq := startDaemon(t, dir, "rabbitmq", env, "/usr/lib/rabbitmq/bin/rabbitmq-server")
	waitTCP(t, rmq, net.JoinHostPort("127.0.0.1", strconv.Itoa(amqp)), 90*time.Second)
	return fmt.Sprintf("rabbit://guest:guest@127.0.0.1:%d/", amqp)
}

// cinderServices is a Cinder of Debian's packages (api, scheduler, volume)
// with the OVS driver as backend "ovs", on sqlite and rabbitmq, noauth.
type cinderServices struct {
	dir      string
	conf     string
	endpoint string // http://127.0.0.1:PORT/v3
}

func startCinder(t *testing.T, c *cluster) *cinderServices {
	t.Helper()
	dir := t.TempDir()
	transport := startRabbitMQ(t, dir)
	apiPort := freePorts(t, 1)[0]
	pluginDir, err := filepath.Abs(filepath.Join("..", "plugins", "cinder"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"state", "lock"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`[DEFAULT]
debug = true
host = %[1]s
my_ip = 127.0.0.1
state_path = %[2]s/state
auth_strategy = noauth
transport_url = %[3]s
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = %[4]d
osapi_volume_workers = 1
api_paste_config = /etc/cinder/api-paste.ini
enabled_backends = %[5]s
# Report and poll often, so the scheduler knows the backend within seconds.
report_interval = 2
periodic_interval = 5
service_down_time = 60
scheduler_driver_init_wait_time = 5

[database]
connection = sqlite:///%[2]s/cinder.sqlite

[oslo_concurrency]
lock_path = %[2]s/lock

[coordination]
backend_url = file://%[2]s/state

[%[5]s]
volume_driver = ovs_cinder.driver.OVSDriver
volume_backend_name = %[5]s
ovs_api_url = %[6]s
`, cinderHost, dir, transport, apiPort, cinderBackend, c.APIURL())
	confPath := filepath.Join(dir, "cinder.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 3*time.Minute, "/usr/bin/cinder-manage", "--config-file", confPath, "db", "sync")

	env := []string{"PYTHONPATH=" + pluginDir}
	api := startDaemon(t, dir, "cinder-api", env, "/usr/bin/cinder-api", "--config-file", confPath, "--log-file", filepath.Join(dir, "cinder-api.log"))
	startDaemon(t, dir, "cinder-scheduler", env, "/usr/bin/cinder-scheduler", "--config-file", confPath, "--log-file", filepath.Join(dir, "cinder-scheduler.log"))
	startDaemon(t, dir, "cinder-volume", env, "/usr/bin/cinder-volume", "--config-file", confPath, "--log-file", filepath.Join(dir, "cinder-volume.log"))
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))
	waitTCP(t, api, addr, 2*time.Minute)
	return &cinderServices{dir: dir, conf: confPath, endpoint: "http://" + addr + "/v3"}
}

// waitVolume polls a volume until its status is want; an error status
// fails the test.
func waitVolume(t *testing.T, sc *gophercloud.ServiceClient, id, want string) volumes.Volume {
	t.Helper()
	var v *volumes.Volume
	waitFor(t, cinderWait, "volume "+id+" "+want, func() bool {
		var err error
		v, err = volumes.Get(context.Background(), sc, id).Extract()
		if err != nil {
			t.Fatalf("get volume %s: %v", id, err)
		}
		if strings.HasPrefix(v.Status, "error") {
			t.Fatalf("volume %s went to status %s (wanted %s)", id, v.Status, want)
		}
		return v.Status == want
	})
	return *v
}

func waitSnapshot(t *testing.T, sc *gophercloud.ServiceClient, id, want string) {
	t.Helper()
	waitFor(t, cinderWait, "snapshot "+id+" "+want, func() bool {
		s, err := snapshots.Get(context.Background(), sc, id).Extract()
		if err != nil {
			t.Fatalf("get snapshot %s: %v", id, err)
		}
		if strings.HasPrefix(s.Status, "error") {
			t.Fatalf("snapshot %s went to status %s (wanted %s)", id, s.Status, want)
		}
		return s.Status == want
	})
}

// waitGone polls url until Cinder answers 404.
func waitGone(t *testing.T, what string, get func() error) {
	t.Helper()
	waitFor(t, cinderWait, what+" deleted", func() bool {
		err := get()
		if err == nil {
			return false
		}
		if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return true
		}
		t.Fatalf("%s: %v", what, err)
		return false
	})
}

type snapInfo struct {
	Name string `json:"name"`
}

type vdiskCinderInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Parent string `json:"parent"`
}

func vdiskOf(t *testing.T, c *cluster, name string) vdiskCinderInfo {
	t.Helper()
	var vi vdiskCinderInfo
	out := c.ovsOK("vdisk", "info", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &vi); err != nil {
		t.Fatalf("ovs vdisk info %s: %v in %q", name, err, out)
	}
	return vi
}

// qemuIO runs qemu-io commands on an NBD URI.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustRun(t, time.Minute, "qemu-io", append(args, uri)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io %v on %s: %s", cmds, uri, out)
	}
	return out
}

// extend grows a Cinder volume and checks its vdisk.
func extend(t *testing.T, sc *gophercloud.ServiceClient, c *cluster, id, vdisk string, size int) {
	t.Helper()
	if err := volumes.ExtendSize(context.Background(), sc, id, volumes.ExtendSizeOpts{NewSize: size}).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, cinderWait, "extend of "+id, func() bool {
		return waitVolume(t, sc, id, "available").Size == size
	})
	if vi := vdiskOf(t, c, vdisk); vi.Size != int64(size)<<30 {
		t.Fatalf("vdisk %s size %d after extend; want %d GiB", vdisk, vi.Size, size)
	}
}

// TestCinder runs Debian's Cinder services with the OVS driver and drives
// them through gophercloud and `ovs openstack`: volume, snapshot, volume
// from snapshot, extend, revert, delete, each checked in OVS.
func TestCinder(t *testing.T) {
	needCinder(t)
	start := time.Now()
	c := startCluster(t)
	cs := startCinder(t, c)
	startup := time.Since(start)
	t.Logf("ovs up, rabbitmq and cinder started in %v", startup.Round(time.Millisecond))
	ctx := context.Background()

	sc, err := cinder.Connect(ctx, cs.endpoint, cinderProject)
	if err != nil {
		t.Fatal(err)
	}
	// The scheduler has cinder-volume's report: the driver's stats, with
	// the pool and OVS's real capacity.
	var pool schedulerstats.StoragePool
	waitFor(t, 2*time.Minute, "the scheduler to know the OVS pool", func() bool {
		pages, err := schedulerstats.List(sc, schedulerstats.ListOpts{Detail: true}).AllPages(ctx)
		if err != nil {
			return false
		}
		pools, _ := schedulerstats.ExtractStoragePools(pages)
		for _, p := range pools {
			if p.Name == cinderHost+"@"+cinderBackend+"#default" {
				pool = p
				return true
			}
		}
		return false
	})
	t.Logf("pool %s: total %.1f GiB, free %.1f GiB, protocol %s, driver %s", pool.Name,
		pool.Capabilities.TotalCapacityGB, pool.Capabilities.FreeCapacityGB,
		pool.Capabilities.StorageProtocol, pool.Capabilities.DriverVersion)
	if pool.Capabilities.TotalCapacityGB <= 0 || pool.Capabilities.FreeCapacityGB <= 0 ||
		pool.Capabilities.FreeCapacityGB > pool.Capabilities.TotalCapacityGB {
		t.Errorf("pool capacity total %v free %v: want real figures", pool.Capabilities.TotalCapacityGB, pool.Capabilities.FreeCapacityGB)
	}
	if pool.Capabilities.StorageProtocol != "iSCSI" {
		t.Errorf("storage protocol %q; want iSCSI", pool.Capabilities.StorageProtocol)
	}

	// The operator's step: the volume type, through the CLI.
	osArgs := []string{"--cinder", cs.endpoint, "--project", cinderProject}
	out := c.ovsOK(append([]string{"openstack", "register-type", "--name", "ovs-gold", "--backend-name", cinderBackend}, osArgs...)...)
	t.Logf("register-type: %s", strings.TrimSpace(out))

	// 1. A volume.
	vol, err := volumes.Create(ctx, sc, volumes.CreateOpts{Name: "c1", Size: 1, VolumeType: "ovs-gold"}, nil).Extract()
	if err != nil {
		t.Fatal(err)
	}
	v := waitVolume(t, sc, vol.ID, "available")
	if !cinder.OnBackend(v.Host, cinderBackend) {
		t.Fatalf("volume on host %q; want backend %s", v.Host, cinderBackend)
	}
	vname := cinder.VDiskName(vol.ID)
	if vi := vdiskOf(t, c, vname); vi.Size != 1<<30 {
		t.Fatalf("vdisk %s size %d; want 1 GiB", vname, vi.Size)
	}
	qemuIO(t, c.TCPURI(vname), "write -P 0xab 0 1M", "write -P 0x5c 1020M 4M")

	// 2. A snapshot of it; then data the snapshot must not see.
	snap, err := snapshots.Create(ctx, sc, snapshots.CreateOpts{VolumeID: vol.ID, Name: "s1"}).Extract()
	if err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, sc, snap.ID, "available")
	var snaps []snapInfo
	if err := json.Unmarshal([]byte(c.ovsOK("vdisk", "snapshot", "list", vname, "-o", "json")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].Name != "snapshot-"+snap.ID {
		t.Fatalf("OVS snapshots of %s: %+v; want snapshot-%s", vname, snaps, snap.ID)
	}
	qemuIO(t, c.TCPURI(vname), "write -P 0xcd 0 1M")

	// 3. A 2 GiB volume from the snapshot: an OVS clone, grown.
	clone, err := volumes.Create(ctx, sc, volumes.CreateOpts{Name: "c2", Size: 2, SnapshotID: snap.ID, VolumeType: "ovs-gold"}, nil).Extract()
	if err != nil {
		t.Fatal(err)
	}
	waitVolume(t, sc, clone.ID, "available")
	cname := cinder.VDiskName(clone.ID)
	ci := vdiskOf(t, c, cname)
	if ci.Size != 2<<30 || ci.Parent != vname+"@snapshot-"+snap.ID {
		t.Fatalf("clone vdisk %+v; want 2 GiB with parent %s@snapshot-%s", ci, vname, snap.ID)
	}
	qemuIO(t, c.TCPURI(cname), "read -P 0xab 0 1M", "read -P 0x5c 1020M 4M", "read -P 0 1G 1M")

	// 4. Extend the clone.
	extend(t, sc, c, clone.ID, cname, 3)
	qemuIO(t, c.TCPURI(cname), "read -P 0xab 0 1M", "write -P 0xee 2G 1M", "read -P 0xee 2G 1M")

	// 5. Revert the original to the snapshot: the data before it is back.
	if err := cinder.RevertToSnapshot(ctx, sc, vol.ID, snap.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the API sets "reverting" before it answers; be sure
	waitVolume(t, sc, vol.ID, "available")
	qemuIO(t, c.TCPURI(vname), "read -P 0xab 0 1M", "read -P 0x5c 1020M 4M")
	if vi := vdiskOf(t, c, vname); vi.Size != 1<<30 {
		t.Errorf("vdisk %s size %d after revert; want the volume's 1 GiB", vname, vi.Size)
	}
	// (Cinder reverts only a volume of its snapshot's size; extend after.)
	extend(t, sc, c, vol.ID, vname, 2)
	qemuIO(t, c.TCPURI(vname), "read -P 0xab 0 1M", "read -P 0 1G 1M")

	// `ovs openstack status` sees both volumes, and nothing amiss.
	var rows []cinder.Row
	out = c.ovsOK(append([]string{"openstack", "status", "--backend-name", cinderBackend, "-o", "json"}, osArgs...)...)
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("ovs openstack status -o json: %v in %q", err, out)
	}
	if len(rows) != 2 {
		t.Fatalf("ovs openstack status: %+v; want the 2 volumes", rows)
	}
	for _, r := range rows {
		if r.Problem != "" || r.VDiskSize == 0 {
			t.Errorf("ovs openstack status row %+v", r)
		}
	}
	t.Logf("ovs openstack status:\n%s", c.ovsOK(append([]string{"openstack", "status", "--backend-name", cinderBackend}, osArgs...)...))

	// 6. Delete everything: the clone, the snapshot, the volume.
	if err := volumes.Delete(ctx, sc, clone.ID, volumes.DeleteOpts{}).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "volume "+clone.ID, func() error { _, err := volumes.Get(ctx, sc, clone.ID).Extract(); return err })
	if err := snapshots.Delete(ctx, sc, snap.ID).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "snapshot "+snap.ID, func() error { _, err := snapshots.Get(ctx, sc, snap.ID).Extract(); return err })
	if err := volumes.Delete(ctx, sc, vol.ID, volumes.DeleteOpts{}).ExtractErr(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "volume "+vol.ID, func() error { _, err := volumes.Get(ctx, sc, vol.ID).Extract(); return err })
	for _, vi := range c.list() {
		if strings.HasPrefix(vi.Name, "volume-") {
			t.Errorf("vdisk %s left after every volume was deleted", vi.Name)
		}
	}
	t.Logf("TestCinder took %v", time.Since(start).Round(time.Millisecond))
	writeReport(t, "cinder", fmt.Sprintf("create/snapshot/clone/extend/revert/delete through Debian's Cinder services: %v (services started in %v)",
		time.Since(start).Round(time.Second), startup.Round(time.Second)))
}
