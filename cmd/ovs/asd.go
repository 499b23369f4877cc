package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/scos"
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
	dir       string
	addr      string
	node      string
	site      string
	fillLimit float64
	capacity  sizeValue
	logLevel  string
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
			"site are kept in DIR/asd.json. It stops on SIGINT or SIGTERM." + sizeFlagHelp,
		Example: "  ovs asd serve --dir /srv/asd/sdb --addr 10.0.0.5:8600 --node host5 --site dc1",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runASDServe(cmd.Context(), o) },
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "directory holding the fragments (required)")
	f.StringVar(&o.addr, "addr", "127.0.0.1:8600", "listen address")
	f.StringVar(&o.node, "node", host, "failure domain: the node (host) this disk is in")
	f.StringVar(&o.site, "site", "default", "failure domain: the site (data centre) this node is in")
	f.Float64Var(&o.fillLimit, "fill-limit", scos.DefaultFillLimit, "refuse writes past this fraction of the disk (or of --capacity)")
	f.Var(&o.capacity, "capacity", "bytes of fragments this ASD may hold (default: the whole filesystem)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
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
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	s, err := scos.OpenASD(scos.ASDConfig{
		Dir: o.dir, Node: o.node, Site: o.site, FillLimit: o.fillLimit, Capacity: int64(o.capacity), Logger: log,
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("asd %s: %w", s.ID(), err)
	}
	return s.Serve(ctx, l)
}
