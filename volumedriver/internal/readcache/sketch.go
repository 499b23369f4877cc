package readcache

import "sync"

// sketch is a count-min sketch of 4-bit-range counters (kept in bytes,
// saturating at 15) with periodic halving: the frequency estimate of
// TinyLFU. It costs depth bytes per counter slot, about 4 bytes per cache
// entry, and forgets old popularity so that a new working set can win.
type sketch struct {
	mu      sync.Mutex
	rows    [4][]uint8
	mask    uint64
	adds    int
	resetAt int
}

func newSketch(entries int) *sketch {
	w := 1024
	for w < entries {
		w <<= 1
	}
	s := &sketch{mask: uint64(w - 1), resetAt: 10 * w}
	for i := range s.rows {
		s.rows[i] = make([]uint8, w)
	}
	return s
}

var sketchSeeds = [4]uint64{0x9e3779b97f4a7c15, 0xc2b2ae3d27d4eb4f, 0x165667b19e3779f9, 0xd6e8feb86659fd93}

func (s *sketch) slot(h uint64, i int) uint64 {
	x := (h ^ sketchSeeds[i]) * 0xff51afd7ed558ccd
	return (x ^ x>>29) & s.mask
}

// addRun counts one access to each of the n keys keyHash(tok, loc+i),
// under one lock.
func (s *sketch) addRun(tok, loc uint64, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range n {
		h := keyHash(tok, loc+uint64(i))
		for r := range s.rows {
			if c := &s.rows[r][s.slot(h, r)]; *c < 15 {
				*c++
			}
		}
		s.adds++
	}
	if s.adds >= s.resetAt {
		s.adds /= 2
		for r := range s.rows {
			for j := range s.rows[r] {
				s.rows[r][j] >>= 1
			}
		}
	}
}

// estimate is the (over-)estimated recent access count of h.
func (s *sketch) estimate(h uint64) uint8 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := uint8(255)
	for i := range s.rows {
		m = min(m, s.rows[i][s.slot(h, i)])
	}
	return m
}
