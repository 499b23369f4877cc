package arakoon

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// encoder appends the primitive fields of every arakoon format (network
// payloads, log commands, stored records) to a byte slice.
type encoder struct{ b []byte }

func (e *encoder) u8(v byte)        { e.b = append(e.b, v) }
func (e *encoder) u64(v uint64)     { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) bytes(v []byte)   { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) boolean(v bool)   { e.u8(boolByte(v)) }
func (e *encoder) optBytes(v []byte) { // nil is "absent", distinct from empty
	if v == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	e.bytes(v)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// errTruncated is what a decoder reports for input that ends early.
var errTruncated = errors.New("truncated")

// decoder reads what encoder wrote. The first error sticks: later reads
// return zero values, and err() reports it. It never panics and never
// allocates more than the input could hold.
type decoder struct {
	b   []byte
	off int
	e   error
}

func newDecoder(b []byte) *decoder { return &decoder{b: b} }

func (d *decoder) fail(format string, args ...any) {
	if d.e == nil {
		d.e = fmt.Errorf(format, args...)
	}
}

func (d *decoder) err() error { return d.e }

func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) u8() byte {
	if d.e != nil {
		return 0
	}
	if d.remaining() < 1 {
		d.e = errTruncated
		return 0
	}
	v := d.b[d.off]
	d.off++
	return v
}

func (d *decoder) u64() uint64 {
	if d.e != nil {
		return 0
	}
	if d.remaining() < 8 {
		d.e = errTruncated
		return 0
	}
	v := binary.BigEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.e != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		if n == 0 {
			d.e = errTruncated
		} else {
			d.e = errors.New("varint overflows 64 bits")
		}
		return 0
	}
	if n > 1 && d.b[d.off+n-1] == 0 {
		d.e = errors.New("overlong varint") // one value, one encoding
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) boolean() bool {
	switch v := d.u8(); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.fail("bad boolean %d", v)
		return false
	}
}

// bytes reads a length-prefixed byte string of at most max bytes (what
// is a field of a message) into a fresh slice; empty is []byte{}, never nil.
func (d *decoder) bytes(what string, max int) []byte {
	n := d.uvarint()
	if d.e != nil {
		return nil
	}
	if n > uint64(max) {
		d.fail("%s of %d bytes exceeds the limit of %d", what, n, max)
		return nil
	}
	if n > uint64(d.remaining()) {
		d.e = errTruncated
		return nil
	}
	v := make([]byte, n)
	copy(v, d.b[d.off:])
	d.off += int(n)
	return v
}

func (d *decoder) optBytes(what string, max int) []byte {
	switch p := d.u8(); p {
	case 0:
		return nil
	case 1:
		return d.bytes(what, max)
	default:
		if d.e == nil {
			d.fail("bad presence flag %d for %s", p, what)
		}
		return nil
	}
}

func (d *decoder) str(what string, max int) string { return string(d.bytes(what, max)) }

// count reads an element count and checks that the rest of the input can
// hold that many elements of at least minSize bytes each, so that a forged
// count cannot make the reader allocate more than the input justifies.
func (d *decoder) count(what string, minSize int) int {
	n := d.uvarint()
	if d.e != nil {
		return 0
	}
	if minSize < 1 {
		minSize = 1
	}
	if n > uint64(d.remaining()/minSize) {
		d.fail("%s count %d exceeds what the remaining %d bytes can hold", what, n, d.remaining())
		return 0
	}
	return int(n)
}

// finish reports the first error, or trailing bytes after a complete message.
func (d *decoder) finish() error {
	if d.e != nil {
		return d.e
	}
	if d.remaining() != 0 {
		return fmt.Errorf("%d trailing bytes", d.remaining())
	}
	return nil
}
