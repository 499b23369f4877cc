package iopool

import (
	"bufio"
	"bytes"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
)

// countingWriter records what reaches the socket and in how many writes.
type countingWriter struct {
	buf    bytes.Buffer
	writes int
	err    error
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.writes++
	return w.buf.Write(p)
}

// TestReplyWriterBatches: a reply with another queued behind it is not
// flushed alone; the last one flushes both in one write.
func TestReplyWriterBatches(t *testing.T) {
	cw := &countingWriter{}
	w := NewReplyWriter(bufio.NewWriterSize(cw, 4096), func(err error) { t.Errorf("write failed: %v", err) })
	if !w.Lock() {
		t.Fatal("Lock on a fresh writer failed")
	}
	second := make(chan struct{})
	go func() {
		defer close(second)
		w.Lock()
		w.WriteString("two")
		w.Unlock()
	}()
	for w.waiting.Load() == 0 {
		runtime.Gosched()
	}
	w.Write(append(w.Buf(3), "one"...))
	w.Unlock()
	<-second
	if cw.buf.String() != "onetwo" || cw.writes != 1 {
		t.Fatalf("socket got %q in %d writes; want \"onetwo\" in 1", cw.buf.String(), cw.writes)
	}
}

func TestReplyWriterFails(t *testing.T) {
	boom := errors.New("boom")
	cw := &countingWriter{err: boom}
	var failures atomic.Int32
	w := NewReplyWriter(bufio.NewWriterSize(cw, 16), func(err error) {
		if !errors.Is(err, boom) {
			t.Errorf("onFail(%v); want boom", err)
		}
		failures.Add(1)
	})
	for range 3 {
		if w.Lock() {
			w.Write(make([]byte, 64)) // larger than the buffer: written through
			w.Flush()
		}
		w.Unlock()
	}
	if failures.Load() != 1 {
		t.Fatalf("onFail called %d times; want 1", failures.Load())
	}
	if w.Lock() {
		t.Fatal("Lock succeeded after a write error")
	}
	w.Unlock()
}

// TestWorkersOverlap: a request that blocks does not hold up the next
// one, and Wait waits for both.
func TestWorkersOverlap(t *testing.T) {
	release := make(chan struct{})
	var done atomic.Int32
	ws := NewWorkers(func(j int) {
		if j == 0 {
			<-release
		} else {
			close(release)
		}
		done.Add(1)
	})
	ws.Go(0)
	ws.Go(1)
	ws.Wait()
	if done.Load() != 2 {
		t.Fatalf("%d requests served; want 2", done.Load())
	}
}
