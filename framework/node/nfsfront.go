package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	vfs "github.com/ovs-storage/ovs/volumedriver/fs"
	"github.com/ovs-storage/ovs/volumedriver/fs/nfs"
)

// startNFS exports tree over NFSv3 (+ MOUNT, and portmapper answers for
// clients such as qemu that ask port 111) on l until ctx ends or the
// returned stop is called; a serve error goes to errc. The tree is the
// file frontend's (the same one the FUSE mount shows), so both show the
// same files.
func startNFS(ctx context.Context, l net.Listener, tree vfs.Tree, log *slog.Logger, errc chan<- error) func() {
	srv := nfs.NewServer(tree, nfs.Options{Logger: log})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, l); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("NFS on %s: %w", l.Addr(), err)
		}
	}()
	return func() {
		if err := srv.Close(); err != nil {
			log.Warn("NFS shutdown", "err", err)
		}
		<-done
	}
}
