package volumedriver

import (
	"context"
	"fmt"
	"time"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// CompareAndWrite writes data at byte offset off if the vdisk holds cmp
// there (len(cmp) == len(data) <= blockdev.MaxCompareAndWrite); otherwise
// it writes nothing and returns the offset, from off, of the first byte
// that differs. It returns -1 when it wrote. With fua the data is durable
// when it returns. It is blockdev.CompareAndWriter: SCSI COMPARE AND WRITE,
// on which VMware's ATS locking rests.
//
// Every frontend and every node reaches the vdisk through this Volume at
// its owner (other nodes forward to it), so the lock here serialises all
// of the vdisk's CompareAndWrites, cluster-wide.
//
// It is serialised against other CompareAndWrites only, not against plain
// writes, as Linux LIO does (its caw_sem): what ATS protects (VMFS lock
// records and heartbeats) is changed only by COMPARE AND WRITE, and a plain
// write racing one on the same blocks is the initiator's own race, which
// no ordering of ours would make meaningful. Holding every write behind the
// lock would put a second lock on the write path for nothing.
//
// The whole operation is one I/O for Release and fencing: it holds the
// gate throughout, so a handover waits for it, and it either completes
// here or fails without writing (a retry at the new owner compares anew).
func (v *Volume) CompareAndWrite(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error) {
	start := time.Now()
	m, err := v.compareAndWrite(ctx, off, cmp, data, fua)
	// A miscompare is an answer, not a failure: it counts as a write
	// served (of no bytes).
	n := int64(len(data))
	if m >= 0 {
		n = 0
	}
	v.io.done(OpWrite, n, start, err)
	return m, err
}

func (v *Volume) compareAndWrite(ctx context.Context, off int64, cmp, data []byte, fua bool) (int64, error) {
	if err := v.gate.enter(); err != nil {
		return 0, err
	}
	defer v.gate.exit()
	if err := blockdev.CheckCompareAndWrite(cmp, data); err != nil {
		return 0, fmt.Errorf("%s: %w: %w", v.name(), ErrInvalidArgument, err)
	}
	if err := v.checkRange(off, int64(len(cmp))); err != nil {
		return 0, err
	}
	// Refuse up front what the write would refuse (a template, a failed
	// or closed volume), so that a miscompare is never reported for a
	// write that could not have happened.
	v.mu.Lock()
	err := v.writableLocked()
	v.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if len(cmp) == 0 {
		return -1, nil
	}
	select {
	case v.caw <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("%s: compare and write: waiting for another one: %w", v.name(), ctx.Err())
	}
	defer func() { <-v.caw }()
	cur := make([]byte, len(cmp))
	if err := v.readAt(ctx, cur, off); err != nil {
		return 0, err
	}
	if i := blockdev.Mismatch(cur, cmp); i >= 0 {
		return i, nil
	}
	// The write takes the usual path: TLog, group commit, DTL shipping.
	if err := v.writeAt(ctx, data, off, fua); err != nil {
		return 0, err
	}
	return -1, nil
}
