// Package readcache is the volume driver's persistent local read cache:
// clusters fetched from the backend, kept on the host's disk so that a
// working set larger than RAM and than the write buffer reads at local
// speed, across restarts.
//
// Layout: a fixed set of preallocated segment files under one directory,
// written log-style. One segment is open for appends; when it is full it
// is sealed (its summary, the list of its entries, is written after its
// data and named in its header) and the next segment is reclaimed: the
// oldest one (segment FIFO), whose entries leave the index. The summaries
// of sealed segments are the persisted index: a restart reads them back
// (a few hundred KiB per segment) and the cache is warm; the open segment
// of a process that was killed is lost, at most one segment.
//
// Admission (TinyLFU): once every segment holds data, a new entry is
// admitted only if its estimated recent access frequency (a count-min
// sketch, halved periodically) is above that of the entry FIFO order would
// evict next. A one-pass scan (frequency 1) does not push out a working
// set that is read again and again; BenchmarkScan measures it. Before the
// cache is full, Seen keeps long sequential runs out: the volume driver
// fills a run longer than 64 KiB only if its first cluster was asked for
// before (a backup or a copy reads each cluster once; caching it doubled
// the disk's writes and cost a third of a cold sequential read's speed).
//
// Integrity: every entry has a CRC-32C of its data (in its segment's
// summary on disk, in RAM while the cache runs) and every hit verifies it;
// a mismatch drops the entry, counts it as corrupt, and reports a miss so
// that the caller reads the backend. Structures read at start have CRCs of
// their own and are dropped, not trusted, when they fail.
//
// Keys: (backend namespace, packed cluster location). SCOs are write-once
// and a scrub writes new versions under new names, so an entry of a given
// name never goes stale; what can reuse names (a rollback, a vdisk deleted
// and created again, a vdisk restored from the backend on this host) calls
// Invalidate, which gives the namespace a new random token: its old
// entries can no longer be found and age out.
//
// Fills happen off the reader's path: Add (one entry) and AddRun (a run
// of entries, as a ranged backend read returns them) queue a copy to a
// queue bounded in fills and in bytes (dropped when full) that one writer
// goroutine appends in batches.
package readcache

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Defaults of Options.
const (
	DefaultSegmentSize = 64 << 20
	DefaultQueueLen    = 1024
	// DefaultQueueBytes bounds the data of queued fills. Why 32 MiB: a
	// cold sequential read at QD8 hands over 8 MiB at once (eight 1 MiB
	// runs); the old bound of 1024 single-cluster fills (4 MiB) dropped a
	// fifth of them (ovs_read_cache_disk_dropped_total in the ecbeyond
	// bench), which the warm pass then read from the backend again.
	DefaultQueueBytes = 32 << 20
	// MinSize is the smallest cache worth having: four segments of 64 KiB.
	MinSize = 4 * minSegment

	minSegment = 64 << 10
	tableFile  = "namespaces"
	segPrefix  = "seg-"
	batchMax   = 64
	// batchBytes: the writer stops gathering a batch past this much data
	// (one write system call, and a bounded write buffer).
	batchBytes = 1 << 20
)

// Key names a cached cluster: the backend namespace that holds its SCO
// and its location there (clone id 0), packed.
type Key struct {
	NS  string
	Loc uint64
}

// Options configure a Cache.
type Options struct {
	// Dir holds the segment files and the namespace table.
	Dir string
	// Size bounds the segment files, in bytes (at least MinSize).
	Size int64
	// SegmentSize is the size of one segment (default DefaultSegmentSize,
	// smaller when Size holds fewer than 4 of them).
	SegmentSize int64
	// QueueLen bounds the fills waiting to be written (default
	// DefaultQueueLen); past it fills are dropped.
	QueueLen int
	// QueueBytes bounds the data of the fills waiting to be written
	// (default DefaultQueueBytes); past it fills are dropped.
	QueueBytes int64
	// NoAdmission admits every fill (for measuring what admission buys).
	NoAdmission bool
	Logger      *slog.Logger
}

// Stats are the cache's counters since Open, and its size.
type Stats struct {
	Hits      uint64 // lookups served from the cache, verified
	Misses    uint64 // lookups not in the cache (or dropped as corrupt)
	Corrupt   uint64 // entries that failed verification and were dropped
	Evictions uint64 // entries dropped when their segment was reclaimed
	Fills     uint64 // entries written
	Rejected  uint64 // fills refused by admission
	Dropped   uint64 // fills dropped because the queue was full
	Bytes     int64  // data bytes of the entries in the index
	Capacity  int64  // bytes of the segment files
}

type segment struct {
	idx  int
	path string
	f    *os.File
	// gen is bumped when the segment is reclaimed, so that a reader that
	// raced the reclaim sees a plain miss, not corruption.
	gen atomic.Uint64

	// Under Cache.mu.
	// crcs[off/slotSize] is the CRC-32C of the entry at off.
	crcs    []uint32
	state   uint8
	seq     uint64
	dataEnd uint64
	// recs: entries of the open segment (its summary to be); nil once
	// sealed (read back from the file when it is reclaimed).
	recs []record
}

type fill struct {
	ns  string
	loc uint64
	// data holds len(data)/size entries: entry i is location loc+i.
	data []byte
	size int
	// crcs, if set, are the entries' CRC-32Cs as the caller verified
	// them; else the writer computes them.
	crcs []uint32
	buf  *[]byte
	// marker, if set, is closed when the writer reaches it (Flush).
	marker chan struct{}
}

// Cache is a persistent read cache. Its methods are safe for concurrent use.
type Cache struct {
	log     *slog.Logger
	dir     string
	segSize int64
	segs    []*segment
	noAdmit bool
	sk      *sketch

	// tableMu orders writes of the namespace table file.
	tableMu sync.Mutex

	mu      sync.RWMutex
	index   map[uint64]uint64 // keyHash -> segment<<32 | offset
	tokens  map[string]uint64 // namespace -> token
	open    *segment
	nextSeq uint64
	full    bool // every segment has held data: a fill evicts
	broken  bool // the namespace table could not be written: serve nothing

	q         chan fill
	queued    atomic.Int64 // bytes of data in q
	maxQueued int64
	stop      chan struct{}
	done      chan struct{}
	closing   sync.Once
	sealing   sync.WaitGroup // seals in progress (rotate)
	bufs      sync.Pool      // fill copies

	// Writer goroutine only.
	wbuf      []byte
	victims   []record
	victimSeg *segment
	victimSeq uint64
	victimPos int

	hits, misses, corrupt, evictions, fills, rejected, dropped atomic.Uint64
	bytes                                                      atomic.Int64
}

// Open opens (or creates) the cache in opts.Dir, keeping what a previous
// run left there that passes its checks.
func Open(opts Options) (*Cache, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Size < MinSize {
		return nil, fmt.Errorf("read cache: size %d is below the minimum %d", opts.Size, MinSize)
	}
	seg := opts.SegmentSize
	if seg <= 0 {
		seg = DefaultSegmentSize
	}
	if opts.Size/seg < 4 {
		seg = opts.Size / 4
	}
	seg = max(seg&^(slotSize-1), minSegment)
	if seg > 1<<32 {
		seg = 1 << 32 // offsets in the index are 32 bit
	}
	n := min(int(opts.Size/seg), 1<<16)
	if opts.QueueLen <= 0 {
		opts.QueueLen = DefaultQueueLen
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = DefaultQueueBytes
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("read cache dir: %w", err)
	}
	c := &Cache{
		log:       opts.Logger,
		dir:       opts.Dir,
		segSize:   seg,
		noAdmit:   opts.NoAdmission,
		sk:        newSketch(int(opts.Size / 4096)),
		index:     map[uint64]uint64{},
		tokens:    map[string]uint64{},
		nextSeq:   1,
		q:         make(chan fill, opts.QueueLen),
		maxQueued: opts.QueueBytes,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	tb, err := os.ReadFile(filepath.Join(c.dir, tableFile))
	trust := err == nil
	if err == nil {
		c.tokens, err = decodeTable(tb)
		if err != nil {
			c.log.Warn("read cache: the namespace table is damaged; starting the cache empty", "err", err)
			c.tokens, trust = map[string]uint64{}, false
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		c.log.Warn("read cache: cannot read the namespace table; starting the cache empty", "err", err)
	}
	for i := range n {
		s, err := c.openSegment(i, trust)
		if err != nil {
			c.closeFiles()
			return nil, err
		}
		c.segs = append(c.segs, s)
	}
	c.removeExtraSegments(n)
	c.full = true
	for _, s := range c.segs {
		if s.state == stateEmpty {
			c.full = false
		}
	}
	go c.writer()
	c.log.Info("read cache open", "dir", c.dir, "size", int64(n)*seg, "segments", n,
		"entries", len(c.index), "bytes", c.bytes.Load())
	return c, nil
}

func segName(i int) string { return fmt.Sprintf("%s%05d", segPrefix, i) }

// openSegment opens segment i, preallocating it if new, and indexes its
// entries if it is sealed, intact and trust allows.
func (c *Cache) openSegment(i int, trust bool) (*segment, error) {
	s := &segment{idx: i, path: filepath.Join(c.dir, segName(i)), crcs: make([]uint32, c.segSize/slotSize)}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("read cache segment: %w", err)
	}
	s.f = f
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read cache segment: %w", err)
	}
	if fi.Size() != c.segSize {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("read cache segment: %w", err)
		}
		if err := preallocate(f, c.segSize); err != nil {
			f.Close()
			os.Remove(s.path) // what fallocate got before it failed
			return nil, fmt.Errorf("read cache segment %s: %w", s.path, err)
		}
		return s, c.writeEmptyHeader(s)
	}
	hb := make([]byte, segHeaderSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("read cache segment: %w", err)
	}
	h, herr := decodeSegHeader(hb)
	var recs []record
	if herr == nil && h.state == stateSealed && h.segSize == uint64(c.segSize) && trust {
		recs, herr = c.readSummary(s, h)
	}
	switch {
	case herr != nil:
		c.log.Warn("read cache: dropping a damaged segment", "segment", s.path, "err", herr)
	case h.state == stateSealed && trust && h.segSize == uint64(c.segSize):
		s.state, s.seq, s.dataEnd = stateSealed, h.seq, h.dataEnd
		c.nextSeq = max(c.nextSeq, h.seq+1)
		known := make(map[uint64]bool, len(c.tokens))
		for _, t := range c.tokens {
			known[t] = true
		}
		for _, r := range recs {
			// Entries of a namespace the table does not name were
			// invalidated (or written before a crash lost their
			// token): never indexed.
			if known[r.token] {
				c.index[keyHash(r.token, r.loc)] = pos(i, r.off, r.length)
				s.crcs[r.off/slotSize] = r.dataCRC
				c.bytes.Add(int64(r.length))
			}
		}
		return s, nil
	case h.state == stateOpen:
		// The process stopped without sealing it: its entries are
		// not in any summary.
		c.log.Info("read cache: dropping the segment that was open when the process stopped", "segment", s.path)
	}
	if h.state != stateEmpty || herr != nil {
		return s, c.writeEmptyHeader(s)
	}
	return s, nil
}

func (c *Cache) readSummary(s *segment, h segHeader) ([]record, error) {
	b := make([]byte, int(h.summaryN)*recSize)
	if _, err := s.f.ReadAt(b, int64(h.summaryOff)); err != nil {
		return nil, fmt.Errorf("read summary: %w", err)
	}
	return decodeSummary(b, h.summaryCRC, h.dataEnd)
}

func (c *Cache) writeEmptyHeader(s *segment) error {
	s.state, s.seq, s.dataEnd, s.recs = stateEmpty, 0, segHeaderRegion, nil
	h := segHeader{state: stateEmpty, segSize: uint64(c.segSize)}
	if _, err := s.f.WriteAt(h.encode(), 0); err != nil {
		s.f.Close()
		return fmt.Errorf("read cache segment %s: %w", s.path, err)
	}
	return nil
}

// removeExtraSegments deletes segment files beyond n (the cache shrank).
func (c *Cache) removeExtraSegments(n int) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		num, ok := strings.CutPrefix(e.Name(), segPrefix)
		if !ok {
			continue
		}
		if i, err := strconv.Atoi(num); err == nil && i >= n {
			os.Remove(filepath.Join(c.dir, e.Name()))
		}
	}
}

func preallocate(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return f.Truncate(size)
	}
	return err
}

// An index value: segment (16 bits), length in slots (16 bits), offset in
// the segment (32 bits).
func pos(seg int, off, length uint32) uint64 {
	return uint64(seg)<<48 | uint64(length/slotSize)<<32 | uint64(off)
}

func posLen(p uint64) int64 { return int64(p>>32&0xffff) * slotSize }

// keyHash mixes a namespace token and a location into the index key (the
// index keeps no more of the key, to stay small). Two keys collide with a
// chance of about one in 2^43 per lookup with millions of entries; the
// volume driver then still refuses the data, whose CRC is not the one its
// metadata has for the cluster.
func keyHash(tok, loc uint64) uint64 {
	x := tok ^ (loc * 0x9e3779b97f4a7c15)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	return x ^ x>>33
}

func (c *Cache) getBuf(n int) *[]byte {
	if p, ok := c.bufs.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, max(n, 64<<10))
	return &b
}

// Get fills buf with the cached data of key and reports whether it did.
// The data passed its CRC-32C; an entry that fails is dropped, counted as
// corrupt, and reported as a miss. On a miss buf's content is undefined.
func (c *Cache) Get(key Key, buf []byte) bool {
	return c.get(key, buf, 0, false)
}

// GetCRC is Get for a caller that knows the CRC-32C of the data it wants
// (the volume driver's metadata holds every cluster's): the entry is
// served only if its data has that CRC. The entry's own CRC is compared
// with want first (in memory: an entry of other data, say a key hash
// collision, is dropped without reading it), and the data read is checked
// against want once: one CRC computation per hit, and both a flipped byte
// and the wrong cluster's data are dropped and never served.
func (c *Cache) GetCRC(key Key, buf []byte, want uint32) bool {
	return c.get(key, buf, want, true)
}

func (c *Cache) get(key Key, buf []byte, callerCRC uint32, useCallerCRC bool) bool {
	var e [1]entryRef
	tok := c.lookup(key.NS, key.Loc, e[:])
	return c.serve(tok, key, e[0], buf, callerCRC, useCallerCRC)
}

// GetRunCRC is GetCRC for the n = len(want) clusters of size bytes that
// follow each other from key on (key.Loc, key.Loc+1, ...), into buf (n
// times size bytes): hit[i] reports whether cluster i was served. One
// lookup under the cache's lock and one count in the admission sketch
// for the run: per cluster, they were a tenth of the volume driver's CPU
// on a cold 1 MiB sequential read (perf; 256 lookups per read).
func (c *Cache) GetRunCRC(key Key, size int, buf []byte, want []uint32, hit []bool) int {
	n := len(want)
	if size <= 0 || len(buf) != n*size || len(hit) != n {
		return 0
	}
	var small [256]entryRef // a 1 MiB run of 4 KiB clusters, without an allocation
	es := small[:]
	if n > len(es) {
		es = make([]entryRef, n)
	}
	es = es[:n]
	tok := c.lookup(key.NS, key.Loc, es)
	hits := 0
	for i := range n {
		k := Key{NS: key.NS, Loc: key.Loc + uint64(i)}
		hit[i] = c.serve(tok, k, es[i], buf[i*size:(i+1)*size], want[i], true)
		if hit[i] {
			hits++
		}
	}
	return hits
}

// entryRef is what a lookup found of one key: its index value, the
// generation of its segment then, and its CRC.
type entryRef struct {
	p, gen uint64
	crc    uint32
	found  bool
}

// lookup finds the entries of ns at len(es) locations from loc on, and
// counts each access in the admission sketch; it returns the namespace's
// token (0 with a broken cache).
func (c *Cache) lookup(ns string, loc uint64, es []entryRef) uint64 {
	c.mu.RLock()
	tok, ok := c.tokens[ns]
	broken := c.broken
	if ok && !broken {
		for i := range es {
			p, found := c.index[keyHash(tok, loc+uint64(i))]
			if found {
				// Read under mu: a reclaim bumps gen under mu, so gen,
				// p and the CRC agree, and a reclaim after this point
				// shows in gen.
				s := c.segs[p>>48]
				es[i] = entryRef{p: p, gen: s.gen.Load(), crc: s.crcs[uint32(p)/slotSize], found: true}
			}
		}
	}
	c.mu.RUnlock()
	if broken {
		return 0
	}
	if !ok {
		// The namespace's first lookup: it gets its token now, so that
		// its accesses count from the first one (Seen).
		tok = c.tokenFor(ns)
	}
	c.sk.addRun(tok, loc, len(es))
	return tok
}

// serve reads the entry e of key into buf and verifies it.
func (c *Cache) serve(tok uint64, key Key, e entryRef, buf []byte, callerCRC uint32, useCallerCRC bool) bool {
	p, gen, want := e.p, e.gen, e.crc
	if !e.found || posLen(p) != int64(len(buf)) {
		c.misses.Add(1)
		return false
	}
	if useCallerCRC && want != callerCRC {
		c.corrupt.Add(1)
		c.misses.Add(1)
		c.log.Warn("read cache: dropping an entry that holds other data than the caller's", "ns", key.NS, "loc", key.Loc)
		c.dropPos(keyHash(tok, key.Loc), p)
		return false
	}
	s := c.segs[p>>48]
	_, err := s.f.ReadAt(buf, int64(uint32(p)))
	if s.gen.Load() != gen || errors.Is(err, os.ErrClosed) {
		c.misses.Add(1) // reclaimed under the read, or closing
		return false
	}
	if err == nil && crc(buf) != want {
		err = errors.New("data checksum mismatch")
	}
	if err != nil {
		c.corrupt.Add(1)
		c.misses.Add(1)
		c.log.Warn("read cache: dropping an entry that fails verification", "segment", s.path, "offset", uint32(p), "err", err)
		c.dropPos(keyHash(tok, key.Loc), p)
		return false
	}
	c.hits.Add(1)
	return true
}

// Seen reports whether key was asked for (Get, GetCRC) at least twice
// recently, by the admission sketch: what a caller asks before it fills a
// scan. A long sequential run read once (a backup, a copy, a boot's
// read-ahead) counts once per entry and is not worth the cache's writes
// nor the entries it would push out; read again, it is. It is ZFS's
// l2arc_noprefetch and 2Q's first-touch queue in one test.
func (c *Cache) Seen(key Key) bool {
	c.mu.RLock()
	tok, ok := c.tokens[key.NS]
	c.mu.RUnlock()
	return ok && c.sk.estimate(keyHash(tok, key.Loc)) >= 2
}

// Drop removes key's entry, if any: the caller found that its data is not
// what the cluster holds.
func (c *Cache) Drop(key Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tok, ok := c.tokens[key.NS]; ok {
		h := keyHash(tok, key.Loc)
		if p, ok := c.index[h]; ok {
			delete(c.index, h)
			c.bytes.Add(-posLen(p))
		}
	}
}

func (c *Cache) dropPos(h, p uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q, ok := c.index[h]; ok && q == p {
		delete(c.index, h)
		c.bytes.Add(-posLen(p))
	}
}

// Add queues data as key's entry; it returns at once. The fill is dropped
// if the queue is full, and may be refused by admission.
func (c *Cache) Add(key Key, data []byte) {
	if len(data) == 0 || len(data) > maxEntryLen || len(data)%slotSize != 0 {
		return
	}
	c.enqueue(fill{ns: key.NS, loc: key.Loc, data: data, size: len(data)})
}

// AddRun queues a run of entries of size bytes each, as one queue slot:
// entry i is data[i*size:(i+1)*size] under location key.Loc+i (the caller
// makes sure those locations are the entries': clusters that follow each
// other in one SCO). crcs, if not nil, are the entries' CRC-32Cs, which
// the caller has just verified the data against (the volume driver's
// metadata CRCs): the writer records them instead of computing them
// again. Like Add it returns at once and may drop the run.
func (c *Cache) AddRun(key Key, size int, data []byte, crcs []uint32) {
	if size <= 0 || size > maxEntryLen || size%slotSize != 0 || len(data) == 0 || len(data)%size != 0 ||
		crcs != nil && len(crcs) != len(data)/size {
		return
	}
	c.enqueue(fill{ns: key.NS, loc: key.Loc, data: data, size: size, crcs: crcs})
}

// enqueue queues a copy of f's data (and CRCs), or drops it when the queue
// is full in fills or bytes.
func (c *Cache) enqueue(f fill) {
	n := int64(len(f.data))
	if c.queued.Add(n) > c.maxQueued {
		c.queued.Add(-n)
		c.dropped.Add(uint64(len(f.data) / f.size))
		return
	}
	rb := c.getBuf(len(f.data))
	copy(*rb, f.data)
	f.data, f.buf = *rb, rb
	if f.crcs != nil {
		f.crcs = append([]uint32(nil), f.crcs...)
	}
	select {
	case c.q <- f:
	default:
		c.queued.Add(-n)
		c.bufs.Put(rb)
		c.dropped.Add(uint64(len(f.data) / f.size))
	}
}

// Invalidate forgets every entry of namespace ns, now and after a
// restart. If that cannot be recorded on disk the cache stops serving.
func (c *Cache) Invalidate(ns string) {
	c.tableMu.Lock()
	defer c.tableMu.Unlock()
	c.mu.Lock()
	if _, ok := c.tokens[ns]; !ok {
		c.mu.Unlock()
		return
	}
	delete(c.tokens, ns)
	b := encodeTable(c.tokens)
	c.mu.Unlock()
	c.writeTable(b)
}

// writeTable replaces the namespace table; under tableMu.
func (c *Cache) writeTable(b []byte) {
	path := filepath.Join(c.dir, tableFile)
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = syncFile(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		// A table that still names a namespace whose entries may be
		// stale must not be read back: remove it (the cache starts empty
		// next time) and serve nothing until then.
		c.log.Error("read cache: cannot write the namespace table; the cache is off until restart", "err", err)
		os.Remove(path)
		c.mu.Lock()
		c.broken = true
		c.mu.Unlock()
	}
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// tokenFor returns ns's token, creating (and recording) one if needed.
func (c *Cache) tokenFor(ns string) uint64 {
	c.mu.RLock()
	tok, ok := c.tokens[ns]
	c.mu.RUnlock()
	if ok {
		return tok
	}
	c.tableMu.Lock()
	defer c.tableMu.Unlock()
	c.mu.RLock()
	tok, ok = c.tokens[ns]
	c.mu.RUnlock()
	if ok {
		return tok // another goroutine made it meanwhile
	}
	var b [8]byte
	for tok == 0 {
		_, _ = rand.Read(b[:])
		tok = binary.LittleEndian.Uint64(b[:])
	}
	c.mu.Lock()
	c.tokens[ns] = tok
	tb := encodeTable(c.tokens)
	c.mu.Unlock()
	c.writeTable(tb)
	return tok
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Corrupt: c.corrupt.Load(),
		Evictions: c.evictions.Load(), Fills: c.fills.Load(), Rejected: c.rejected.Load(),
		Dropped: c.dropped.Load(), Bytes: c.bytes.Load(), Capacity: int64(len(c.segs)) * c.segSize,
	}
}

// Flush waits until the fills queued before it are written (for tests
// and benchmarks: production never waits for a fill).
func (c *Cache) Flush(ctx context.Context) error {
	// The queue is FIFO: a marker behind the fills is reached after them.
	ch := make(chan struct{})
	select {
	case c.q <- fill{marker: ch}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errors.New("read cache closed")
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return errors.New("read cache closed")
	}
}

// Close stops the writer (queued fills are dropped), seals the open
// segment so that a restart finds its entries, and closes the files.
func (c *Cache) Close() error {
	var err error
	c.closing.Do(func() {
		c.mu.Lock()
		c.broken = true // lookups miss from now on
		c.mu.Unlock()
		close(c.stop)
		<-c.done
		c.sealing.Wait()
		if c.open != nil {
			err = c.seal(c.open)
		}
		c.closeFiles()
	})
	return err
}

func (c *Cache) closeFiles() {
	for _, s := range c.segs {
		if s.f != nil {
			s.f.Close()
		}
	}
}
