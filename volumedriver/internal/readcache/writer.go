package readcache

import (
	"fmt"
)

// writer appends queued fills to the open segment in batches: one write
// system call per batch, then the batch enters the index.
func (c *Cache) writer() {
	defer close(c.done)
	batch := make([]fill, 0, batchMax)
	for {
		select {
		case f := <-c.q:
			batch = append(batch[:0], f)
		case <-c.stop:
			return
		}
		bytes := len(batch[0].data)
	more:
		for len(batch) < batchMax && bytes < batchBytes {
			select {
			case f := <-c.q:
				batch = append(batch, f)
				bytes += len(f.data)
			default:
				break more
			}
		}
		c.writeBatch(batch)
		for i := range batch {
			c.queued.Add(-int64(len(batch[i].data)))
			if batch[i].buf != nil {
				c.bufs.Put(batch[i].buf)
			}
			if batch[i].marker != nil {
				close(batch[i].marker)
			}
			batch[i] = fill{}
		}
	}
}

// pendingWrite is the part of a batch gathered for the open segment.
type pendingWrite struct {
	seg   *segment
	start uint64
	recs  []record
}

func (c *Cache) writeBatch(batch []fill) {
	w := pendingWrite{}
	buf := c.wbuf[:0]
	for _, f := range batch {
		if f.marker != nil {
			continue
		}
		tok := c.tokenFor(f.ns)
		for i := 0; i < len(f.data)/f.size; i++ {
			loc, data := f.loc+uint64(i), f.data[i*f.size:(i+1)*f.size]
			h := keyHash(tok, loc)
			c.mu.RLock()
			_, dup := c.index[h]
			broken := c.broken
			c.mu.RUnlock()
			if dup || broken {
				continue
			}
			if c.full && !c.noAdmit && !c.admit(h) {
				c.rejected.Add(1)
				continue
			}
			size := uint64(len(data))
			if s := c.open; s == nil || s.dataEnd+size+uint64(len(s.recs)+len(w.recs)+1)*recSize > uint64(c.segSize) {
				c.commit(&w, buf)
				buf = buf[:0]
				if err := c.rotate(); err != nil {
					c.log.Error("read cache: cannot open a segment; fills are dropped", "err", err)
					c.wbuf = buf
					return
				}
			}
			s := c.open
			if w.seg == nil {
				w = pendingWrite{seg: s, start: s.dataEnd}
			}
			var sum uint32
			if f.crcs != nil {
				sum = f.crcs[i]
			} else {
				sum = crc(data)
			}
			r := record{token: tok, loc: loc, off: uint32(s.dataEnd), length: uint32(len(data)), dataCRC: sum}
			buf = append(buf, data...)
			w.recs = append(w.recs, r)
			s.dataEnd += size
		}
	}
	c.commit(&w, buf)
	c.wbuf = buf[:0]
}

// commit writes the gathered entries and puts them in the index.
func (c *Cache) commit(w *pendingWrite, buf []byte) {
	defer func() { *w = pendingWrite{} }()
	if w.seg == nil || len(w.recs) == 0 {
		return
	}
	if _, err := w.seg.f.WriteAt(buf, int64(w.start)); err != nil {
		// The space is lost until the segment is reclaimed; the
		// entries are simply not cached.
		c.log.Warn("read cache: write failed; fills dropped", "segment", w.seg.path, "err", err)
		return
	}
	c.mu.Lock()
	for _, r := range w.recs {
		h := keyHash(r.token, r.loc)
		if old, ok := c.index[h]; ok {
			c.bytes.Add(-posLen(old))
		}
		c.index[h] = pos(w.seg.idx, r.off, r.length)
		w.seg.crcs[r.off/slotSize] = r.dataCRC
		c.bytes.Add(int64(r.length))
	}
	w.seg.recs = append(w.seg.recs, w.recs...)
	c.mu.Unlock()
	c.fills.Add(uint64(len(w.recs)))
}

// admit is TinyLFU's admission test against the entry FIFO order evicts
// next: the candidate must have been asked for more often, recently.
func (c *Cache) admit(h uint64) bool {
	v, ok := c.nextVictim()
	if !ok {
		return true
	}
	return c.sk.estimate(h) > c.sk.estimate(keyHash(v.token, v.loc))
}

// nextVictim walks the entries of the segment to be reclaimed next, one
// per call. Writer goroutine.
func (c *Cache) nextVictim() (record, bool) {
	c.mu.RLock()
	s := c.oldestSealedLocked()
	var seq uint64
	if s != nil {
		seq = s.seq
	}
	c.mu.RUnlock()
	if s == nil {
		return record{}, false
	}
	if c.victimSeg != s || c.victimSeq != seq {
		c.victimSeg, c.victimSeq, c.victimPos = s, seq, 0
		c.victims = nil
		if h, err := c.readHeader(s); err == nil && h.state == stateSealed {
			c.victims, _ = c.readSummary(s, h)
		}
	}
	if len(c.victims) == 0 {
		return record{}, false
	}
	v := c.victims[c.victimPos%len(c.victims)]
	c.victimPos++
	return v, true
}

func (c *Cache) readHeader(s *segment) (segHeader, error) {
	hb := make([]byte, segHeaderSize)
	if _, err := s.f.ReadAt(hb, 0); err != nil {
		return segHeader{}, err
	}
	return decodeSegHeader(hb)
}

// oldestSealedLocked is the sealed segment with the lowest sequence.
func (c *Cache) oldestSealedLocked() *segment {
	var o *segment
	for _, s := range c.segs {
		if s.state == stateSealed && (o == nil || s.seq < o.seq) {
			o = s
		}
	}
	return o
}

// rotate seals the open segment and opens the next one: an empty segment
// if there is one, else the oldest, whose entries are evicted.
func (c *Cache) rotate() error {
	if s := c.open; s != nil {
		// Sealed beside the writer: the seal syncs the segment's data
		// (64 MiB by default) first, and fills that came meanwhile were
		// dropped while the writer waited for it (a tenth of a cold
		// sequential read's, measured). The segment becomes a victim
		// only once sealed (its state says so).
		c.sealing.Add(1)
		go func() {
			defer c.sealing.Done()
			if err := c.seal(s); err != nil {
				c.log.Warn("read cache: could not seal a segment; its entries will not survive a restart", "segment", s.path, "err", err)
			}
		}()
	}
	c.mu.Lock()
	c.open = nil
	next := c.nextToOpenLocked()
	c.mu.Unlock()
	if next == nil {
		// Every other segment is still being sealed (a cache of few
		// segments): wait for them.
		c.sealing.Wait()
		c.mu.Lock()
		next = c.nextToOpenLocked()
		c.mu.Unlock()
	}
	if next == nil {
		return fmt.Errorf("no segment to reclaim")
	}
	if next.state == stateSealed {
		c.reclaim(next)
	}
	c.mu.Lock()
	next.state, next.seq, next.dataEnd, next.recs = stateOpen, c.nextSeq, segHeaderRegion, nil
	c.nextSeq++
	h := segHeader{state: stateOpen, segSize: uint64(c.segSize), seq: next.seq}
	c.mu.Unlock()
	if _, err := next.f.WriteAt(h.encode(), 0); err != nil {
		c.mu.Lock()
		next.state = stateEmpty
		c.mu.Unlock()
		return fmt.Errorf("segment %s: %w", next.path, err)
	}
	c.mu.Lock()
	c.open = next
	c.mu.Unlock()
	return nil
}

// nextToOpenLocked is the segment to open next: an empty one if there is
// one, else the oldest sealed one (whose entries are then evicted); nil
// if there is neither. Under c.mu.
func (c *Cache) nextToOpenLocked() *segment {
	for _, s := range c.segs {
		if s.state == stateEmpty {
			return s
		}
	}
	c.full = true
	return c.oldestSealedLocked()
}

// reclaim evicts every entry of sealed segment s.
func (c *Cache) reclaim(s *segment) {
	var recs []record
	if c.victimSeg == s && c.victimSeq == s.seq && c.victims != nil {
		recs = c.victims
	} else if h, err := c.readHeader(s); err == nil && h.state == stateSealed {
		recs, _ = c.readSummary(s, h)
	}
	c.victimSeg, c.victims = nil, nil
	c.mu.Lock()
	defer c.mu.Unlock()
	s.gen.Add(1)
	var n uint64
	if recs != nil {
		for _, r := range recs {
			h := keyHash(r.token, r.loc)
			if p, ok := c.index[h]; ok && p == pos(s.idx, r.off, r.length) {
				delete(c.index, h)
				c.bytes.Add(-int64(r.length))
				n++
			}
		}
	} else {
		// No readable summary: find its entries the slow way.
		for h, p := range c.index {
			if int(p>>48) == s.idx {
				c.bytes.Add(-posLen(p))
				delete(c.index, h)
				n++
			}
		}
	}
	c.evictions.Add(n)
	s.state = stateEmpty
}

// seal writes the open segment's summary after its data and marks it
// sealed. The data is synced first, so that a sealed header never names
// entries that a power loss took (they would only fail their CRC, but be
// counted as corrupt).
func (c *Cache) seal(s *segment) error {
	// Sealed in memory even if the writes fail: it is then reclaimed in
	// turn (its header on disk says open, so a restart drops it).
	defer func() {
		c.mu.Lock()
		s.state, s.recs = stateSealed, nil
		c.mu.Unlock()
	}()
	c.mu.RLock()
	recs := s.recs
	h := segHeader{state: stateSealed, segSize: uint64(c.segSize), seq: s.seq, dataEnd: s.dataEnd,
		summaryOff: s.dataEnd, summaryN: uint32(len(recs))}
	c.mu.RUnlock()
	sum := encodeSummary(recs)
	h.summaryCRC = crc(sum)
	if err := s.f.Sync(); err != nil {
		return err
	}
	if _, err := s.f.WriteAt(sum, int64(h.summaryOff)); err != nil {
		return err
	}
	_, err := s.f.WriteAt(h.encode(), 0)
	return err
}
