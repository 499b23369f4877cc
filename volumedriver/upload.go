package volumedriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// uploader runs for the life of the volume: it uploads sealed TLogs (their
// SCOs first, then the TLog, then snapshots.json naming it) in order, evicts
// uploaded SCOs from the write buffer when it is over its limit, and seals
// an idle open TLog so that data does not sit in the write buffer forever.
//
// When the volume is stopped cleanly (draining), it uploads what is sealed,
// snapshots.json last, and returns; close bounds how long that may take.
func (v *Volume) uploader(ctx context.Context) {
	defer v.wg.Done()
	defer close(v.uploaderDone)
	const maxBackoff = 30 * time.Second
	backoff := time.Second
	interval := v.drv.opts.AutoSyncInterval
	ticker := time.NewTicker(max(interval/4, 100*time.Millisecond))
	defer ticker.Stop()
	for {
		err := v.uploadPending(ctx)
		if err == nil && v.isDraining() {
			return // everything sealed is on the backend
		}
		if err != nil {
			if ctx.Err() != nil || v.fenced.Load() {
				return // every further write would be refused
			}
			if errors.Is(err, context.Canceled) {
				continue // a rollback cut the upload short; start over
			}
			v.mu.Lock()
			v.uploadErr = err
			v.mu.Unlock()
			// A stop in progress retries sooner: close bounds it.
			wait, drain := backoff, v.draining
			if v.isDraining() {
				wait, drain = min(wait, 500*time.Millisecond), nil
			}
			v.log.Error("upload to the backend failed; retrying", "vdisk", v.name(), "err", err, "retry_in", wait)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			case <-drain:
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = time.Second
		select {
		case <-ctx.Done():
			return
		case <-v.draining:
		case <-v.kick:
		case <-ticker.C:
			v.sealIdle(interval)
		}
	}
}

func (v *Volume) isDraining() bool {
	select {
	case <-v.draining:
		return true
	default:
		return false
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
		v.ioErrLocked(err)
	}
}

// uploadPending uploads every sealed TLog. Between two, it also publishes
// a changed snapshots.json and deletes what scrubs and rollbacks discarded:
// under sustained writes the queue never empties, and the backend must not
// keep the garbage until it does.
func (v *Volume) uploadPending(ctx context.Context) error {
	for {
		done, err := v.uploadNext(ctx)
		if err != nil {
			return err
		}
		if err := v.putSnapshotsIfDirty(ctx); err != nil {
			return err
		}
		if err := v.collectGarbage(ctx); err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// uploadNext uploads the oldest sealed TLog that is not on the backend yet:
// its SCOs, then the TLog, then snapshots.json naming it (only then does
// the TLog count for a restart from the backend). uploadMu keeps a rollback
// from changing the TLog list under it.
func (v *Volume) uploadNext(ctx context.Context) (done bool, err error) {
	v.uploadMu.Lock()
	defer v.uploadMu.Unlock()
	v.mu.Lock()
	if v.closed || v.uploadedCount >= len(v.state.Sealed) {
		v.mu.Unlock()
		return true, nil
	}
	// A rollback may make this upload moot: it cancels it rather than
	// wait for it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	v.uploadCancel = cancel
	v.uploadingIdx = v.uploadedCount
	defer func() {
		v.mu.Lock()
		v.uploadCancel = nil
		v.mu.Unlock()
	}()
	idx := v.uploadedCount
	t := v.state.Sealed[idx]
	v.mu.Unlock()

	// The SCOs go in parallel (each put waits for its fsync or its
	// fragments); the TLog only once they are all there.
	if err := v.uploadSCOs(ctx, t.SCOs); err != nil {
		return false, err
	}
	if err := v.uploadFile(ctx, v.tlogPath(t.Name), t.Name); err != nil {
		return false, err
	}

	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return true, nil
	}
	if idx >= len(v.state.Sealed) || v.state.Sealed[idx].Name != t.Name || v.uploadedCount != idx {
		// A rollback discarded this TLog while it was uploading; what
		// was just stored is garbage (the rollback's own collection may
		// have run before it landed).
		v.mu.Unlock()
		v.deleteObjects(ctx, append(v.scoObjectNames(t.SCOs), t.Name))
		return false, nil
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
	snaps, covered := v.snapshotsJSONLocked(), v.uploadedCount
	err = writeLocalState(v.dir, &v.state)
	v.mu.Unlock()
	if err != nil {
		return false, err
	}
	if err := v.backend.Put(ctx, v.ns, snapshotsObject, snaps, true); err != nil {
		v.mu.Lock()
		v.snapshotsDirty = true
		v.mu.Unlock()
		return false, fmt.Errorf("upload snapshots.json: %w", err)
	}
	v.mu.Lock()
	v.publishedCount = max(v.publishedCount, covered)
	if covered > 0 && covered <= len(v.state.Sealed) {
		v.dtlPublishedLocked(v.state.Sealed[covered-1].Name)
	}
	v.evictLocked()
	v.removeOldTLogsLocked()
	v.requestScrubIfDueLocked() // a scrub sees only what is published
	close(v.progress)
	v.progress = make(chan struct{})
	v.mu.Unlock()
	return false, nil
}

func (v *Volume) uploadSCOs(ctx context.Context, nums []uint32) error {
	sem := make(chan struct{}, v.drv.opts.UploadConcurrency)
	errs := make([]error, len(nums))
	var wg sync.WaitGroup
	for i, num := range nums {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = v.uploadFile(ctx, v.scoPath(num), v.scoName(num).String())
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (v *Volume) scoObjectNames(nums []uint32) []string {
	out := make([]string, len(nums))
	for i, n := range nums {
		out[i] = v.scoName(n).String()
	}
	return out
}

// deleteObjects deletes backend objects, best effort: what is left is
// found by the next scrub's orphan sweep.
func (v *Volume) deleteObjects(ctx context.Context, names []string) {
	for _, n := range names {
		if err := v.backend.Delete(ctx, v.ns, n); err != nil && !errors.Is(err, scos.ErrObjectNotFound) {
			v.log.Warn("delete discarded object", "vdisk", v.name(), "object", n, "err", err)
		}
	}
}

// snapshotsJSONLocked is snapshots.json for what is on the backend: the
// uploaded TLogs and the snapshots they fully cover.
func (v *Volume) snapshotsJSONLocked() []byte {
	f := snapshotsFile{Format: formatVersion, TLogs: []string{}, Snapshots: []snapshotRecord{}}
	for _, t := range v.state.Sealed[:v.uploadedCount] {
		f.TLogs = append(f.TLogs, t.Name)
	}
	for _, sn := range v.state.Snapshots {
		if sn.TLogCount <= v.uploadedCount {
			f.Snapshots = append(f.Snapshots, sn)
		}
	}
	b, _ := json.Marshal(f)
	return b
}

// putSnapshotsIfDirty rewrites snapshots.json after a change that no
// upload carried (a snapshot deleted, a rollback, a restart).
func (v *Volume) putSnapshotsIfDirty(ctx context.Context) error {
	v.uploadMu.Lock()
	defer v.uploadMu.Unlock()
	v.mu.Lock()
	if !v.snapshotsDirty || v.closed {
		v.mu.Unlock()
		return nil
	}
	v.snapshotsDirty = false
	snaps, covered := v.snapshotsJSONLocked(), v.uploadedCount
	v.mu.Unlock()
	if err := v.backend.Put(ctx, v.ns, snapshotsObject, snaps, true); err != nil {
		v.mu.Lock()
		v.snapshotsDirty = true
		v.mu.Unlock()
		return fmt.Errorf("upload snapshots.json: %w", err)
	}
	v.mu.Lock()
	v.publishedCount = covered
	close(v.progress)
	v.progress = make(chan struct{})
	v.mu.Unlock()
	return nil
}

// collectGarbage deletes from the backend what rollbacks discarded. It
// runs after snapshots.json stopped naming those objects.
func (v *Volume) collectGarbage(ctx context.Context) error {
	for {
		v.mu.Lock()
		if len(v.state.Garbage) == 0 || v.snapshotsDirty || v.closed {
			v.mu.Unlock()
			return nil
		}
		g := v.state.Garbage[0]
		v.mu.Unlock()
		if time.Now().Before(g.NotBefore) && !v.releasing.Load() {
			return nil // the uploader's ticker comes back for it
		}
		del := func(name string) error {
			err := v.backend.Delete(ctx, v.ns, name)
			if err != nil && !errors.Is(err, scos.ErrObjectNotFound) {
				return fmt.Errorf("delete discarded %s: %w", name, err)
			}
			return nil
		}
		for _, t := range g.TLogs {
			if err := del(t); err != nil {
				return err
			}
		}
		for n := g.SCOFrom; n < g.SCOTo; n++ {
			if err := del(v.scoName(n).String()); err != nil {
				return err
			}
		}
		for _, o := range g.Objects {
			if err := del(o); err != nil {
				return err
			}
		}
		v.mu.Lock()
		v.state.Garbage = v.state.Garbage[1:]
		err := writeLocalState(v.dir, &v.state)
		close(v.progress) // Release waits for it
		v.progress = make(chan struct{})
		v.mu.Unlock()
		if err != nil {
			return err
		}
		v.log.Info("deleted discarded objects from the backend", "vdisk", v.name(), "tlogs", len(g.TLogs), "scos", int(g.SCOTo-g.SCOFrom)+len(g.Objects))
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
		v.dropSCOFileLocked(s)
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
			err = v.ioErrLocked(err)
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
		done, ch, closed, lastErr := v.publishedCount >= target && !v.snapshotsDirty, v.progress, v.closed, v.uploadErr
		v.mu.Unlock()
		if v.fenced.Load() {
			return v.fencedErr()
		}
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
