package dtl

import "time"

import "fmt"

// Kind is the kind of an Entry.
type Kind uint8

// Kinds of entries.
const (
	Write Kind = 1
	Trim  Kind = 2
)

func (k Kind) String() string {
	switch k {
	case Write:
		return "write"
	case Trim:
		return "trim"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// frame is the frame type that carries entries of kind k.
func (k Kind) frame() frameType {
	if k == Write {
		return ftWrite
	}
	return ftTrim
}

// Entry is one change. Write: Count clusters at Addr, Data is
// Count*clusterSize bytes, CRCs has Count CRC-32C (Castagnoli) values, one
// per cluster. Trim: Count clusters at Addr, no data.
type Entry struct {
	Kind  Kind
	Addr  uint64
	Count uint32
	CRCs  []uint32
	Data  []byte
}

// State is the state of a Shipper.
type State int

// States of a Shipper. Broken and Fenced are final.
const (
	Connecting State = iota
	Connected
	Broken
	Fenced
)

func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Broken:
		return "broken"
	case Fenced:
		return "fenced"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// GroupInfo describes one group (the entries of one TLog) on a DTL server.
type GroupInfo struct {
	TLog, Prev string
	Entries    int
	Bytes      int64  // on disk, file header included
	Epoch      uint64 // of the session that began the group
}

// VDiskInfo describes what a DTL server holds for one vdisk.
type VDiskInfo struct {
	VDisk  string
	Epoch  uint64 // the fence
	Groups int
	Bytes  int64
	// Session: an owner ships to it now. Changed: the last time a
	// session changed what the server holds (or the server loaded it).
	Session bool
	Changed time.Time
}
