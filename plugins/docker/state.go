package docker

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The plugin's state directory holds, per volume, a directory
// STATE/volumes/<volume>/ with
//
//	volume.json  volumeRecord: what Create was asked (the filesystem to make)
//	mount.json   mountRecord: the volume is mounted on this host
//	nbd/         where nbdfuse shows the vdisk as the file nbd/disk
//	fs/          where the filesystem is mounted: the Mountpoint Docker gets
//
// The cluster is the truth about which host has a volume mounted (its
// attachment record); these files are what this host needs to find its
// own mounts again after a restart of the plugin.

// recordVersion is the first field of every record; a reader refuses
// another version.
const recordVersion = 1

// volumeRecord is what Create leaves for the first Mount on this host.
type volumeRecord struct {
	Version int    `json:"version"`
	VDisk   string `json:"vdisk"`
	FS      string `json:"fs"`
}

// mountRecord is a volume mounted on this host.
type mountRecord struct {
	Version int    `json:"version"`
	VDisk   string `json:"vdisk"`
	FS      string `json:"fs"`
	// Device is the block device the filesystem is on (/dev/loopN).
	Device string `json:"device"`
	// FusePID is nbdfuse's pid (0: none), FuseMount where it serves.
	FusePID   int    `json:"fuse_pid,omitempty"`
	FuseMount string `json:"fuse_mount,omitempty"`
	// Mountpoint is the filesystem's mount point.
	Mountpoint string `json:"mountpoint"`
	// Users are Docker's mount ids (one per container using it).
	Users []string `json:"users"`
}

type stateDir string

func (d stateDir) volumeDir(volume string) string {
	return filepath.Join(string(d), "volumes", volume)
}

func (d stateDir) volumes() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(string(d), "volumes"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// readRecord reads volume's record file into v; found is false if there
// is none.
func readRecord[T any](d stateDir, volume, file string, v *T) (found bool, err error) {
	path := filepath.Join(d.volumeDir(volume), file)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return false, fmt.Errorf("%s is damaged: %w", path, err)
	}
	if head.Version != recordVersion {
		return false, fmt.Errorf("%s has version %d; this ovs reads version %d", path, head.Version, recordVersion)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s is damaged: %w", path, err)
	}
	return true, nil
}

// writeRecord replaces volume's record file atomically (write, fsync,
// rename, fsync the directory): a crash leaves the old or the new one.
func writeRecord(d stateDir, volume, file string, v any) error {
	dir := d.volumeDir(volume)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", file, err)
	}
	tmp, err := os.CreateTemp(dir, file+".tmp-*")
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, file)); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
	return nil
}

func removeRecord(d stateDir, volume, file string) error {
	err := os.Remove(filepath.Join(d.volumeDir(volume), file))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}
