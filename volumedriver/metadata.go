package volumedriver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"syscall"
)

// The metadata store maps cluster addresses to ClusterLocations (plus the
// cluster's CRC-32C, so that every read can be verified). It is a cache of
// what the TLogs say: it can always be rebuilt by replaying them.
//
// Entries live in pages of 256. Pages are kept in a bounded LRU cache and
// persisted in one sparse file, page n at offset n*pageSlotSize, so a thin
// 1 TiB volume costs nothing until written. A slot of all zeros is an empty
// page; a written slot is:
//
//	[0:4]   "MDP" + format version (2)
//	[4:8]   CRC-32C of bytes [8:pageSlotSize]
//	[8:16]  page number
//	[16:24] generation: the checkpoint the page was written for
//	[24:]   256 entries of 12 bytes: packed location (8), data CRC-32C (4)
//
// A hole or a slot of zeros cannot prove anything, so the file as a whole
// is checked against a summary that state.json keeps for every checkpoint
// (mdSummary: generation, number of non-empty pages, and a digest of their
// numbers and checksums). state.json only carries a summary while the file
// is exactly what it describes: the first write to the file after a
// checkpoint drops it (durably) first. A file that does not match, or that
// has no summary to match, is rebuilt from the TLogs.

const (
	pageEntries    = 256
	mdEntrySize    = 12
	pageHeaderSize = 24
	pageSlotSize   = pageHeaderSize + pageEntries*mdEntrySize
	mdPageMagic    = "MDP"
	mdPageVersion  = 2

	// pageMemSize is what a cached page costs in memory, which the cache
	// budget counts: an mdPage (4152 bytes: its entries take 16 bytes in
	// memory against 12 in the slot) is allocated from the 4864-byte size
	// class, plus its map entry. Counting the slot's 3096 bytes let the
	// cache hold 92 MiB under a 64 MiB budget (the memory bench).
	// TestPageMemSize checks it against the allocator.
	pageMemSize = 4864 + 64
)

// mdSummary describes the metadata store file as a checkpoint left it.
type mdSummary struct {
	Generation uint64 `json:"generation"`
	Pages      uint64 `json:"pages"`
	Digest     uint64 `json:"digest"`
}

// pageDigest is one non-empty slot's share of mdSummary.Digest. The digest
// is a sum so that rewriting a slot updates it without reading the file.
func pageDigest(no uint64, crc uint32) uint64 {
	x := no*0x9e3779b97f4a7c15 ^ uint64(crc)<<17 ^ uint64(crc)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// ErrCorruptMetadata is wrapped by metadata page decoding errors.
var ErrCorruptMetadata = errors.New("corrupt metadata page")

type mdEntry struct {
	loc uint64 // packed scos.ClusterLocation; 0 = not mapped
	crc uint32
}

type mdPage struct {
	no      uint64
	entries [pageEntries]mdEntry
	mapped  int // entries with loc != 0
	dirty   bool
	// onDisk: the file's slot holds this page (non-empty) with checksum
	// diskCRC; what the slot contributes to the file's digest.
	onDisk  bool
	diskCRC uint32
	// maxSeq is the newest change in the page; it may only be written back
	// once the TLog holding that change is durable.
	maxSeq     uint64
	prev, next *mdPage // LRU list, head is most recently used
}

// encodePage writes p's slot image into b (len pageSlotSize), stamped
// with generation gen, and returns its checksum. An empty page encodes as
// all zeros, which is also what a hole in the file reads as.
func encodePage(b []byte, p *mdPage, gen uint64) uint32 {
	clear(b)
	if p.mapped == 0 {
		return 0
	}
	copy(b, mdPageMagic)
	b[3] = mdPageVersion
	binary.LittleEndian.PutUint64(b[8:16], p.no)
	binary.LittleEndian.PutUint64(b[16:24], gen)
	for i, e := range p.entries {
		o := pageHeaderSize + i*mdEntrySize
		binary.LittleEndian.PutUint64(b[o:], e.loc)
		binary.LittleEndian.PutUint32(b[o+8:], e.crc)
	}
	crc := crc32c(b[8:pageSlotSize])
	binary.LittleEndian.PutUint32(b[4:8], crc)
	return crc
}

// decodePage parses a slot image into p, checking magic, version, checksum
// and that the slot holds the page it is expected to hold. An all-zero slot
// decodes as an empty page (p.onDisk false); whether that is right is for
// the caller to say. It returns the page's generation.
func decodePage(b []byte, no uint64, p *mdPage) (uint64, error) {
	gen, err := decodePageImage(b, no, p)
	if err != nil {
		p.mapped = 0
		p.entries = [pageEntries]mdEntry{}
		p.onDisk = false
	}
	return gen, err
}

func decodePageImage(b []byte, no uint64, p *mdPage) (uint64, error) {
	if len(b) != pageSlotSize {
		return 0, fmt.Errorf("%w: slot of %d bytes", ErrCorruptMetadata, len(b))
	}
	p.no = no
	p.mapped = 0
	p.entries = [pageEntries]mdEntry{}
	p.onDisk = false
	if allZero(b) {
		return 0, nil
	}
	if string(b[:3]) != mdPageMagic {
		return 0, fmt.Errorf("%w: page %d: bad magic", ErrCorruptMetadata, no)
	}
	if b[3] != mdPageVersion {
		return 0, fmt.Errorf("%w: page %d: format version %d is not supported (this build reads %d)", ErrCorruptMetadata, no, b[3], mdPageVersion)
	}
	crc := crc32c(b[8:])
	if want := binary.LittleEndian.Uint32(b[4:8]); crc != want {
		return 0, fmt.Errorf("%w: page %d: checksum %08x, stored %08x", ErrCorruptMetadata, no, crc, want)
	}
	if got := binary.LittleEndian.Uint64(b[8:16]); got != no {
		return 0, fmt.Errorf("%w: slot %d holds page %d", ErrCorruptMetadata, no, got)
	}
	gen := binary.LittleEndian.Uint64(b[16:24])
	for i := range p.entries {
		o := pageHeaderSize + i*mdEntrySize
		e := mdEntry{loc: binary.LittleEndian.Uint64(b[o:]), crc: binary.LittleEndian.Uint32(b[o+8:])}
		if e.loc != 0 {
			p.mapped++
		} else if e.crc != 0 {
			return 0, fmt.Errorf("%w: page %d: unmapped entry %d has a checksum", ErrCorruptMetadata, no, i)
		}
		p.entries[i] = e
	}
	if p.mapped == 0 {
		return 0, fmt.Errorf("%w: page %d: stored page without entries", ErrCorruptMetadata, no)
	}
	p.onDisk, p.diskCRC = true, crc
	return gen, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// metadataStore is not safe for concurrent use: the volume's mutex guards it.
type metadataStore struct {
	f        *os.File
	pages    map[uint64]*mdPage
	head     *mdPage // most recently used
	tail     *mdPage
	maxPages int
	// allocated has a bit per page that has mapped entries, in the cache
	// or in the file; pages without it are known empty and never read.
	// Once the file is verified (or rebuilt), a page with the bit that is
	// not cached must have a valid slot: a hole or zeros there is loss.
	allocated bitset
	// beforeWriteBack makes the TLog durable up to seq; a dirty page is
	// only written after it, so the file never refers to a change that a
	// crash could take back.
	beforeWriteBack func(seq uint64) error
	// beforeModify is called before the file is first changed while it
	// matches the summary in state.json (clean): the volume drops the
	// summary from state.json, durably, so that a crash in what follows
	// does not leave a summary that the file no longer matches.
	beforeModify func() error
	clean        bool
	// onCorrupt is called when a page fails verification while the volume
	// runs; it rebuilds the store from the TLogs. If it cannot, the store
	// is broken: every lookup fails from then on rather than read as
	// "never written".
	onCorrupt  func(cause error) error
	rebuilding bool
	broken     error
	// gen is stamped into every page written now: the generation of the
	// next checkpoint. filePages and fileDigest describe the file's
	// non-empty slots (see mdSummary).
	gen        uint64
	filePages  uint64
	fileDigest uint64
	// unsure: a write to the file failed, so its summary is unknown.
	unsure bool
	// changed, if set, hears of every entry that set or trim replaces
	// (old is zero for a cluster that was unmapped, e for a trim): the
	// volume counts its stored and garbage bytes from it.
	changed    func(old, e mdEntry)
	slot       []byte
	dirtyCount int
}

// openMetadataStore opens (or creates) the store file. Its content is not
// trusted until verify accepts it; a caller that does not verify must
// reset it.
func openMetadataStore(path string, cacheBytes int64, numPages uint64) (*metadataStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open metadata store: %w", err)
	}
	maxPages := int(cacheBytes / pageMemSize)
	if maxPages < 16 {
		maxPages = 16
	}
	m := &metadataStore{
		f:        f,
		pages:    make(map[uint64]*mdPage),
		maxPages: maxPages,
		slot:     make([]byte, pageSlotSize),
		gen:      1,
	}
	m.allocated.grow(numPages)
	return m, nil
}

// ErrMetadataMismatch: the store file is not what its checkpoint wrote
// (deleted, truncated, zeroed, rotten or stale). Wraps ErrCorruptMetadata.
var ErrMetadataMismatch = fmt.Errorf("%w: file does not match its checkpoint", ErrCorruptMetadata)

// verify reads every non-empty slot of the file, checks each page (format,
// checksum, slot, generation) and the whole against want. On success the
// store is clean and its allocation map is exact.
func (m *metadataStore) verify(want mdSummary) error {
	fi, err := m.f.Stat()
	if err != nil {
		return fmt.Errorf("metadata store: %w", err)
	}
	size := fi.Size()
	n := m.allocated.len()
	ok := false
	defer func() {
		if !ok { // nothing of it is trusted
			m.allocated = bitset{}
			m.allocated.grow(n)
		}
	}()
	const seekData, seekHole = 3, 4
	const batch = 256
	buf := make([]byte, batch*pageSlotSize)
	var pages, digest uint64
	var p mdPage
	var off int64
	for off < size {
		data, err := m.f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break // no data after off
			}
			// A filesystem without SEEK_DATA: read everything.
			data = off
		}
		hole, err := m.f.Seek(data, seekHole)
		if err != nil {
			hole = size
		}
		for no := data / pageSlotSize; no*pageSlotSize < hole; {
			n := min(int64(batch), (hole-no*pageSlotSize+pageSlotSize-1)/pageSlotSize)
			b := buf[:n*pageSlotSize]
			got, err := m.f.ReadAt(b, no*pageSlotSize)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read metadata store: %w", err)
			}
			clear(b[got:])
			for i := int64(0); i < n; i++ {
				slot := b[i*pageSlotSize : (i+1)*pageSlotSize]
				pno := uint64(no + i)
				gen, err := decodePage(slot, pno, &p)
				if err != nil {
					return fmt.Errorf("%w: %w", ErrMetadataMismatch, err)
				}
				if !p.onDisk {
					continue
				}
				if pno >= m.allocated.len() {
					return fmt.Errorf("%w: page %d is beyond the volume", ErrMetadataMismatch, pno)
				}
				if gen > want.Generation {
					return fmt.Errorf("%w: page %d is of generation %d, the checkpoint of %d", ErrMetadataMismatch, pno, gen, want.Generation)
				}
				m.allocated.set(pno)
				pages++
				digest += pageDigest(pno, p.diskCRC)
			}
			no += n
		}
		off = hole
	}
	if pages != want.Pages || digest != want.Digest {
		return fmt.Errorf("%w: %d pages with digest %016x, the checkpoint wrote %d with %016x",
			ErrMetadataMismatch, pages, digest, want.Pages, want.Digest)
	}
	m.filePages, m.fileDigest = pages, digest
	m.gen = want.Generation + 1
	m.clean = true
	ok = true
	return nil
}

func (m *metadataStore) grow(numPages uint64) { m.allocated.grow(numPages) }

// get returns the entry of cluster addr.
func (m *metadataStore) get(addr uint64) (mdEntry, error) {
	if m.broken != nil {
		return mdEntry{}, m.broken
	}
	no := addr / pageEntries
	if !m.allocated.get(no) {
		return mdEntry{}, nil
	}
	p, err := m.page(no)
	if err != nil {
		return mdEntry{}, err
	}
	return p.entries[addr%pageEntries], nil
}

// set maps cluster addr to e as change number seq.
func (m *metadataStore) set(addr uint64, e mdEntry, seq uint64) error {
	return m.put(addr, e, seq, true)
}

// relocate is set for a cluster whose data moved (a scrub rewrote its
// SCO): the same data, so no change is reported.
func (m *metadataStore) relocate(addr uint64, e mdEntry, seq uint64) error {
	return m.put(addr, e, seq, false)
}

func (m *metadataStore) put(addr uint64, e mdEntry, seq uint64, report bool) error {
	if m.broken != nil {
		return m.broken
	}
	no := addr / pageEntries
	p, err := m.page(no)
	if err != nil {
		return err
	}
	old := &p.entries[addr%pageEntries]
	if old.loc == 0 && e.loc != 0 {
		p.mapped++
	} else if old.loc != 0 && e.loc == 0 {
		p.mapped--
	}
	if report && m.changed != nil {
		m.changed(*old, e)
	}
	*old = e
	m.markDirty(p, seq)
	m.allocated.set(no)
	return nil
}

// trim unmaps count clusters from addr. It touches only allocated pages,
// so trimming a huge, mostly empty range is cheap.
func (m *metadataStore) trim(addr, count, seq uint64) error {
	if m.broken != nil {
		return m.broken
	}
	end := addr + count
	for no := addr / pageEntries; no*pageEntries < end; no++ {
		next, ok := m.allocated.nextSet(no)
		if !ok || next*pageEntries >= end {
			return nil
		}
		no = next
		p, err := m.page(no)
		if err != nil {
			return err
		}
		lo, hi := no*pageEntries, (no+1)*pageEntries
		lo, hi = max(lo, addr), min(hi, end)
		changed := false
		for a := lo; a < hi; a++ {
			e := &p.entries[a%pageEntries]
			if e.loc != 0 {
				if m.changed != nil {
					m.changed(*e, mdEntry{})
				}
				*e = mdEntry{}
				p.mapped--
				changed = true
			}
		}
		if changed {
			m.markDirty(p, seq)
		}
	}
	return nil
}

// run describes a stretch of clusters that are all mapped or all unmapped.
type run struct {
	count  uint64
	mapped bool
}

// runs describes [addr, addr+count) as alternating runs, stopping after
// maxRuns runs.
func (m *metadataStore) runs(addr, count uint64, maxRuns int) ([]run, error) {
	if m.broken != nil {
		return nil, m.broken
	}
	var out []run
	add := func(n uint64, mapped bool) {
		if len(out) > 0 && out[len(out)-1].mapped == mapped {
			out[len(out)-1].count += n
			return
		}
		out = append(out, run{n, mapped})
	}
	end := addr + count
	for a := addr; a < end && len(out) <= maxRuns; {
		no := a / pageEntries
		pageEnd := min((no+1)*pageEntries, end)
		if !m.allocated.get(no) {
			// Skip the whole stretch of empty pages at once.
			next, ok := m.allocated.nextSet(no)
			stop := end
			if ok {
				stop = min(next*pageEntries, end)
			}
			add(stop-a, false)
			a = stop
			continue
		}
		p, err := m.page(no)
		if err != nil {
			return nil, err
		}
		for ; a < pageEnd; a++ {
			add(1, p.entries[a%pageEntries].loc != 0)
		}
	}
	if len(out) > maxRuns {
		out = out[:maxRuns]
	}
	return out, nil
}

func (m *metadataStore) markDirty(p *mdPage, seq uint64) {
	if !p.dirty {
		p.dirty = true
		m.dirtyCount++
	}
	if seq > p.maxSeq {
		p.maxSeq = seq
	}
}

// page returns page no from the cache, loading it (and evicting another)
// as needed. A page that fails verification is not served: the store is
// rebuilt (onCorrupt) and the page looked up again, or the store is broken.
func (m *metadataStore) page(no uint64) (*mdPage, error) {
	if m.broken != nil {
		return nil, m.broken
	}
	p, err := m.loadPage(no)
	if err == nil || !errors.Is(err, ErrCorruptMetadata) {
		return p, err
	}
	if m.onCorrupt == nil || m.rebuilding {
		return nil, err
	}
	m.rebuilding = true
	rerr := m.onCorrupt(err)
	m.rebuilding = false
	if rerr == nil {
		p, rerr = m.loadPage(no)
	}
	if rerr != nil {
		m.broken = fmt.Errorf("metadata store lost (%v) and could not be rebuilt: %w", err, rerr)
		return nil, m.broken
	}
	return p, nil
}

func (m *metadataStore) loadPage(no uint64) (*mdPage, error) {
	if p, ok := m.pages[no]; ok {
		m.touch(p)
		return p, nil
	}
	var p *mdPage
	if len(m.pages) >= m.maxPages {
		victim := m.tail
		if err := m.writeBack(victim); err != nil {
			return nil, err
		}
		m.unlink(victim)
		delete(m.pages, victim.no)
		if victim.mapped == 0 {
			m.allocated.clear(victim.no)
		}
		p = victim // reuse its memory
		*p = mdPage{}
	} else {
		p = new(mdPage)
	}
	if m.allocated.get(no) {
		if _, err := m.f.ReadAt(m.slot, int64(no)*pageSlotSize); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read metadata page %d: %w", no, err)
		} else if errors.Is(err, io.EOF) {
			clear(m.slot)
		}
		if _, err := decodePage(m.slot, no, p); err != nil {
			return nil, fmt.Errorf("metadata page %d: %w", no, err)
		}
		if !p.onDisk {
			// The page had entries; a hole or zeros is a lost page,
			// not an empty one.
			return nil, fmt.Errorf("%w: page %d is missing from the file", ErrCorruptMetadata, no)
		}
	} else {
		p.no = no
	}
	m.pages[no] = p
	m.pushFront(p)
	return p, nil
}

func (m *metadataStore) writeBack(p *mdPage) error {
	if !p.dirty {
		return nil
	}
	if m.beforeWriteBack != nil {
		if err := m.beforeWriteBack(p.maxSeq); err != nil {
			return fmt.Errorf("write back metadata page %d: %w", p.no, err)
		}
	}
	if err := m.modify(); err != nil {
		return err
	}
	crc := encodePage(m.slot, p, m.gen)
	if p.onDisk {
		m.filePages--
		m.fileDigest -= pageDigest(p.no, p.diskCRC)
		p.onDisk = false
	}
	if _, err := m.f.WriteAt(m.slot, int64(p.no)*pageSlotSize); err != nil {
		// The slot's content is unknown now: the file can only be
		// trusted again after a rebuild.
		m.unsure = true
		return fmt.Errorf("write metadata page %d: %w", p.no, err)
	}
	if p.mapped > 0 {
		p.onDisk, p.diskCRC = true, crc
		m.filePages++
		m.fileDigest += pageDigest(p.no, crc)
	}
	p.dirty = false
	m.dirtyCount--
	return nil
}

// modify is called before every change to the file.
func (m *metadataStore) modify() error {
	if !m.clean {
		return nil
	}
	if m.beforeModify != nil {
		if err := m.beforeModify(); err != nil {
			return fmt.Errorf("metadata store: %w", err)
		}
	}
	m.clean = false
	return nil
}

// checkpoint writes every dirty page, makes the file durable and returns
// its summary, for the caller to record in state.json (and then call
// committed). The caller has made the TLogs durable first.
func (m *metadataStore) checkpoint() (mdSummary, error) {
	if m.broken != nil {
		return mdSummary{}, m.broken
	}
	for p := m.head; p != nil; p = p.next {
		if err := m.writeBack(p); err != nil {
			return mdSummary{}, err
		}
	}
	if err := m.f.Sync(); err != nil {
		return mdSummary{}, fmt.Errorf("sync metadata store: %w", err)
	}
	if m.unsure {
		return mdSummary{}, fmt.Errorf("metadata store: a page write failed since the last rebuild")
	}
	return mdSummary{Generation: m.gen, Pages: m.filePages, Digest: m.fileDigest}, nil
}

// committed: state.json now holds the summary checkpoint returned; the
// file is clean until the next change, which is of the next generation.
func (m *metadataStore) committed() {
	m.clean = true
	m.gen++
}

// reset drops every page, in the cache and in the file: the store is
// about to be rebuilt from the TLogs.
func (m *metadataStore) reset() error {
	if err := m.modify(); err != nil {
		return err
	}
	m.pages = make(map[uint64]*mdPage)
	m.head, m.tail = nil, nil
	m.dirtyCount = 0
	n := m.allocated.len()
	m.allocated = bitset{}
	m.allocated.grow(n)
	m.filePages, m.fileDigest = 0, 0
	m.broken = nil
	if err := m.f.Truncate(0); err != nil {
		m.unsure = true
		return fmt.Errorf("reset metadata store: %w", err)
	}
	m.unsure = false
	return nil
}

func (m *metadataStore) close() error { return m.f.Close() }

func (m *metadataStore) touch(p *mdPage) {
	if m.head == p {
		return
	}
	m.unlink(p)
	m.pushFront(p)
}

func (m *metadataStore) unlink(p *mdPage) {
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		m.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		m.tail = p.prev
	}
	p.prev, p.next = nil, nil
}

func (m *metadataStore) pushFront(p *mdPage) {
	p.prev, p.next = nil, m.head
	if m.head != nil {
		m.head.prev = p
	}
	m.head = p
	if m.tail == nil {
		m.tail = p
	}
}

// bitset is a growable set of small integers.
type bitset struct {
	words []uint64
	n     uint64
}

func (b *bitset) len() uint64 { return b.n }

func (b *bitset) grow(n uint64) {
	if n <= b.n {
		return
	}
	b.n = n
	if need := int((n + 63) / 64); need > len(b.words) {
		b.words = append(b.words, make([]uint64, need-len(b.words))...)
	}
}

func (b *bitset) get(i uint64) bool {
	return i < b.n && b.words[i/64]&(1<<(i%64)) != 0
}

func (b *bitset) set(i uint64) {
	if i < b.n {
		b.words[i/64] |= 1 << (i % 64)
	}
}

func (b *bitset) clear(i uint64) {
	if i < b.n {
		b.words[i/64] &^= 1 << (i % 64)
	}
}

// count returns how many bits are set.
func (b *bitset) count() uint64 {
	var n int
	for _, w := range b.words {
		n += bits.OnesCount64(w)
	}
	return uint64(n)
}

// nextSet returns the first set bit >= i.
func (b *bitset) nextSet(i uint64) (uint64, bool) {
	for i < b.n {
		w := b.words[i/64] >> (i % 64)
		if w != 0 {
			i += uint64(bits.TrailingZeros64(w))
			return i, i < b.n
		}
		i = (i/64 + 1) * 64
	}
	return 0, false
}
