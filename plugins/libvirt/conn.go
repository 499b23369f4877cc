package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
)

// Errors callers tell apart.
var (
	// ErrNotFound: no such domain, or no such disk in it.
	ErrNotFound = errors.New("not found")
	// ErrExists: the vdisk is already a disk of the domain, or the target
	// is taken.
	ErrExists = errors.New("already exists")
	// ErrNoAgent: the domain has no (connected) qemu guest agent.
	ErrNoAgent = errors.New("no guest agent")
)

// Conn is a connection to a libvirt daemon.
type Conn struct {
	c   *libvirt.Connect
	log *slog.Logger
}

// Open connects to libvirt at uri ("" lets libvirt choose, as virsh does:
// $LIBVIRT_DEFAULT_URI, else qemu:///system for root).
func Open(uri string, log *slog.Logger) (*Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		name := uri
		if name == "" {
			name = "the default URI"
		}
		msg := describe(err)
		if strings.Contains(msg, "libvirt.so") {
			msg += " (is libvirt installed? Debian package libvirt0)"
		}
		return nil, fmt.Errorf("connecting to libvirt at %s: %s", name, msg)
	}
	return &Conn{c: c, log: log}, nil
}

// Close closes the connection.
func (c *Conn) Close() error {
	if _, err := c.c.Close(); err != nil {
		return fmt.Errorf("closing the libvirt connection: %s", describe(err))
	}
	return nil
}

// describe is libvirt's message without its code and domain numbers.
func describe(err error) string {
	var le libvirt.Error
	if errors.As(err, &le) {
		return le.Message
	}
	return err.Error()
}

func isCode(err error, codes ...libvirt.ErrorNumber) bool {
	var le libvirt.Error
	if !errors.As(err, &le) {
		return false
	}
	for _, c := range codes {
		if le.Code == c {
			return true
		}
	}
	return false
}

// domain looks a domain up by name, then by UUID.
func (c *Conn) domain(name string) (*libvirt.Domain, error) {
	d, err := c.c.LookupDomainByName(name)
	if err == nil {
		return d, nil
	}
	if !isCode(err, libvirt.ERR_NO_DOMAIN) {
		return nil, fmt.Errorf("looking up domain %q: %s", name, describe(err))
	}
	if d, err := c.c.LookupDomainByUUIDString(name); err == nil {
		return d, nil
	}
	return nil, fmt.Errorf("%w: domain %q", ErrNotFound, name)
}

// Scope says which definition of a domain a change applies to, as virsh's
// --live and --config do. Neither set means the running domain if it
// runs and the persistent definition if it has one (virsh --persistent).
type Scope struct {
	Live, Config bool
}

func (s Scope) String() string {
	switch {
	case s.Live && s.Config:
		return "the running domain and its persistent definition"
	case s.Live:
		return "the running domain"
	default:
		return "the persistent definition"
	}
}

func (s Scope) flags() libvirt.DomainDeviceModifyFlags {
	var f libvirt.DomainDeviceModifyFlags
	if s.Live {
		f |= libvirt.DOMAIN_DEVICE_MODIFY_LIVE
	}
	if s.Config {
		f |= libvirt.DOMAIN_DEVICE_MODIFY_CONFIG
	}
	return f
}

// resolve turns the requested scope into what applies to dom, or says why
// it cannot.
func resolve(dom *libvirt.Domain, name string, want Scope) (Scope, error) {
	active, err := dom.IsActive()
	if err != nil {
		return Scope{}, fmt.Errorf("domain %q: %s", name, describe(err))
	}
	persistent, err := dom.IsPersistent()
	if err != nil {
		return Scope{}, fmt.Errorf("domain %q: %s", name, describe(err))
	}
	if !want.Live && !want.Config {
		want = Scope{Live: active, Config: persistent}
	}
	switch {
	case want.Live && !active:
		return Scope{}, fmt.Errorf("%w: domain %q is not running (--config changes its definition only)", ErrInvalid, name)
	case want.Config && !persistent:
		return Scope{}, fmt.Errorf("%w: domain %q is transient and has no persistent definition (--live changes the running domain only)", ErrInvalid, name)
	}
	return want, nil
}

// disks lists the disks of dom's live XML (live) or persistent one.
func disks(dom *libvirt.Domain, live bool) ([]DomainDisk, error) {
	var f libvirt.DomainXMLFlags
	if !live {
		f = libvirt.DOMAIN_XML_INACTIVE
	}
	x, err := dom.GetXMLDesc(f)
	if err != nil {
		return nil, fmt.Errorf("reading the domain XML: %s", describe(err))
	}
	return DomainDisks(x)
}

// scopeDisks returns the disks of each definition in scope.
func scopeDisks(dom *libvirt.Domain, s Scope) (map[string][]DomainDisk, error) {
	out := map[string][]DomainDisk{}
	for _, w := range []struct {
		on   bool
		live bool
		name string
	}{{s.Live, true, "running domain"}, {s.Config, false, "persistent definition"}} {
		if !w.on {
			continue
		}
		ds, err := disks(dom, w.live)
		if err != nil {
			return nil, err
		}
		out[w.name] = ds
	}
	return out, nil
}

// Attach adds d to domain: hot-plugged into the running guest and/or
// added to its persistent definition (scope). With d.Target "" the first
// free target from vdb on is taken; the one used is returned. Nothing
// changes when the vdisk is already a disk of the domain or the target is
// taken.
func (c *Conn) Attach(ctx context.Context, domain string, d Disk, want Scope) (string, Scope, error) {
	dom, err := c.domain(domain)
	if err != nil {
		return "", Scope{}, err
	}
	defer dom.Free()
	s, err := resolve(dom, domain, want)
	if err != nil {
		return "", Scope{}, err
	}
	all, err := scopeDisks(dom, s)
	if err != nil {
		return "", Scope{}, err
	}
	var union []DomainDisk
	for where, ds := range all {
		for _, x := range ds {
			if x.VDisk == d.VDisk {
				t := x.Target
				if t == "" {
					t = "a <qemu:commandline> disk"
				}
				return "", Scope{}, fmt.Errorf("%w: vdisk %s is already attached to domain %q as %s (%s)", ErrExists, d.VDisk, domain, t, where)
			}
			if d.Target != "" && x.Target == d.Target {
				return "", Scope{}, fmt.Errorf("%w: target %s of domain %q is in use (%s); pick another with --target", ErrExists, d.Target, domain, where)
			}
		}
		union = append(union, ds...)
	}
	if d.Target == "" {
		if d.Target, err = FreeTarget(union); err != nil {
			return "", Scope{}, err
		}
	}
	el, err := d.XML()
	if err != nil {
		return "", Scope{}, err
	}
	if err := ctx.Err(); err != nil {
		return "", Scope{}, err
	}
	c.log.Info("attaching vdisk", "domain", domain, "vdisk", d.VDisk, "target", d.Target, "nbd", d.Endpoint.String(), "scope", s.String())
	if err := dom.AttachDeviceFlags(el, s.flags()); err != nil {
		return "", Scope{}, fmt.Errorf("attaching vdisk %s to domain %q: %s", d.VDisk, domain, describe(err))
	}
	return d.Target, s, nil
}

// Detach removes the disk whose vdisk or target is name from domain. A
// hot-unplug needs the guest's consent: Detach waits (until ctx ends) for
// the disk to leave the running domain.
func (c *Conn) Detach(ctx context.Context, domain, name string, want Scope) (DomainDisk, Scope, error) {
	dom, err := c.domain(domain)
	if err != nil {
		return DomainDisk{}, Scope{}, err
	}
	defer dom.Free()
	s, err := resolve(dom, domain, want)
	if err != nil {
		return DomainDisk{}, Scope{}, err
	}
	all, err := scopeDisks(dom, s)
	if err != nil {
		return DomainDisk{}, Scope{}, err
	}
	// Detach from where the disk is; the definition it is missing from is
	// left alone (virsh would fail the whole call).
	var found DomainDisk
	var where Scope
	for place, ds := range all {
		x, ok := FindDisk(ds, name)
		if !ok {
			continue
		}
		if x.Element == "" {
			return DomainDisk{}, Scope{}, fmt.Errorf("%w: vdisk %s is a <qemu:commandline> disk of domain %q (disk-xml --reconnect); libvirt cannot unplug it: remove it from the definition with virsh edit", ErrInvalid, name, domain)
		}
		found = x
		if place == "running domain" {
			where.Live = true
		} else {
			where.Config = true
		}
	}
	if !where.Live && !where.Config {
		return DomainDisk{}, Scope{}, fmt.Errorf("%w: domain %q has no disk that is vdisk or target %q (%s)", ErrNotFound, domain, name, s)
	}
	if err := ctx.Err(); err != nil {
		return DomainDisk{}, Scope{}, err
	}
	c.log.Info("detaching vdisk", "domain", domain, "vdisk", found.VDisk, "target", found.Target, "scope", where.String())
	if err := dom.DetachDeviceFlags(found.Element, where.flags()); err != nil {
		return DomainDisk{}, Scope{}, fmt.Errorf("detaching %s from domain %q: %s", name, domain, describe(err))
	}
	if !where.Live {
		return found, where, nil
	}
	// libvirt returns once the guest was asked (or after a few seconds);
	// the disk is gone when the guest has let go of it.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		ds, err := disks(dom, true)
		if err != nil {
			return DomainDisk{}, Scope{}, err
		}
		if _, ok := FindDisk(ds, found.Target); !ok {
			return found, where, nil
		}
		select {
		case <-ctx.Done():
			return DomainDisk{}, Scope{}, fmt.Errorf("the guest of domain %q has not released %s yet (%w); libvirt removes it when the guest lets go", domain, found.Target, ctx.Err())
		case <-tick.C:
		}
	}
}

// Quiesce runs fn with the filesystems of domain's guest frozen through
// the qemu guest agent, and thaws them afterwards whatever happens. vdisk
// must be a disk of the domain: freezing another guest would not make
// the snapshot consistent. A domain that does not run has nothing to
// freeze. Without a guest agent Quiesce fails with ErrNoAgent, unless
// optional, when fn runs unfrozen.
func (c *Conn) Quiesce(ctx context.Context, domain, vdisk string, optional bool, fn func(context.Context) error) (err error) {
	dom, err := c.domain(domain)
	if err != nil {
		return err
	}
	defer dom.Free()
	active, err := dom.IsActive()
	if err != nil {
		return fmt.Errorf("domain %q: %s", domain, describe(err))
	}
	ds, err := disks(dom, active)
	if err != nil {
		return err
	}
	if !hasVDisk(ds, vdisk) {
		return fmt.Errorf("%w: vdisk %s is not a disk of domain %q; quiescing that guest would not make the snapshot consistent", ErrInvalid, vdisk, domain)
	}
	if !active {
		c.log.Info("domain is not running: nothing to freeze", "domain", domain)
		return fn(ctx)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ferr := dom.FSFreeze(nil, 0)
	if ferr != nil {
		// The agent thaws what it froze when a freeze fails half way;
		// thaw anyway, an unfrozen guest ignores it.
		if terr := dom.FSThaw(nil, 0); terr != nil {
			c.log.Debug("thaw after a failed freeze", "domain", domain, "err", describe(terr))
		}
		if isCode(ferr, libvirt.ERR_AGENT_UNRESPONSIVE, libvirt.ERR_ARGUMENT_UNSUPPORTED, libvirt.ERR_AGENT_UNSYNCED) {
			if optional {
				c.log.Warn("no guest agent: the snapshot is crash-consistent only", "domain", domain, "err", describe(ferr))
				return fn(ctx)
			}
			return fmt.Errorf("%w: freezing the filesystems of domain %q: %s (--quiesce-optional snapshots without freezing)", ErrNoAgent, domain, describe(ferr))
		}
		return fmt.Errorf("freezing the filesystems of domain %q: %s", domain, describe(ferr))
	}
	c.log.Info("froze guest filesystems", "domain", domain)
	defer func() {
		// Thaw even when fn failed or ctx ended: a frozen guest hangs
		// every write.
		if terr := dom.FSThaw(nil, 0); terr != nil {
			err = errors.Join(err, fmt.Errorf("thawing the filesystems of domain %q: %s", domain, describe(terr)))
			return
		}
		c.log.Info("thawed guest filesystems", "domain", domain)
	}()
	return fn(ctx)
}

// hasVDisk reports whether vdisk is one of disks (by vdisk name only: a
// target such as vda is no vdisk).
func hasVDisk(disks []DomainDisk, vdisk string) bool {
	for _, d := range disks {
		if vdisk != "" && d.VDisk == vdisk {
			return true
		}
	}
	return false
}
