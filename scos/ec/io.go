package ec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/reedsolomon"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
	"github.com/ovs-storage/ovs/scos/internal/fsutil"
)

// ErrObjectUnavailable: fewer than k fragments of the object can be read
// right now (their ASDs are down or their copies damaged). Nothing is
// changed; the object reads again once enough ASDs are back.
var ErrObjectUnavailable = errors.New("object unavailable")

// errFragmentPending marks a fragment write that had not finished when the
// put was acknowledged (policies with c < k+m).
var errFragmentPending = errors.New("fragment write still running")

// --- manifests -----------------------------------------------------------------

// manifest returns the decoded manifest of ns/name and its raw bytes.
func (b *Backend) manifest(ctx context.Context, ns, name string) (*Manifest, []byte, error) {
	if !scos.ValidName(name) {
		return nil, nil, fmt.Errorf("%w: object %q", scos.ErrInvalidName, name)
	}
	if _, err := b.liveNamespace(ctx, ns); err != nil {
		return nil, nil, err
	}
	return b.loadManifest(ctx, ns, name)
}

func (b *Backend) loadManifest(ctx context.Context, ns, name string) (*Manifest, []byte, error) {
	return b.loadManifestFrom(ctx, b.kv, ns, name)
}

// loadManifestFrom reads the manifest from kv: b.direct for maintenance,
// which must not judge fragments by a cached manifest that another node
// may have changed.
func (b *Backend) loadManifestFrom(ctx context.Context, kv KVStore, ns, name string) (*Manifest, []byte, error) {
	raw, err := kv.Get(ctx, objKey(ns, name))
	if errors.Is(err, ErrKeyNotFound) {
		return nil, nil, fmt.Errorf("%w: %s/%s", scos.ErrObjectNotFound, ns, name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s/%s: %w", ns, name, err)
	}
	m, err := DecodeManifest(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s/%s: %w", ns, name, err)
	}
	return m, raw, nil
}

// ObjectManifest returns the manifest of an object: its policy and where
// each fragment lives (for tools and tests).
func (b *Backend) ObjectManifest(ctx context.Context, ns, name string) (*Manifest, error) {
	m, _, err := b.manifest(ctx, ns, name)
	return m, err
}

// --- put -------------------------------------------------------------------------

func (b *Backend) Put(ctx context.Context, ns, name string, data []byte, overwrite bool) error {
	// A full slice expression: encoding must not use the spare capacity
	// of the caller's buffer.
	return b.put(ctx, ns, name, data[:len(data):len(data)], overwrite, nil)
}

// PutFile stores the object held in f (scos.FilePutter: a sealed SCO). The
// file is read into a pooled buffer with room for the parity shards after
// the data, so encoding allocates nothing; the buffer is recycled once no
// fragment write reads it any more (a put may return while its slowest
// fragments are still being written). Allocating and zeroing 10 MiB per
// 4 MiB SCO was a tenth of the node's CPU on sequential writes.
func (b *Backend) PutFile(ctx context.Context, ns, name string, f *os.File, overwrite bool) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", ns, name, err)
	}
	size := fi.Size()
	if size > maxObjectSize {
		return fmt.Errorf("put %s/%s: object of %d bytes: at most %d allowed", ns, name, size, maxObjectSize)
	}
	room := size
	if nsr, err := b.liveNamespace(ctx, ns); err == nil {
		if p, err := b.preset(ctx, nsr.Preset); err == nil {
			room = max(room, shardsLen(p.Policies[0], size))
		}
	}
	buf := b.objBufs.get(int(room))
	data := buf[:size]
	if _, err := f.ReadAt(data, 0); err != nil {
		b.objBufs.put(buf)
		return fmt.Errorf("put %s/%s: read %s: %w", ns, name, f.Name(), err)
	}
	var inflight sync.WaitGroup
	err = b.put(ctx, ns, name, data, overwrite, &inflight)
	go func() {
		inflight.Wait()
		b.objBufs.put(buf)
	}()
	return err
}

// objectBufs is a short free list of the buffers PutFile reads objects
// into, each as large as asked (no power-of-two rounding). Not a
// sync.Pool: its buffers stayed alive in numbers (74 MiB of them in the
// memory bench, nine 8 MiB buffers), which took ovs up past its RSS
// budget; a buffer beyond the list's few is left to the GC.
type objectBufs struct{ free chan []byte }

// objectBufsKept is the volume driver's uploads in flight (its default
// UploadConcurrency): with fewer kept, three puts in four allocated their
// 6 MiB afresh, and zeroing it and faulting its pages in was a ninth of
// the node's CPU on 1 MiB sequential writes (perf); more would only be
// idle memory.
const objectBufsKept = 4

func newObjectBufs(n int) objectBufs { return objectBufs{free: make(chan []byte, n)} }

// get returns a buffer of length n; its contents are undefined.
func (p objectBufs) get(n int) []byte {
	select {
	case b := <-p.free:
		if cap(b) >= n {
			return b[:n]
		}
	default:
	}
	return make([]byte, n)
}

// put keeps b for a later get if the list has room.
func (p objectBufs) put(b []byte) {
	select {
	case p.free <- b[:cap(b)]:
	default:
	}
}

// shardsLen is how many bytes the k+m shards of an object of size bytes
// take (reedsolomon.Split: shards of ceil(size/k) rounded up to 64 bytes).
func shardsLen(pol Policy, size int64) int64 {
	per := (size + int64(pol.K) - 1) / int64(pol.K)
	per = (per + 63) &^ 63
	return per * int64(pol.K+pol.M)
}

// put stores data; encoding may use its spare capacity. Fragment writes
// that outlive the call are counted in inflight, if not nil.
func (b *Backend) put(ctx context.Context, ns, name string, data []byte, overwrite bool, inflight *sync.WaitGroup) error {
	if !scos.ValidName(name) {
		return fmt.Errorf("%w: object %q", scos.ErrInvalidName, name)
	}
	f, lost := b.fence(ns) // taken now: this put commits under it or not at all
	if lost {
		return fmt.Errorf("put %s/%s: %w", ns, name, scos.ErrFenced)
	}
	nsr, err := b.liveNamespace(ctx, ns)
	if err != nil {
		return err
	}
	key := objKey(ns, name)
	// The manifest this put replaces: an overwrite that the cache cannot
	// answer goes ahead as if the object were new, and the test-and-set
	// below catches it if not. Most overwriting puts are of new names
	// (SCOs, TLogs), and the lookup was a round trip to arakoon for each,
	// 15% of an SCO upload's time.
	old, known := b.cache.peek(key)
	if !known && !overwrite {
		var err error
		if old, err = b.kv.Get(ctx, key); errors.Is(err, ErrKeyNotFound) {
			old = nil
		} else if err != nil {
			return fmt.Errorf("put %s/%s: %w", ns, name, err)
		}
	}
	if old != nil && !overwrite {
		return fmt.Errorf("%w: %s/%s", scos.ErrObjectExists, ns, name)
	}
	preset, err := b.preset(ctx, nsr.Preset)
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", ns, name, err)
	}
	m, pidx, degraded, err := b.writeObject(ctx, ns+"/"+name, data, preset, inflight)
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", ns, name, err)
	}
	raw := m.Encode()
	for {
		err = b.testAndSet(ctx, f, key, old, raw)
		if err == nil {
			break
		}
		if errors.Is(err, ErrKVConflict) && overwrite {
			if old, err = b.kv.Get(ctx, key); errors.Is(err, ErrKeyNotFound) {
				old, err = nil, nil
			}
		}
		if err != nil {
			b.discard(context.WithoutCancel(ctx), ns, name, m, nil)
			if errors.Is(err, ErrKVConflict) {
				return fmt.Errorf("%w: %s/%s (stored concurrently)", scos.ErrObjectExists, ns, name)
			}
			return fmt.Errorf("put %s/%s: %w", ns, name, err)
		}
	}
	b.stats.puts.Add(1)
	if old != nil {
		if om, err := DecodeManifest(old); err == nil {
			b.discard(context.WithoutCancel(ctx), ns, name, om, nil)
		}
	}
	switch {
	case pidx > 0:
		b.stats.putFallbacks.Add(1)
		b.markDegraded(ctx, ns, name, fmt.Sprintf("stored with fallback policy %s", m.Policy))
	case degraded:
		b.markDegraded(ctx, ns, name, "acknowledged before every fragment was stored")
	}
	return nil
}

// writeObject encodes data and stores its fragments with the first policy
// of the preset that can be placed, falling back to the next ones when ASDs
// are down, full or fail. It returns the manifest (not yet stored), the
// index of the policy used, and whether some fragment is not (yet) stored.
func (b *Backend) writeObject(ctx context.Context, tag string, data []byte, preset Preset, inflight *sync.WaitGroup) (*Manifest, int, bool, error) {
	if len(data) > maxObjectSize {
		return nil, 0, false, fmt.Errorf("object of %d bytes: at most %d allowed", len(data), maxObjectSize)
	}
	m := &Manifest{
		Size: int64(len(data)), Preset: preset.Name,
		Created: time.Now().UnixNano(), Policy: preset.Policies[0],
	}
	if len(data) == 0 {
		rand.Read(m.ObjectID[:])
		return m, 0, false, nil
	}
	excluded := map[string]error{}
	var shards [][]byte
	var shardCRCs []uint32
	var shardPol Policy
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, 0, false, err
		}
		rand.Read(m.ObjectID[:])
		pidx, pol, targets, err := b.place(preset, m.ObjectID[:], m.Size, excluded)
		if err != nil {
			return nil, 0, false, b.explainPlacement(err, excluded)
		}
		if shards == nil || shardPol.K != pol.K || shardPol.M != pol.M {
			if shards, err = b.encode(pol, data); err != nil {
				return nil, 0, false, err
			}
			shardPol = pol
			shardCRCs = make([]uint32, len(shards))
			for i, s := range shards {
				shardCRCs[i] = crc32c.Checksum(s)
			}
			m.CRC32C = objectCRC(data, shards[:pol.K], shardCRCs[:pol.K])
		}
		m.Policy, m.FragmentSize = pol, int64(len(shards[0]))
		m.Fragments = make([]FragmentLocation, len(shards))
		for i, t := range targets {
			m.Fragments[i] = FragmentLocation{ASD: t.ID, CRC32C: shardCRCs[i]}
		}
		results := b.writeFragments(ctx, m, tag, shards, nil, false, inflight)
		if err := ctx.Err(); err != nil {
			// The caller gave up (a rollback made the object moot, or
			// shutdown): no ASD failed, so nothing to warn about or
			// retry. What landed is dropped.
			var written []int
			for i, err := range results {
				if err == nil {
					written = append(written, i)
				}
			}
			ns, name, _ := strings.Cut(tag, "/")
			b.discard(context.WithoutCancel(ctx), ns, name, m, written)
			return nil, 0, false, err
		}
		acked, written := 0, []int{}
		for i, err := range results {
			switch {
			case err == nil:
				acked++
				written = append(written, i)
			case errors.Is(err, errFragmentPending):
			default:
				excluded[m.Fragments[i].ASD] = err
			}
		}
		if acked >= pol.C {
			if acked < len(results) {
				b.log.Warn("put acknowledged with fragments missing", "object", tag, "policy", pol.String(),
					"stored", acked, "of", len(results))
			}
			return m, pidx, acked < len(results), nil
		}
		// Not enough: drop what was written, avoid the ASDs that failed.
		ns, name, _ := strings.Cut(tag, "/")
		b.discard(context.WithoutCancel(ctx), ns, name, m, written)
		b.log.Warn("put failed on some ASDs; retrying elsewhere", "object", tag, "policy", pol.String(),
			"stored", acked, "needed", pol.C, "attempt", attempt+1)
		if ctx.Err() != nil || attempt >= 2*len(preset.Policies)+2 {
			return nil, 0, false, fmt.Errorf("%w: %d of %d fragments stored, %d needed: %s",
				ErrInsufficientASDs, acked, len(results), pol.C, summarizeErrors(excluded))
		}
	}
}

// objectCRC returns the checksum of data, which the data shards hold: when
// they hold exactly data (no padding), it is combined from their
// checksums rather than computed in another pass over the bytes.
func objectCRC(data []byte, dataShards [][]byte, crcs []uint32) uint32 {
	per := len(dataShards[0])
	if per*len(dataShards) != len(data) {
		return crc32c.Checksum(data)
	}
	shift := crc32c.ShiftFor(int64(per))
	var crc uint32
	for _, c := range crcs {
		crc = shift.Combine(crc, c)
	}
	return crc
}

// place picks the first policy of the preset that can be placed on the
// ASDs that are up, have room and are not excluded.
func (b *Backend) place(preset Preset, objectID []byte, size int64, excluded map[string]error) (int, Policy, []asdCandidate, error) {
	var lastErr error
	for i, pol := range preset.Policies {
		cands := b.writeCandidates(fragmentSizeFor(size, pol.K), excluded)
		targets, err := placeFragments(objectID, pol.K+pol.M, cands, pol.X, preset.MaxPerSite, nil)
		if err == nil {
			return i, pol, targets, nil
		}
		lastErr = fmt.Errorf("preset %s, policy %s: %w", preset.Name, pol, err)
	}
	return 0, Policy{}, nil, lastErr
}

// explainPlacement adds what went wrong with the ASDs that were tried.
func (b *Backend) explainPlacement(err error, excluded map[string]error) error {
	b.mu.Lock()
	var down []string
	for id, st := range b.asds {
		if !st.up && st.rec.State == ASDActive {
			down = append(down, id)
		}
	}
	b.mu.Unlock()
	sort.Strings(down)
	var extra []string
	if len(down) > 0 {
		extra = append(extra, "down: "+strings.Join(down, ", "))
	}
	if len(excluded) > 0 {
		extra = append(extra, "failed: "+summarizeErrors(excluded))
	}
	if len(extra) == 0 {
		return err
	}
	// %w keeps err (and ErrInsufficientASDs in it) for errors.Is.
	return fmt.Errorf("%w; %s", err, strings.Join(extra, "; "))
}

func summarizeErrors(errs map[string]error) string {
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %v", k, errs[k]))
	}
	return strings.Join(parts, "; ")
}

// splitInPlace cuts data into the k data shards and m parity shards of
// pol, in data's spare capacity when it has room (PutFile's buffers do):
// only the padding of the last data shard is zeroed, not the parity,
// which Encode overwrites whole. reedsolomon.Split zeroes all of it: 2 MiB
// per 4 MiB SCO, a twentieth of the node's CPU on sequential writes
// (perf). Without room it is Split (which allocates).
func splitInPlace(enc reedsolomon.Encoder, pol Policy, data []byte) ([][]byte, error) {
	if len(data) == 0 {
		return nil, errors.New("split: no data")
	}
	per := (len(data) + pol.K - 1) / pol.K
	n := pol.K + pol.M
	if cap(data) < n*per {
		shards, err := enc.Split(data)
		if err != nil {
			return nil, fmt.Errorf("split: %w", err)
		}
		return shards, nil
	}
	all := data[:n*per]
	clear(all[len(data) : pol.K*per])
	shards := make([][]byte, n)
	for i := range shards {
		shards[i] = all[i*per : (i+1)*per : (i+1)*per]
	}
	return shards, nil
}

func (b *Backend) encode(pol Policy, data []byte) ([][]byte, error) {
	enc, err := b.encoder(pol.K, pol.M)
	if err != nil {
		return nil, err
	}
	shards, err := splitInPlace(enc, pol, data)
	if err != nil {
		return nil, err
	}
	if err := enc.Encode(shards); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return shards, nil
}

// writeFragments stores shards[i] (for i in only, or all) on the ASD the
// manifest names, in parallel. It returns once every write has finished or,
// unless waitAll, when at least Policy.C are stored, after a short grace
// for the others (which keep running, unbound from ctx, and report
// errFragmentPending). Every write is counted in inflight, if not nil,
// until it ends.
func (b *Backend) writeFragments(ctx context.Context, m *Manifest, tag string, shards [][]byte, only []int, waitAll bool, inflight *sync.WaitGroup) []error {
	if only == nil {
		for i := range shards {
			only = append(only, i)
		}
	}
	results := make([]error, len(shards))
	for _, i := range only {
		results[i] = errFragmentPending
	}
	wctx, cancelAll := context.WithCancel(context.WithoutCancel(ctx))
	unlink := context.AfterFunc(ctx, cancelAll)
	type res struct {
		i   int
		err error
	}
	ch := make(chan res, len(only))
	for _, i := range only {
		id := m.Fragments[i].ASD
		if inflight != nil {
			inflight.Add(1)
		}
		go func() {
			if inflight != nil {
				defer inflight.Done()
			}
			c, _ := b.asd(id)
			if c == nil {
				ch <- res{i, fmt.Errorf("asd %s: %w: not registered", id, asd.ErrUnavailable)}
				return
			}
			octx, cancel := context.WithTimeout(wctx, b.opTimeout(int64(len(shards[i]))))
			// The manifest's fragment CRC, computed from shards[i]: the
			// ASD checks the body it receives against it.
			err := c.PutCRC(octx, m.FragmentKey(i), tag, shards[i], m.Fragments[i].CRC32C)
			cancel()
			if err != nil {
				b.suspect(id, err)
				if errors.Is(err, asd.ErrFull) {
					b.markFull(id)
				}
			}
			ch <- res{i, err}
		}()
	}
	need := m.Policy.C - (len(shards) - len(only))
	start := time.Now()
	var grace <-chan time.Time
	acked, finished := 0, 0
wait:
	for finished < len(only) {
		select {
		case r := <-ch:
			finished++
			results[r.i] = r.err
			if r.err == nil {
				acked++
				if !waitAll && acked >= need && grace == nil && finished < len(only) {
					grace = time.After(max(20*time.Millisecond, time.Since(start)/4))
				}
			}
		case <-grace:
			break wait
		}
	}
	unlink()
	if finished == len(only) {
		cancelAll()
	} else {
		go func() {
			for ; finished < len(only); finished++ {
				<-ch
			}
			cancelAll()
		}()
	}
	return results
}

// markFull keeps an ASD that refused a write for lack of room out of
// placements until its next probe.
func (b *Backend) markFull(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st := b.asds[id]; st != nil {
		st.health.Capacity.Free = 0
	}
}

// --- reads -----------------------------------------------------------------------

func (b *Backend) Get(ctx context.Context, ns, name string) ([]byte, error) {
	return b.read(ctx, ns, name, 0, -1, nil)
}

func (b *Backend) ReadAt(ctx context.Context, ns, name string, p []byte, off int64) error {
	_, err := b.read(ctx, ns, name, off, int64(len(p)), p)
	return err
}

// ReadAtMost reads len(p) bytes at off, or fewer where the object ends,
// and returns how many (a read cache's window around a cluster, which
// must not fail on the last SCO of a vdisk).
func (b *Backend) ReadAtMost(ctx context.Context, ns, name string, p []byte, off int64) (int, error) {
	m, _, err := b.manifest(ctx, ns, name)
	if err != nil {
		return 0, err
	}
	if off < 0 || off >= m.Size {
		return 0, fmt.Errorf("read %s/%s at %d: past the end of the object (%d bytes)", ns, name, off, m.Size)
	}
	n := min(int64(len(p)), m.Size-off)
	if _, err := b.read(ctx, ns, name, off, n, p[:n]); err != nil {
		return 0, err
	}
	return int(n), nil
}

// read returns n bytes at off of the object (n < 0: all of it), read
// into p if it is not nil.
func (b *Backend) read(ctx context.Context, ns, name string, off, n int64, p []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		m, raw, err := b.manifest(ctx, ns, name)
		if err != nil {
			return nil, err
		}
		whole := n < 0
		if whole {
			off, n = 0, m.Size
		}
		if off < 0 || off > m.Size || n > m.Size-off {
			return nil, fmt.Errorf("read %s/%s [%d,+%d): past the end of the object (%d bytes)", ns, name, off, n, m.Size)
		}
		if p != nil {
			if ok := b.readAhead(ctx, ns, name, m, off, p); ok {
				b.stats.reads.Add(1)
				return p, nil
			}
		}
		out := p
		if out == nil {
			out = make([]byte, n)
		}
		data, err := b.readRange(ctx, ns, name, m, off, out)
		if err != nil {
			if attempt == 0 && errors.Is(err, ErrObjectUnavailable) {
				// Overwritten or repaired (and its old fragments
				// deleted) under us? The manifest may also have been
				// cached before another node's maintenance changed it.
				b.cache.forget(objKey(ns, name))
				if _, raw2, err2 := b.manifest(ctx, ns, name); err2 == nil && !bytes.Equal(raw2, raw) {
					continue
				}
			}
			return nil, fmt.Errorf("read %s/%s: %w", ns, name, err)
		}
		if whole && crc32c.Checksum(data) != m.CRC32C {
			b.markDegraded(ctx, ns, name, "object checksum mismatch on read")
			return nil, fmt.Errorf("%w: %s/%s: checksum %08x, the manifest says %08x", scos.ErrCorrupt, ns, name, crc32c.Checksum(data), m.CRC32C)
		}
		b.stats.reads.Add(1)
		return data, nil
	}
}

// readAhead serves a ranged read from a window kept by the read-ahead, or
// fetches a window when the read continues a sequential run; it reports
// whether p was filled. A failed window read leaves p to the plain read.
func (b *Backend) readAhead(ctx context.Context, ns, name string, m *Manifest, off int64, p []byte) bool {
	key := ns + "/" + name
	if b.ra.get(key, m.ObjectID, off, p) {
		b.stats.readAheadHits.Add(1)
		return true
	}
	end := b.ra.want(key, m.ObjectID, off, int64(len(p)), m.Size)
	if end <= off+int64(len(p)) {
		return false
	}
	win := make([]byte, end-off)
	if _, err := b.readRange(ctx, ns, name, m, off, win); err != nil {
		return false
	}
	copy(p, win)
	b.ra.put(key, m.ObjectID, off, win)
	return true
}

type fetchResult struct {
	i    int
	data []byte
	err  error
}

// fetch reads [lo, hi) of fragment i from its ASD. A whole fragment is
// checked against the manifest's checksum here; a part is checked by the
// ASD (per block), and the ASD's checksum of the whole fragment must
// match the manifest's, so a stale or foreign fragment is never used.
func (b *Backend) fetch(ctx context.Context, m *Manifest, i int, lo, hi int64) ([]byte, error) {
	f := m.Fragments[i]
	c, up := b.asd(f.ASD)
	if c == nil {
		return nil, fmt.Errorf("fragment %d: %w: asd %s is not registered", i, asd.ErrUnavailable, f.ASD)
	}
	if !up {
		return nil, fmt.Errorf("fragment %d: %w: asd %s is down", i, asd.ErrUnavailable, f.ASD)
	}
	octx, cancel := context.WithTimeout(ctx, b.opTimeout(hi-lo))
	defer cancel()
	whole := lo == 0 && hi == m.FragmentSize
	length := hi - lo
	if whole {
		length = -1
	}
	data, crc, err := c.Get(octx, m.FragmentKey(i), lo, length)
	if err != nil {
		if ctx.Err() == nil {
			b.suspect(f.ASD, err)
		}
		return nil, fmt.Errorf("fragment %d on %s: %w", i, f.ASD, err)
	}
	if crc != f.CRC32C {
		return nil, fmt.Errorf("%w: fragment %d on %s has checksum %08x, the manifest says %08x",
			asd.ErrFragmentCorrupt, i, f.ASD, crc, f.CRC32C)
	}
	if whole && (int64(len(data)) != m.FragmentSize || crc32c.Checksum(data) != f.CRC32C) {
		return nil, fmt.Errorf("%w: fragment %d on %s: %d bytes with checksum %08x, the manifest says %d with %08x",
			asd.ErrFragmentCorrupt, i, f.ASD, len(data), crc32c.Checksum(data), m.FragmentSize, f.CRC32C)
	}
	return data, nil
}

// piece is the part of a read that one data fragment holds.
type piece struct {
	i      int   // data fragment
	lo, hi int64 // range in the fragment
	at     int64 // offset in out
}

// readRange reads len(out) bytes at off of the object into out: only the
// data fragments covering the range, decoding from the others (same range
// of any k fragments) for those that fail or are late.
func (b *Backend) readRange(ctx context.Context, ns, name string, m *Manifest, off int64, out []byte) ([]byte, error) {
	n := int64(len(out))
	if n == 0 {
		return out, nil
	}
	var small [2]piece
	pieces := small[:0]
	for pos := off; pos < off+n; {
		i := pos / m.FragmentSize
		lo := pos % m.FragmentSize
		hi := min(m.FragmentSize, lo+off+n-pos)
		pieces = append(pieces, piece{int(i), lo, hi, pos - off})
		pos += hi - lo
	}
	hedge := time.NewTimer(b.cfg.HedgeAfter)
	defer hedge.Stop()
	done := make([]bool, len(pieces))
	if b.readWire(ctx, m, pieces, out, done, hedge) {
		return out, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan fetchResult, len(pieces))
	pending := 0
	for j, p := range pieces {
		if done[j] {
			continue
		}
		pending++
		go func() {
			d, err := b.fetch(rctx, m, p.i, p.lo, p.hi)
			ch <- fetchResult{j, d, err}
		}()
	}
	failed := map[int]error{} // by fragment
	take := func(r fetchResult) {
		pending--
		if r.err == nil {
			copy(out[pieces[r.i].at:], r.data)
			done[r.i] = true
		} else {
			failed[pieces[r.i].i] = r.err
		}
	}
fast:
	for pending > 0 {
		select {
		case r := <-ch:
			take(r)
		case <-hedge.C:
			break fast
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if pending == 0 && len(failed) == 0 {
		return out, nil
	}
	// Decode what is missing from the same window of other fragments.
	b.reportFragmentErrors(ctx, ns, name, m, failed)
	wlo, whi := m.FragmentSize, int64(0)
	exclude := map[int]error{}
	var want []int
	for j, p := range pieces {
		if !done[j] {
			wlo, whi = min(wlo, p.lo), max(whi, p.hi)
			want = append(want, p.i)
			exclude[p.i] = errFragmentPending
			if err := failed[p.i]; err != nil {
				exclude[p.i] = err
			}
		}
	}
	rec, errs, err := b.reconstructWindow(ctx, m, wlo, whi, exclude, want)
	b.reportFragmentErrors(ctx, ns, name, m, errs)
	if err == nil {
		b.stats.degradedReads.Add(1)
		for j, p := range pieces {
			if !done[j] {
				copy(out[p.at:], rec[p.i][p.lo-wlo:p.hi-wlo])
			}
		}
		return out, nil
	}
	// Not decodable: maybe the late fetches still make it.
	for pending > 0 {
		select {
		case r := <-ch:
			take(r)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// The decode above could not count on the fragments still in flight
	// then (a loaded host: the hedge fired before they came). Those that
	// have come since can now stand in for the ones that failed.
	wlo, whi = m.FragmentSize, 0
	exclude = map[int]error{}
	want = want[:0]
	for j, p := range pieces {
		if !done[j] {
			wlo, whi = min(wlo, p.lo), max(whi, p.hi)
			want = append(want, p.i)
			exclude[p.i] = failed[p.i]
		}
	}
	if len(want) == 0 {
		return out, nil
	}
	rec, errs, err2 := b.reconstructWindow(ctx, m, wlo, whi, exclude, want)
	b.reportFragmentErrors(ctx, ns, name, m, errs)
	if err2 != nil {
		return nil, err
	}
	b.stats.degradedReads.Add(1)
	for j, p := range pieces {
		if !done[j] {
			copy(out[p.at:], rec[p.i][p.lo-wlo:p.hi-wlo])
		}
	}
	return out, nil
}

// readWire reads the pieces over the ASDs' binary protocol, one request
// per ASD, straight into out, and reports whether it read them all; those
// read are marked in done. It leaves the rest to the general path (which
// reads over HTTP, reports what failed, and decodes): an ASD that does not
// speak the protocol, a fragment that failed, and everything still in
// flight when the hedge timer fires (then reset to fire at once, so the
// general path decodes without waiting again). No goroutine per read: the
// connections' readers deliver the replies.
func (b *Backend) readWire(ctx context.Context, m *Manifest, pieces []piece, out []byte, done []bool, hedge *time.Timer) bool {
	if b.cfg.HTTPReads {
		return false
	}
	type request struct {
		id    string
		c     *asd.Client
		items []asd.ReadItem
		dst   [][]byte
		js    []int // pieces
		call  *asd.WireCall
	}
	var small [2]request
	reqs := small[:0]
	for j, p := range pieces {
		f := m.Fragments[p.i]
		k := -1
		for x := range reqs {
			if reqs[x].id == f.ASD {
				k = x
			}
		}
		if k < 0 {
			c, up := b.asd(f.ASD)
			if c == nil || !up {
				continue
			}
			reqs = append(reqs, request{id: f.ASD, c: c})
			k = len(reqs) - 1
		}
		r := &reqs[k]
		r.items = append(r.items, asd.ReadItem{Key: m.FragmentKey(p.i), Off: p.lo, Length: p.hi - p.lo})
		r.dst = append(r.dst, out[p.at:p.at+p.hi-p.lo])
		r.js = append(r.js, j)
	}
	for x := range reqs {
		r := &reqs[x]
		call, err := r.c.StartRead(ctx, r.items, r.dst)
		if err != nil {
			if !errors.Is(err, asd.ErrNoWire) && ctx.Err() == nil {
				b.suspect(r.id, err)
			}
			continue
		}
		r.call = call
		b.stats.wireReads.Add(1)
		if call.Direct() {
			b.stats.directReads.Add(1)
		}
	}
	all := len(reqs) > 0
	for x := range reqs {
		r := &reqs[x]
		if r.call == nil {
			all = false
			continue
		}
		select {
		case <-r.call.Done():
		case <-hedge.C:
			hedge.Reset(0)
			for y := x; y < len(reqs); y++ {
				if reqs[y].call != nil {
					reqs[y].call.Cancel(context.Canceled)
				}
			}
			// Cancel stops writes into out; what completed meanwhile
			// still counts.
			for y := x; y < len(reqs); y++ {
				if c := reqs[y].call; c != nil {
					select {
					case <-c.Done():
						all = b.wireDone(m, pieces, reqs[y].js, c, done) && all
					default:
						all = false
					}
				}
			}
			return all && len(reqs) > 0 && allDone(done)
		case <-ctx.Done():
			for y := x; y < len(reqs); y++ {
				if reqs[y].call != nil {
					reqs[y].call.Cancel(ctx.Err())
				}
			}
			return false
		}
		if !b.wireDone(m, pieces, r.js, r.call, done) {
			all = false
		}
		if _, err := r.call.Result(); err != nil && ctx.Err() == nil {
			b.suspect(r.id, err)
		}
	}
	return all && allDone(done)
}

// wireDone marks the pieces a finished call read well; a fragment whose
// checksum is not the manifest's (stale or foreign) is not used.
func (b *Backend) wireDone(m *Manifest, pieces []piece, js []int, call *asd.WireCall, done []bool) bool {
	res, err := call.Result()
	if err != nil {
		return false
	}
	ok := true
	for x, j := range js {
		if res[x].Err != nil || res[x].CRC != m.Fragments[pieces[j].i].CRC32C {
			ok = false
			continue
		}
		done[j] = true
	}
	return ok
}

func allDone(done []bool) bool {
	for _, d := range done {
		if !d {
			return false
		}
	}
	return true
}

// reconstructWindow returns [lo, hi) of each fragment in want, decoded
// from the same window of k other fragments (not in exclude). It also
// returns the errors of the fragments it tried and could not read.
func (b *Backend) reconstructWindow(ctx context.Context, m *Manifest, lo, hi int64, exclude map[int]error, want []int) (map[int][]byte, map[int]error, error) {
	k, total := m.Policy.K, m.Policy.K+m.Policy.M
	enc, err := b.encoder(k, m.Policy.M)
	if err != nil {
		return nil, nil, err
	}
	wanted := make([]bool, total)
	for _, i := range want {
		wanted[i] = true
	}
	// Candidates: fragments on ASDs that are up first, data before parity.
	var cands []int
	for pass := 0; pass < 2; pass++ {
		for i := range total {
			if wanted[i] || exclude[i] != nil {
				continue
			}
			_, up := b.asd(m.Fragments[i].ASD)
			if up == (pass == 0) {
				cands = append(cands, i)
			}
		}
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan fetchResult, len(cands))
	shards := make([][]byte, total)
	errs := map[int]error{}
	next, inflight, got := 0, 0, 0
	for got < k {
		for inflight+got < k && next < len(cands) {
			i := cands[next]
			next++
			inflight++
			go func() {
				d, err := b.fetch(fctx, m, i, lo, hi)
				ch <- fetchResult{i, d, err}
			}()
		}
		if inflight == 0 {
			break
		}
		select {
		case r := <-ch:
			inflight--
			if r.err != nil {
				errs[r.i] = r.err
				continue
			}
			shards[r.i] = r.data
			got++
		case <-ctx.Done():
			return nil, errs, ctx.Err()
		}
	}
	if got < k {
		var why []string
		for i := range total {
			e := errs[i]
			if e == nil && exclude[i] != errFragmentPending {
				e = exclude[i]
			}
			if e != nil {
				why = append(why, e.Error())
			}
		}
		return nil, errs, fmt.Errorf("%w: only %d of %d fragments readable, %d needed (%s)",
			ErrObjectUnavailable, got, total, k, strings.Join(why, "; "))
	}
	if err := enc.ReconstructSome(shards, wanted); err != nil {
		return nil, errs, fmt.Errorf("decode: %w", err)
	}
	out := make(map[int][]byte, len(want))
	for _, i := range want {
		out[i] = shards[i]
	}
	return out, errs, nil
}

// reportFragmentErrors flags the object for repair when a fragment is
// corrupt or missing on an ASD that answers (an ASD that is down is the
// health monitor's business).
func (b *Backend) reportFragmentErrors(ctx context.Context, ns, name string, m *Manifest, errs map[int]error) {
	for i, err := range errs {
		var reason string
		switch {
		case errors.Is(err, asd.ErrFragmentCorrupt):
			reason = "corrupt"
		case errors.Is(err, asd.ErrFragmentNotFound):
			reason = "missing"
		default:
			continue
		}
		if _, dup := b.reported.LoadOrStore(fmt.Sprintf("%s/%s/%s/%d", ns, name, m.ID(), i), true); dup {
			continue
		}
		// A missing fragment may mean that this node's cached manifest is
		// stale (another node's maintenance moved the fragment): read it
		// afresh next time.
		b.cache.forget(objKey(ns, name))
		if reason == "corrupt" {
			b.stats.corruptFound.Add(1)
		} else {
			b.stats.missingFound.Add(1)
		}
		b.log.Warn("fragment "+reason+"; object flagged for repair", "object", ns+"/"+name,
			"fragment", i, "asd", m.Fragments[i].ASD, "err", err)
		b.markDegraded(ctx, ns, name, fmt.Sprintf("fragment %d on %s %s", i, m.Fragments[i].ASD, reason))
	}
}

type degradedRecord struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// markDegraded records that maintenance must look at the object and wakes
// it up. Failing to record is logged, not returned: scrubs find it again.
func (b *Backend) markDegraded(ctx context.Context, ns, name, reason string) {
	raw, _ := json.Marshal(degradedRecord{Reason: reason, Since: time.Now().UTC()})
	if err := b.kv.Set(context.WithoutCancel(ctx), degradedKey(ns, name), raw); err != nil {
		b.log.Warn("recording a degraded object", "object", ns+"/"+name, "err", err)
	}
	b.wake()
}

// wake nudges the maintenance loop.
func (b *Backend) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// --- delete, list, stat ------------------------------------------------------------

func (b *Backend) Delete(ctx context.Context, ns, name string) error {
	f, _ := b.fence(ns)
	return b.delete(ctx, f, ns, name)
}

// delete removes an object, guarded by f when set.
func (b *Backend) delete(ctx context.Context, f *scos.Fence, ns, name string) error {
	if !scos.ValidName(name) {
		return fmt.Errorf("%w: object %q", scos.ErrInvalidName, name)
	}
	if _, _, err := b.namespace(ctx, ns); err != nil {
		return err
	}
	key := objKey(ns, name)
	for {
		raw, err := b.kv.Get(ctx, key)
		if errors.Is(err, ErrKeyNotFound) {
			return fmt.Errorf("%w: %s/%s", scos.ErrObjectNotFound, ns, name)
		}
		if err != nil {
			return fmt.Errorf("delete %s/%s: %w", ns, name, err)
		}
		if err := b.testAndSet(ctx, f, key, raw, nil); err != nil {
			if errors.Is(err, ErrKVConflict) {
				continue
			}
			return fmt.Errorf("delete %s/%s: %w", ns, name, err)
		}
		if m, err := DecodeManifest(raw); err == nil {
			b.discard(context.WithoutCancel(ctx), ns, name, m, nil)
		}
		if _, err := b.kv.Get(ctx, degradedKey(ns, name)); err == nil {
			_ = b.kv.Delete(context.WithoutCancel(ctx), degradedKey(ns, name))
		}
		b.stats.deletes.Add(1)
		return nil
	}
}

func (b *Backend) List(ctx context.Context, ns, prefix string) ([]scos.ObjectInfo, error) {
	if _, err := b.liveNamespace(ctx, ns); err != nil {
		return nil, err
	}
	base := kvObject + ns + "/"
	var out []scos.ObjectInfo
	err := kvRangeAll(ctx, b.kv, base+prefix, func(e KV) (bool, error) {
		m, err := DecodeManifest(e.Value)
		if err != nil {
			return false, fmt.Errorf("%s: %w", e.Key, err)
		}
		out = append(out, scos.ObjectInfo{Name: e.Key[len(base):], Size: m.Size})
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", ns, err)
	}
	return out, nil
}

func (b *Backend) Stat(ctx context.Context, ns, name string) (scos.ObjectInfo, error) {
	m, _, err := b.manifest(ctx, ns, name)
	if err != nil {
		return scos.ObjectInfo{}, err
	}
	return scos.ObjectInfo{Name: name, Size: m.Size}, nil
}

// --- discarded fragments --------------------------------------------------------

// gcRecord lists fragments of an object version to delete. Before deleting
// one, the collector checks that the object's current manifest does not
// place that very fragment there (a failed repair or put may share keys
// with the live version).
type gcRecord struct {
	NS        string       `json:"ns"`
	Name      string       `json:"name"`
	Object    string       `json:"object"`
	Fragments []gcFragment `json:"fragments"`
}

type gcFragment struct {
	Index int    `json:"index"`
	ASD   string `json:"asd"`
}

// discard queues fragments of m for deletion (all of them, or those in
// only) and wakes the collector.
func (b *Backend) discard(ctx context.Context, ns, name string, m *Manifest, only []int) {
	r := gcRecord{NS: ns, Name: name, Object: m.ID()}
	if only == nil {
		for i := range m.Fragments {
			only = append(only, i)
		}
	}
	for _, i := range only {
		r.Fragments = append(r.Fragments, gcFragment{Index: i, ASD: m.Fragments[i].ASD})
	}
	b.discardRecord(ctx, r)
}

func (b *Backend) discardRecord(ctx context.Context, r gcRecord) {
	if len(r.Fragments) == 0 {
		return
	}
	raw, _ := json.Marshal(r)
	if err := b.kv.Set(ctx, kvGarbage+r.Object+"-"+fsutil.RandomSuffix(), raw); err != nil {
		b.log.Warn("queueing fragments for deletion; a scrub will find them", "object", r.NS+"/"+r.Name, "err", err)
		return
	}
	select {
	case b.gcKick <- struct{}{}:
	default:
	}
}

func (b *Backend) gcLoop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.gcKick:
		}
		if _, err := b.CollectGarbage(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("deleting discarded fragments", "err", err)
		}
	}
}

// CollectGarbage deletes queued fragments whose ASDs are up, keeping the
// rest queued, and returns how many it deleted.
func (b *Backend) CollectGarbage(ctx context.Context) (int, error) {
	deleted := 0
	err := kvRangeAll(ctx, b.kv, kvGarbage, func(e KV) (bool, error) {
		var r gcRecord
		if err := json.Unmarshal(e.Value, &r); err != nil {
			b.log.Warn("dropping an unreadable deletion record", "key", e.Key, "err", err)
			return true, b.kv.Delete(ctx, e.Key)
		}
		var cur *Manifest
		if m, _, err := b.loadManifestFrom(ctx, b.direct, r.NS, r.Name); err == nil {
			cur = m
		} else if !errors.Is(err, scos.ErrObjectNotFound) {
			return true, nil // try again later
		}
		var (
			mu   sync.Mutex
			left []gcFragment
			wg   sync.WaitGroup
		)
		for _, f := range r.Fragments {
			if cur != nil && cur.ID() == r.Object && f.Index < len(cur.Fragments) && cur.Fragments[f.Index].ASD == f.ASD {
				continue // the live version uses it
			}
			c, up := b.asd(f.ASD)
			if c == nil {
				continue // ASD removed: nothing to delete
			}
			if !up {
				mu.Lock()
				left = append(left, f)
				mu.Unlock()
				continue
			}
			m := Manifest{}
			if err := parseObjectID(r.Object, &m); err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				octx, cancel := context.WithTimeout(ctx, b.cfg.FragmentTimeout)
				err := c.Delete(octx, m.FragmentKey(f.Index))
				cancel()
				mu.Lock()
				defer mu.Unlock()
				if err == nil || errors.Is(err, asd.ErrFragmentNotFound) {
					deleted++
					return
				}
				b.suspect(f.ASD, err)
				left = append(left, f)
			}()
		}
		wg.Wait()
		if len(left) == 0 {
			return true, ignoreConflict(b.kv.TestAndSet(ctx, e.Key, e.Value, nil))
		}
		if len(left) < len(r.Fragments) {
			r.Fragments = left
			raw, _ := json.Marshal(r)
			return true, ignoreConflict(b.kv.TestAndSet(ctx, e.Key, e.Value, raw))
		}
		return true, nil
	})
	b.stats.gcDeleted.Add(int64(deleted))
	return deleted, err
}

func ignoreConflict(err error) error {
	if errors.Is(err, ErrKVConflict) {
		return nil
	}
	return err
}

func parseObjectID(s string, m *Manifest) error {
	if len(s) != 32 {
		return fmt.Errorf("object id %q", s)
	}
	for i := 0; i < 16; i++ {
		var v byte
		for _, c := range []byte(s[2*i : 2*i+2]) {
			switch {
			case c >= '0' && c <= '9':
				v = v<<4 | (c - '0')
			case c >= 'a' && c <= 'f':
				v = v<<4 | (c - 'a' + 10)
			default:
				return fmt.Errorf("object id %q", s)
			}
		}
		m.ObjectID[i] = v
	}
	return nil
}
