package volumedriver

import (
	"errors"
	"testing"
)

func TestTLogRoundTrip(t *testing.T) {
	in := []tlogRecord{
		{Type: recWrite, DataCRC: 0xdeadbeef, Addr: 7, Loc: 1 << 24},
		{Type: recTrim, Addr: 100, Count: 5000},
		{Type: recSync},
		{Type: recWrite, DataCRC: 1, Addr: 1<<40 + 3, Loc: 2<<24 | 9},
	}
	b := tlogHeader()
	for _, r := range in {
		b = appendRecord(b, r)
	}
	out, valid, err := decodeTLog(b)
	if err != nil || valid != len(b) || len(out) != len(in) {
		t.Fatalf("decode: %d records, valid %d of %d, %v", len(out), valid, len(b), err)
	}
	for i := range in {
		if in[i] != out[i] {
			t.Errorf("record %d: got %+v want %+v", i, out[i], in[i])
		}
	}
	// A torn tail keeps the valid prefix.
	torn := append(append([]byte{}, b...), b[8:20]...)
	out, valid, err = decodeTLog(torn)
	if err == nil || valid != len(b) || len(out) != len(in) {
		t.Fatalf("torn: %d records valid %d err %v", len(out), valid, err)
	}
	// A flipped bit stops decoding at that record.
	flipped := append([]byte{}, b...)
	flipped[8+32+10] ^= 1
	out, valid, err = decodeTLog(flipped)
	if !errors.Is(err, ErrCorruptTLog) || len(out) != 1 || valid != 8+32 {
		t.Fatalf("flipped: %d records valid %d err %v", len(out), valid, err)
	}
}

func TestTLogHeaderRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":   nil,
		"short":   []byte("OVST"),
		"magic":   []byte("NOTATLOG"),
		"version": append([]byte(tlogMagic), 9),
	} {
		if _, _, err := decodeTLog(b); !errors.Is(err, ErrCorruptTLog) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

func FuzzDecodeTLog(f *testing.F) {
	b := tlogHeader()
	b = appendRecord(b, tlogRecord{Type: recWrite, DataCRC: 5, Addr: 1, Loc: 1 << 24})
	b = appendRecord(b, tlogRecord{Type: recTrim, Addr: 1, Count: 3})
	b = appendRecord(b, tlogRecord{Type: recSync})
	f.Add(b)
	f.Add(tlogHeader())
	f.Add([]byte("OVSTLOG\x02"))
	f.Add(b[:50])
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, valid, err := decodeTLog(data)
		if valid > len(data) || valid < 0 {
			t.Fatalf("valid %d out of range", valid)
		}
		if err == nil && valid != len(data) {
			t.Fatalf("no error but only %d of %d bytes valid", valid, len(data))
		}
		// Re-encoding the valid records gives back the valid prefix.
		if valid >= tlogHeaderSize {
			re := tlogHeader()
			for _, r := range recs {
				re = appendRecord(re, r)
			}
			if string(re) != string(data[:valid]) {
				t.Fatalf("re-encoded %d bytes, valid prefix %d", len(re), valid)
			}
		}
	})
}
