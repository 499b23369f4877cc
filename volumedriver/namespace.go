package volumedriver

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ovs-storage/ovs/scos"
)

// Namespace is the backend namespace of the vdisk with id id.
func Namespace(id string) string { return namespacePrefix + id }

// Stored names a vdisk found on a backend.
type Stored struct {
	ID, Name string
}

// ListOnBackend returns every vdisk whose namespace on backend holds a
// readable volume.json. Namespaces without one (a create or delete in
// progress, or one that did not finish) are left out.
func ListOnBackend(ctx context.Context, backend scos.Backend) ([]Stored, error) {
	nss, err := backend.ListNamespaces(ctx)
	if err != nil {
		return nil, fmt.Errorf("list vdisks on the backend: %w", err)
	}
	var out []Stored
	for _, ns := range nss {
		if !strings.HasPrefix(ns, namespacePrefix) {
			continue
		}
		b, err := backend.Get(ctx, ns, volumeObject)
		if errors.Is(err, scos.ErrObjectNotFound) || errors.Is(err, scos.ErrNamespaceNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s/%s: %w", ns, volumeObject, err)
		}
		cfg, err := decodeVolumeConfig(b)
		if err != nil {
			continue
		}
		out = append(out, Stored{ID: cfg.ID, Name: cfg.Name})
	}
	return out, nil
}

// ValidName reports whether s can name a vdisk.
func ValidName(s string) bool { return validName(s) }

// chooseID returns id, checked, or a new random one if id is empty (the
// control plane may choose a vdisk's namespace id).
func chooseID(id string) (string, error) {
	if id == "" {
		return newUUID(), nil
	}
	if !validID(id) {
		return "", fmt.Errorf("%w: vdisk id %q", ErrInvalidArgument, id)
	}
	return id, nil
}
