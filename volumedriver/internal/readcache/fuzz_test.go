package readcache

import (
	"bytes"
	"testing"
)

// FuzzParse feeds arbitrary bytes to every parser of the cache's on-disk
// structures: none may panic, and what one accepts must encode back to
// the same value. The first byte picks the parser.
func FuzzParse(f *testing.F) {
	h := segHeader{state: stateSealed, segSize: 1 << 20, seq: 7, summaryOff: 8192, summaryN: 2, dataEnd: 8192}
	recs := []record{{token: 1, loc: 2, off: segHeaderRegion, length: 4096, dataCRC: 3}, {token: 1, loc: 3, off: segHeaderRegion + 4096, length: 8192}}
	sum := encodeSummary(recs)
	h.summaryCRC = crc(sum)
	f.Add(append([]byte{0}, h.encode()...))
	f.Add(append([]byte{2}, sum...))
	f.Add(append([]byte{1}, encodeTable(map[string]uint64{"vd-a": 1, "vd-b": 2})...))
	f.Add(append([]byte{1}, encodeTable(nil)...))
	f.Add([]byte{0, 'O', 'V', 'S'})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		b := in[1:]
		switch in[0] % 3 {
		case 0:
			h, err := decodeSegHeader(b)
			if err == nil && !bytes.Equal(h.encode(), b[:segHeaderSize]) {
				t.Fatalf("segment header does not round-trip")
			}
		case 2:
			// Both with the real checksum (to reach the record checks)
			// and with a wrong one.
			recs, err := decodeSummary(b, crc(b), 1<<20)
			if err == nil && !bytes.Equal(encodeSummary(recs), b) {
				t.Fatalf("summary does not round-trip")
			}
			if _, err := decodeSummary(b, crc(b)+1, 1<<20); err == nil && len(b) > 0 {
				t.Fatalf("summary with a wrong checksum accepted")
			}
		case 1:
			tab, err := decodeTable(b)
			if err == nil {
				again, err := decodeTable(encodeTable(tab))
				if err != nil || len(again) != len(tab) {
					t.Fatalf("namespace table does not round-trip: %v", err)
				}
			}
		}
	})
}
