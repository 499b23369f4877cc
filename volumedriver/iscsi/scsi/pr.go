package scsi

import "context"

// PRStore keeps a vdisk's persistent reservation state where every node
// serving the vdisk sees it (the cluster's KV in a cluster, memory in a
// test). The state is opaque bytes to the store; this package encodes it.
type PRStore interface {
	// Load returns the stored state; nil when there is none.
	Load(ctx context.Context) ([]byte, error)
	// CompareAndSwap replaces old (nil: none) by new and reports whether
	// old was still what the store held.
	CompareAndSwap(ctx context.Context, old, new []byte) (bool, error)
}

// Reservations is the persistent reservation state of one vdisk.
type Reservations struct {
	store PRStore
}

// NewReservations returns the reservation state kept in store.
func NewReservations(store PRStore) *Reservations {
	return &Reservations{store: store}
}
