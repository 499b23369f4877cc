package docker

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/volumedriver"
)

// DefaultPrefix starts the name of every vdisk the plugin makes: it marks
// them as Docker volumes (List shows only those), and keeps Docker's
// names from meeting the vdisks of VMs.
const DefaultPrefix = "docker-"

// DefaultSize is the size of a volume created without a size option.
const DefaultSize = 10 << 30

// createOptions are the parsed `docker volume create --opt` options.
type createOptions struct {
	size       int64  // 0: DefaultSize, or the parent's for a clone
	fs         string // "ext4" or "xfs"
	parent     string // from=VDISK@SNAP: clone of parent's snapshot
	parentSnap string
}

// knownOptions are the options Create takes; anything else is refused, so
// that a typo does not quietly make a volume other than the one asked for.
var knownOptions = []string{"size", "fs", "from"}

// filesystems maps a fs option to the mkfs it needs.
var filesystems = map[string]string{"ext4": "mkfs.ext4", "xfs": "mkfs.xfs"}

// parseOptions checks the options of a Create. lookPath finds an mkfs
// (exec.LookPath; tests pass their own).
func parseOptions(opts map[string]string, lookPath func(string) (string, error)) (createOptions, error) {
	o := createOptions{fs: "ext4"}
	var unknown []string
	for k := range opts {
		if !slices.Contains(knownOptions, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return o, fmt.Errorf("unknown option %s (the ovs driver takes %s)", strings.Join(unknown, ", "), strings.Join(knownOptions, ", "))
	}
	if v, ok := opts["size"]; ok {
		n, err := api.ParseSize(v)
		if err != nil {
			return o, fmt.Errorf("option size: %w", err)
		}
		if n <= 0 {
			return o, fmt.Errorf("option size: %q is not a positive size", v)
		}
		o.size = n
	}
	if v, ok := opts["fs"]; ok {
		mkfs, known := filesystems[v]
		if !known {
			return o, fmt.Errorf("option fs: %q is not supported (use ext4 or xfs)", v)
		}
		if _, err := lookPath(mkfs); err != nil {
			return o, fmt.Errorf("option fs: %s is not installed on this host, so %s cannot be made", mkfs, v)
		}
		o.fs = v
	}
	if v, ok := opts["from"]; ok {
		parent, snap, found := strings.Cut(v, "@")
		if !found || !volumedriver.ValidName(parent) || snap == "" {
			return o, fmt.Errorf("option from: %q: use VDISK@SNAPSHOT", v)
		}
		o.parent, o.parentSnap = parent, snap
	}
	return o, nil
}

// vdiskName maps a Docker volume name to its vdisk's name, or says why
// the volume name cannot be one.
func vdiskName(prefix, volume string) (string, error) {
	name := prefix + volume
	if volume == "" || !volumedriver.ValidName(volume) || !volumedriver.ValidName(name) {
		return "", fmt.Errorf("volume name %q: use 1-%d of A-Z a-z 0-9 . _ -, starting with a letter or digit", volume, 64-len(prefix))
	}
	return name, nil
}
