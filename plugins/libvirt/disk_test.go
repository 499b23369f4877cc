package libvirt

import (
	"errors"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Endpoint
		bad  bool
	}{
		{in: "127.0.0.1:10809", want: Endpoint{Host: "127.0.0.1", Port: 10809}},
		{in: "[::1]:10809", want: Endpoint{Host: "::1", Port: 10809}},
		{in: "nbd.example:1", want: Endpoint{Host: "nbd.example", Port: 1}},
		{in: "/var/lib/ovs/nbd.sock", want: Endpoint{Socket: "/var/lib/ovs/nbd.sock"}},
		{in: "unix:/run/ovs/nbd.sock", want: Endpoint{Socket: "/run/ovs/nbd.sock"}},
		{in: "unix:nbd.sock", bad: true},
		{in: "127.0.0.1", bad: true},
		{in: ":10809", bad: true},
		{in: "host:0", bad: true},
		{in: "host:70000", bad: true},
		{in: "host:http", bad: true},
		{in: "", bad: true},
	} {
		got, err := ParseEndpoint(tc.in)
		if tc.bad {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseEndpoint(%q) = %+v, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

var tcp = Endpoint{Host: "10.0.0.5", Port: 10809}

func TestDiskXML(t *testing.T) {
	for _, tc := range []struct {
		name string
		disk Disk
		want []string // substrings of the XML
		bad  string   // substring of the error
	}{
		{name: "tcp", disk: Disk{VDisk: "vm1-root", Endpoint: tcp, Target: "vda"},
			want: []string{`<disk type="network" device="disk">`, `protocol="nbd" name="vm1-root"`,
				`<host name="10.0.0.5" port="10809">`, `<target dev="vda" bus="virtio">`,
				`error_policy="stop" rerror_policy="stop"`, `<serial>vm1-root</serial>`, `discard="unmap"`}},
		{name: "unix socket", disk: Disk{VDisk: "d", Endpoint: Endpoint{Socket: "/run/ovs/nbd.sock"}, Target: "vdc", ErrorPolicy: "report"},
			want: []string{`<host transport="unix" socket="/run/ovs/nbd.sock">`, `error_policy="report"`}},
		{name: "long name cut to the serial's 20 bytes", disk: Disk{VDisk: strings.Repeat("a", 64), Endpoint: tcp, Target: "vdb"},
			want: []string{"<serial>" + strings.Repeat("a", 20) + "</serial>"}},
		{name: "no vdisk", disk: Disk{Endpoint: tcp, Target: "vdb"}, bad: "vdisk name"},
		{name: "scsi target", disk: Disk{VDisk: "d", Endpoint: tcp, Target: "sda"}, bad: "target"},
		{name: "no target", disk: Disk{VDisk: "d", Endpoint: tcp}, bad: "target"},
		{name: "injected target", disk: Disk{VDisk: "d", Endpoint: tcp, Target: "vdb'/><x"}, bad: "target"},
		{name: "no endpoint", disk: Disk{VDisk: "d", Target: "vdb"}, bad: "endpoint"},
		{name: "bad policy", disk: Disk{VDisk: "d", Endpoint: tcp, Target: "vdb", ErrorPolicy: "ignore"}, bad: "error policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := tc.disk.XML()
			if tc.bad != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("XML() = %q, %v; want an ErrInvalid about %q", x, err, tc.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(x, w) {
					t.Errorf("XML lacks %s:\n%s", w, x)
				}
			}
			// libvirt reads it back as the same disk.
			var back libvirtxml.DomainDisk
			if err := back.Unmarshal(x); err != nil {
				t.Fatalf("the XML does not parse: %v\n%s", err, x)
			}
			if back.Source.Network.Name != tc.disk.VDisk || back.Target.Dev != tc.disk.Target {
				t.Errorf("parsed back as %+v", back)
			}
		})
	}
}

func TestReconnectXML(t *testing.T) {
	d := Disk{VDisk: "vm1-root", Endpoint: tcp, Target: "vda"}
	x, err := d.ReconnectXML(60, 31)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"<qemu:commandline>", `<qemu:arg value='-blockdev'/>`, `"driver":"nbd"`,
		`"reconnect-delay":60`, `"export":"vm1-root"`, `"host":"10.0.0.5"`, `"port":"10809"`,
		`"driver":"virtio-blk-pci"`, `"addr":"0x1f"`, `"bus":"pci.0"`, `"node-name":"` + NodeName("vm1-root") + `"`} {
		if !strings.Contains(x, w) {
			t.Errorf("ReconnectXML lacks %s:\n%s", w, x)
		}
	}
	// In a domain, it is found as a vdisk of the domain.
	dom := `<domain type='qemu' xmlns:qemu='` + QEMUNamespace + `'><name>v</name><devices></devices>` + x + `</domain>`
	disks, err := DomainDisks(dom)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := FindDisk(disks, "vm1-root"); !ok || got.Element != "" || got.Target != "" {
		t.Errorf("DomainDisks = %+v", disks)
	}
	sock := Disk{VDisk: "d", Endpoint: Endpoint{Socket: "/run/o'vs/nbd.sock"}, Target: "vda"}
	if x, err := sock.ReconnectXML(5, 20); err != nil || !strings.Contains(x, `"type":"unix","path":"/run/o&apos;vs/nbd.sock"`) && !strings.Contains(x, `"path":"/run/o&apos;vs/nbd.sock","type":"unix"`) {
		t.Errorf("unix socket: %v\n%s", err, x)
	}
	for _, tc := range []struct{ delay, slot int }{{0, 31}, {3601, 31}, {60, 2}, {60, 32}} {
		if _, err := d.ReconnectXML(tc.delay, tc.slot); !errors.Is(err, ErrInvalid) {
			t.Errorf("ReconnectXML(%d, %d): %v, want ErrInvalid", tc.delay, tc.slot, err)
		}
	}
	if n := NodeName(strings.Repeat("x", 64)); len(n) > 31 || n == NodeName("y") {
		t.Errorf("NodeName: %q", n)
	}
}

func TestDomainDisks(t *testing.T) {
	dom := `<domain type='qemu'><name>v</name><devices>
  <disk type='file' device='disk'><source file='/img'/><target dev='vda' bus='virtio'/></disk>
  <disk type='network' device='disk'><source protocol='nbd' name='data1'><host name='h' port='1'/></source><target dev='vdb' bus='virtio'/></disk>
  <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdc' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
</devices></domain>`
	disks, err := DomainDisks(dom)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 4 {
		t.Fatalf("got %d disks: %+v", len(disks), disks)
	}
	for _, tc := range []struct {
		name, target, vdisk string
		found               bool
	}{
		{"data1", "vdb", "data1", true},
		{"vdb", "vdb", "data1", true},
		{"vda", "vda", "", true},
		{"pool/img", "", "", false}, // rbd is not ours
		{"vdz", "", "", false},
	} {
		d, ok := FindDisk(disks, tc.name)
		if ok != tc.found || (ok && (d.Target != tc.target || d.VDisk != tc.vdisk || d.Element == "")) {
			t.Errorf("FindDisk(%q) = %+v, %v", tc.name, d, ok)
		}
	}
	if got, err := FreeTarget(disks); err != nil || got != "vdd" {
		t.Errorf("FreeTarget = %q, %v; want vdd", got, err)
	}
	var full []DomainDisk
	for c := 'a'; c <= 'z'; c++ {
		full = append(full, DomainDisk{Target: "vd" + string(c)})
	}
	if _, err := FreeTarget(full); !errors.Is(err, ErrInvalid) {
		t.Errorf("FreeTarget of a full domain: %v", err)
	}
	if _, err := DomainDisks("<domain"); err == nil {
		t.Error("DomainDisks of broken XML: no error")
	}
}
