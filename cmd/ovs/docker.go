package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/plugins/docker"
)

// newDockerPluginCommand: `ovs docker-plugin serve`, the Docker volume
// plugin (plugins/docker).
func newDockerPluginCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "docker-plugin",
		Short: "Docker volume plugin: Docker volumes that are vdisks",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var (
		socket, state, host, nbd, prefix, logLevel string
		reconnect, timeout                         time.Duration
	)
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Serve the Docker volume driver \"ovs\" on a unix socket",
		Long: "Serve Docker's volume plugin protocol: `docker volume create -d ovs\n" +
			"--opt size=10GiB NAME` makes the vdisk " + docker.DefaultPrefix + "NAME, a container's\n" +
			"-v NAME:/path mounts an ext4 (or --opt fs=xfs) filesystem on it, made at\n" +
			"the first mount. Options: size (default 10GiB), fs, from=VDISK@SNAPSHOT\n" +
			"(a clone). A volume is mounted on one host at a time. Docker finds the\n" +
			"plugin by its socket in /run/docker/plugins (the socket's name is the\n" +
			"driver's name). Runs as root: it mounts filesystems.",
		Args: cobra.NoArgs,
	}
	f := serve.Flags()
	f.StringVar(&socket, "socket", docker.DefaultSocket, "unix socket to serve on")
	f.StringVar(&state, "state", "/var/lib/ovs/docker", "directory of the plugin's records and mount points")
	f.StringVar(&host, "host-id", "", "this host's id in the cluster's mount records (default: the host name)")
	f.StringVar(&nbd, "nbd", "", "NBD server host:port (default: that of the node serving --api)")
	f.StringVar(&prefix, "prefix", docker.DefaultPrefix, "name prefix of the plugin's vdisks")
	f.DurationVar(&reconnect, "reconnect-timeout", 5*time.Minute, "how long a mounted volume's I/O waits for a restarting volume driver")
	f.DurationVar(&timeout, "call-timeout", 2*time.Minute, "deadline of each call from Docker")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	g.addClientFlags(serve)
	serve.RunE = func(cmd *cobra.Command, _ []string) error {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("component", "docker-plugin")
		c := g.client()
		apiHost := ""
		if u, err := url.Parse(c.BaseURL()); err == nil {
			apiHost = u.Host
		}
		ctx := cmd.Context()
		d, err := docker.New(ctx, docker.Config{Cluster: c, Host: host, StateDir: state, Prefix: prefix, NBD: nbd,
			APIHost: apiHost, Timeout: timeout, Log: log,
			Devices: &docker.HostDevices{Reconnect: reconnect, Log: log}})
		if err != nil {
			return err
		}
		if err := d.Recover(ctx); err != nil {
			log.Error("recovering the mounts of the last run", "err", err)
		}
		log.Info("serving", "socket", socket, "api", c.BaseURL(), "state", state)
		return docker.Serve(ctx, d, socket)
	}
	cmd.AddCommand(serve)
	return cmd
}
