// Package scos names the objects a vdisk keeps on its backend (SCOs and
// TLogs) and defines the Backend interface, its typed errors and fences,
// and the local-directory backend. The erasure-coded backend is package
// scos/ec, the ASD daemon it stores fragments on package scos/asd.
package scos

import (
	"errors"
	"fmt"
	"strconv"
)

// SCOName identifies a Storage Container Object: clone id (8 bit), SCO
// number (32 bit) and version (8 bit, bumped when scrubbing rewrites it).
// Its string form is "cc_nnnnnnnn_vv" in lower-case hex.
type SCOName struct {
	CloneID uint8
	Number  uint32
	Version uint8
}

// ErrBadName is wrapped by every name-parsing error.
var ErrBadName = errors.New("malformed object name")

// String returns the canonical "cc_nnnnnnnn_vv" form.
func (n SCOName) String() string {
	const hex = "0123456789abcdef"
	var b [14]byte
	b[0], b[1] = hex[n.CloneID>>4], hex[n.CloneID&0xf]
	b[2] = '_'
	for i := 0; i < 8; i++ {
		b[3+i] = hex[(n.Number>>(28-4*uint(i)))&0xf]
	}
	b[11] = '_'
	b[12], b[13] = hex[n.Version>>4], hex[n.Version&0xf]
	return string(b[:])
}

// IsZero reports whether n is the zero name. SCO numbers start at 1, so the
// zero name never names a real SCO.
func (n SCOName) IsZero() bool { return n == SCOName{} }

// ParseSCOName parses the canonical form and refuses anything else
// (upper case, wrong lengths, missing separators).
func ParseSCOName(s string) (SCOName, error) {
	if len(s) != 14 || s[2] != '_' || s[11] != '_' {
		return SCOName{}, fmt.Errorf("%w: %q is not cc_nnnnnnnn_vv", ErrBadName, s)
	}
	parse := func(part string, bits int) (uint64, error) {
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return 0, fmt.Errorf("%w: %q has a non-hex digit", ErrBadName, s)
			}
		}
		return strconv.ParseUint(part, 16, bits)
	}
	clone, err := parse(s[0:2], 8)
	if err != nil {
		return SCOName{}, err
	}
	num, err := parse(s[3:11], 32)
	if err != nil {
		return SCOName{}, err
	}
	ver, err := parse(s[12:14], 8)
	if err != nil {
		return SCOName{}, err
	}
	return SCOName{CloneID: uint8(clone), Number: uint32(num), Version: uint8(ver)}, nil
}

// ClusterLocation says where a cluster lives: an SCO and the offset in
// clusters inside it. It packs into 8 bytes:
//
//	bits 63..56 clone id, 55..24 SCO number, 23..16 version, 15..0 offset.
//
// The zero value means "not mapped" (SCO numbers start at 1).
type ClusterLocation struct {
	SCO    SCOName
	Offset uint16
}

// Pack returns the 8-byte packed form.
func (l ClusterLocation) Pack() uint64 {
	return uint64(l.SCO.CloneID)<<56 | uint64(l.SCO.Number)<<24 |
		uint64(l.SCO.Version)<<16 | uint64(l.Offset)
}

// UnpackLocation is the inverse of Pack.
func UnpackLocation(v uint64) ClusterLocation {
	return ClusterLocation{
		SCO: SCOName{
			CloneID: uint8(v >> 56),
			Number:  uint32(v >> 24),
			Version: uint8(v >> 16),
		},
		Offset: uint16(v),
	}
}

// IsZero reports whether l is the "not mapped" location.
func (l ClusterLocation) IsZero() bool { return l == ClusterLocation{} }

func (l ClusterLocation) String() string {
	return l.SCO.String() + "@" + strconv.Itoa(int(l.Offset))
}

// MaxClustersPerSCO bounds the SCO multiplier: offsets are 16 bit.
const MaxClustersPerSCO = 1 << 16
