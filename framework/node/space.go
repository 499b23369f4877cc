package node

import (
	"context"
	"fmt"
	"syscall"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/scos/ec"
)

// localSpace reports the filesystem of a local-directory backend.
func localSpace(dir string) func(context.Context) (api.BackendSpace, error) {
	return func(context.Context) (api.BackendSpace, error) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return api.BackendSpace{}, fmt.Errorf("backend space: statfs %s: %w", dir, err)
		}
		return api.BackendSpace{
			Backend:    "local",
			RawTotal:   int64(st.Blocks) * st.Bsize,
			RawFree:    int64(st.Bavail) * st.Bsize,
			Efficiency: 1,
		}, nil
	}
}

// ecSpace reports the erasure-coded backend's ASDs; data takes k/(k+m) of
// their space under the default preset.
func ecSpace(b *ec.Backend) func(context.Context) (api.BackendSpace, error) {
	return func(ctx context.Context) (api.BackendSpace, error) {
		s, err := b.Space(ctx)
		if err != nil {
			return api.BackendSpace{}, fmt.Errorf("backend space: %w", err)
		}
		eff := 1.0
		if s.K > 0 {
			eff = float64(s.K) / float64(s.K+s.M)
		}
		return api.BackendSpace{Backend: "ec", RawTotal: s.Capacity, RawFree: s.Free, Efficiency: eff}, nil
	}
}
