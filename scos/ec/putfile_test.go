package ec

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/klauspost/reedsolomon"

	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// The object checksum of the manifest, combined from the data shards'
// checksums when they hold the object exactly, computed otherwise.
func TestObjectCRC(t *testing.T) {
	for _, size := range []int{1, 4095, 4 << 20, 4<<20 + 1, 3 * 64} {
		data := bytes.Repeat([]byte("0123456789abcdefg"), size/17+1)[:size]
		b := &Backend{encoders: map[[2]int]reedsolomon.Encoder{}}
		shards, err := b.encode(Policy{K: 4, M: 2, C: 5}, data)
		if err != nil {
			t.Fatal(err)
		}
		crcs := make([]uint32, 4)
		for i := range crcs {
			crcs[i] = crc32c.Checksum(shards[i])
		}
		if got, want := objectCRC(data, shards[:4], crcs), crc32c.Checksum(data); got != want {
			t.Errorf("%d bytes: objectCRC %08x, want %08x", size, got, want)
		}
	}
}

// PutFile reads each file into a recycled buffer that also takes the
// parity: objects stored one after another, in parallel, from buffers
// the pool hands round, must all read back as written (a buffer recycled
// while a fragment write still used it would corrupt an earlier one).
func TestPutFileRecyclesBuffers(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	if err := e.b.CreateNamespace(ctx, "ns1"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sizes := []int{1, 4095, 1 << 20, 4 << 20, 4<<20 - 7, 3 << 20}
	objs := map[string][]byte{}
	var wg sync.WaitGroup
	errs := make(chan error, 4*len(sizes))
	for round := 0; round < 4; round++ {
		for i, n := range sizes {
			name := fmt.Sprintf("obj-%d-%d", round, i)
			data := randBytes(uint64(round*100+i), n)
			objs[name] = data
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f, err := os.Open(path)
				if err != nil {
					errs <- err
					return
				}
				defer f.Close()
				errs <- e.b.PutFile(ctx, "ns1", name, f, true)
			}()
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range objs {
		checkGet(t, e.b, "ns1", name, data)
	}
}

// encode into a buffer with room for the parity whose spare bytes hold
// garbage (a recycled buffer) gives the shards reedsolomon.Split and
// Encode give on a fresh copy: the padding is zeroed, the parity
// overwritten whole.
func TestEncodeInPlace(t *testing.T) {
	pol := Policy{K: 4, M: 2, C: 5}
	ref, err := reedsolomon.New(pol.K, pol.M)
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{encoders: map[[2]int]reedsolomon.Encoder{}}
	for _, tc := range []struct {
		name       string
		size, room int
	}{
		{"no padding", 4 << 20, int(shardsLen(pol, 4<<20))},
		{"padded", 4<<20 - 7, int(shardsLen(pol, 4<<20-7))},
		{"one byte", 1, int(shardsLen(pol, 1))},
		{"no room (Split allocates)", 4095, 4095},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := randBytes(uint64(tc.size), tc.size)
			buf := bytes.Repeat([]byte{0xEE}, tc.room)
			copy(buf, data)
			shards, err := b.encode(pol, buf[:tc.size])
			if err != nil {
				t.Fatal(err)
			}
			want, err := ref.Split(bytes.Clone(data))
			if err != nil {
				t.Fatal(err)
			}
			if err := ref.Encode(want); err != nil {
				t.Fatal(err)
			}
			if len(shards) != len(want) {
				t.Fatalf("%d shards, want %d", len(shards), len(want))
			}
			for i := range want {
				if !bytes.Equal(shards[i], want[i]) {
					t.Fatalf("shard %d differs from Split and Encode's", i)
				}
			}
		})
	}
}
