package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/plugins/libvirt"
)

// libvirtOptions are the flags every libvirt command shares.
type libvirtOptions struct {
	connect string
}

func newLibvirtCommand(g *globalOptions) *cobra.Command {
	o := &libvirtOptions{}
	cmd := &cobra.Command{
		Use:   "libvirt",
		Short: "Give vdisks to libvirt/KVM domains as NBD disks",
		Long: "Attach vdisks to libvirt domains as NBD network disks, detach them, and\n" +
			"print the <disk> element for a domain definition. qemu reaches the vdisk\n" +
			"over NBD at the node that owns it (from the API), or where --nbd says.\n" +
			"--connect is libvirt's URI as virsh takes it ($LIBVIRT_DEFAULT_URI, else\n" +
			"qemu:///system for root).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVarP(&o.connect, "connect", "c", "", "libvirt connection URI")
	cmd.AddCommand(
		newLibvirtAttachCommand(g, o),
		newLibvirtDetachCommand(o),
		newLibvirtDiskXMLCommand(g),
	)
	return cmd
}

// cliLogger shows warnings (such as an unfrozen snapshot) on stderr; the
// progress messages stay quiet.
func cliLogger(cmd *cobra.Command) *slog.Logger {
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// diskFlags are the flags that shape a vdisk's disk element.
type diskFlags struct {
	target      string
	nbd         string
	errorPolicy string
}

func (f *diskFlags) add(cmd *cobra.Command, defaultTarget string) {
	cmd.Flags().StringVar(&f.target, "target", defaultTarget, "guest device name of the disk (virtio: vdb, vdc, ...)")
	cmd.Flags().StringVar(&f.nbd, "nbd", "", "NBD server qemu connects to: HOST:PORT or a unix socket path (default: the owner node's NBD address from the API)")
	cmd.Flags().StringVar(&f.errorPolicy, "error-policy", "stop", "on an I/O error: stop (pause the guest until resumed) or report (the guest sees the error)")
}

// disk checks that vdisk exists and finds where qemu reaches it.
func (f *diskFlags) disk(ctx context.Context, g *globalOptions, vdisk string) (libvirt.Disk, error) {
	d := libvirt.Disk{VDisk: vdisk, Target: f.target, ErrorPolicy: f.errorPolicy}
	cl := g.client()
	info, err := cl.Info(ctx, vdisk)
	if err != nil {
		return d, err
	}
	if f.nbd != "" {
		d.Endpoint, err = libvirt.ParseEndpoint(f.nbd)
		return d, err
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return d, fmt.Errorf("finding the NBD address of vdisk %s (give it with --nbd): %w", vdisk, err)
	}
	d.Endpoint, err = nbdEndpoint(nodes, info.Owner, cl.BaseURL())
	if err != nil {
		return d, fmt.Errorf("vdisk %s: %w", vdisk, err)
	}
	return d, nil
}

// nbdEndpoint picks the NBD address of the vdisk's owner (every node
// serves every vdisk, the owner without a hop), else of a node that is
// up, else the owner's anyway. A wildcard listen address stands for the
// host of the node's API URL.
func nbdEndpoint(nodes []api.NodeInfo, owner, apiURL string) (libvirt.Endpoint, error) {
	var pick, ownerNode *api.NodeInfo
	for i := range nodes {
		n := &nodes[i]
		switch {
		case n.NBD == "":
		case n.ID == owner && n.State == "up":
			pick = n
		case n.ID == owner:
			ownerNode = n
		case n.State == "up" && pick == nil:
			pick = n
		}
	}
	if pick == nil {
		pick = ownerNode
	}
	if pick == nil {
		return libvirt.Endpoint{}, errors.New("no node serves NBD over TCP; give the address or socket with --nbd")
	}
	host, port, err := net.SplitHostPort(pick.NBD)
	if err != nil {
		return libvirt.Endpoint{}, fmt.Errorf("node %s: NBD address %q: %w", pick.ID, pick.NBD, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = pick.API
		if host == "" {
			host = apiURL
		}
		if u, err := url.Parse(host); err == nil && u.Hostname() != "" {
			host = u.Hostname()
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return libvirt.Endpoint{}, fmt.Errorf("node %s: NBD address %q: bad port", pick.ID, pick.NBD)
	}
	return libvirt.Endpoint{Host: host, Port: n}, nil
}

// scopeFlags are virsh's --live and --config.
func addScopeFlags(cmd *cobra.Command, s *libvirt.Scope) {
	cmd.Flags().BoolVar(&s.Live, "live", false, "change the running domain only (with --config: both)")
	cmd.Flags().BoolVar(&s.Config, "config", false, "change the persistent definition only (with --live: both)")
}

func newLibvirtAttachCommand(g *globalOptions, o *libvirtOptions) *cobra.Command {
	var (
		f     diskFlags
		scope libvirt.Scope
	)
	cmd := &cobra.Command{
		Use:   "attach DOMAIN VDISK [--target vdb]",
		Short: "Attach a vdisk to a domain as an NBD disk",
		Long: "Attach a vdisk to a libvirt domain as a virtio NBD network disk: hot-plugged\n" +
			"into the running guest and added to the persistent definition, as virsh\n" +
			"attach-disk --persistent does (--live or --config for one of them). Without\n" +
			"--target the first free one from vdb on is taken. A vdisk that is already a\n" +
			"disk of the domain, or a target in use, is refused and nothing changes.",
		Example: "  ovs libvirt attach vm1 data1\n  ovs libvirt attach vm1 data1 --target vdc --config",
		Args:    domainAndName("VDISK"),
	}
	f.add(cmd, "")
	addScopeFlags(cmd, &scope)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		d, err := f.disk(ctx, g, args[1])
		if err != nil {
			return err
		}
		c, err := libvirt.Open(o.connect, cliLogger(cmd))
		if err != nil {
			return err
		}
		defer c.Close()
		target, s, err := c.Attach(ctx, args[0], d, scope)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "attached vdisk %q to domain %q as %s (%s, NBD %s)\n",
			args[1], args[0], target, s, d.Endpoint)
		return err
	}
	return cmd
}

func newLibvirtDetachCommand(o *libvirtOptions) *cobra.Command {
	var (
		scope libvirt.Scope
		wait  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "detach DOMAIN VDISK|TARGET",
		Short: "Detach a vdisk from a domain",
		Long: "Detach a vdisk (named by the vdisk or its target, such as vdb) from a\n" +
			"libvirt domain: unplugged from the running guest and removed from the\n" +
			"persistent definition, wherever it is (--live or --config for one of them).\n" +
			"An unplug needs the guest's consent; the command waits up to --wait for\n" +
			"the disk to leave the running guest. The vdisk itself is not touched.",
		Example: "  ovs libvirt detach vm1 data1\n  ovs libvirt detach vm1 vdc --config",
		Args:    domainAndName("VDISK|TARGET"),
	}
	addScopeFlags(cmd, &scope)
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the guest to release the disk")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := libvirt.Open(o.connect, cliLogger(cmd))
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), wait)
		defer cancel()
		d, s, err := c.Detach(ctx, args[0], args[1], scope)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "detached vdisk %q (%s) from domain %q (%s)\n", d.VDisk, d.Target, args[0], s)
		return err
	}
	return cmd
}

func newLibvirtDiskXMLCommand(g *globalOptions) *cobra.Command {
	var (
		f         diskFlags
		reconnect int
		pciSlot   int
	)
	cmd := &cobra.Command{
		Use:   "disk-xml VDISK [--target vdb] [--reconnect SECONDS]",
		Short: "Print the libvirt disk element of a vdisk",
		Long: "Print the <disk type='network'> element of a vdisk, for a domain\n" +
			"definition (virsh define, virsh edit). Its error policy \"stop\" pauses the\n" +
			"guest when the volume driver is gone; once it is back, \"virsh resume\"\n" +
			"carries on (qemu reconnects in the background: the guest may pause once\n" +
			"more and need a second resume).\n\n" +
			"libvirt 9.0 cannot tell qemu to wait for the NBD server to come back. With\n" +
			"--reconnect SECONDS the vdisk is printed instead as a <qemu:commandline>\n" +
			"element: qemu's own NBD client with reconnect-delay, which holds the\n" +
			"guest's requests while the volume driver restarts and resends them, so the\n" +
			"guest does not notice. The domain must declare\n" +
			"xmlns:qemu='" + libvirt.QEMUNamespace + "'; libvirt does not know\n" +
			"the disk (no hot-unplug, statistics, libvirt snapshots or migration) and\n" +
			"marks the domain tainted; the device sits in PCI slot --pci-slot of bus\n" +
			"pci.0 (an i440fx \"pc\" machine).",
		Example: "  ovs libvirt disk-xml vm1-root --target vda\n" +
			"  ovs libvirt disk-xml vm1-root --reconnect 60",
		Args: oneName,
	}
	f.add(cmd, "vda")
	cmd.Flags().IntVar(&reconnect, "reconnect", 0, "print a <qemu:commandline> disk whose NBD client reconnects for this many seconds")
	cmd.Flags().IntVar(&pciSlot, "pci-slot", 31, "with --reconnect: the PCI slot of the disk on bus pci.0")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		d, err := f.disk(cmd.Context(), g, args[0])
		if err != nil {
			return err
		}
		var x string
		if cmd.Flags().Changed("reconnect") {
			x, err = d.ReconnectXML(reconnect, pciSlot)
		} else {
			x, err = d.XML()
		}
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), x)
		return err
	}
	return cmd
}

// domainAndName accepts DOMAIN and one more argument, called what.
func domainAndName(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return fmt.Errorf("%s needs a DOMAIN and a %s", commandName(cmd), what)
		case len(args) == 1:
			return fmt.Errorf("%s needs a %s after the DOMAIN", commandName(cmd), what)
		case len(args) > 2:
			return fmt.Errorf("%s takes a DOMAIN and a %s, got %d arguments", commandName(cmd), what, len(args))
		case args[0] == "" || args[1] == "":
			return fmt.Errorf("%s: the DOMAIN and the %s must not be empty", commandName(cmd), what)
		}
		return nil
	}
}

// quiesceFlags are the snapshot hook's flags of ovs vdisk snapshot create.
type quiesceFlags struct {
	domain   string
	optional bool
	connect  string
}

func (q *quiesceFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&q.domain, "quiesce", "", "freeze the filesystems of this libvirt domain's guest (qemu guest agent) around the snapshot")
	cmd.Flags().BoolVar(&q.optional, "quiesce-optional", false, "with --quiesce: snapshot unfrozen when the guest has no agent")
	cmd.Flags().StringVar(&q.connect, "connect", "", "with --quiesce: libvirt connection URI")
}

// run runs snap, with the domain's guest frozen when --quiesce names
// one.
func (q *quiesceFlags) run(cmd *cobra.Command, vdisk string, snap func(context.Context) error) error {
	if q.domain == "" {
		if q.optional || q.connect != "" {
			return errors.New("--quiesce-optional and --connect go with --quiesce DOMAIN")
		}
		return snap(cmd.Context())
	}
	c, err := libvirt.Open(q.connect, cliLogger(cmd))
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Quiesce(cmd.Context(), q.domain, vdisk, q.optional, snap)
}
