package iopool

import (
	"bufio"
	"sync"
	"sync/atomic"
)

// ReplyWriter writes the replies of one connection, each whole, from the
// goroutines that serve its requests. It batches them: a reply is flushed
// to the socket only when no other reply is queued behind it (the last one
// flushes them all), so that under load many replies share one write.
//
// A reply is written between Lock and Unlock with Buf, Write and
// WriteString; after the first write error the rest are dropped and the
// failure callback tears the connection down.
type ReplyWriter struct {
	mu      sync.Mutex
	bw      *bufio.Writer
	waiting atomic.Int32 // goroutines queued for mu
	err     error
	onFail  func(error)
}

// NewReplyWriter returns a writer of replies to bw. onFail is called, with
// the writer held, on the first write error.
func NewReplyWriter(bw *bufio.Writer, onFail func(error)) *ReplyWriter {
	return &ReplyWriter{bw: bw, onFail: onFail}
}

// Lock takes the writer for one reply. It reports false when the
// connection can no longer be written to. Unlock must follow either way.
func (w *ReplyWriter) Lock() bool {
	w.waiting.Add(1)
	w.mu.Lock()
	w.waiting.Add(-1)
	return w.err == nil
}

// Unlock releases the writer, flushing the buffered replies unless another
// reply is queued behind this one (it will flush them).
func (w *ReplyWriter) Unlock() {
	if w.err == nil && w.waiting.Load() == 0 && w.bw.Buffered() > 0 {
		if err := w.bw.Flush(); err != nil {
			w.Fail(err)
		}
	}
	w.mu.Unlock()
}

// Err returns the write error, if any (writer held).
func (w *ReplyWriter) Err() error { return w.err }

// Fail records a write error (writer held) and, the first time, calls
// the failure callback.
func (w *ReplyWriter) Fail(err error) {
	if w.err != nil {
		return
	}
	w.err = err
	w.onFail(err)
}

// Flush writes out the buffered replies now (writer held).
func (w *ReplyWriter) Flush() {
	if w.err != nil {
		return
	}
	if err := w.bw.Flush(); err != nil {
		w.Fail(err)
	}
}

// Buf returns an empty slice with room for n bytes in the write buffer
// (writer held), flushing it first if needed: a header appended to it and
// passed to Write is not copied twice.
func (w *ReplyWriter) Buf(n int) []byte {
	if w.bw.Available() < n {
		if err := w.bw.Flush(); err != nil {
			w.Fail(err)
		}
	}
	b := w.bw.AvailableBuffer()
	if cap(b) < n { // only after a failed flush
		return make([]byte, 0, n)
	}
	return b[:0]
}

// Write writes b (writer held).
func (w *ReplyWriter) Write(b []byte) {
	if w.err != nil {
		return
	}
	if _, err := w.bw.Write(b); err != nil {
		w.Fail(err)
	}
}

// WriteString writes s (writer held).
func (w *ReplyWriter) WriteString(s string) {
	if w.err != nil {
		return
	}
	if _, err := w.bw.WriteString(s); err != nil {
		w.Fail(err)
	}
}

// Workers hands the requests of one connection to worker goroutines that
// live as long as the connection: each request goes to an idle worker, or
// to a new one when none is idle, so that a slow request does not hold up
// the ones behind it and a request does not pay for a fresh goroutine's
// stack. Only the connection's reader calls Go and Wait.
type Workers[J any] struct {
	jobs     chan J
	handle   func(J)
	inflight sync.WaitGroup
}

// NewWorkers returns workers that serve each request with handle.
func NewWorkers[J any](handle func(J)) *Workers[J] {
	return &Workers[J]{jobs: make(chan J), handle: handle}
}

// Go serves j on a worker.
func (w *Workers[J]) Go(j J) {
	w.inflight.Add(1)
	select {
	case w.jobs <- j:
	default:
		go w.work(j)
	}
}

func (w *Workers[J]) work(first J) {
	w.handle(first)
	w.inflight.Done()
	for j := range w.jobs {
		w.handle(j)
		w.inflight.Done()
	}
}

// Wait waits for the requests handed over to be served and ends the
// workers. Go must not be called after.
func (w *Workers[J]) Wait() {
	close(w.jobs)
	w.inflight.Wait()
}
