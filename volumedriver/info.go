package volumedriver

import "time"

// VolumeInfo describes a vdisk as the control plane shows it.
type VolumeInfo struct {
	Name        string    `json:"name"`
	ID          string    `json:"id"`
	Size        int64     `json:"size"`
	ClusterSize int       `json:"cluster_size"`
	SCOSize     int64     `json:"sco_size"`
	CreatedAt   time.Time `json:"created_at"`
	// Clients is the number of frontend clients (NBD connections) that
	// have the vdisk open.
	Clients int `json:"clients"`
	// WrittenBytes counts bytes written since creation (including
	// overwrites): what the SCOs hold.
	WrittenBytes int64 `json:"written_bytes"`
	// PendingUploadBytes is SCO and TLog data in the write buffer that is
	// not on the backend yet.
	PendingUploadBytes int64 `json:"pending_upload_bytes"`
	// WriteBufferBytes is what the vdisk's SCOs take in the local write buffer.
	WriteBufferBytes int64 `json:"write_buffer_bytes"`
	// State is "ok", or "failed: <reason>" for a vdisk this host could
	// not bring up (it can still be deleted), "degraded: <reason>",
	// "releasing" while it is handed over, or "fenced" once another host
	// owns it (see Driver.Fence; Drop removes it).
	State string `json:"state"`
	// Epoch is the owner epoch this host serves the vdisk under (0
	// outside a cluster).
	Epoch uint64 `json:"epoch,omitempty"`
	// Template: a read-only vdisk that clones are made from.
	Template bool `json:"template"`
	// Parent is "vdisk@snapshot" for a clone that is not flattened.
	Parent string `json:"parent,omitempty"`
	// Snapshots is the number of snapshots.
	Snapshots int `json:"snapshots"`
	// StoredBytes is the cluster data the vdisk's SCOs hold, on the
	// backend or on the way there: live data, what snapshots keep, and
	// garbage.
	StoredBytes int64 `json:"stored_bytes"`
	// GarbageBytes is the part of StoredBytes that nothing can read any
	// more (overwritten or trimmed with no snapshot in between): what a
	// scrub gives back. A scrub runs when it passes a share of the rest.
	GarbageBytes int64 `json:"garbage_bytes"`
	// Owner is the node that serves the vdisk and OwnerEpoch the epoch of
	// its tenure (set by the cluster layer; the driver leaves them empty).
	Owner      string `json:"owner,omitempty"`
	OwnerEpoch uint64 `json:"owner_epoch,omitempty"`
	// DTLMode is sync, async or none; DTLState one of the DTLState*
	// constants; DTLNode the node holding the DTL (empty without one).
	DTLMode  string `json:"dtl_mode,omitempty"`
	DTLState string `json:"dtl_state,omitempty"`
	DTLNode  string `json:"dtl_node,omitempty"`
}

// CreateOptions are the per-vdisk layout choices, fixed at creation.
// Zero values take the defaults (4 KiB clusters, 4 MiB SCOs).
type CreateOptions struct {
	ClusterSize   int `json:"cluster_size,omitempty"`
	SCOMultiplier int `json:"sco_multiplier,omitempty"`
	// ID is the vdisk's namespace id (volume.json's id; the namespace is
	// vd-<ID>); empty picks a random one. In a cluster the control plane
	// chooses it, so that it can record the owner before the vdisk exists.
	ID string `json:"-"`
	// Epoch is the owner epoch this host serves the new vdisk under.
	Epoch uint64 `json:"-"`
}

// CloneOptions are what the control plane chooses for a clone (see
// CreateOptions.ID and Epoch).
type CloneOptions struct {
	ID    string `json:"-"`
	Epoch uint64 `json:"-"`
}
