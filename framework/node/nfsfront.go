package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	vfs "github.com/ovs-storage/ovs/volumedriver/fs"
	"github.com/ovs-storage/ovs/volumedriver/fs/nfs"
)

// startNFS exports tree over NFSv3 (+ MOUNT, and portmapper answers for
// clients such as qemu that ask port 111) on l until ctx ends or the
// returned stop is called; a serve error goes to errc. The tree is the
// file frontend's (the same one the FUSE mount shows), so both show the
// same files. Only clients in allow are served.
func startNFS(ctx context.Context, l net.Listener, tree vfs.Tree, allow []netip.Prefix, log *slog.Logger, errc chan<- error) func() {
	srv := nfs.NewServer(tree, nfs.Options{Logger: log, Allow: allow})
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

// parseNFSAllow reads nfs_allow: networks (CIDR) or single addresses.
func parseNFSAllow(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("nfs_allow: %q is neither a network (10.0.0.0/24) nor an address", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// nfsAllowList is who the NFS export serves: nfs_allow if set, else the
// default: loopback and the networks directly attached to the address
// the export listens on (every attached network for a wildcard address).
//
// NFSv3 with AUTH_SYS believes whatever uid a client claims, so who may
// connect is the only protection the files have. A hypervisor that uses
// the vpool as a datastore sits on the storage network next to the node;
// a client routed in from anywhere else must be listed on purpose.
func nfsAllowList(configured []string, listen net.Addr, ifaceAddrs func() ([]net.Addr, error)) ([]netip.Prefix, error) {
	if len(configured) > 0 {
		return parseNFSAllow(configured)
	}
	out := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	var bound netip.Addr
	if ap, err := netip.ParseAddrPort(listen.String()); err == nil {
		bound = ap.Addr().Unmap()
	}
	addrs, err := ifaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("the NFS export's default client networks: %w", err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := n.Mask.Size()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() && !bound.IsLinkLocalUnicast() {
			continue
		}
		if bound.IsValid() && !bound.IsUnspecified() && ip != bound {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, ones).Masked())
	}
	return out, nil
}
