package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/go-plugins-helpers/volume"
)

// DefaultSocket is where Docker finds the plugin as the volume driver
// "ovs": Docker looks for plugins' sockets in /run/docker/plugins, named
// after the plugin.
const DefaultSocket = "/run/docker/plugins/ovs.sock"

// Serve serves d on the unix socket path until ctx is done. A socket file
// left by a plugin that died is replaced; one that answers is not.
func Serve(ctx context.Context, d *Driver, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	if c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "unix", path); err == nil {
		c.Close()
		return fmt.Errorf("docker plugin socket %s: another plugin serves it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	l, err := (&net.ListenConfig{}).Listen(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	// Only root (dockerd) may drive the plugin: it mounts filesystems.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("docker plugin socket: %w", err)
	}
	defer os.Remove(path)
	h := volume.NewHandler(d)
	errc := make(chan error, 1)
	go func() { errc <- h.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("docker plugin: %w", err)
	case <-ctx.Done():
	}
	// The helper's server has no shutdown: closing its listener ends it.
	l.Close()
	<-errc
	return nil
}
