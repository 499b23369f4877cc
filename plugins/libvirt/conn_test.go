package libvirt

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// These run against libvirt's test driver (test:///default), in-process
// with no daemon. It has no hot-plug, so they cover what happens before
// libvirt is asked to change anything: the refusals, which must leave the
// domain as it was, and the freeze/thaw around a snapshot. The real
// attach and detach are in tests/libvirt_test.go.

const testDomain = `<domain type='test'>
  <name>vm</name>
  <memory unit='MiB'>64</memory>
  <os><type>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/img'/><target dev='vda' bus='virtio'/></disk>
    <disk type='network' device='disk'><source protocol='nbd' name='data1'><host name='127.0.0.1' port='10809'/></source><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>`

// testConn connects to a fresh test driver with domain "vm" defined and,
// if running, started.
func testConn(t *testing.T, running bool) *Conn {
	t.Helper()
	c, err := Open("test:///default", nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	dom, err := c.c.DomainDefineXML(testDomain)
	if err != nil {
		t.Fatalf("define: %v", err)
	}
	defer dom.Free()
	if running {
		if err := dom.Create(); err != nil {
			t.Fatalf("start: %v", err)
		}
	}
	return c
}

func domainDisks(t *testing.T, c *Conn, live bool) []DomainDisk {
	t.Helper()
	dom, err := c.domain("vm")
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Free()
	ds, err := disks(dom, live)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func TestAttachRefusals(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		running bool
		domain  string
		disk    Disk
		scope   Scope
		want    error
		message string
	}{
		{"unknown domain", true, "nope", Disk{VDisk: "data2", Endpoint: tcp}, Scope{}, ErrNotFound, `domain "nope"`},
		{"already attached", true, "vm", Disk{VDisk: "data1", Endpoint: tcp}, Scope{}, ErrExists, "already attached"},
		{"already attached (config)", true, "vm", Disk{VDisk: "data1", Endpoint: tcp}, Scope{Config: true}, ErrExists, "persistent definition"},
		{"target in use", true, "vm", Disk{VDisk: "data2", Endpoint: tcp, Target: "vda"}, Scope{}, ErrExists, "in use"},
		{"live on a stopped domain", false, "vm", Disk{VDisk: "data2", Endpoint: tcp}, Scope{Live: true}, ErrInvalid, "not running"},
		{"bad target", true, "vm", Disk{VDisk: "data2", Endpoint: tcp, Target: "hda"}, Scope{}, ErrInvalid, "target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConn(t, tc.running)
			var before []DomainDisk
			if tc.running {
				before = domainDisks(t, c, true)
			}
			_, _, err := c.Attach(ctx, tc.domain, tc.disk, tc.scope)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("Attach: %v; want %v about %q", err, tc.want, tc.message)
			}
			if tc.running && len(domainDisks(t, c, true)) != len(before) {
				t.Error("the domain's disks changed")
			}
		})
	}
}

func TestDetachRefusals(t *testing.T) {
	ctx := context.Background()
	c := testConn(t, true)
	if _, _, err := c.Detach(ctx, "vm", "data9", Scope{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Detach of an unknown disk: %v", err)
	}
	if _, _, err := c.Detach(ctx, "nope", "vdb", Scope{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Detach from an unknown domain: %v", err)
	}
	if n := len(domainDisks(t, c, true)); n != 2 {
		t.Errorf("the domain has %d disks, want 2", n)
	}
}

func TestQuiesce(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("snapshot failed")
	for _, tc := range []struct {
		name    string
		running bool
		vdisk   string
		fnErr   error
		want    error // from Quiesce
		ran     bool  // fn was called
	}{
		{"frozen around the snapshot", true, "data1", nil, nil, true},
		{"snapshot error, still thawed", true, "data1", boom, boom, true},
		{"not a disk of the domain", true, "data2", nil, ErrInvalid, false},
		{"a target is no vdisk", true, "vda", nil, ErrInvalid, false},
		{"stopped domain: nothing to freeze", false, "data1", nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConn(t, tc.running)
			ran := false
			err := c.Quiesce(ctx, "vm", tc.vdisk, false, func(context.Context) error {
				ran = true
				return tc.fnErr
			})
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Quiesce: %v, want %v", err, tc.want)
			}
			if ran != tc.ran {
				t.Errorf("snapshot ran: %v, want %v", ran, tc.ran)
			}
		})
	}
	c := testConn(t, true)
	if err := c.Quiesce(ctx, "nope", "data1", false, func(context.Context) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("Quiesce of an unknown domain: %v", err)
	}
}
