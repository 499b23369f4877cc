package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos/asd"
)

// newASDCommand: `ovs asd serve`, the storage daemon of the erasure-coded
// backend, one per disk, run by systemd (or by ovs up as a child).
func newASDCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "asd",
		Short: "Run an ASD (storage daemon of the erasure-coded backend)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newASDServeCommand())
	return cmd
}

type asdServeOptions struct {
	dir        string
	addr       string
	node       string
	site       string
	fillLimit  float64
	capacity   sizeValue
	logLevel   string
	listenFD   int
	secretFile string
	socket     string
}

func newASDServeCommand() *cobra.Command {
	o := &asdServeOptions{}
	cmd := &cobra.Command{
		Use:   "serve --dir DIR",
		Short: "Serve fragments from a local directory",
		Long: "ovs asd serve keeps erasure-coded fragments in DIR (one directory per\n" +
			"disk) and serves them over HTTP to the backend. Every fragment carries a\n" +
			"CRC-32C; a put is acknowledged once it is fsynced; reads are verified and\n" +
			"corrupt fragments are reported, never served. Writes that would take the\n" +
			"disk (or --capacity) past --fill-limit are refused. The ASD's id, node and\n" +
			"site are kept in DIR/asd.json. It stops on SIGINT or SIGTERM.\n\n" +
			"It serves only over TLS, and only to clients that hold the cluster secret\n" +
			"(--secret-file, $OVS_SECRET or $OVS_SECRET_FILE): anyone else is refused\n" +
			"before a request is read. The first start records the cluster in\n" +
			"DIR/asd.json; a disk of another cluster refuses to start." + sizeFlagHelp,
		Example: "  ovs asd serve --dir /srv/asd/sdb --addr 10.0.0.5:8600 --node host5 --site dc1 --secret-file /etc/ovs/secret",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runASDServe(cmd.Context(), o) },
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "directory holding the fragments (required)")
	f.StringVar(&o.addr, "addr", "127.0.0.1:8600", "listen address")
	f.StringVar(&o.node, "node", host, "failure domain: the node (host) this disk is in")
	f.StringVar(&o.site, "site", "default", "failure domain: the site (data centre) this node is in")
	f.Float64Var(&o.fillLimit, "fill-limit", asd.DefaultFillLimit, "refuse writes past this fraction of the disk (or of --capacity)")
	f.Var(&o.capacity, "capacity", "bytes of fragments this ASD may hold (default: the whole filesystem)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.secretFile, "secret-file", "", "file holding the cluster secret (default: $OVS_SECRET, then $OVS_SECRET_FILE)")
	f.StringVar(&o.socket, "local-socket", "", "also serve reads on this unix socket, to processes of this user on this host (no TLS; peers are checked by uid)")
	f.IntVar(&o.listenFD, "listen-fd", 0, "serve on this inherited listening socket instead of --addr (how ovs up runs its ASDs)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func runASDServe(ctx context.Context, o *asdServeOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if o.fillLimit <= 0 || o.fillLimit > 1 {
		return fmt.Errorf("--fill-limit %v: want a fraction in (0, 1]", o.fillLimit)
	}
	sec, err := secret.Resolve(o.secretFile, "")
	if err != nil {
		return fmt.Errorf("%w: an ASD serves only clients holding the cluster secret", err)
	}
	restrictUmask()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	s, err := asd.Open(asd.Config{
		Dir: o.dir, Node: o.node, Site: o.site, FillLimit: o.fillLimit, Capacity: int64(o.capacity), Logger: log,
		Cluster: sec.ClusterID(), LocalSocket: o.socket,
		TLS: func(id string) (*tls.Config, error) { return sec.ServerTLS(secret.RoleASD, id) },
	})
	if err != nil {
		return err
	}
	var l net.Listener
	if o.listenFD > 0 {
		f := os.NewFile(uintptr(o.listenFD), "listener")
		l, err = net.FileListener(f)
		f.Close()
	} else {
		l, err = net.Listen("tcp", o.addr)
	}
	if err != nil {
		return fmt.Errorf("asd %s: %w", s.ID(), err)
	}
	return s.Serve(ctx, l)
}

// restrictUmask makes every file a daemon creates private to its user
// (0600, directories 0700), including those libraries create (raft
// snapshots): cluster data is nobody else's to read.
func restrictUmask() { syscall.Umask(0o077) }
