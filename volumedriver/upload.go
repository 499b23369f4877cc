package volumedriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// uploader runs for the life of the volume: it uploads sealed TLogs (their
// SCOs first, then the TLog, then snapshots.json naming it) in order, evicts
// uploaded SCOs from the write buffer when it is over its limit, and seals
// an idle open TLog so that data does not sit in the write buffer forever.
func (v *Volume) uploader(ctx context.Context) {
	defer v.wg.Done()
	const maxBackoff = 30 * time.Second
	backoff := time.Second
	interval := v.drv.opts.AutoSyncInterval
	ticker := time.NewTicker(max(interval/4, 100*time.Millisecond))
	defer ticker.Stop()
	for {
		if err := v.uploadPending(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			v.mu.Lock()
			v.uploadErr = err
			v.mu.Unlock()
			v.log.Error("upload to the backend failed; retrying", "vdisk", v.name(), "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = time.Second
		select {
		case <-ctx.Done():
			return
		case <-v.kick:
		case <-ticker.C:
			v.sealIdle(interval)
		}
	}
}

// sealIdle seals the open TLog once it has held data for interval.
func (v *Volume) sealIdle(interval time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed || v.failed != nil || v.tlog.records == 0 || time.Since(v.tlog.opened) < interval {
		return
	}
	if err := v.sealTLogLocked(); err != nil {
		v.failLocked(err)
	}
}

func (v *Volume) uploadPending(ctx context.Context) error {
	for {
		v.mu.Lock()
		if v.closed || v.uploadedCount >= len(v.state.Sealed) {
			v.mu.Unlock()
			return nil
		}
		idx := v.uploadedCount
		t := v.state.Sealed[idx]
		names := make([]string, idx+1)
		for i := range names {
			names[i] = v.state.Sealed[i].Name
		}
		v.mu.Unlock()

		for _, num := range t.SCOs {
			if err := v.uploadFile(ctx, v.scoPath(num), v.scoName(num).String()); err != nil {
				return err
			}
		}
		if err := v.uploadFile(ctx, v.tlogPath(t.Name), t.Name); err != nil {
			return err
		}
		// Only now does the TLog count: a restart from the backend
		// replays what snapshots.json names.
		snaps, err := json.Marshal(snapshotsFile{Format: formatVersion, TLogs: names, Snapshots: []json.RawMessage{}})
		if err != nil {
			return err
		}
		if err := v.backend.Put(ctx, v.ns, snapshotsObject, snaps, true); err != nil {
			return fmt.Errorf("upload snapshots.json: %w", err)
		}

		v.mu.Lock()
		if v.closed {
			v.mu.Unlock()
			return nil
		}
		st := &v.state.Sealed[idx]
		st.Uploaded = true
		v.pendingUpload -= st.PendingBytes
		st.PendingBytes = 0
		for _, num := range st.SCOs {
			if s, ok := v.scos[num]; ok {
				s.uploaded = true
			}
		}
		st.SCOs = nil
		v.uploadedCount++
		v.uploadErr = nil
		err = writeLocalState(v.dir, &v.state)
		v.evictLocked()
		v.removeOldTLogsLocked()
		close(v.progress)
		v.progress = make(chan struct{})
		v.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// uploadFile stores a sealed local file (SCO or TLog) as object name,
// straight from the file when the backend can take it that way.
func (v *Volume) uploadFile(ctx context.Context, path, name string) error {
	if fp, ok := v.backend.(scos.FilePutter); ok {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("upload %s: %w", name, err)
		}
		defer f.Close()
		if err := fp.PutFile(ctx, v.ns, name, f, true); err != nil {
			return fmt.Errorf("upload %s: %w", name, err)
		}
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("upload %s: %w", name, err)
	}
	if err := v.backend.Put(ctx, v.ns, name, data, true); err != nil {
		return fmt.Errorf("upload %s: %w", name, err)
	}
	return nil
}

// evictLocked drops uploaded SCOs, oldest first, while the write buffer is
// over its limit. Their clusters are then read from the backend.
func (v *Volume) evictLocked() {
	limit := v.drv.opts.WriteBufferBytes
	if v.writeBuffer <= limit {
		return
	}
	var cands []*scoFile
	for _, s := range v.scos {
		if s.uploaded && s.sealed && s != v.cur {
			cands = append(cands, s)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].num < cands[j].num })
	for _, s := range cands {
		if v.writeBuffer <= limit {
			return
		}
		if s.readers.Load() > 0 {
			continue
		}
		size := int64(s.clusters) * int64(v.clusterSize)
		s.f.Close()
		if err := os.Remove(v.scoPath(s.num)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			v.log.Warn("evict SCO", "vdisk", v.name(), "sco", v.scoName(s.num).String(), "err", err)
		}
		delete(v.scos, s.num)
		v.writeBuffer -= size
	}
}

// Sync returns once every write completed before the call is on the
// backend: the open TLog is sealed and the call waits for its upload.
func (v *Volume) Sync(ctx context.Context) error {
	v.mu.Lock()
	if err := v.writableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	if v.tlog.records > 0 || len(v.tlog.scos) > 0 {
		if err := v.sealTLogLocked(); err != nil {
			err = v.failLocked(err)
			v.mu.Unlock()
			return err
		}
	}
	target := len(v.state.Sealed)
	v.mu.Unlock()
	select {
	case v.kick <- struct{}{}:
	default:
	}
	for {
		v.mu.Lock()
		done, ch, closed, lastErr := v.uploadedCount >= target, v.progress, v.closed, v.uploadErr
		v.mu.Unlock()
		if done {
			return nil
		}
		if closed {
			return fmt.Errorf("%s: %w", v.name(), ErrClosed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%s: sync: %w (last upload error: %v)", v.name(), ctx.Err(), lastErr)
			}
			return fmt.Errorf("%s: sync: %w", v.name(), ctx.Err())
		}
	}
}
