// Package memdev is the sparse in-memory block store under the wire
// servers' test devices (nbd and remote): pages never written, or
// trimmed, are holes that read as zeros. The test devices add their hooks
// and counters around it.
package memdev

import (
	"context"
	"fmt"
	"sync"

	"github.com/ovs-storage/ovs/volumedriver/internal/blockdev"
)

// PageSize is the unit of allocation.
const PageSize = 4096

// Pages is a sparse store of a fixed size; it is safe for concurrent use.
type Pages struct {
	mu    sync.RWMutex
	size  int64
	pages [][]byte // nil: hole
}

// New returns a store of size bytes, all holes.
func New(size int64) *Pages {
	return &Pages{size: size, pages: make([][]byte, (size+PageSize-1)/PageSize)}
}

// Size returns the store's size in bytes.
func (s *Pages) Size() int64 { return s.size }

// Page returns page i, nil for a hole. The caller must not write to it.
func (s *Pages) Page(i int) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pages[i]
}

// Check reports a range that is not within the store.
func (s *Pages) Check(off, n int64) error {
	if off < 0 || n < 0 || off+n > s.size {
		return fmt.Errorf("range %d+%d outside size %d", off, n, s.size)
	}
	return nil
}

// Read fills p from off (within the store).
func (s *Pages) Read(p []byte, off int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.readLocked(p, off)
}

func (s *Pages) readLocked(p []byte, off int64) {
	for len(p) > 0 {
		pi, po := int(off/PageSize), int(off%PageSize)
		n := min(len(p), PageSize-po)
		if pg := s.pages[pi]; pg != nil {
			copy(p[:n], pg[po:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+int64(n)
	}
}

// Write stores p at off (within the store).
func (s *Pages) Write(p []byte, off int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeLocked(p, off)
}

func (s *Pages) writeLocked(p []byte, off int64) {
	for len(p) > 0 {
		pi, po := int(off/PageSize), int(off%PageSize)
		n := min(len(p), PageSize-po)
		if s.pages[pi] == nil {
			s.pages[pi] = make([]byte, PageSize)
		}
		copy(s.pages[pi][po:], p[:n])
		p, off = p[n:], off+int64(n)
	}
}

// CompareAndWrite writes data at off if the store holds cmp there, as one
// step under the store's lock, so concurrent callers never both succeed
// (blockdev.CompareAndWriter; devices that embed *Pages implement it). It
// returns the offset of the first differing byte, or -1 when it wrote.
func (s *Pages) CompareAndWrite(_ context.Context, off int64, cmp, data []byte, _ bool) (int64, error) {
	if err := blockdev.CheckCompareAndWrite(cmp, data); err != nil {
		return 0, err
	}
	if err := s.Check(off, int64(len(cmp))); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := make([]byte, len(cmp))
	s.readLocked(cur, off)
	if i := blockdev.Mismatch(cur, cmp); i >= 0 {
		return i, nil
	}
	s.writeLocked(data, off)
	return -1, nil
}

// Zero clears [off, off+n): whole pages become holes unless keep.
func (s *Pages) Zero(off, n int64, keep bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n > 0 {
		pi, po := int(off/PageSize), int(off%PageSize)
		l := min(n, int64(PageSize-po))
		switch {
		case po == 0 && l == PageSize && !keep:
			s.pages[pi] = nil
		case s.pages[pi] != nil:
			clear(s.pages[pi][po : po+int(l)])
		case keep:
			s.pages[pi] = make([]byte, PageSize)
		}
		off, n = off+l, n-l
	}
}

// Extents describes [off, off+n) (within the store), neighbours of one
// state merged: holes are Hole and Zero; with seeZeros allocated runs of
// zeros are Zero too.
func (s *Pages) Extents(off, n int64, seeZeros bool) []blockdev.Extent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var exts []blockdev.Extent
	for n > 0 {
		pi, po := int(off/PageSize), int(off%PageSize)
		l := min(n, int64(PageSize-po))
		var e blockdev.Extent
		switch pg := s.pages[pi]; {
		case pg == nil:
			e = blockdev.Extent{Length: l, Hole: true, Zero: true}
		case seeZeros && isZero(pg[po:po+int(l)]):
			e = blockdev.Extent{Length: l, Zero: true}
		default:
			e = blockdev.Extent{Length: l}
		}
		if k := len(exts) - 1; k >= 0 && exts[k].Hole == e.Hole && exts[k].Zero == e.Zero {
			exts[k].Length += l
		} else {
			exts = append(exts, e)
		}
		off, n = off+l, n-l
	}
	return exts
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
