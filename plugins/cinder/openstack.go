// Package cinder holds the Go side of the OpenStack Cinder integration:
// what `ovs openstack` does in Cinder through gophercloud (register the
// OVS volume type, compare Cinder's volumes with OVS's vdisks). The Cinder
// volume driver itself is the Python package ovs_cinder beside this file.
package cinder

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/noauth"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumetypes"

	"github.com/ovs-storage/ovs/volumedriver"
)

// BackendSpec is the extra spec that sends a volume type's volumes to a
// Cinder backend (volume_backend_name in the backend's cinder.conf section).
const BackendSpec = "volume_backend_name"

// NoAuthProject is the project a noauth client works in by default.
// Cinder routes /v3/<project>/... only for a project id of hex digits and
// dashes (as Keystone makes them), so a name such as "admin" would get 404.
const NoAuthProject = "00000000000000000000000000000000"

// Connect returns a Cinder (block-storage v3) client. With endpoint set
// ("http://host:8776/v3/"), it talks to a Cinder with auth_strategy =
// noauth as user admin of project (default NoAuthProject); without it, it authenticates with
// Keystone from the OS_* environment variables (OS_AUTH_URL,
// OS_USERNAME, ...) and finds Cinder in the catalog.
func Connect(ctx context.Context, endpoint, project string) (*gophercloud.ServiceClient, error) {
	if endpoint != "" {
		if project == "" {
			project = NoAuthProject
		}
		pc, err := noauth.NewClient(gophercloud.AuthOptions{Username: "admin", TenantName: project})
		if err != nil {
			return nil, fmt.Errorf("cinder noauth client: %w", err)
		}
		pc.HTTPClient = http.Client{}
		ep := strings.TrimSuffix(strings.TrimRight(endpoint, "/"), "/"+project)
		if !strings.HasSuffix(ep, "/v3") {
			ep += "/v3"
		}
		sc, err := noauth.NewBlockStorageNoAuthV3(pc, noauth.EndpointOpts{CinderEndpoint: ep + "/"})
		if err != nil {
			return nil, fmt.Errorf("cinder noauth client: %w", err)
		}
		return sc, nil
	}
	opts, err := openstack.AuthOptionsFromEnv()
	if err != nil {
		return nil, fmt.Errorf("keystone credentials from the environment (or give --cinder for a noauth Cinder): %w", err)
	}
	pc, err := openstack.AuthenticatedClient(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("keystone authentication: %w", err)
	}
	sc, err := openstack.NewBlockStorageV3(pc, gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME")})
	if err != nil {
		return nil, fmt.Errorf("cinder endpoint from the keystone catalog: %w", err)
	}
	return sc, nil
}

// RegisterType makes sure volume type name exists and sends its volumes to
// backend (and carries the other extra specs). It returns the type and
// whether it was created; an existing type gets its extra specs set.
func RegisterType(ctx context.Context, sc *gophercloud.ServiceClient, name, backend string, specs map[string]string) (volumetypes.VolumeType, bool, error) {
	all := map[string]string{BackendSpec: backend}
	for k, v := range specs {
		all[k] = v
	}
	pages, err := volumetypes.List(sc, volumetypes.ListOpts{IsPublic: volumetypes.VisibilityDefault}).AllPages(ctx)
	if err != nil {
		return volumetypes.VolumeType{}, false, fmt.Errorf("list volume types: %w", err)
	}
	types, err := volumetypes.ExtractVolumeTypes(pages)
	if err != nil {
		return volumetypes.VolumeType{}, false, fmt.Errorf("list volume types: %w", err)
	}
	for _, vt := range types {
		if vt.Name != name {
			continue
		}
		if _, err := volumetypes.CreateExtraSpecs(ctx, sc, vt.ID, volumetypes.ExtraSpecsOpts(all)).Extract(); err != nil {
			return vt, false, fmt.Errorf("set extra specs of volume type %s: %w", name, err)
		}
		vt.ExtraSpecs = mergeSpecs(vt.ExtraSpecs, all)
		return vt, false, nil
	}
	public := true
	vt, err := volumetypes.Create(ctx, sc, volumetypes.CreateOpts{
		Name: name, IsPublic: &public, ExtraSpecs: all,
		Description: "OVS volumes (backend " + backend + ")",
	}).Extract()
	if err != nil {
		return volumetypes.VolumeType{}, false, fmt.Errorf("create volume type %s: %w", name, err)
	}
	return *vt, true, nil
}

func mergeSpecs(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// ListVolumes returns every volume Cinder has (all projects; needs an
// admin), with details.
func ListVolumes(ctx context.Context, sc *gophercloud.ServiceClient) ([]volumes.Volume, error) {
	pages, err := volumes.List(sc, volumes.ListOpts{AllTenants: true}).AllPages(ctx)
	if err != nil {
		return nil, fmt.Errorf("list cinder volumes: %w", err)
	}
	vols, err := volumes.ExtractVolumes(pages)
	if err != nil {
		return nil, fmt.Errorf("list cinder volumes: %w", err)
	}
	return vols, nil
}

// RevertToSnapshot reverts a volume to its latest snapshot (Cinder API
// microversion 3.40; gophercloud has no call for it).
func RevertToSnapshot(ctx context.Context, sc *gophercloud.ServiceClient, volumeID, snapshotID string) error {
	body := map[string]any{"revert": map[string]string{"snapshot_id": snapshotID}}
	_, err := sc.Post(ctx, sc.ServiceURL("volumes", volumeID, "action"), body, nil, &gophercloud.RequestOpts{
		OkCodes:     []int{202},
		MoreHeaders: map[string]string{"OpenStack-API-Version": "volume 3.40"},
	})
	if err != nil {
		return fmt.Errorf("revert volume %s to snapshot %s: %w", volumeID, snapshotID, err)
	}
	return nil
}

// OnBackend reports whether a Cinder volume's host ("host@backend#pool")
// is the given backend.
func OnBackend(host, backend string) bool {
	_, rest, ok := strings.Cut(host, "@")
	if !ok {
		return false
	}
	b, _, _ := strings.Cut(rest, "#")
	return b == backend
}

// VDiskName is the vdisk of a Cinder volume (the driver names it after
// volume.name, Cinder's default volume_name_template).
func VDiskName(volumeID string) string { return "volume-" + volumeID }

// Row is one line of `ovs openstack status`: a Cinder volume on the OVS
// backend and its vdisk, or a vdisk named like a Cinder volume that Cinder
// does not know.
type Row struct {
	VolumeID string `json:"volume_id,omitempty"`
	Name     string `json:"name,omitempty"`
	Status   string `json:"status,omitempty"`
	SizeGiB  int    `json:"size_gib,omitempty"`
	VDisk    string `json:"vdisk"`
	// VDiskSize is 0 when the vdisk is missing.
	VDiskSize int64  `json:"vdisk_size"`
	Parent    string `json:"parent,omitempty"`
	Snapshots int    `json:"snapshots"`
	// Problem says what does not match: "vdisk missing", "size differs",
	// "not in cinder"; empty when all is well.
	Problem string `json:"problem,omitempty"`
}

// Join lines up Cinder's volumes on backend with OVS's vdisks. Volumes
// on other backends are left out; vdisks that look like Cinder volumes
// ("volume-<id>") but are unknown to Cinder are listed as "not in cinder"
// (left over, or managed by another Cinder).
func Join(vols []volumes.Volume, vdisks []volumedriver.VolumeInfo, backend string) []Row {
	byName := map[string]volumedriver.VolumeInfo{}
	for _, vd := range vdisks {
		byName[vd.Name] = vd
	}
	seen := map[string]bool{}
	var rows []Row
	for _, v := range vols {
		if !OnBackend(v.Host, backend) {
			continue
		}
		name := VDiskName(v.ID)
		seen[name] = true
		r := Row{VolumeID: v.ID, Name: v.Name, Status: v.Status, SizeGiB: v.Size, VDisk: name}
		vd, ok := byName[name]
		switch {
		case !ok && (v.Status == "creating" || v.Status == "error" || v.Status == "deleting"):
			// Nothing to compare yet (or any more).
		case !ok:
			r.Problem = "vdisk missing"
		default:
			r.VDiskSize, r.Parent, r.Snapshots = vd.Size, vd.Parent, vd.Snapshots
			if vd.Size != int64(v.Size)<<30 && v.Status != "extending" {
				r.Problem = "size differs"
			}
		}
		rows = append(rows, r)
	}
	for _, vd := range vdisks {
		if seen[vd.Name] || !strings.HasPrefix(vd.Name, "volume-") {
			continue
		}
		rows = append(rows, Row{VDisk: vd.Name, VDiskSize: vd.Size, Parent: vd.Parent, Snapshots: vd.Snapshots, Problem: "not in cinder"})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].VDisk < rows[j].VDisk })
	return rows
}
