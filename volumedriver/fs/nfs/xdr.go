package nfs

import (
	"encoding/binary"
	"errors"
)

// errGarbage marks arguments that do not decode; the RPC layer answers
// GARBAGE_ARGS for it.
var errGarbage = errors.New("nfs: malformed XDR")

// xdrReader decodes XDR (RFC 4506) from one RPC record. The first error
// sticks, and every later read returns zero values, so that a handler can
// decode all its arguments and check err once: a short or hostile record
// can never index past the buffer.
type xdrReader struct {
	b   []byte
	err error
}

func (r *xdrReader) fail() {
	if r.err == nil {
		r.err = errGarbage
	}
	r.b = nil
}

func (r *xdrReader) u32() uint32 {
	if r.err != nil || len(r.b) < 4 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *xdrReader) u64() uint64 {
	if r.err != nil || len(r.b) < 8 {
		r.fail()
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *xdrReader) bool() bool {
	v := r.u32()
	if v > 1 {
		r.fail()
		return false
	}
	return v == 1
}

// fixed reads n bytes plus padding to a multiple of 4. The slice aliases
// the record.
func (r *xdrReader) fixed(n int) []byte {
	if r.err != nil || n < 0 {
		r.fail()
		return nil
	}
	padded := (n + 3) &^ 3
	if padded < n || len(r.b) < padded {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[padded:]
	return v
}

// opaque reads a variable-length opaque of at most max bytes.
func (r *xdrReader) opaque(max int) []byte {
	n := r.u32()
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(max) {
		r.fail()
		return nil
	}
	return r.fixed(int(n))
}

func (r *xdrReader) string(max int) string { return string(r.opaque(max)) }

// xdrWriter appends XDR to a buffer.
type xdrWriter struct{ b []byte }

func (w *xdrWriter) u32(v uint32) { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *xdrWriter) u64(v uint64) { w.b = binary.BigEndian.AppendUint64(w.b, v) }

func (w *xdrWriter) bool(v bool) {
	if v {
		w.u32(1)
	} else {
		w.u32(0)
	}
}

func (w *xdrWriter) fixed(p []byte) {
	w.b = append(w.b, p...)
	for i := len(p); i%4 != 0; i++ {
		w.b = append(w.b, 0)
	}
}

func (w *xdrWriter) opaque(p []byte) {
	w.u32(uint32(len(p)))
	w.fixed(p)
}

func (w *xdrWriter) string(s string) {
	w.u32(uint32(len(s)))
	w.b = append(w.b, s...)
	for i := len(s); i%4 != 0; i++ {
		w.b = append(w.b, 0)
	}
}
