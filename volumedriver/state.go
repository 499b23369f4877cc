package volumedriver

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Objects in a vdisk's backend namespace besides its SCOs and TLogs.
const (
	volumeObject    = "volume.json"
	snapshotsObject = "snapshots.json"
	formatVersion   = 1
)

// volumeConfig is volume.json: what a host needs to know to serve the
// vdisk, stored in its backend namespace.
type volumeConfig struct {
	Format         int       `json:"format"`
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Size           int64     `json:"size"`
	ClusterSize    int       `json:"cluster_size"`
	SCOMultiplier  int       `json:"sco_multiplier"`
	TLogMultiplier int       `json:"tlog_multiplier"`
	CreatedAt      time.Time `json:"created_at"`
	// Template: read-only, clones are made from its latest snapshot.
	Template bool `json:"template,omitempty"`
	// Ancestors of a clone, parent first: unwritten clusters resolve to
	// the parent's snapshot, and so on up the chain.
	Ancestors []ancestor `json:"ancestors,omitempty"`
}

// ancestor is one link of a clone's chain: a vdisk's namespace and the
// TLogs that make up the snapshot the chain was cloned from.
type ancestor struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Snapshot  string   `json:"snapshot"`
	TLogs     []string `json:"tlogs"`
}

// MaxCloneDepth: a location's clone id is 8 bits, 0 being the vdisk itself.
const MaxCloneDepth = 255

func (c volumeConfig) validate() error {
	if c.Format != formatVersion {
		return fmt.Errorf("volume.json format %d is not supported (this build reads %d)", c.Format, formatVersion)
	}
	// The id names the volume's directory and namespace: a corrupt one
	// must not reach a path.
	if !validID(c.ID) || !validName(c.Name) {
		return fmt.Errorf("volume.json: bad id %q or name %q", c.ID, c.Name)
	}
	if err := checkLayout(c.ClusterSize, c.SCOMultiplier); err != nil {
		return fmt.Errorf("volume.json: %w", err)
	}
	if c.TLogMultiplier < 1 || c.TLogMultiplier > 1024 {
		return fmt.Errorf("volume.json: tlog multiplier %d out of range", c.TLogMultiplier)
	}
	if err := checkSize(c.Size, c.ClusterSize); err != nil {
		return fmt.Errorf("volume.json: %w", err)
	}
	if len(c.Ancestors) > MaxCloneDepth {
		return fmt.Errorf("volume.json: clone chain of %d is deeper than %d", len(c.Ancestors), MaxCloneDepth)
	}
	for _, a := range c.Ancestors {
		if a.Namespace == "" || !validID(a.ID) {
			return fmt.Errorf("volume.json: ancestor without id or namespace")
		}
		for _, t := range a.TLogs {
			if !validTLogName(t) {
				return fmt.Errorf("volume.json: ancestor %s: bad tlog name %q", a.Name, t)
			}
		}
	}
	return nil
}

// snapshotsFile is snapshots.json: the ordered TLogs whose replay gives the
// volume's current state. (Snapshots themselves come with their own issue;
// the field is reserved so that the format does not change.)
type snapshotsFile struct {
	Format    int              `json:"format"`
	TLogs     []string         `json:"tlogs"`
	Snapshots []snapshotRecord `json:"snapshots"`
}

// snapshotRecord is a named cut in the TLog sequence: the volume as it was
// after replaying the first TLogCount TLogs.
type snapshotRecord struct {
	Name      string    `json:"name"`
	UUID      string    `json:"uuid"`
	CreatedAt time.Time `json:"created_at"`
	Metadata  string    `json:"metadata,omitempty"`
	TLogCount int       `json:"tlog_count"`
	// NextSCO was the next SCO number when the snapshot was taken: every
	// SCO from it on was written after the snapshot.
	NextSCO uint32 `json:"next_sco"`
	// WrittenBytes written between the previous snapshot and this one.
	WrittenBytes int64 `json:"written_bytes"`
}

func decodeSnapshotsFile(b []byte) (snapshotsFile, error) {
	var s snapshotsFile
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("snapshots.json: %w", err)
	}
	if s.Format != formatVersion {
		return s, fmt.Errorf("snapshots.json format %d is not supported (this build reads %d)", s.Format, formatVersion)
	}
	for _, t := range s.TLogs {
		if !validTLogName(t) {
			return s, fmt.Errorf("snapshots.json: bad tlog name %q", t)
		}
	}
	if err := checkSnapshots(s.Snapshots, len(s.TLogs)); err != nil {
		return s, fmt.Errorf("snapshots.json: %w", err)
	}
	return s, nil
}

func decodeVolumeConfig(b []byte) (volumeConfig, error) {
	var c volumeConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("volume.json: %w", err)
	}
	return c, c.validate()
}

// localState is state.json in the volume's local directory: the host-local
// bookkeeping that lets a restart pick up where the volume stopped.
type localState struct {
	Format int          `json:"format"`
	Config volumeConfig `json:"config"`
	// Epoch is the owner epoch under which this host serves the vdisk
	// (0 outside a cluster). State recorded under another epoch is from
	// an earlier tenure: another host may have written since, so it is
	// never replayed (see Driver.openVolume).
	Epoch uint64 `json:"epoch,omitempty"`
	// Sealed lists every sealed TLog in order (the open one excluded).
	Sealed []sealedTLog `json:"sealed"`
	// Checkpoint: the metadata store file holds every change of
	// Sealed[:Checkpoint]; a restart replays from there.
	Checkpoint int `json:"checkpoint"`
	// MD describes the metadata store file as the last checkpoint left
	// it; nil once the file changed since (it is then rebuilt from the
	// TLogs on restart).
	MD *mdSummary `json:"md,omitempty"`
	// OpenTLogBytes: the checkpoint also covers the open TLog's first
	// OpenTLogBytes bytes (all flushed). A restart that finds fewer valid
	// bytes knows that flushed records were lost, not a torn tail.
	OpenTLogBytes int64 `json:"open_tlog_bytes,omitempty"`
	// Lost: SCOs that were missing from the write buffer before they
	// reached the backend; their clusters read as I/O errors.
	Lost []uint32 `json:"lost,omitempty"`
	// OpenTLog is the TLog being written; OpenFirstSCO the first SCO
	// number it may use (SCO files from there on not named by its valid
	// records are leftovers of a crash).
	OpenTLog     string `json:"open_tlog"`
	OpenFirstSCO uint32 `json:"open_first_sco"`
	WrittenBytes int64  `json:"written_bytes"`
	// StoredBytes and GarbageBytes as of the checkpoint (see garbage.go).
	StoredBytes  int64 `json:"stored_bytes,omitempty"`
	GarbageBytes int64 `json:"garbage_bytes,omitempty"`
	// Snapshots in order; each covers a prefix of Sealed.
	Snapshots []snapshotRecord `json:"snapshots"`
	// Garbage: backend objects that a rollback discarded, to be deleted.
	Garbage []garbage `json:"garbage,omitempty"`
}

// garbage is what one rollback discarded: TLogs by name and the SCO
// numbers [SCOFrom, SCOTo).
type garbage struct {
	TLogs   []string `json:"tlogs"`
	SCOFrom uint32   `json:"sco_from"`
	SCOTo   uint32   `json:"sco_to"`
	// Objects named one by one (SCO versions a scrub replaced).
	Objects []string `json:"objects,omitempty"`
	// NotBefore gives reads that resolved a location before the change
	// time to finish before the objects go.
	NotBefore time.Time `json:"not_before,omitempty"`
}

// checkSnapshots: names unique and valid, cuts in order and in range.
func checkSnapshots(snaps []snapshotRecord, tlogs int) error {
	seen := map[string]bool{}
	prev := 0
	for _, sn := range snaps {
		if !validName(sn.Name) || seen[sn.Name] {
			return fmt.Errorf("bad or duplicate snapshot name %q", sn.Name)
		}
		seen[sn.Name] = true
		if sn.TLogCount < prev || sn.TLogCount > tlogs {
			return fmt.Errorf("snapshot %q: tlog count %d out of order or range", sn.Name, sn.TLogCount)
		}
		prev = sn.TLogCount
	}
	return nil
}

type sealedTLog struct {
	Name     string `json:"name"`
	Uploaded bool   `json:"uploaded"`
	// SCOs the TLog refers to; kept until it is uploaded.
	SCOs []uint32 `json:"scos,omitempty"`
	// Bytes of SCO and TLog data still to upload.
	PendingBytes int64 `json:"pending_bytes,omitempty"`
	// The volume's stored and garbage bytes once this TLog was written
	// (see garbage.go): a restart after a crash starts from them.
	StoredBytes  int64 `json:"stored_bytes,omitempty"`
	GarbageBytes int64 `json:"garbage_bytes,omitempty"`
}

// errNewerFormat: a file written by a newer build; it is left alone.
var errNewerFormat = errors.New("written by a newer version of ovs")

func readLocalState(dir string) (localState, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return localState{}, err
	}
	return decodeLocalState(b)
}

// decodeLocalState parses and checks state.json.
func decodeLocalState(b []byte) (localState, error) {
	var s localState
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("state.json: %w", err)
	}
	if s.Format > formatVersion {
		return s, fmt.Errorf("%w: state.json format %d (this build reads %d)", errNewerFormat, s.Format, formatVersion)
	}
	if s.Format != formatVersion {
		return s, fmt.Errorf("state.json format %d is not supported", s.Format)
	}
	if s.Checkpoint < 0 || s.Checkpoint > len(s.Sealed) {
		return s, fmt.Errorf("state.json: checkpoint %d out of range", s.Checkpoint)
	}
	// TLog names become file names in the volume's directory.
	for _, t := range s.Sealed {
		if !validTLogName(t.Name) {
			return s, fmt.Errorf("state.json: bad tlog name %q", t.Name)
		}
	}
	if s.OpenTLog != "" && !validTLogName(s.OpenTLog) {
		return s, fmt.Errorf("state.json: bad open tlog name %q", s.OpenTLog)
	}
	if err := checkSnapshots(s.Snapshots, len(s.Sealed)); err != nil {
		return s, fmt.Errorf("state.json: %w", err)
	}
	return s, s.Config.validate()
}

// writeLocalState replaces state.json atomically and durably.
func writeLocalState(dir string, s *localState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "state.json"), b)
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

const tlogPrefix = "tlog_"

func newTLogName() string { return tlogPrefix + newUUID() }

func validTLogName(s string) bool {
	if len(s) != len(tlogPrefix)+36 || s[:len(tlogPrefix)] != tlogPrefix {
		return false
	}
	for i, c := range s[len(tlogPrefix):] {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// validName: vdisk names are 1-64 characters of [A-Za-z0-9._-], starting
// with a letter or digit (they become NBD export names and file names).
func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// Layout and size limits.
const (
	DefaultClusterSize   = 4096
	DefaultSCOMultiplier = 1024
	minSCOSize           = 4 << 20
	maxSCOSize           = 128 << 20
	// MaxVolumeSize bounds a vdisk: the metadata store keeps one bit of
	// memory per MiB of volume.
	MaxVolumeSize = 64 << 40
)

func checkLayout(clusterSize, scoMultiplier int) error {
	switch clusterSize {
	case 4096, 8192, 16384, 32768, 65536:
	default:
		return fmt.Errorf("%w: cluster size %d (allowed: 4, 8, 16, 32 or 64 KiB)", ErrInvalidArgument, clusterSize)
	}
	sco := int64(clusterSize) * int64(scoMultiplier)
	if scoMultiplier < 1 || scoMultiplier > 1<<16 || sco < minSCOSize || sco > maxSCOSize {
		return fmt.Errorf("%w: SCO size %d x %d clusters must be 4-128 MiB", ErrInvalidArgument, clusterSize, scoMultiplier)
	}
	return nil
}

func checkSize(size int64, clusterSize int) error {
	if size <= 0 {
		return fmt.Errorf("%w: size must be positive", ErrInvalidArgument)
	}
	if size%512 != 0 {
		return fmt.Errorf("%w: size %d is not a multiple of 512 bytes", ErrInvalidArgument, size)
	}
	if size > MaxVolumeSize {
		return fmt.Errorf("%w: size %d is larger than the maximum of 64 TiB", ErrInvalidArgument, size)
	}
	return nil
}

// tlogMultiplierFor: a TLog rolls over after 64 MiB of SCOs (16 for 4 MiB
// SCOs, 1 for 64 MiB ones).
func tlogMultiplierFor(scoSize int64) int {
	return int(max(1, (64<<20)/scoSize))
}
