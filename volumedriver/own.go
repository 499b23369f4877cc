package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// Ownership in a cluster.
//
// In a cluster each vdisk is served by one host at a time, its owner. The
// control plane records the owner and an owner epoch that grows at every
// change of owner, and the backend refuses every mutation of the vdisk's
// namespace from a host whose fence is stale (scos.ErrFenced). The driver
// knows nothing of hosts: it is told which vdisks it serves and under which
// epoch (Options.Owned, Adopt, CreateOptions, CloneOptions), hands a vdisk
// over cleanly (Release), and stops serving one as soon as it learns that it
// lost it (Fence, or a backend write refused as fenced), until Drop.
//
// The epoch is recorded in the vdisk's state.json: local state written
// under another epoch is from an earlier tenure here, and another host may
// have written the vdisk since, so it is never replayed (openVolume).

// ioGate counts the I/O operations inside a volume and, once shut, refuses
// new ones with an error; wait returns when the last one left. Release uses
// it to let in-flight I/O finish before it seals the volume, so that every
// operation either completes before the handover or fails whole with
// ErrReleased. The counter is atomic: the gate sits on the I/O path, and a
// mutex there would be a second point of contention next to v.mu.
type ioGate struct {
	n    atomic.Int64
	shut atomic.Pointer[error]
	mu   sync.Mutex
	idle chan struct{} // closed when n reaches 0; non-nil while someone waits
}

func (g *ioGate) enter() error {
	g.n.Add(1)
	if e := g.shut.Load(); e != nil {
		g.exit()
		return *e
	}
	return nil
}

func (g *ioGate) exit() {
	if g.n.Add(-1) == 0 && g.shut.Load() != nil {
		g.mu.Lock()
		if g.idle != nil {
			close(g.idle)
			g.idle = nil
		}
		g.mu.Unlock()
	}
}

// err is what enter returns now (nil while the gate is open).
func (g *ioGate) err() error {
	if e := g.shut.Load(); e != nil {
		return *e
	}
	return nil
}

// shutDown makes enter fail with err from now on; the token reopens it.
func (g *ioGate) shutDown(err error) *error {
	p := &err
	g.shut.Store(p)
	return p
}

// reopen opens the gate if it is still shut by token (and not by a later
// shutDown, such as a fence).
func (g *ioGate) reopen(token *error) bool { return g.shut.CompareAndSwap(token, nil) }

// wait returns once no operation is inside (the gate must be shut, or new
// ones may keep it busy).
func (g *ioGate) wait(ctx context.Context) error {
	for {
		// n is read under mu: an exit that brings it to 0 after this
		// read takes mu after us and closes the channel we wait on.
		g.mu.Lock()
		if g.n.Load() == 0 {
			g.mu.Unlock()
			return nil
		}
		if g.idle == nil {
			g.idle = make(chan struct{})
		}
		ch := g.idle
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for I/O in flight: %w", ctx.Err())
		}
	}
}

// fencingBackend is a volume's view of the backend: a mutation of its
// namespace that the backend refuses as fenced fences the volume, wherever
// it came from (uploader, scrub, resize, snapshots.json).
type fencingBackend struct {
	scos.Backend
	v *Volume
}

func (b *fencingBackend) check(err error) error {
	if err != nil && errors.Is(err, scos.ErrFenced) {
		b.v.fence(err)
	}
	return err
}

func (b *fencingBackend) CreateNamespace(ctx context.Context, ns string) error {
	return b.check(b.Backend.CreateNamespace(ctx, ns))
}

func (b *fencingBackend) DeleteNamespace(ctx context.Context, ns string) error {
	return b.check(b.Backend.DeleteNamespace(ctx, ns))
}

func (b *fencingBackend) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	return b.check(b.Backend.Put(ctx, ns, name, data, overwrite))
}

func (b *fencingBackend) Delete(ctx context.Context, ns, name string) error {
	return b.check(b.Backend.Delete(ctx, ns, name))
}

// PutFile stores straight from the file when the backend can, and reads
// it into memory otherwise.
func (b *fencingBackend) PutFile(ctx context.Context, ns, name string, f *os.File, overwrite bool) error {
	if fp, ok := b.Backend.(scos.FilePutter); ok {
		return b.check(fp.PutFile(ctx, ns, name, f, overwrite))
	}
	data, err := readWhole(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return b.Put(ctx, ns, name, data, overwrite)
}

func readWhole(f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return nil, err
	}
	return data, nil
}

// fencedErr is what every operation on a fenced volume returns.
func (v *Volume) fencedErr() error { return fmt.Errorf("%s: %w", v.name(), ErrFenced) }

// fence puts the volume in its terminal fenced state: I/O and control
// operations fail, the uploader stops (every backend write would be
// refused), and Options.OnFenced is called once, from a goroutine, so that
// no lock of the caller (the backend wrapper may run under any) is held.
func (v *Volume) fence(cause error) {
	if !v.fenced.CompareAndSwap(false, true) {
		return
	}
	v.gate.shutDown(v.fencedErr())
	v.stopOnce.Do(func() { close(v.stop) })
	v.log.Error("vdisk fenced: another host owns it now; this host serves no more of its I/O (drop it to set its local state aside)",
		"vdisk", v.name(), "id", v.id, "epoch", v.epoch, "cause", cause)
	go func() {
		v.mu.Lock()
		// Writers held by the throttle and syncs waiting for uploads
		// wake up and fail.
		close(v.progress)
		v.progress = make(chan struct{})
		v.committed.Broadcast()
		v.mu.Unlock()
		if cb := v.drv.opts.OnFenced; cb != nil {
			cb(v.name(), v.id)
		}
	}()
}

// Fence puts vdisk name in the fenced state (see Options.OnFenced, which
// is called for it too): the control plane learnt that another host owns
// it, possibly before any backend write of this host was refused. Unknown
// names are ignored.
func (d *Driver) Fence(name string) {
	d.mu.Lock()
	v, ok := d.vols[name]
	d.mu.Unlock()
	if ok {
		v.fence(errors.New("the control plane reports a new owner"))
	}
}

// Drop stops serving vdisk name without uploading anything and removes it
// from the driver; its local state is set aside in the quarantine (it may
// hold acknowledged writes that never reached the backend, which an
// operator may want to see). It is what becomes of a fenced vdisk, and
// works on any.
func (d *Driver) Drop(name string) error {
	d.mu.Lock()
	v, ok := d.vols[name]
	b, isBroken := d.broken[name]
	switch {
	case ok:
		delete(d.vols, name)
	case isBroken:
		delete(d.broken, name)
	}
	d.mu.Unlock()
	if !ok && !isBroken {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	id := b.cfg.ID
	if ok {
		v.discard()
		id = v.id
	}
	dir := filepath.Join(d.dir, id)
	if _, err := os.Stat(dir); err == nil {
		quarantine(d.log, d.dir, dir, "local state of a vdisk dropped from this host")
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drop %s: %w", name, err)
	}
	d.log.Info("vdisk dropped from this host", "vdisk", name, "id", id)
	return nil
}

// Release hands vdisk name over to another host: new I/O and control
// operations fail with ErrReleased (a router retries them at the new
// owner), those in flight complete, the open TLog is sealed and everything
// (SCOs, TLogs, snapshots.json, deletions of discarded objects) goes to the
// backend; then the volume is closed, removed from the driver and its local
// state deleted. On an error before that (ctx ends, an upload fails), the
// vdisk is served as before and the error returned.
func (d *Driver) Release(ctx context.Context, name string) error {
	start := time.Now()
	v, unlock, err := d.lockVolume(ctx, name)
	if err != nil {
		return fmt.Errorf("release %s: %w", name, err)
	}
	defer unlock()
	// A scrub switches the vdisk to rewritten SCOs and TLogs; it must not
	// do so after the last snapshots.json went up. Waiting for a running
	// one comes first, while I/O still flows: a handover holds I/O only
	// for the last upload.
	if err := lockWithContext(ctx, &v.scrubMu); err != nil {
		return fmt.Errorf("release %s: waiting for a scrub: %w", name, err)
	}
	defer v.scrubMu.Unlock()
	token := v.gate.shutDown(fmt.Errorf("%s: %w", name, ErrReleased))
	resume := func(err error) error {
		v.releasing.Store(false)
		if v.gate.reopen(token) {
			d.log.Warn("release failed; the vdisk is served here again", "vdisk", name, "err", err)
		}
		return fmt.Errorf("release %s: %w", name, err)
	}
	if err := v.gate.wait(ctx); err != nil {
		return resume(err)
	}
	if err := v.uploadAll(ctx); err != nil {
		return resume(err)
	}
	d.mu.Lock()
	if d.vols[name] == v {
		delete(d.vols, name)
	}
	d.mu.Unlock()
	v.discard()
	if err := os.RemoveAll(v.dir); err != nil {
		// Everything is on the backend; the next start here sets it aside.
		d.log.Warn("remove local state of a released vdisk", "vdisk", name, "err", err)
	}
	d.log.Info("vdisk released", "vdisk", name, "id", v.id, "epoch", v.epoch, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// lockWithContext takes mu, giving up when ctx ends. It polls: mu is held
// by scrubs, which take long and are rare, so the polling costs nothing
// worth a second kind of lock.
func lockWithContext(ctx context.Context, mu *sync.Mutex) error {
	for !mu.TryLock() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// uploadAll seals the open TLog and waits until the backend holds
// everything: every sealed TLog and its SCOs, snapshots.json naming them,
// and no discarded object left to delete. The caller shut the I/O gate and
// holds the control lock and scrubMu, so nothing new comes in meanwhile.
func (v *Volume) uploadAll(ctx context.Context) error {
	v.mu.Lock()
	switch {
	case v.fenced.Load():
		v.mu.Unlock()
		return v.fencedErr()
	case v.closed:
		v.mu.Unlock()
		return fmt.Errorf("%s: %w", v.name(), ErrClosed)
	case v.failed != nil:
		v.mu.Unlock()
		return fmt.Errorf("%s: volume failed earlier, restart it: %w", v.name(), v.failed)
	}
	if v.tlog.records > 0 || len(v.tlog.scos) > 0 {
		if err := v.sealTLogLocked(); err != nil {
			err = v.ioErrLocked(err)
			v.mu.Unlock()
			return err
		}
	}
	// No read is in flight (the gate is shut): what scrubs and rollbacks
	// discarded can go at once rather than after GarbageGrace.
	v.releasing.Store(true)
	v.mu.Unlock()
	v.kickUploader()
	for {
		v.mu.Lock()
		done := v.uploadedCount == len(v.state.Sealed) && v.publishedCount >= v.uploadedCount &&
			!v.snapshotsDirty && len(v.state.Garbage) == 0
		ch, closed, lastErr := v.progress, v.closed, v.uploadErr
		v.mu.Unlock()
		switch {
		case v.fenced.Load():
			return v.fencedErr()
		case done:
			return nil
		case closed:
			return fmt.Errorf("%s: %w", v.name(), ErrClosed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%s: upload: %w (last upload error: %v)", v.name(), ctx.Err(), lastErr)
			}
			return fmt.Errorf("%s: upload: %w", v.name(), ctx.Err())
		}
	}
}

// Adopt brings vdisk vd-<id> up on this host from the backend, under owner
// epoch epoch: it was served elsewhere (released there, or taken over).
// Local state of another epoch is not used (see openVolume). It fails with
// ErrExists if the vdisk is served here already.
func (d *Driver) Adopt(ctx context.Context, id string, epoch uint64) (VolumeInfo, error) {
	start := time.Now()
	if !validID(id) {
		return VolumeInfo{}, fmt.Errorf("%w: vdisk id %q", ErrInvalidArgument, id)
	}
	ns := namespacePrefix + id
	b, err := d.backend.Get(ctx, ns, volumeObject)
	if errors.Is(err, scos.ErrObjectNotFound) || errors.Is(err, scos.ErrNamespaceNotFound) {
		return VolumeInfo{}, fmt.Errorf("adopt %s: %w: no vdisk with that id on the backend (%v)", id, ErrNotFound, err)
	}
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("adopt %s: read %s/%s: %w", id, ns, volumeObject, err)
	}
	cfg, err := decodeVolumeConfig(b)
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("adopt %s: %w", id, err)
	}
	if cfg.ID != id {
		return VolumeInfo{}, fmt.Errorf("adopt %s: %s names id %q", id, ns, cfg.ID)
	}
	d.mu.Lock()
	for _, v := range d.vols {
		if v.id == id {
			d.mu.Unlock()
			return VolumeInfo{}, fmt.Errorf("adopt %s: %w: served here as %s", id, ErrExists, v.name())
		}
	}
	// One this host failed to bring up may be tried again.
	prev, wasBroken := d.broken[cfg.Name]
	wasBroken = wasBroken && prev.cfg.ID == id
	if wasBroken {
		delete(d.broken, cfg.Name)
	}
	d.mu.Unlock()
	release, err := d.reserveName(cfg.Name)
	if err != nil {
		return VolumeInfo{}, fmt.Errorf("adopt %s: %w", id, err)
	}
	defer release()
	v, err := d.openVolume(ctx, cfg, epoch)
	if err != nil {
		if wasBroken {
			d.mu.Lock()
			d.broken[cfg.Name] = brokenVolume{cfg: cfg, ns: ns, err: err}
			d.mu.Unlock()
		}
		return VolumeInfo{}, fmt.Errorf("adopt %s (%s): %w", id, cfg.Name, err)
	}
	if err := d.registerVolume(v); err != nil {
		return VolumeInfo{}, err
	}
	d.log.Info("vdisk adopted", "vdisk", cfg.Name, "id", id, "epoch", epoch, "took", time.Since(start).Round(time.Millisecond))
	return v.info(), nil
}

// validID: a namespace id chosen by the control plane is a valid vdisk
// name (it names the local directory too) other than the driver's
// quarantine directory.
func validID(id string) bool { return validName(id) && id != quarantineDir && id != readCacheDir }

// setAsideEarlierTenure deals with local state that must not be used (st
// is nil if state.json is missing or unreadable): if it may hold writes
// the backend does not have, the whole directory goes to the quarantine;
// otherwise restoreFromBackend clears it.
func (d *Driver) setAsideEarlierTenure(v *Volume, st *localState, why string) {
	if holdsUnuploaded(v.dir, st) {
		quarantine(d.log, d.dir, v.dir, why)
	}
}

// holdsUnuploaded: a volume directory may hold writes that never reached
// the backend: a sealed TLog not uploaded, or records in the open TLog
// (any TLog with records if the state is not known).
func holdsUnuploaded(dir string, st *localState) bool {
	if st != nil {
		for _, t := range st.Sealed {
			if !t.Uploaded {
				return true
			}
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, "tlog"))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		return true // cannot tell: keep it
	}
	for _, e := range ents {
		if st != nil && e.Name() != st.OpenTLog {
			continue // uploaded (checked above)
		}
		fi, err := e.Info()
		if err != nil || fi.Size() > tlogHeaderSize {
			return true
		}
	}
	return false
}

// epochFileName is a small file beside state.json holding the owner epoch
// the local state was written under: if state.json is damaged, it tells
// this tenure's local TLogs (replayed: nothing acknowledged is lost) from
// an earlier one's (set aside).
const epochFileName = "epoch"

// readEpochFile returns the epoch recorded in dir, or 0 if none can be read.
func readEpochFile(dir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dir, epochFileName))
	if err != nil {
		return 0
	}
	e, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return e
}
