package ec

import (
	"context"
	"crypto/rand"
	"fmt"
)

// readyProbeSize is the object size Writable checks placement for: a
// default SCO (4 MiB), the largest object a new vdisk writes.
const readyProbeSize = 4 << 20

// Writable reports whether a new namespace's objects can be stored now:
// the default preset can place an SCO's fragments on the ASDs that are up
// and have room. If not, it probes the ASDs once (one may have just
// started) and checks again, so that a health check built on it turns
// ready as soon as the ASDs answer, not at the next health tick.
func (b *Backend) Writable(ctx context.Context) error {
	preset, err := b.preset(ctx, b.cfg.Preset)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	check := func() error {
		var id [16]byte
		rand.Read(id[:])
		if _, _, _, err := b.place(preset, id[:], readyProbeSize, map[string]error{}); err != nil {
			return b.explainPlacement(err, nil)
		}
		return nil
	}
	if check() == nil {
		return nil
	}
	b.probeAll(ctx)
	if err := ctx.Err(); err != nil {
		return err
	}
	return check()
}
