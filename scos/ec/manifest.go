package ec

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// Manifest describes one stored object of the erasure-coded backend: its
// size and checksum, the policy it was encoded with, and where each of its
// k+m fragments lives. Fragment i (data for i < k, parity after) is stored
// under the key FragmentKey(i) on the ASD Fragments[i].ASD. Every fragment
// is FragmentSize bytes; the object is the first Size bytes of the data
// fragments laid end to end.
type Manifest struct {
	ObjectID     [16]byte // random per put: an overwrite never reuses keys
	Size         int64
	CRC32C       uint32 // of the whole object
	Policy       Policy
	Preset       string
	FragmentSize int64
	Created      int64 // Unix nanoseconds
	Fragments    []FragmentLocation
}

// FragmentLocation is where one fragment lives and its checksum.
type FragmentLocation struct {
	ASD    string `json:"asd"`
	CRC32C uint32 `json:"crc32c"`
}

// FragmentKey is the ASD key of fragment i: "<object id>-<index>".
func (m *Manifest) FragmentKey(i int) string {
	return fmt.Sprintf("%s-%02x", hex.EncodeToString(m.ObjectID[:]), i)
}

// ID returns the object id in hex.
func (m *Manifest) ID() string { return hex.EncodeToString(m.ObjectID[:]) }

// Manifest encoding, version 1 (little-endian):
//
//	"OVSM" version(1) flags(0)
//	k m c x (1 byte each)
//	preset: length (1) + bytes
//	object id (16)  size (8)  crc32c (4)  fragment size (8)  created (8)
//	fragment count (1), then per fragment: ASD id length (1) + bytes, crc32c (4)
//	CRC-32C of everything before (4)
const (
	manifestMagic   = "OVSM"
	manifestVersion = 1
	maxASDIDLen     = 64
	maxPresetLen    = 64
	// MaxFragments bounds k+m.
	MaxFragments = 64
)

// Encode returns the manifest's binary form.
func (m *Manifest) Encode() []byte {
	b := make([]byte, 0, 64+len(m.Preset)+len(m.Fragments)*24)
	b = append(b, manifestMagic...)
	b = append(b, manifestVersion, 0)
	b = append(b, byte(m.Policy.K), byte(m.Policy.M), byte(m.Policy.C), byte(m.Policy.X))
	b = append(b, byte(len(m.Preset)))
	b = append(b, m.Preset...)
	b = append(b, m.ObjectID[:]...)
	le := binary.LittleEndian
	b = le.AppendUint64(b, uint64(m.Size))
	b = le.AppendUint32(b, m.CRC32C)
	b = le.AppendUint64(b, uint64(m.FragmentSize))
	b = le.AppendUint64(b, uint64(m.Created))
	b = append(b, byte(len(m.Fragments)))
	for _, f := range m.Fragments {
		b = append(b, byte(len(f.ASD)))
		b = append(b, f.ASD...)
		b = le.AppendUint32(b, f.CRC32C)
	}
	return le.AppendUint32(b, crc32c.Checksum(b))
}

// fragmentSizeFor is the size of each fragment of an object of size bytes
// split into k data fragments.
func fragmentSizeFor(size int64, k int) int64 {
	return (size + int64(k) - 1) / int64(k)
}

// DecodeManifest decodes and validates a manifest. It refuses anything
// malformed with scos.ErrCorrupt and a newer version with scos.ErrUnsupportedFormat;
// it never panics.
func DecodeManifest(b []byte) (*Manifest, error) {
	bad := func(format string, args ...any) (*Manifest, error) {
		return nil, fmt.Errorf("%w: manifest: %s", scos.ErrCorrupt, fmt.Sprintf(format, args...))
	}
	if len(b) < 6 || string(b[:4]) != manifestMagic {
		return bad("bad magic")
	}
	if b[4] != manifestVersion {
		return nil, fmt.Errorf("%w: manifest version %d (this build reads version %d)", scos.ErrUnsupportedFormat, b[4], manifestVersion)
	}
	if len(b) < 10 {
		return bad("truncated")
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[len(b)-4:]), crc32c.Checksum(b[:len(b)-4]); got != want {
		return bad("checksum %08x, computed %08x", got, want)
	}
	r := manifestReader{b: b[:len(b)-4], p: 5}
	m := &Manifest{}
	if r.byte() != 0 {
		return bad("unknown flags")
	}
	m.Policy = Policy{K: int(r.byte()), M: int(r.byte()), C: int(r.byte()), X: int(r.byte())}
	m.Preset = string(r.bytes(int(r.byte())))
	copy(m.ObjectID[:], r.bytes(16))
	m.Size = int64(r.u64())
	m.CRC32C = r.u32()
	m.FragmentSize = int64(r.u64())
	m.Created = int64(r.u64())
	n := int(r.byte())
	for i := 0; i < n && !r.short; i++ {
		id := string(r.bytes(int(r.byte())))
		m.Fragments = append(m.Fragments, FragmentLocation{ASD: id, CRC32C: r.u32()})
	}
	if r.short {
		return bad("truncated")
	}
	if r.p != len(r.b) {
		return bad("%d bytes of trailing garbage", len(r.b)-r.p)
	}
	if err := m.Policy.Validate(); err != nil {
		return bad("%v", err)
	}
	if len(m.Preset) > maxPresetLen || !scos.ValidName(m.Preset) {
		return bad("preset name %q", m.Preset)
	}
	if m.Size < 0 || m.Size > maxObjectSize {
		return bad("size %d", m.Size)
	}
	if m.Size == 0 {
		if n != 0 || m.FragmentSize != 0 || m.CRC32C != 0 {
			return bad("an empty object with fragments")
		}
		return m, nil
	}
	if n != m.Policy.K+m.Policy.M {
		return bad("%d fragments for policy %s", n, m.Policy)
	}
	if m.FragmentSize != fragmentSizeFor(m.Size, m.Policy.K) {
		return bad("fragment size %d for %d bytes over %d data fragments", m.FragmentSize, m.Size, m.Policy.K)
	}
	for i, f := range m.Fragments {
		if f.ASD == "" || len(f.ASD) > maxASDIDLen || !scos.ValidName(f.ASD) {
			return bad("fragment %d: ASD id %q", i, f.ASD)
		}
	}
	return m, nil
}

// maxObjectSize bounds one object: 1 GiB (SCOs are at most 128 MiB).
const maxObjectSize = 1 << 30

type manifestReader struct {
	b     []byte
	p     int
	short bool
}

func (r *manifestReader) bytes(n int) []byte {
	if r.short || n > len(r.b)-r.p {
		r.short = true
		return nil
	}
	out := r.b[r.p : r.p+n]
	r.p += n
	return out
}

func (r *manifestReader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *manifestReader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *manifestReader) u64() uint64 {
	if b := r.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}
