package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/volume"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
)

// fakeCluster keeps vdisks and attachments in memory, with the model's
// attachment rules.
type fakeCluster struct {
	mu      sync.Mutex
	vdisks  map[string]volumedriver.VolumeInfo
	attach  map[string]model.Attachment
	deleted []string
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{vdisks: map[string]volumedriver.VolumeInfo{}, attach: map[string]model.Attachment{}}
}

func (f *fakeCluster) Create(ctx context.Context, name string, size int64, _ volumedriver.CreateOptions) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vdisks[name]; ok {
		return volumedriver.VolumeInfo{}, volumedriver.ErrExists
	}
	f.vdisks[name] = volumedriver.VolumeInfo{Name: name, Size: size, CreatedAt: time.Now()}
	return f.vdisks[name], nil
}

func (f *fakeCluster) Clone(ctx context.Context, name, parent, snap string) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.vdisks[parent]
	if !ok || snap != "s1" {
		return volumedriver.VolumeInfo{}, volumedriver.ErrNotFound
	}
	f.vdisks[name] = volumedriver.VolumeInfo{Name: name, Size: p.Size, Parent: parent + "@" + snap}
	return f.vdisks[name], nil
}

func (f *fakeCluster) Resize(ctx context.Context, name string, size int64) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vdisks[name]
	v.Size = size
	f.vdisks[name] = v
	return v, nil
}

func (f *fakeCluster) Info(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vdisks[name]
	if !ok {
		return v, volumedriver.ErrNotFound
	}
	return v, nil
}

func (f *fakeCluster) List(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []volumedriver.VolumeInfo
	for _, v := range f.vdisks {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b volumedriver.VolumeInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (f *fakeCluster) Delete(ctx context.Context, name string, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vdisks[name]; !ok {
		return volumedriver.ErrNotFound
	}
	delete(f.vdisks, name)
	f.deleted = append(f.deleted, name)
	return nil
}

func (f *fakeCluster) Nodes(ctx context.Context) ([]api.NodeInfo, error) {
	return []api.NodeInfo{{ID: "n1", State: "up", API: "127.0.0.1:8800", NBD: "127.0.0.1:10809"}}, nil
}

func (f *fakeCluster) Attachment(ctx context.Context, name string) (model.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vdisks[name]; !ok {
		return model.Attachment{}, volumedriver.ErrNotFound
	}
	return f.attach[name], nil
}

func (f *fakeCluster) Attach(ctx context.Context, name string, req api.AttachRequest) (model.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vdisks[name]; !ok {
		return model.Attachment{}, volumedriver.ErrNotFound
	}
	a := f.attach[name]
	if a.Attached() && a.Host != req.Host {
		return a, fmt.Errorf("%w: %s has it", volumedriver.ErrBusy, a.Host)
	}
	a.Host, a.Kind = req.Host, req.Kind
	if !slices.Contains(a.Users, req.User) {
		a.Users = append(a.Users, req.User)
	}
	f.attach[name] = a
	return a, nil
}

func (f *fakeCluster) Detach(ctx context.Context, name, host, user string, force bool) (model.Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.attach[name]
	if a.Attached() && a.Host != host && !force {
		return a, fmt.Errorf("%w: %s has it", volumedriver.ErrBusy, a.Host)
	}
	a.Users = slices.DeleteFunc(a.Users, func(u string) bool { return u == user })
	if user == "" || len(a.Users) == 0 {
		delete(f.attach, name)
		return model.Attachment{}, nil
	}
	f.attach[name] = a
	return a, nil
}

// fakeDevices "mounts" by making the mount point and remembering it.
type fakeDevices struct {
	mu      sync.Mutex
	mounted map[string]bool // by mount point
	uris    []string
	fail    error
}

func (f *fakeDevices) Mount(ctx context.Context, uri string, m *mountRecord) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if err := os.MkdirAll(m.Mountpoint, 0o700); err != nil {
		return err
	}
	m.Device = "/dev/fake"
	f.mounted[m.Mountpoint] = true
	f.uris = append(f.uris, uri)
	return nil
}

func (f *fakeDevices) Unmount(ctx context.Context, m *mountRecord) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounted, m.Mountpoint)
	return nil
}

func (f *fakeDevices) Mounted(m *mountRecord) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mounted[m.Mountpoint]
}

func newTestDriver(t *testing.T, c *fakeCluster, host string) (*Driver, *fakeDevices) {
	t.Helper()
	dev := &fakeDevices{mounted: map[string]bool{}}
	d, err := New(context.Background(), Config{Cluster: c, Host: host, StateDir: t.TempDir(), Devices: dev,
		APIHost: "127.0.0.1:8800", LookPath: func(p string) (string, error) {
			if p == "mkfs.ext4" {
				return "/sbin/mkfs.ext4", nil
			}
			return "", errors.New("not found")
		}})
	if err != nil {
		t.Fatal(err)
	}
	return d, dev
}

func TestCreateOptions(t *testing.T) {
	tests := []struct {
		name    string
		volume  string
		opts    map[string]string
		wantErr string // "" for success
		vdisk   string
		size    int64
		parent  string
	}{
		{name: "default size", volume: "a", vdisk: "docker-a", size: DefaultSize},
		{name: "size", volume: "b", opts: map[string]string{"size": "1GiB"}, vdisk: "docker-b", size: 1 << 30},
		{name: "ext4", volume: "c", opts: map[string]string{"fs": "ext4", "size": "2GiB"}, vdisk: "docker-c", size: 2 << 30},
		{name: "clone", volume: "d", opts: map[string]string{"from": "base@s1"}, vdisk: "docker-d", size: 4 << 30, parent: "base@s1"},
		{name: "clone grown", volume: "e", opts: map[string]string{"from": "base@s1", "size": "8GiB"}, vdisk: "docker-e", size: 8 << 30, parent: "base@s1"},
		{name: "unknown option", volume: "x", opts: map[string]string{"sise": "1GiB"}, wantErr: "unknown option sise"},
		{name: "bad size", volume: "x", opts: map[string]string{"size": "lots"}, wantErr: "option size"},
		{name: "zero size", volume: "x", opts: map[string]string{"size": "0"}, wantErr: "option size"},
		{name: "fs unknown", volume: "x", opts: map[string]string{"fs": "ntfs"}, wantErr: "not supported"},
		{name: "fs without mkfs", volume: "x", opts: map[string]string{"fs": "xfs"}, wantErr: "mkfs.xfs is not installed"},
		{name: "from without snapshot", volume: "x", opts: map[string]string{"from": "base"}, wantErr: "VDISK@SNAPSHOT"},
		{name: "from unknown snapshot", volume: "x", opts: map[string]string{"from": "base@nope"}, wantErr: "not found"},
		{name: "clone shrunk", volume: "x", opts: map[string]string{"from": "base@s1", "size": "1GiB"}, wantErr: "smaller"},
		{name: "bad name", volume: "a b", wantErr: "volume name"},
		{name: "name too long", volume: strings.Repeat("n", 60), wantErr: "volume name"},
		{name: "taken, with options", volume: "b", opts: map[string]string{"size": "1GiB"}, wantErr: "already exists"},
		{name: "taken, no options: adopted", volume: "b", vdisk: "docker-b", size: 1 << 30},
	}
	c := newFakeCluster()
	c.Create(context.Background(), "base", 4<<30, volumedriver.CreateOptions{})
	d, _ := newTestDriver(t, c, "h1")
	for _, tc := range tests {
		before, _ := c.List(context.Background())
		err := d.Create(&volume.CreateRequest{Name: tc.volume, Options: tc.opts})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.wantErr)
			}
			if after, _ := c.List(context.Background()); len(after) != len(before) {
				t.Errorf("%s: a refused create changed the vdisks: %d -> %d", tc.name, len(before), len(after))
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		info, err := c.Info(context.Background(), tc.vdisk)
		if err != nil || info.Size != tc.size || info.Parent != tc.parent {
			t.Errorf("%s: vdisk %s = %+v %v, want size %d parent %q", tc.name, tc.vdisk, info, err, tc.size, tc.parent)
		}
	}
	// List shows the plugin's vdisks only, by volume name.
	l, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range l.Volumes {
		names = append(names, v.Name)
	}
	if !slices.Equal(names, []string{"a", "b", "c", "d", "e"}) {
		t.Fatalf("List = %v", names)
	}
	if d.Capabilities().Capabilities.Scope != "global" {
		t.Fatal("scope is not global")
	}
}

func TestMountRefcountAndHosts(t *testing.T) {
	c := newFakeCluster()
	h1, dev1 := newTestDriver(t, c, "h1")
	h2, _ := newTestDriver(t, c, "h2")
	if err := h1.Create(&volume.CreateRequest{Name: "v", Options: map[string]string{"size": "1GiB"}}); err != nil {
		t.Fatal(err)
	}
	// Each step on the state the previous ones left.
	steps := []struct {
		name    string
		d       *Driver
		op      string // mount, unmount, remove
		id      string
		wantErr string
		host    string // the attachment's host after the step
		users   int
	}{
		{"first container", h1, "mount", "c1", "", "h1", 1},
		{"second container, same host", h1, "mount", "c2", "", "h1", 2},
		{"other host refused", h2, "mount", "x1", "h1 has it", "h1", 2},
		{"other host cannot remove", h2, "remove", "", "mounted on host h1", "h1", 2},
		{"remove while mounted", h1, "remove", "", "mounted on this host", "h1", 2},
		{"one container leaves", h1, "unmount", "c1", "", "h1", 1},
		{"unknown volume", h1, "mount", "c9", "", "h1", 1}, // replaced below
		{"last container leaves", h1, "unmount", "c2", "", "", 0},
		{"unmount when not mounted", h1, "unmount", "c2", "not mounted", "", 0},
		{"other host now", h2, "mount", "x1", "", "h2", 1},
		{"other host leaves", h2, "unmount", "x1", "", "", 0},
	}
	for i, st := range steps {
		var err error
		switch {
		case i == 6:
			_, err = st.d.Mount(&volume.MountRequest{Name: "nope", ID: st.id})
			if err == nil || !strings.Contains(err.Error(), "not found") {
				t.Fatalf("mount of an unknown volume: %v", err)
			}
			err = nil
		case st.op == "mount":
			var r *volume.MountResponse
			r, err = st.d.Mount(&volume.MountRequest{Name: "v", ID: st.id})
			if err == nil {
				p, _ := st.d.Path(&volume.PathRequest{Name: "v"})
				if r.Mountpoint == "" || p.Mountpoint != r.Mountpoint {
					t.Fatalf("%s: mountpoint %q, Path %q", st.name, r.Mountpoint, p.Mountpoint)
				}
			}
		case st.op == "unmount":
			err = st.d.Unmount(&volume.UnmountRequest{Name: "v", ID: st.id})
		case st.op == "remove":
			err = st.d.Remove(&volume.RemoveRequest{Name: "v"})
		}
		if st.wantErr == "" && err != nil || st.wantErr != "" && (err == nil || !strings.Contains(err.Error(), st.wantErr)) {
			t.Fatalf("%s: err = %v, want %q", st.name, err, st.wantErr)
		}
		a, _ := c.Attachment(context.Background(), "docker-v")
		if a.Host != st.host || len(a.Users) != st.users {
			t.Fatalf("%s: attachment %+v, want host %q with %d users", st.name, a, st.host, st.users)
		}
	}
	if len(dev1.uris) != 1 || dev1.uris[0] != "nbd://127.0.0.1:10809/docker-v" {
		t.Fatalf("h1 set up the device %d times (%v), want once", len(dev1.uris), dev1.uris)
	}
	if err := h1.Remove(&volume.RemoveRequest{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.deleted, []string{"docker-v"}) {
		t.Fatalf("deleted %v", c.deleted)
	}
	if _, err := os.Stat(h1.state.volumeDir("v")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state of a removed volume: %v", err)
	}
}

func TestMountFailureReleasesAttachment(t *testing.T) {
	c := newFakeCluster()
	d, dev := newTestDriver(t, c, "h1")
	if err := d.Create(&volume.CreateRequest{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	dev.fail = errors.New("no loop device")
	if _, err := d.Mount(&volume.MountRequest{Name: "v", ID: "c1"}); err == nil || !strings.Contains(err.Error(), "no loop device") {
		t.Fatalf("mount: %v", err)
	}
	if a, _ := c.Attachment(context.Background(), "docker-v"); a.Attached() {
		t.Fatalf("a failed mount left attachment %+v", a)
	}
	if p, _ := d.Path(&volume.PathRequest{Name: "v"}); p.Mountpoint != "" {
		t.Fatalf("a failed mount left mountpoint %q", p.Mountpoint)
	}
}

func TestRecover(t *testing.T) {
	c := newFakeCluster()
	d, dev := newTestDriver(t, c, "h1")
	for _, v := range []string{"kept", "stale"} {
		if err := d.Create(&volume.CreateRequest{Name: v}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Mount(&volume.MountRequest{Name: v, ID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	// The host rebooted under "stale": its mount is gone.
	delete(dev.mounted, filepath.Join(d.state.volumeDir("stale"), "fs"))

	// A new plugin on the same state dir and devices.
	d2, err := New(context.Background(), Config{Cluster: c, Host: "h1", StateDir: string(d.state), Devices: dev})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p, _ := d2.Path(&volume.PathRequest{Name: "kept"}); p.Mountpoint == "" {
		t.Fatal("a volume still mounted was dropped")
	}
	if a, _ := c.Attachment(context.Background(), "docker-kept"); a.Host != "h1" {
		t.Fatalf("kept's attachment: %+v", a)
	}
	if p, _ := d2.Path(&volume.PathRequest{Name: "stale"}); p.Mountpoint != "" {
		t.Fatalf("stale mount kept: %q", p.Mountpoint)
	}
	if a, _ := c.Attachment(context.Background(), "docker-stale"); a.Attached() {
		t.Fatalf("stale's attachment kept: %+v", a)
	}
	// The kept volume's containers leave normally.
	if err := d2.Unmount(&volume.UnmountRequest{Name: "kept", ID: "c1"}); err != nil {
		t.Fatal(err)
	}
}

func TestStateRecordVersion(t *testing.T) {
	d := stateDir(t.TempDir())
	if err := os.MkdirAll(d.volumeDir("v"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"future", `{"version": 9}`, "version 9"},
		{"damaged", `{"vers`, "damaged"},
	} {
		os.WriteFile(filepath.Join(d.volumeDir("v"), "mount.json"), []byte(tc.body), 0o600)
		var m mountRecord
		if _, err := readRecord(d, "v", "mount.json", &m); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\`: `/x\`, `/t\011`: "/t\t"} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
