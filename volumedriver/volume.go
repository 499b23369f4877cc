package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/scos"
)

// Volume is one vdisk served by this host. Writes are appended to the open
// SCO in the local write buffer and recorded in the open TLog and the
// metadata store; sealed SCOs and TLogs go to the backend in the background.
//
// All methods are safe for concurrent use. mu guards the write path and the
// metadata; data reads from SCOs happen outside it.
type Volume struct {
	// vname is the vdisk's name; a rename swaps it while I/O runs.
	vname atomic.Pointer[string]
	id    string // namespace id, fixed at creation
	// epoch: the owner epoch this host serves the vdisk under (own.go).
	epoch   uint64
	drv     *Driver
	dir     string
	ns      string
	backend scos.Backend
	log     *slog.Logger
	// cacheSalt separates this volume's keys in the shared read cache.
	cacheSalt uint64
	// cacheReads: keep what is read from the backend in the read cache
	// (not for backends whose reads are as cheap as a local file's).
	cacheReads bool

	clusterSize int
	scoClusters int
	tlogMult    int

	clients atomic.Int32
	size    atomic.Int64

	// gate admits I/O; Release and fence shut it (own.go).
	gate ioGate
	// fenced: another host owns the vdisk; terminal.
	fenced atomic.Bool
	// releasing: Release waits for the uploads, with no read in flight,
	// so discarded objects may be deleted without their grace period.
	releasing atomic.Bool

	// rmwMu serialises read-modify-write of partial clusters, so two
	// unaligned writes to different bytes of one cluster both land.
	rmwMu sync.Mutex
	// caw serialises CompareAndWrite (caw.go): a channel so that waiting
	// for it honours the caller's context.
	caw chan struct{}

	mu         sync.Mutex
	closed     bool
	failed     error // a write-path I/O error; the volume refuses writes after it
	md         *metadataStore
	seq        uint64 // number of the newest change
	flushedSeq uint64 // every change up to it is in a durable TLog
	state      localState
	scos       map[uint32]*scoFile // SCOs in the local write buffer, by number
	cur        *scoFile            // open SCO; nil until the next write
	unsynced   []*scoFile          // SCOs with data not yet fsynced
	tlog       *openTLog
	nextSCO    uint32

	pendingUpload int64 // bytes of sealed+open data not on the backend
	writeBuffer   int64 // bytes of SCO files in the write buffer
	written       int64
	uploadedCount int // Sealed[:uploadedCount] are on the backend
	// publishedCount: snapshots.json on the backend names Sealed[:publishedCount].
	publishedCount int
	// snapshotsDirty: snapshots.json on the backend is out of date.
	snapshotsDirty bool
	// uploadMu is held while one TLog is uploaded; rollback takes it so
	// the TLog list does not change under an upload. Order: uploadMu, mu.
	uploadMu sync.Mutex
	// uploadCancel cancels the upload in flight, if any; uploadingIdx is
	// the index in state.Sealed of the TLog it uploads.
	uploadCancel context.CancelFunc
	uploadingIdx int
	// draining is closed when the volume is being stopped cleanly: the
	// uploader finishes what is sealed (snapshots.json last) and exits,
	// closing uploaderDone.
	draining     chan struct{}
	drainOnce    sync.Once
	uploaderDone chan struct{}
	progress     chan struct{}
	uploadErr    error

	// ancestors are the backend namespaces of the clone's parent chain:
	// a location with clone id c lives in ancestors[c-1].
	ancestors atomic.Pointer[[]string]
	// chain is the clone's parent chain (the config's Ancestors), readable
	// without mu so that the driver can find clones while a volume is busy.
	chain atomic.Pointer[[]ancestor]
	// ctl is the control lock (see ctl.go): a channel so that waiting for
	// it honours a context.
	ctl chan struct{}
	// protectedTLogs: clones are built on Sealed[:protectedTLogs]; the
	// scrubber leaves the SCOs of those TLogs alone. Set by the driver.
	protectedTLogs int
	// scrubMu: one scrub at a time, and no clone is taken during one.
	scrubMu sync.Mutex
	// lost: SCOs (of this vdisk) gone from the write buffer before they
	// were uploaded; set while the volume is brought up, read-only after.
	lost map[uint32]bool

	// Group commit (see Writes): writes are acknowledged once in the
	// kernel; kernelSeq is the newest change that is.
	kernelSeq uint64
	pending   *commitBatch // captured by a leader, maybe not yet written
	committed *sync.Cond   // on mu: a leader finished a batch
	spareData []byte       // a free SCO gather buffer
	spareRecs []byte       // a free TLog record buffer

	// Garbage accounting (garbage.go), under mu.
	storedBytes  int64  // cluster data in the volume's own SCOs
	garbageBytes int64  // the part of it nothing can read any more
	garbageCut   uint32 // NextSCO of the newest snapshot before the changes being counted
	countChanges bool   // off while a replay redoes changes already counted
	scrubFloor   int64  // garbage the last scrub left

	// dtl: the vdisk's DTL session (dtl.go), under mu.
	dtl dtlLink
	// replaying: a DTL replay is writing (before the volume serves).
	replaying atomic.Bool

	// io: the frontends' I/O statistics (iostats.go).
	io ioCounters

	kick     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// scoFile is an SCO in the local write buffer.
type scoFile struct {
	num     uint32
	version uint8
	// f is open for writing until the SCO is sealed and synced; reads
	// go through the driver's file cache.
	f        *os.File
	clusters int // clusters written, in the file or in buf
	// The open SCO gathers clusters in buf and writes them out in large
	// pieces: one system call per scoBufSize instead of one per cluster.
	// buf always holds the clusters from fileClusters on.
	buf          []byte
	fileClusters int
	sealed       bool
	uploaded     bool
	// readers holds the file open; eviction skips SCOs being read.
	readers atomic.Int32
}

// openTLog is the TLog being written. Records are buffered and written to
// the file at flush (or when the buffer grows), after the SCO data they
// describe.
type openTLog struct {
	name     string
	f        *os.File
	size     int64 // bytes in the file
	buf      []byte
	records  int
	scos     []uint32
	scoBytes int64
	opened   time.Time
}

// name is fixed for the volume's life; it is read without the lock (in
// errors and logs), so it does not come from v.state, which changes.
func (v *Volume) name() string { return *v.vname.Load() }

func (v *Volume) scoName(num uint32) scos.SCOName { return scos.SCOName{Number: num} }

func (v *Volume) scoPath(num uint32) string {
	return filepath.Join(v.dir, "sco", v.scoName(num).String())
}

func (v *Volume) tlogPath(name string) string { return filepath.Join(v.dir, "tlog", name) }

// Size returns the vdisk size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// ClusterSize returns the vdisk's cluster size in bytes.
func (v *Volume) ClusterSize() int { return v.clusterSize }

func (v *Volume) checkRange(off int64, n int64) error {
	if off < 0 || n < 0 || off+n > v.Size() || off+n < off {
		return fmt.Errorf("%s: [%d, +%d) of %d bytes: %w", v.name(), off, n, v.Size(), ErrOutOfRange)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Writes
//
// A write is acknowledged once its data and its TLog record are in the
// kernel (write(2), no fsync): the death of the process then loses nothing
// acknowledged, as with nbdkit's file plugin or tgt. A flush adds fsync, for
// power loss. Concurrent writers share the system calls (group commit):
// each appends to the open SCO's gather buffer and the TLog's record buffer
// under mu, then one of them, the leader, hands everything appended so far
// to the kernel outside mu, one write(2) per file, while the others append
// the next batch.
//
// Errors of the write path leave the volume consistent and are retried by
// the next operation: a write that hit ENOSPC fails, and the volume serves
// again once there is space. Only a failed fsync, after which the kernel
// may have dropped data we can no longer write again, fails the volume.

// commitBatch is what one leader hands to the kernel: the open SCO's
// gathered clusters and the TLog records appended since the last batch.
// Its byte ranges are reserved in both files when it is captured, so later
// writes go to their own ranges; whoever needs the files complete (a drain,
// a flush, a seal) writes a pending batch itself first (settleLocked), and
// the leader's own write of the same bytes is then harmless.
type commitBatch struct {
	seq     uint64   // every change up to seq is in the batch or before it
	sco     *scoFile // nil if the batch has no data
	scoF    *os.File // sco.f when captured (the field changes under mu)
	from    int      // first cluster of data in the SCO
	data    []byte
	tlog    *os.File // nil if the batch has no records
	recOff  int64
	recs    []byte
	writing bool // a leader is writing it outside mu
	done    bool // it is in the kernel
}

func (b *commitBatch) write(clusterSize int) error {
	if len(b.data) > 0 {
		if _, err := b.scoF.WriteAt(b.data, int64(b.from)*int64(clusterSize)); err != nil {
			return fmt.Errorf("write SCO %s: %w", scos.SCOName{Number: b.sco.num, Version: b.sco.version}, err)
		}
	}
	if len(b.recs) > 0 {
		if _, err := b.tlog.WriteAt(b.recs, b.recOff); err != nil {
			return fmt.Errorf("write TLog: %w", err)
		}
	}
	return nil
}

// durabilityError is a failed fsync: what the kernel held may be gone
// (Linux drops the pages of a failed writeback), so the volume cannot go on
// as if it were not.
type durabilityError struct{ err error }

func (e *durabilityError) Error() string { return e.err.Error() }
func (e *durabilityError) Unwrap() error { return e.err }

// WriteAt writes p at byte offset off. With fua the data is durable when it
// returns.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	start := time.Now()
	err := v.gatedWriteAt(ctx, p, off, fua)
	v.io.done(OpWrite, int64(len(p)), start, err)
	return err
}

func (v *Volume) gatedWriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.gate.enter(); err != nil {
		return err
	}
	defer v.gate.exit()
	return v.writeAt(ctx, p, off, fua)
}

// writeAt is WriteAt inside the gate.
func (v *Volume) writeAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	cs := int64(v.clusterSize)
	for len(p) > 0 {
		inCluster := off % cs
		if inCluster != 0 || int64(len(p)) < cs {
			n := min(int64(len(p)), cs-inCluster)
			if err := v.writePartial(ctx, p[:n], off); err != nil {
				return err
			}
			p, off = p[n:], off+n
			continue
		}
		n := int64(len(p)) / cs * cs
		if err := v.writeClusters(ctx, uint64(off/cs), p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	if fua {
		return v.flush(ctx)
	}
	return nil
}

// writePartial does a read-modify-write of one cluster.
func (v *Volume) writePartial(ctx context.Context, p []byte, off int64) error {
	cs := int64(v.clusterSize)
	addr := uint64(off / cs)
	buf := make([]byte, cs)
	v.rmwMu.Lock()
	defer v.rmwMu.Unlock()
	if err := v.readClusters(ctx, addr, buf); err != nil {
		return err
	}
	copy(buf[off%cs:], p)
	return v.writeClusters(ctx, addr, buf)
}

// writeClusters appends whole clusters starting at cluster address addr
// and returns once they are in the kernel.
func (v *Volume) writeClusters(ctx context.Context, addr uint64, data []byte) error {
	cs := v.clusterSize
	n := len(data) / cs
	var one [1]uint32
	crcs := one[:]
	if n > 1 {
		crcs = make([]uint32, n)
	}
	for i := 0; i < n; i++ {
		crcs[i] = crc32c(data[i*cs : (i+1)*cs])
	}
	if err := v.throttle(ctx); err != nil {
		return err
	}
	v.mu.Lock()
	if err := v.writableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	if err := v.appendClustersLocked(addr, data, crcs); err != nil {
		err = v.ioErrLocked(err)
		v.mu.Unlock()
		return err
	}
	return v.commitAndShipLocked(ctx)
}

// commitAndShipLocked returns once every change so far is in the kernel
// and, in DTL sync mode, on the DTL (dtlReceived). It releases mu.
func (v *Volume) commitAndShipLocked(ctx context.Context) error {
	err := v.commitLocked(v.seq)
	s, pos, missed, mode := v.dtl.sess, v.dtl.pos, v.dtl.missed, v.dtl.mode
	v.mu.Unlock()
	if err != nil {
		return err
	}
	return v.dtlReceived(ctx, s, pos, missed, mode)
}

// commitLocked returns once every change up to seq is in the kernel,
// leading a batch or waiting for the leader of one. It releases mu while
// a batch is written.
func (v *Volume) commitLocked(seq uint64) error {
	for v.kernelSeq < seq {
		if v.failed != nil || v.closed || v.fenced.Load() {
			return v.writableLocked()
		}
		b := v.pending
		if b != nil && b.writing {
			v.committed.Wait()
			continue
		}
		if b == nil {
			b = v.captureLocked()
			if b == nil {
				v.kernelSeq = v.seq
				return nil
			}
		}
		// Lead: write b (new, or left by a leader that failed) outside mu.
		b.writing = true
		v.mu.Unlock()
		err := b.write(v.clusterSize)
		v.mu.Lock()
		b.writing = false
		if err == nil {
			b.done = true
		}
		if b.done {
			v.retireLocked(b)
		}
		v.committed.Broadcast()
		if !b.done {
			return v.ioErrLocked(err)
		}
	}
	return nil
}

// captureLocked takes what was appended since the last batch into a new
// pending batch, reserving its ranges in the files. It returns nil if
// nothing is waiting.
func (v *Volume) captureLocked() *commitBatch {
	cs := v.clusterSize
	b := &commitBatch{seq: v.seq}
	if s := v.cur; s != nil && len(s.buf) > 0 {
		b.sco, b.scoF, b.from, b.data = s, s.f, s.fileClusters, s.buf
		s.fileClusters += len(s.buf) / cs
		s.buf = v.gatherBufLocked()
	}
	if t := v.tlog; len(t.buf) > 0 {
		b.tlog, b.recOff, b.recs = t.f, t.size, t.buf
		t.size += int64(len(t.buf))
		v.pendingUpload += int64(len(t.buf))
		t.buf = v.spareRecs[:0]
		v.spareRecs = nil
	}
	if b.sco == nil && b.tlog == nil {
		return nil
	}
	v.pending = b
	return b
}

// gatherBufLocked returns an empty SCO gather buffer: the spare one a
// batch gave back, or a new one.
func (v *Volume) gatherBufLocked() []byte {
	b := v.spareData[:0]
	v.spareData = nil
	if b == nil {
		b = make([]byte, 0, scoBufSize)
	}
	return b
}

// retireLocked forgets a batch that is in the kernel and recycles its
// buffers.
func (v *Volume) retireLocked(b *commitBatch) {
	v.kernelSeq = max(v.kernelSeq, b.seq)
	if b.writing {
		return // its leader retires it when its write returns
	}
	if v.pending == b {
		v.pending = nil
	}
	if cap(b.data) == scoBufSize {
		v.spareData = b.data[:0]
	}
	if b.recs != nil {
		v.spareRecs = b.recs[:0]
	}
	b.data, b.recs = nil, nil
}

// settleLocked writes the pending batch, if any, itself: the files are
// then complete up to the ranges handed out so far.
func (v *Volume) settleLocked() error {
	b := v.pending
	if b == nil || b.done {
		return nil
	}
	if err := b.write(v.clusterSize); err != nil {
		return err
	}
	b.done = true
	v.retireLocked(b)
	return nil
}

// abandonPendingLocked drops the pending batch: a rollback discards what
// it held.
func (v *Volume) abandonPendingLocked() {
	if b := v.pending; b != nil {
		b.done = true
		v.retireLocked(b)
	}
	v.kernelSeq = v.seq
}

// appendClustersLocked appends whole clusters (with their CRCs) to the
// open SCO and records them in the TLog and the metadata store. Every step
// that can fail comes before the volume's state changes for a piece, so a
// failure leaves the volume as it was before that piece.
func (v *Volume) appendClustersLocked(addr uint64, data []byte, crcs []uint32) error {
	cs := v.clusterSize
	n := len(data) / cs
	for i := 0; i < n; {
		sco, err := v.openSCOLocked()
		if err != nil {
			return err
		}
		k := min(v.scoClusters-sco.clusters, n-i)
		a := addr + uint64(i)
		// Load the metadata pages first: loading may evict (and write
		// back) another page, which can fail.
		for no := a / pageEntries; no <= (a+uint64(k)-1)/pageEntries; no++ {
			if _, err := v.md.page(no); err != nil {
				return err
			}
		}
		if err := v.appendSCOLocked(sco, data[i*cs:(i+k)*cs]); err != nil {
			// Forget what of this piece reached the buffer or the file:
			// the SCO holds exactly its first sco.clusters clusters.
			if sco.fileClusters > sco.clusters {
				sco.fileClusters = sco.clusters
			}
			sco.buf = sco.buf[:(sco.clusters-sco.fileClusters)*cs]
			return err
		}
		for j := 0; j < k; j++ {
			v.seq++
			loc := scos.ClusterLocation{SCO: v.scoName(sco.num), Offset: uint16(sco.clusters + j)}.Pack()
			v.tlog.buf = appendRecord(v.tlog.buf, tlogRecord{Type: recWrite, DataCRC: crcs[i+j], Addr: a + uint64(j), Loc: loc})
			v.tlog.records++
			if err := v.md.set(a+uint64(j), mdEntry{loc: loc, crc: crcs[i+j]}, v.seq); err != nil {
				// The page was loaded above; this cannot happen.
				return v.failLocked(err)
			}
		}
		v.dtlWriteLocked(a, crcs[i:i+k], data[i*cs:(i+k)*cs])
		sco.clusters += k
		bytes := int64(k) * int64(cs)
		v.tlog.scoBytes += bytes
		v.pendingUpload += bytes
		v.writeBuffer += bytes
		v.written += bytes
		i += k
		if sco.clusters == v.scoClusters {
			// The clusters are recorded; if sealing fails, the next
			// write retries it (openSCOLocked).
			if err := v.sealSCOLocked(); err != nil {
				return err
			}
		}
	}
	if len(v.tlog.buf) >= 64<<10 {
		return v.writeTLogBufLocked()
	}
	return nil
}

// scoBufSize is how much of the open SCO is gathered in memory before it
// is written to the file.
const scoBufSize = 256 << 10

// appendSCOLocked appends whole clusters to the open SCO, past its
// sco.clusters recorded ones. On error the caller trims what was added.
func (v *Volume) appendSCOLocked(sco *scoFile, data []byte) error {
	cs := v.clusterSize
	if len(sco.buf) == 0 && len(data) >= scoBufSize {
		if err := v.settleLocked(); err != nil {
			return err
		}
		if _, err := sco.f.WriteAt(data, int64(sco.fileClusters)*int64(cs)); err != nil {
			return fmt.Errorf("write SCO %s: %w", v.scoName(sco.num), err)
		}
		sco.fileClusters += len(data) / cs
		return nil
	}
	for len(data) > 0 {
		if sco.buf == nil {
			sco.buf = v.gatherBufLocked()
		}
		n := min(cap(sco.buf)-len(sco.buf), len(data))
		sco.buf = append(sco.buf, data[:n]...)
		data = data[n:]
		if len(sco.buf) == cap(sco.buf) {
			if err := v.drainSCOLocked(sco); err != nil {
				return err
			}
		}
	}
	return nil
}

// drainSCOLocked writes the buffered tail of an SCO to its file.
func (v *Volume) drainSCOLocked(sco *scoFile) error {
	if err := v.settleLocked(); err != nil {
		return err
	}
	if sco == nil || len(sco.buf) == 0 {
		return nil
	}
	cs := v.clusterSize
	if _, err := sco.f.WriteAt(sco.buf, int64(sco.fileClusters)*int64(cs)); err != nil {
		return fmt.Errorf("write SCO %s: %w", v.scoName(sco.num), err)
	}
	sco.fileClusters += len(sco.buf) / cs
	sco.buf = sco.buf[:0]
	return nil
}

func (v *Volume) writableLocked() error {
	if v.fenced.Load() {
		return v.fencedErr()
	}
	if v.closed {
		return fmt.Errorf("%s: %w", v.name(), ErrClosed)
	}
	if v.state.Config.Template {
		return fmt.Errorf("%s: %w", v.name(), ErrReadOnly)
	}
	if v.failed != nil {
		return fmt.Errorf("%s: volume failed earlier, restart it: %w", v.name(), v.failed)
	}
	return nil
}

// failLocked records an error after which the volume cannot promise what
// it holds (a failed fsync, a multi-step change cut short): it stops
// taking writes rather than acknowledge ones it may lose. Reads go on; a
// restart recovers from what is on disk and on the backend.
func (v *Volume) failLocked(err error) error {
	if v.failed == nil {
		v.failed = err
		v.log.Error("volume failed, refusing writes until restarted", "vdisk", v.name(), "err", err)
	}
	return fmt.Errorf("%s: %w", v.name(), err)
}

// ioErrLocked handles an error of the write path: a failed fsync fails
// the volume; anything else (ENOSPC, EMFILE, ...) fails only this
// operation, and the volume serves again once the cause is gone.
func (v *Volume) ioErrLocked(err error) error {
	var de *durabilityError
	if errors.As(err, &de) {
		return v.failLocked(err)
	}
	if v.failed == nil {
		v.log.Warn("write path error; the operation fails, the vdisk stays consistent and retries",
			"vdisk", v.name(), "err", err)
	}
	return fmt.Errorf("%s: %w", v.name(), err)
}

// throttle blocks while too much written data waits for the backend: the
// write buffer is bounded, and writes are slowed down, never failed.
func (v *Volume) throttle(ctx context.Context) error {
	limit := v.drv.opts.MaxPendingUploadBytes
	for {
		v.mu.Lock()
		if v.pendingUpload < limit || v.closed || v.fenced.Load() {
			v.mu.Unlock()
			return nil
		}
		ch := v.progress
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// openSCOLocked returns the open SCO, creating the next one if needed. It
// first finishes a seal that failed earlier.
func (v *Volume) openSCOLocked() (*scoFile, error) {
	if v.cur != nil && v.cur.clusters == v.scoClusters {
		if err := v.sealSCOLocked(); err != nil {
			return nil, err
		}
	}
	if v.cur != nil {
		return v.cur, nil
	}
	if len(v.tlog.scos) >= v.tlogMult {
		if err := v.sealTLogLocked(); err != nil {
			return nil, err
		}
	}
	num := v.nextSCO
	if num == 0 || num == ^uint32(0) {
		return nil, v.failLocked(fmt.Errorf("SCO numbers exhausted"))
	}
	f, err := os.OpenFile(v.scoPath(num), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create SCO: %w", err)
	}
	v.nextSCO++
	s := &scoFile{num: num, f: f}
	v.scos[num] = s
	v.cur = s
	v.unsynced = append(v.unsynced, s)
	v.tlog.scos = append(v.tlog.scos, num)
	return s, nil
}

// sealSCOLocked closes the open SCO for writing; when the TLog holds its
// share of SCOs, the TLog is sealed too.
func (v *Volume) sealSCOLocked() error {
	if v.cur == nil {
		return nil
	}
	if err := v.drainSCOLocked(v.cur); err != nil {
		return err
	}
	v.sealCurLocked()
	if len(v.tlog.scos) >= v.tlogMult {
		return v.sealTLogLocked()
	}
	return nil
}

// sealCurLocked ends writing to the open SCO, whose data is all in the
// file (drained, no batch pending): its descriptor is closed, the next
// flush syncs it through a new one.
func (v *Volume) sealCurLocked() {
	s := v.cur
	s.sealed = true
	v.spareData, s.buf = s.buf[:0], nil
	if err := s.f.Close(); err != nil {
		v.log.Warn("close SCO", "vdisk", v.name(), "sco", v.scoName(s.num).String(), "err", err)
	}
	s.f = nil
	v.cur = nil
}

// writeTLogBufLocked hands every buffered SCO cluster and TLog record to
// the kernel (no fsync): after that a crash of the process loses nothing.
func (v *Volume) writeTLogBufLocked() error {
	// The records describe SCO data, which goes to the kernel first:
	// write(2) order is all a process crash needs; fsync order is
	// handled by flush.
	if err := v.drainSCOLocked(v.cur); err != nil {
		return err
	}
	if len(v.tlog.buf) > 0 {
		if _, err := v.tlog.f.WriteAt(v.tlog.buf, v.tlog.size); err != nil {
			return fmt.Errorf("write TLog %s: %w", v.tlog.name, err)
		}
		v.tlog.size += int64(len(v.tlog.buf))
		v.pendingUpload += int64(len(v.tlog.buf))
		v.tlog.buf = v.tlog.buf[:0]
	}
	v.kernelSeq = v.seq
	return nil
}

// Flush makes every write completed before the call durable.
func (v *Volume) Flush(ctx context.Context) error {
	start := time.Now()
	err := v.gatedFlush(ctx)
	v.io.done(OpFlush, 0, start, err)
	return err
}

func (v *Volume) gatedFlush(ctx context.Context) error {
	if err := v.gate.enter(); err != nil {
		return err
	}
	defer v.gate.exit()
	return v.flush(ctx)
}

// flush makes every change so far durable here, then (dtlFlush) on the
// DTL as its mode asks.
func (v *Volume) flush(ctx context.Context) error {
	v.mu.Lock()
	if err := v.writableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	if err := v.flushLocked(); err != nil {
		err = v.ioErrLocked(err)
		v.mu.Unlock()
		return err
	}
	s, pos, missed, mode := v.dtl.sess, v.dtl.pos, v.dtl.missed, v.dtl.mode
	v.mu.Unlock()
	return v.dtlFlush(ctx, s, pos, missed, mode)
}

// flushLocked: fdatasync the SCOs, then append a sync record and make the
// TLog durable. A TLog record therefore never reaches the disk before the
// data it points to. Sealed SCOs are closed once synced: the write buffer
// keeps no file descriptor per SCO (reads go through the driver's bounded
// file cache).
func (v *Volume) flushLocked() error {
	if v.flushedSeq == v.seq && len(v.tlog.buf) == 0 && v.pending == nil {
		return nil
	}
	if err := v.drainSCOLocked(v.cur); err != nil {
		return err
	}
	for len(v.unsynced) > 0 {
		if err := v.syncSCOLocked(v.unsynced[0]); err != nil {
			return err
		}
		v.unsynced = v.unsynced[1:]
	}
	v.unsynced = v.unsynced[:0]
	if v.cur != nil {
		v.unsynced = append(v.unsynced, v.cur)
	}
	n0 := len(v.tlog.buf)
	v.tlog.buf = appendRecord(v.tlog.buf, tlogRecord{Type: recSync})
	v.tlog.records++
	if err := v.writeTLogBufLocked(); err != nil {
		// Not written: take the sync record back, it would vouch for
		// records that a later write(2) alone puts in the file.
		v.tlog.buf = v.tlog.buf[:n0]
		v.tlog.records--
		return err
	}
	if err := syscall.Fdatasync(int(v.tlog.f.Fd())); err != nil {
		return &durabilityError{fmt.Errorf("sync TLog %s: %w", v.tlog.name, err)}
	}
	v.flushedSeq = v.seq
	return nil
}

// syncSCOLocked makes an SCO's data durable. A sealed SCO has no open
// file any more (a busy write buffer would hold hundreds): it is opened
// for the fdatasync, which covers every write to the file whatever
// descriptor made it, and reports a writeback error not reported before.
func (v *Volume) syncSCOLocked(s *scoFile) error {
	f := s.f
	if f == nil {
		var err error
		if f, err = os.OpenFile(v.scoPath(s.num), os.O_WRONLY, 0); err != nil {
			return fmt.Errorf("sync SCO %s: %w", v.scoName(s.num), err)
		}
		defer f.Close()
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		return &durabilityError{fmt.Errorf("sync SCO %s: %w", v.scoName(s.num), err)}
	}
	return nil
}

// beforeWriteBack is the metadata store's hook: a page may only go to disk
// once the TLog records of its changes are durable.
func (v *Volume) beforeWriteBack(seq uint64) error {
	if seq <= v.flushedSeq {
		return nil
	}
	return v.flushLocked()
}

// sealTLogLocked flushes and closes the open TLog (and the open SCO),
// queues it for upload and opens a new one. It fails without a change: the
// new TLog is made and named in state.json before the old one is let go.
func (v *Volume) sealTLogLocked() error {
	if v.cur != nil {
		if err := v.drainSCOLocked(v.cur); err != nil {
			return err
		}
		v.sealCurLocked()
	}
	if v.tlog.records == 0 && len(v.tlog.scos) == 0 {
		return nil
	}
	if err := v.flushLocked(); err != nil {
		return err
	}
	sealed := sealedTLog{
		Name:         v.tlog.name,
		SCOs:         v.tlog.scos,
		PendingBytes: v.tlog.scoBytes + v.tlog.size - tlogHeaderSize,
		StoredBytes:  v.storedBytes,
		GarbageBytes: v.garbageBytes,
	}
	next := v.state
	next.Sealed = append(v.state.Sealed[:len(v.state.Sealed):len(v.state.Sealed)], sealed)
	old := v.tlog
	if err := v.startTLogLocked(&next); err != nil {
		return err
	}
	if err := old.f.Close(); err != nil {
		// Synced above: nothing is lost.
		v.log.Warn("close TLog", "vdisk", v.name(), "tlog", old.name, "err", err)
	}
	if len(v.state.Sealed)-v.state.Checkpoint >= 8 {
		if err := v.checkpointLocked(); err != nil {
			var de *durabilityError
			if errors.As(err, &de) {
				return err
			}
			// The next seal tries again; until then a restart replays
			// a few more TLogs.
			v.log.Warn("checkpoint failed; retrying at the next TLog", "vdisk", v.name(), "err", err)
		}
	}
	v.kickUploader()
	return nil
}

// startTLogLocked makes next the volume's state with a new, empty open
// TLog: the file is created first and then named in state.json, so that a
// restart knows which file was being written. On error nothing changed.
func (v *Volume) startTLogLocked(next *localState) error {
	name := newTLogName()
	path := v.tlogPath(name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create TLog: %w", err)
	}
	if _, err := f.Write(tlogHeader()); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("create TLog: %w", err)
	}
	next.OpenTLog = name
	next.OpenFirstSCO = v.nextSCO
	next.OpenTLogBytes = 0
	next.WrittenBytes = v.written
	if err := writeLocalState(v.dir, next); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	v.state = *next
	v.tlog = &openTLog{name: name, f: f, size: tlogHeaderSize, opened: time.Now()}
	v.dtlBeginLocked()
	return nil
}

// checkpointLocked makes the metadata store file durable and moves the
// replay starting point past every sealed TLog; local TLog files that are
// uploaded and behind the checkpoint are then removed.
func (v *Volume) checkpointLocked() error {
	if err := v.flushLocked(); err != nil {
		return err
	}
	sum, err := v.md.checkpoint()
	if err != nil {
		return err
	}
	next := v.state
	next.Checkpoint = len(v.state.Sealed)
	next.WrittenBytes = v.written
	next.MD = &sum
	next.OpenTLogBytes = v.tlog.size
	next.StoredBytes, next.GarbageBytes = v.storedBytes, v.garbageBytes
	if err := writeLocalState(v.dir, &next); err != nil {
		return err
	}
	v.state = next
	v.md.committed()
	v.removeOldTLogsLocked()
	return nil
}

func (v *Volume) removeOldTLogsLocked() {
	for i := 0; i < v.state.Checkpoint && i < v.uploadedCount; i++ {
		err := os.Remove(v.tlogPath(v.state.Sealed[i].Name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			v.log.Warn("remove local TLog", "vdisk", v.name(), "tlog", v.state.Sealed[i].Name, "err", err)
		}
	}
}

// Trim discards [off, off+length): it reads as zeros afterwards.
func (v *Volume) Trim(ctx context.Context, off, length int64) error {
	start := time.Now()
	err := v.gatedZero(ctx, off, length, false, false)
	v.io.done(OpTrim, length, start, err)
	return err
}

// WriteZeroes makes [off, off+length) read as zeros; with noHole the range
// stays allocated (zero clusters are written).
func (v *Volume) WriteZeroes(ctx context.Context, off, length int64, noHole, fua bool) error {
	start := time.Now()
	err := v.gatedZero(ctx, off, length, noHole, fua)
	v.io.done(OpTrim, length, start, err)
	return err
}

func (v *Volume) gatedZero(ctx context.Context, off, length int64, noHole, fua bool) error {
	if err := v.gate.enter(); err != nil {
		return err
	}
	defer v.gate.exit()
	if err := v.zero(ctx, off, length, noHole); err != nil {
		return err
	}
	if fua {
		return v.flush(ctx)
	}
	return nil
}

func (v *Volume) zero(ctx context.Context, off, length int64, noHole bool) error {
	if err := v.checkRange(off, length); err != nil {
		return err
	}
	cs := int64(v.clusterSize)
	end := off + length
	// Partial clusters at either end are zeroed by read-modify-write.
	if head := off % cs; head != 0 {
		n := min(cs-head, length)
		if err := v.writePartial(ctx, make([]byte, n), off); err != nil {
			return err
		}
		off += n
	}
	if off >= end {
		return nil
	}
	if tail := end % cs; tail != 0 && end-tail >= off {
		if err := v.writePartial(ctx, make([]byte, tail), end-tail); err != nil {
			return err
		}
		end -= tail
	}
	if off >= end {
		return nil
	}
	if noHole {
		zeros := make([]byte, min(end-off, 1<<20))
		for off < end {
			n := min(int64(len(zeros)), end-off)
			if err := v.writeClusters(ctx, uint64(off/cs), zeros[:n]); err != nil {
				return err
			}
			off += n
		}
		return nil
	}
	v.mu.Lock()
	if err := v.writableLocked(); err != nil {
		v.mu.Unlock()
		return err
	}
	addr, count := uint64(off/cs), uint64((end-off)/cs)
	// Load the pages that hold mappings first, so that the trim cannot
	// fail halfway once its record is in the TLog buffer.
	for no := addr / pageEntries; no*pageEntries < addr+count; no++ {
		next, ok := v.md.allocated.nextSet(no)
		if !ok || next*pageEntries >= addr+count {
			break
		}
		no = next
		if _, err := v.md.page(no); err != nil {
			err = v.ioErrLocked(err)
			v.mu.Unlock()
			return err
		}
	}
	v.seq++
	v.tlog.buf = appendRecord(v.tlog.buf, tlogRecord{Type: recTrim, Addr: addr, Count: count})
	v.tlog.records++
	v.dtlTrimLocked(addr, count)
	if err := v.md.trim(addr, count, v.seq); err != nil {
		err = v.failLocked(err)
		v.mu.Unlock()
		return err
	}
	return v.commitAndShipLocked(ctx)
}

// ---------------------------------------------------------------------------
// Reads

// ReadAt fills p from byte offset off.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	start := time.Now()
	err := v.gatedReadAt(ctx, p, off)
	v.io.done(OpRead, int64(len(p)), start, err)
	return err
}

func (v *Volume) gatedReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.gate.enter(); err != nil {
		return err
	}
	defer v.gate.exit()
	return v.readAt(ctx, p, off)
}

// readAt is ReadAt inside the gate.
func (v *Volume) readAt(ctx context.Context, p []byte, off int64) error {
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	cs := int64(v.clusterSize)
	if off%cs == 0 && int64(len(p))%cs == 0 {
		return v.readClusters(ctx, uint64(off/cs), p)
	}
	first := off / cs
	last := (off + int64(len(p)) - 1) / cs
	buf := make([]byte, (last-first+1)*cs)
	if err := v.readClusters(ctx, uint64(first), buf); err != nil {
		return err
	}
	copy(p, buf[off-first*cs:])
	return nil
}

// lookup is a cluster's location resolved under the lock.
type lookup struct {
	e   mdEntry
	sco *scoFile // local SCO holding it, with a reader reference; nil if not local
	// done: the cluster was copied out of the open SCO's buffer under the lock.
	done bool
}

// readClusters fills buf (whole clusters) from cluster address addr.
//
// A location resolved before a scrub or a rollback moved the cluster may
// name an object that is deleted (GarbageGrace later) before a slow read
// gets to it: the read then starts over from the metadata, which names
// where the cluster is now.
func (v *Volume) readClusters(ctx context.Context, addr uint64, buf []byte) error {
	const attempts = 3
	var err error
	for range attempts {
		err = v.readClustersOnce(ctx, addr, buf)
		if err == nil || !errors.Is(err, scos.ErrObjectNotFound) || ctx.Err() != nil {
			return err
		}
		v.log.Info("object gone during a read (moved by a scrub?); reading the cluster's current location",
			"vdisk", v.name(), "err", err)
	}
	return err
}

func (v *Volume) readClustersOnce(ctx context.Context, addr uint64, buf []byte) error {
	cs := v.clusterSize
	n := len(buf) / cs
	var small [4]lookup
	ls := small[:0]
	if n > len(small) {
		ls = make([]lookup, 0, n)
	}
	v.mu.Lock()
	if v.fenced.Load() {
		// Another host may have written the vdisk since: what this
		// one holds may be stale.
		v.mu.Unlock()
		return v.fencedErr()
	}
	if v.closed {
		v.mu.Unlock()
		return fmt.Errorf("%s: %w", v.name(), ErrClosed)
	}
	for i := 0; i < n; i++ {
		e, err := v.md.get(addr + uint64(i))
		if err != nil {
			v.mu.Unlock()
			v.releaseLookups(ls)
			return fmt.Errorf("%s: %w", v.name(), err)
		}
		l := lookup{e: e}
		if e.loc != 0 {
			loc := scos.UnpackLocation(e.loc)
			if s, ok := v.scos[loc.SCO.Number]; ok && loc.SCO.CloneID == 0 && loc.SCO.Version == s.version {
				o := int(loc.Offset)
				if b := v.pending; b != nil && b.sco == s && o >= b.from && o < b.from+len(b.data)/cs {
					// Being handed to the kernel by a leader.
					o -= b.from
					copy(buf[i*cs:(i+1)*cs], b.data[o*cs:(o+1)*cs])
					l.done = true
				} else if o >= s.fileClusters && o < s.fileClusters+len(s.buf)/cs {
					o -= s.fileClusters
					copy(buf[i*cs:(i+1)*cs], s.buf[o*cs:(o+1)*cs])
					l.done = true
				} else {
					s.readers.Add(1)
					l.sco = s
				}
			}
		}
		ls = append(ls, l)
	}
	v.mu.Unlock()
	defer v.releaseLookups(ls)

	for i := 0; i < n; {
		l := ls[i]
		out := buf[i*cs : (i+1)*cs]
		if l.done {
			i++
			continue
		}
		if l.e.loc == 0 {
			clear(out)
			i++
			continue
		}
		// Coalesce a run of clusters that sit next to each other in
		// the same local SCO, or the same backend object (bounded), into
		// one read.
		j := i + 1
		if l.sco != nil {
			for j < n && ls[j].sco == l.sco && ls[j].e.loc == ls[j-1].e.loc+1 {
				j++
			}
		} else {
			j = i + backendRunLen(ls[i:min(n, i+v.maxRunClusters())])
		}
		if err := v.readRun(ctx, ls[i:j], buf[i*cs:j*cs]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// readLocalSCO reads from an SCO file in the write buffer, through the
// driver's bounded cache of open files.
func (v *Volume) readLocalSCO(s *scoFile, p []byte, off int64) error {
	f, err := v.drv.files.Acquire(v.scoPath(s.num))
	if err != nil {
		return err
	}
	defer v.drv.files.Release(f)
	_, err = f.ReadAt(p, off)
	return err
}

// dropSCOFileLocked closes an SCO that leaves the write buffer and forgets
// its cached read handle; the caller removes the file.
func (v *Volume) dropSCOFileLocked(s *scoFile) {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	v.drv.files.Invalidate(v.scoPath(s.num))
}

func (v *Volume) releaseLookups(ls []lookup) {
	for _, l := range ls {
		if l.sco != nil {
			l.sco.readers.Add(-1)
		}
	}
}

// ---------------------------------------------------------------------------
// Allocation

// Extent is a run of bytes that is all mapped (holds written data) or all
// unmapped (never written or trimmed: reads as zeros).
type Extent struct {
	Length int64
	Mapped bool
}

// Extents describes allocation from byte offset off for up to length bytes
// (at most maxExtents extents; the last may end before off+length).
func (v *Volume) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if err := v.gate.enter(); err != nil {
		return nil, err
	}
	defer v.gate.exit()
	if err := v.checkRange(off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	cs := int64(v.clusterSize)
	first := off / cs
	last := (off + length - 1) / cs
	v.mu.Lock()
	runs, err := v.md.runs(uint64(first), uint64(last-first+1), 1024)
	v.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", v.name(), err)
	}
	out := make([]Extent, 0, len(runs))
	pos := off
	clusterPos := first * cs
	for _, r := range runs {
		runEnd := min(clusterPos+int64(r.count)*cs, off+length)
		clusterPos += int64(r.count) * cs
		if runEnd <= pos {
			continue
		}
		out = append(out, Extent{Length: runEnd - pos, Mapped: r.mapped})
		pos = runEnd
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Info

func (v *Volume) info() VolumeInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	c := v.state.Config
	info := VolumeInfo{
		Name:               c.Name,
		ID:                 c.ID,
		Size:               v.Size(),
		ClusterSize:        c.ClusterSize,
		SCOSize:            int64(c.ClusterSize) * int64(c.SCOMultiplier),
		CreatedAt:          c.CreatedAt,
		Clients:            int(v.clients.Load()),
		WrittenBytes:       v.written,
		PendingUploadBytes: v.pendingUpload + int64(len(v.tlog.buf)),
		WriteBufferBytes:   v.writeBuffer,
		State:              "ok",
		Epoch:              v.epoch,
		Template:           c.Template,
		Snapshots:          len(v.state.Snapshots),
		StoredBytes:        v.storedBytes,
		GarbageBytes:       v.garbageBytes,
		DTLMode:            string(v.dtl.mode),
		DTLState:           v.dtlStateLocked(),
		DTLNode:            v.dtl.node,
	}
	if v.dtl.sess == nil {
		info.DTLNode = ""
	}
	if len(c.Ancestors) > 0 {
		info.Parent = c.Ancestors[0].Name + "@" + c.Ancestors[0].Snapshot
	}
	switch {
	case v.fenced.Load():
		info.State = "fenced"
	case v.gate.err() != nil:
		info.State = "releasing"
	case v.failed != nil:
		info.State = "failed: " + v.failed.Error()
	case v.md.broken != nil:
		info.State = "failed: " + v.md.broken.Error()
	case len(v.state.Lost) > 0:
		names := make([]string, len(v.state.Lost))
		for i, n := range v.state.Lost {
			names[i] = v.scoName(n).String()
		}
		info.State = fmt.Sprintf("degraded: lost clusters in SCO %s (gone from the write buffer before reaching the backend; they read as I/O errors)",
			strings.Join(names, ", "))
	}
	return info
}
