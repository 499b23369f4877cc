// Package libvirt puts OVS vdisks into libvirt/KVM domains: it writes the
// <disk type='network'> element of a vdisk served over NBD, hot-plugs and
// unplugs it in running domains, and freezes a guest's filesystems through
// the qemu guest agent around a snapshot.
//
// The XML half (this file) needs no libvirt library; the connection half
// (conn.go) calls libvirt through libvirt.org/go/libvirt. Build the ovs
// binary with the libvirt_dlopen tag (the Makefile does) so that
// libvirt.so.0 is opened only when a libvirt command runs: the binary then
// starts on hosts without libvirt.
package libvirt

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// ErrInvalid marks bad input: a malformed target, endpoint or option.
var ErrInvalid = errors.New("invalid argument")

// Endpoint is where qemu reaches the NBD server that serves a vdisk:
// either TCP (Host, Port) or a unix socket (Socket).
type Endpoint struct {
	Host   string
	Port   int
	Socket string
}

// ParseEndpoint reads HOST:PORT, or an absolute path (or unix:PATH) for a
// unix socket.
func ParseEndpoint(s string) (Endpoint, error) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		s = p
		if !strings.HasPrefix(s, "/") {
			return Endpoint{}, fmt.Errorf("%w: NBD socket %q: the path must be absolute", ErrInvalid, s)
		}
	}
	if strings.HasPrefix(s, "/") {
		return Endpoint{Socket: s}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%w: NBD address %q: want HOST:PORT or a socket path: %v", ErrInvalid, s, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return Endpoint{}, fmt.Errorf("%w: NBD address %q: bad port", ErrInvalid, s)
	}
	if host == "" {
		return Endpoint{}, fmt.Errorf("%w: NBD address %q: the host is missing", ErrInvalid, s)
	}
	return Endpoint{Host: host, Port: n}, nil
}

func (e Endpoint) String() string {
	if e.Socket != "" {
		return "unix:" + e.Socket
	}
	return net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
}

// Disk is a vdisk as a guest disk.
type Disk struct {
	VDisk    string
	Endpoint Endpoint
	// Target is the guest device name libvirt knows the disk by (vdb);
	// the bus is virtio.
	Target string
	// ErrorPolicy is libvirt's error_policy and rerror_policy: "stop"
	// (default) pauses the guest on an I/O error instead of passing the
	// error to it, so that a restart of the volume driver costs a pause
	// (and a resume) rather than a filesystem remounted read-only;
	// "report" passes errors to the guest.
	ErrorPolicy string
}

// targetRE is the virtio disk names libvirt accepts (vda .. vdzz).
var targetRE = regexp.MustCompile(`^vd[a-z]{1,2}$`)

func (d Disk) validate() error {
	switch {
	case d.VDisk == "":
		return fmt.Errorf("%w: the vdisk name is empty", ErrInvalid)
	case !targetRE.MatchString(d.Target):
		return fmt.Errorf("%w: target %q: want a virtio disk name such as vdb", ErrInvalid, d.Target)
	case d.Endpoint.Socket == "" && (d.Endpoint.Host == "" || d.Endpoint.Port == 0):
		return fmt.Errorf("%w: vdisk %s: no NBD endpoint", ErrInvalid, d.VDisk)
	}
	switch d.ErrorPolicy {
	case "", "stop", "report":
	default:
		return fmt.Errorf("%w: error policy %q: want stop or report", ErrInvalid, d.ErrorPolicy)
	}
	return nil
}

// serial is what the guest sees as the disk's serial number
// (/dev/disk/by-id/virtio-SERIAL): the vdisk name, cut to the 20 bytes
// virtio-blk carries.
func serial(vdisk string) string {
	if len(vdisk) > 20 {
		return vdisk[:20]
	}
	return vdisk
}

// Element returns the libvirt <disk type='network'> element of d.
func (d Disk) Element() (*libvirtxml.DomainDisk, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	host := libvirtxml.DomainDiskSourceHost{Name: d.Endpoint.Host, Port: strconv.Itoa(d.Endpoint.Port)}
	if d.Endpoint.Socket != "" {
		host = libvirtxml.DomainDiskSourceHost{Transport: "unix", Socket: d.Endpoint.Socket}
	}
	policy := d.ErrorPolicy
	if policy == "" {
		policy = "stop"
	}
	return &libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw", Cache: "none",
			ErrorPolicy: policy, RErrorPolicy: policy, Discard: "unmap"},
		Source: &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{
			Protocol: "nbd", Name: d.VDisk, Hosts: []libvirtxml.DomainDiskSourceHost{host}}},
		Target: &libvirtxml.DomainDiskTarget{Dev: d.Target, Bus: "virtio"},
		Serial: serial(d.VDisk),
	}, nil
}

// XML is Element as indented text.
func (d Disk) XML() (string, error) {
	el, err := d.Element()
	if err != nil {
		return "", err
	}
	return marshal(el)
}

func marshal(v any) (string, error) {
	b, err := xml.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("writing the disk XML: %w", err)
	}
	return string(b), nil
}

// QEMUNamespace is the XML namespace of libvirt's qemu extensions; a
// domain that holds a <qemu:commandline> element must declare it on
// <domain>.
const QEMUNamespace = "http://libvirt.org/schemas/domain/qemu/1.0"

// ReconnectXML returns the disk as a <qemu:commandline> element: qemu's
// own -blockdev nbd with reconnect-delay (seconds) and a virtio-blk-pci
// device in PCI slot pciSlot of bus pci.0 (an i440fx "pc" machine).
//
// Why: libvirt 9.0 cannot set reconnect-delay on an NBD disk. Without it
// qemu fails the requests in flight when the volume driver restarts; with
// it qemu holds them and resends them to the new process. The price is
// that libvirt does not know this disk: no hot-unplug, no domblk* stats,
// no libvirt snapshots or migration of it, and the domain is tainted
// "custom-argv". The explicit slot keeps libvirt's own hot-plugs (which
// take the lowest free slot) from colliding with it.
func (d Disk) ReconnectXML(delay, pciSlot int) (string, error) {
	if err := d.validate(); err != nil {
		return "", err
	}
	if delay < 1 || delay > 3600 {
		return "", fmt.Errorf("%w: reconnect delay %ds: want 1 to 3600 seconds", ErrInvalid, delay)
	}
	if pciSlot < 3 || pciSlot > 31 {
		return "", fmt.Errorf("%w: PCI slot %d: want 3 to 31", ErrInvalid, pciSlot)
	}
	server := map[string]any{"type": "inet", "host": d.Endpoint.Host, "port": strconv.Itoa(d.Endpoint.Port)}
	if d.Endpoint.Socket != "" {
		server = map[string]any{"type": "unix", "path": d.Endpoint.Socket}
	}
	node := NodeName(d.VDisk)
	blockdev, err := json.Marshal(map[string]any{
		"driver": "nbd", "node-name": node, "server": server, "export": d.VDisk,
		"reconnect-delay": delay, "discard": "unmap",
	})
	if err != nil {
		return "", fmt.Errorf("writing the blockdev: %w", err)
	}
	device, err := json.Marshal(map[string]any{
		"driver": "virtio-blk-pci", "drive": node, "id": node, "serial": serial(d.VDisk),
		"bus": "pci.0", "addr": fmt.Sprintf("0x%x", pciSlot),
	})
	if err != nil {
		return "", fmt.Errorf("writing the device: %w", err)
	}
	// Written by hand: encoding/xml would declare the namespace on the
	// element instead of using the qemu: prefix, and would turn every
	// quote of the JSON into &#34;.
	attr := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "'", "&apos;")
	var out strings.Builder
	out.WriteString("<qemu:commandline>\n")
	for _, arg := range []string{"-blockdev", string(blockdev), "-device", string(device)} {
		out.WriteString("  <qemu:arg value='" + attr.Replace(arg) + "'/>\n")
	}
	out.WriteString("</qemu:commandline>")
	return out.String(), nil
}

// NodeName is the qemu node and device id of a vdisk attached through
// ReconnectXML: qemu wants at most 31 characters starting with a letter,
// vdisk names may be 64, so a hash stands in for the name.
func NodeName(vdisk string) string {
	h := sha256.Sum256([]byte(vdisk))
	return "ovs-" + hex.EncodeToString(h[:6])
}

// DomainDisk is a disk of a domain as found in its XML.
type DomainDisk struct {
	Target string
	// VDisk is the NBD export name of a network disk ("" otherwise).
	VDisk string
	// Element is the disk's own XML, what libvirt detaches by.
	Element string
}

// DomainDisks lists the disks in a domain's XML, and the vdisks attached
// to it through <qemu:commandline> (ReconnectXML), with Target "" and no
// Element: libvirt cannot detach those.
func DomainDisks(domainXML string) ([]DomainDisk, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(domainXML); err != nil {
		return nil, fmt.Errorf("reading the domain XML: %w", err)
	}
	var out []DomainDisk
	if dom.Devices != nil {
		for i := range dom.Devices.Disks {
			d := &dom.Devices.Disks[i]
			dd := DomainDisk{}
			if d.Target != nil {
				dd.Target = d.Target.Dev
			}
			if d.Source != nil && d.Source.Network != nil && d.Source.Network.Protocol == "nbd" {
				dd.VDisk = d.Source.Network.Name
			}
			el, err := marshal(d)
			if err != nil {
				return nil, err
			}
			dd.Element = el
			out = append(out, dd)
		}
	}
	if dom.QEMUCommandline != nil {
		for _, a := range dom.QEMUCommandline.Args {
			var bd struct {
				Driver string `json:"driver"`
				Export string `json:"export"`
			}
			if json.Unmarshal([]byte(a.Value), &bd) == nil && bd.Driver == "nbd" && bd.Export != "" {
				out = append(out, DomainDisk{VDisk: bd.Export})
			}
		}
	}
	return out, nil
}

// FindDisk returns the disk of disks whose vdisk or target is name.
func FindDisk(disks []DomainDisk, name string) (DomainDisk, bool) {
	for _, d := range disks {
		if d.VDisk == name || (d.Target != "" && d.Target == name) {
			return d, true
		}
	}
	return DomainDisk{}, false
}

// FreeTarget returns the first virtio target from vdb on that no disk of
// disks uses (vda is left to the boot disk).
func FreeTarget(disks []DomainDisk) (string, error) {
	used := map[string]bool{}
	for _, d := range disks {
		used[d.Target] = true
	}
	for c := 'b'; c <= 'z'; c++ {
		if t := "vd" + string(c); !used[t] {
			return t, nil
		}
	}
	return "", fmt.Errorf("%w: every target from vdb to vdz is in use; name one with --target", ErrInvalid)
}
