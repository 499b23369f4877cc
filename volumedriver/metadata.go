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
//	[0:4]   "MDP" + format version (1)
//	[4:8]   CRC-32C of bytes [8:pageSlotSize]
//	[8:16]  page number
//	[16:]   256 entries of 12 bytes: packed location (8), data CRC-32C (4)

const (
	pageEntries    = 256
	mdEntrySize    = 12
	pageHeaderSize = 16
	pageSlotSize   = pageHeaderSize + pageEntries*mdEntrySize
	mdPageMagic    = "MDP"
	mdPageVersion  = 1
)

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
	// maxSeq is the newest change in the page; it may only be written back
	// once the TLog holding that change is durable.
	maxSeq     uint64
	prev, next *mdPage // LRU list, head is most recently used
}

// encodePage writes p's slot image into b (len pageSlotSize). An empty page
// encodes as all zeros, which is also what a hole in the file reads as.
func encodePage(b []byte, p *mdPage) {
	clear(b)
	if p.mapped == 0 {
		return
	}
	copy(b, mdPageMagic)
	b[3] = mdPageVersion
	binary.LittleEndian.PutUint64(b[8:16], p.no)
	for i, e := range p.entries {
		o := pageHeaderSize + i*mdEntrySize
		binary.LittleEndian.PutUint64(b[o:], e.loc)
		binary.LittleEndian.PutUint32(b[o+8:], e.crc)
	}
	binary.LittleEndian.PutUint32(b[4:8], crc32c(b[8:pageSlotSize]))
}

// decodePage parses a slot image into p, checking magic, version, checksum
// and that the slot holds the page it is expected to hold.
func decodePage(b []byte, no uint64, p *mdPage) error {
	if len(b) != pageSlotSize {
		return fmt.Errorf("%w: slot of %d bytes", ErrCorruptMetadata, len(b))
	}
	p.no = no
	p.mapped = 0
	p.entries = [pageEntries]mdEntry{}
	if allZero(b) {
		return nil
	}
	if string(b[:3]) != mdPageMagic {
		return fmt.Errorf("%w: page %d: bad magic", ErrCorruptMetadata, no)
	}
	if b[3] != mdPageVersion {
		return fmt.Errorf("%w: page %d: format version %d not supported", ErrCorruptMetadata, no, b[3])
	}
	if got, want := crc32c(b[8:]), binary.LittleEndian.Uint32(b[4:8]); got != want {
		return fmt.Errorf("%w: page %d: checksum %08x, stored %08x", ErrCorruptMetadata, no, got, want)
	}
	if got := binary.LittleEndian.Uint64(b[8:16]); got != no {
		return fmt.Errorf("%w: slot %d holds page %d", ErrCorruptMetadata, no, got)
	}
	for i := range p.entries {
		o := pageHeaderSize + i*mdEntrySize
		e := mdEntry{loc: binary.LittleEndian.Uint64(b[o:]), crc: binary.LittleEndian.Uint32(b[o+8:])}
		if e.loc != 0 {
			p.mapped++
		} else if e.crc != 0 {
			return fmt.Errorf("%w: page %d: unmapped entry %d has a checksum", ErrCorruptMetadata, no, i)
		}
		p.entries[i] = e
	}
	if p.mapped == 0 {
		return fmt.Errorf("%w: page %d: stored page without entries", ErrCorruptMetadata, no)
	}
	return nil
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
	// allocated has a bit per page that has (or may have) mapped entries,
	// in the cache or in the file. Pages without it are known empty and
	// are never read from disk.
	allocated bitset
	// beforeWriteBack makes the TLog durable up to seq; a dirty page is
	// only written after it, so the file never refers to a change that a
	// crash could take back.
	beforeWriteBack func(seq uint64) error
	// changed, if set, hears of every entry that set or trim replaces
	// (old is zero for a cluster that was unmapped, e for a trim): the
	// volume counts its stored and garbage bytes from it.
	changed    func(old, e mdEntry)
	slot       []byte
	dirtyCount int
}

func openMetadataStore(path string, cacheBytes int64, numPages uint64) (*metadataStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open metadata store: %w", err)
	}
	maxPages := int(cacheBytes / (pageSlotSize + 64))
	if maxPages < 16 {
		maxPages = 16
	}
	m := &metadataStore{
		f:        f,
		pages:    make(map[uint64]*mdPage),
		maxPages: maxPages,
		slot:     make([]byte, pageSlotSize),
	}
	m.allocated.grow(numPages)
	if err := m.scanAllocated(); err != nil {
		f.Close()
		return nil, err
	}
	return m, nil
}

// scanAllocated marks the pages the file has data for, using SEEK_DATA and
// SEEK_HOLE so that a sparse file is scanned in time proportional to what
// it holds.
func (m *metadataStore) scanAllocated() error {
	fi, err := m.f.Stat()
	if err != nil {
		return fmt.Errorf("metadata store: %w", err)
	}
	size := fi.Size()
	const seekData, seekHole = 3, 4
	var off int64
	for off < size {
		data, err := m.f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break // no data after off
			}
			// A filesystem without SEEK_DATA: treat the file as all data.
			data, err = off, nil
		}
		hole, err := m.f.Seek(data, seekHole)
		if err != nil {
			hole = size
		}
		for p := data / pageSlotSize; p*pageSlotSize < hole; p++ {
			if uint64(p) < m.allocated.len() {
				m.allocated.set(uint64(p))
			}
		}
		off = hole
	}
	return nil
}

func (m *metadataStore) grow(numPages uint64) { m.allocated.grow(numPages) }

// get returns the entry of cluster addr.
func (m *metadataStore) get(addr uint64) (mdEntry, error) {
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
// as needed.
func (m *metadataStore) page(no uint64) (*mdPage, error) {
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
		if err := decodePage(m.slot, no, p); err != nil {
			return nil, err
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
	encodePage(m.slot, p)
	if _, err := m.f.WriteAt(m.slot, int64(p.no)*pageSlotSize); err != nil {
		return fmt.Errorf("write metadata page %d: %w", p.no, err)
	}
	p.dirty = false
	m.dirtyCount--
	return nil
}

// checkpoint writes every dirty page and makes the file durable. The
// caller has made the TLogs durable first.
func (m *metadataStore) checkpoint() error {
	for p := m.head; p != nil; p = p.next {
		if err := m.writeBack(p); err != nil {
			return err
		}
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("sync metadata store: %w", err)
	}
	return nil
}

// reset drops every page, in the cache and in the file: the store is
// about to be rebuilt from the TLogs.
func (m *metadataStore) reset() error {
	m.pages = make(map[uint64]*mdPage)
	m.head, m.tail = nil, nil
	m.dirtyCount = 0
	n := m.allocated.len()
	m.allocated = bitset{}
	m.allocated.grow(n)
	if err := m.f.Truncate(0); err != nil {
		return fmt.Errorf("reset metadata store: %w", err)
	}
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
