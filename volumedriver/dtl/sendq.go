package dtl

// sendQueue is the Shipper's queue of encoded frames: a list of fixed-size
// chunks, so that queueing never copies what is already queued (a single
// growing buffer would, under the volume's write lock) and the writer sends
// the chunks with one writev.
type sendQueue struct {
	chunks [][]byte // the last one is being filled
	size   int      // bytes queued
	free   [][]byte // empty chunks for reuse
}

const (
	chunkSize = 256 << 10
	// maxFreeChunks bounds the chunks kept for reuse (4 MiB).
	maxFreeChunks = 16
)

// write appends p to the queue.
func (q *sendQueue) write(p []byte) {
	q.size += len(p)
	for len(p) > 0 {
		n := len(q.chunks)
		if n == 0 || len(q.chunks[n-1]) == cap(q.chunks[n-1]) {
			q.chunks = append(q.chunks, q.get())
			n++
		}
		c := q.chunks[n-1]
		k := min(cap(c)-len(c), len(p))
		q.chunks[n-1] = append(c, p[:k]...)
		p = p[k:]
	}
}

func (q *sendQueue) get() []byte {
	if n := len(q.free); n > 0 {
		c := q.free[n-1]
		q.free = q.free[:n-1]
		return c
	}
	return make([]byte, 0, chunkSize)
}

// take hands every queued chunk to the caller, who gives them back with
// put once written.
func (q *sendQueue) take() [][]byte {
	c := q.chunks
	q.chunks, q.size = nil, 0
	return c
}

func (q *sendQueue) put(chunks [][]byte) {
	for _, c := range chunks {
		if len(q.free) >= maxFreeChunks {
			return
		}
		if cap(c) == chunkSize {
			q.free = append(q.free, c[:0])
		}
	}
}

// reset drops everything (the shipper ended).
func (q *sendQueue) reset() { *q = sendQueue{} }
