package volumedriver

import (
	"errors"
	"path/filepath"
	"runtime"
	"testing"
)

func TestPageEncodeDecode(t *testing.T) {
	p := &mdPage{no: 42}
	p.entries[0] = mdEntry{loc: 1 << 24, crc: 7}
	p.entries[255] = mdEntry{loc: 5<<24 | 3, crc: 0xffffffff}
	p.mapped = 2
	b := make([]byte, pageSlotSize)
	crc := encodePage(b, p, 7)
	var q mdPage
	gen, err := decodePage(b, 42, &q)
	if err != nil {
		t.Fatal(err)
	}
	if q.entries != p.entries || q.mapped != 2 || gen != 7 || !q.onDisk || q.diskCRC != crc {
		t.Fatal("round trip changed the page")
	}
	for name, mutate := range map[string]func([]byte){
		"checksum": func(b []byte) { b[100] ^= 1 },
		"magic":    func(b []byte) { b[0] = 'X' },
		"version":  func(b []byte) { b[3] = 9 },
		"version1": func(b []byte) { b[3] = 1 },
		"gen":      func(b []byte) { b[16]++ },
	} {
		c := append([]byte(nil), b...)
		mutate(c)
		if _, err := decodePage(c, 42, &q); !errors.Is(err, ErrCorruptMetadata) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := decodePage(b, 43, &q); !errors.Is(err, ErrCorruptMetadata) {
		t.Errorf("page in the wrong slot: %v", err)
	}
	// An empty page is all zeros, like a hole.
	encodePage(b, &mdPage{no: 1}, 1)
	if !allZero(b) {
		t.Error("empty page is not all zeros")
	}
}

func TestMetadataStoreEviction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "md")
	m, err := openMetadataStore(path, 1, 1000) // 16 pages cached
	if err != nil {
		t.Fatal(err)
	}
	var wroteBackUpTo uint64
	m.beforeWriteBack = func(seq uint64) error {
		wroteBackUpTo = max(wroteBackUpTo, seq)
		return nil
	}
	for a := uint64(0); a < 1000*pageEntries; a += 97 {
		if err := m.set(a, mdEntry{loc: a + 1, crc: uint32(a)}, a+1); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.pages) > 16 || wroteBackUpTo == 0 {
		t.Fatalf("cache holds %d pages, wrote back up to %d", len(m.pages), wroteBackUpTo)
	}
	sum, err := m.checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	m.close()
	m, err = openMetadataStore(path, 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	if err := m.verify(sum); err != nil {
		t.Fatal(err)
	}
	for a := uint64(0); a < 1000*pageEntries; a++ {
		e, err := m.get(a)
		if err != nil {
			t.Fatal(err)
		}
		want := mdEntry{}
		if a%97 == 0 {
			want = mdEntry{loc: a + 1, crc: uint32(a)}
		}
		if e != want {
			t.Fatalf("cluster %d: %+v want %+v", a, e, want)
		}
	}
	if err := m.trim(0, 1000*pageEntries, 1<<40); err != nil {
		t.Fatal(err)
	}
	runs, _ := m.runs(0, 1000*pageEntries, 10)
	if len(runs) != 1 || runs[0].mapped {
		t.Fatalf("after trim: %+v", runs)
	}
}

func TestBitsetNextSet(t *testing.T) {
	var b bitset
	b.grow(300)
	for _, i := range []uint64{3, 64, 299} {
		b.set(i)
	}
	for _, tc := range [][2]uint64{{0, 3}, {3, 3}, {4, 64}, {65, 299}} {
		if got, ok := b.nextSet(tc[0]); !ok || got != tc[1] {
			t.Errorf("nextSet(%d) = %d %v", tc[0], got, ok)
		}
	}
	if _, ok := b.nextSet(300); ok {
		t.Error("nextSet past the end")
	}
}

func FuzzDecodePage(f *testing.F) {
	b := make([]byte, pageSlotSize)
	p := &mdPage{no: 3, mapped: 1}
	p.entries[7] = mdEntry{loc: 1 << 24, crc: 9}
	encodePage(b, p, 1)
	f.Add(b, uint64(3))
	f.Add(make([]byte, pageSlotSize), uint64(0))
	f.Add([]byte("MDP"), uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, no uint64) {
		var q mdPage
		gen, err := decodePage(data, no, &q)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same image.
		out := make([]byte, pageSlotSize)
		encodePage(out, &q, gen)
		if string(out) != string(data) {
			t.Fatal("decoded page does not re-encode to its image")
		}
	})
}

// The cache budget counts pageMemSize per page: it must cover what a page
// really costs the allocator.
func TestPageMemSize(t *testing.T) {
	const n = 1000
	pages := make([]*mdPage, 0, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		pages = append(pages, new(mdPage))
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	if per > pageMemSize-32 {
		t.Fatalf("a metadata page takes %d bytes of the heap, pageMemSize counts %d with its map entry", per, pageMemSize)
	}
	if per < pageMemSize/2 {
		t.Fatalf("a metadata page takes %d bytes of the heap; pageMemSize (%d) overcounts it, the cache holds too few", per, pageMemSize)
	}
	runtime.KeepAlive(pages)
}
