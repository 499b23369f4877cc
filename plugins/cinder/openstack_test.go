package cinder

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/ovs-storage/ovs/volumedriver"
)

func TestOnBackend(t *testing.T) {
	for _, tt := range []struct {
		host, backend string
		want          bool
	}{
		{"node1@ovs#default", "ovs", true},
		{"node1@ovs", "ovs", true},
		{"node1@lvm#pool", "ovs", false},
		{"node1@ovs2#default", "ovs", false},
		{"node1", "ovs", false},
		{"", "ovs", false},
	} {
		if got := OnBackend(tt.host, tt.backend); got != tt.want {
			t.Errorf("OnBackend(%q, %q) = %v; want %v", tt.host, tt.backend, got, tt.want)
		}
	}
}

func TestJoin(t *testing.T) {
	const gib = 1 << 30
	vols := []volumes.Volume{
		{ID: "a", Name: "ok", Status: "available", Size: 1, Host: "h@ovs#default"},
		{ID: "b", Name: "gone", Status: "available", Size: 1, Host: "h@ovs#default"},
		{ID: "c", Name: "small", Status: "in-use", Size: 2, Host: "h@ovs#default"},
		{ID: "d", Name: "new", Status: "creating", Size: 1, Host: "h@ovs#default"},
		{ID: "e", Name: "lvm", Status: "available", Size: 1, Host: "h@lvm#x"},
	}
	vdisks := []volumedriver.VolumeInfo{
		{Name: "volume-a", Size: gib, Snapshots: 2},
		{Name: "volume-c", Size: gib, Parent: "volume-a@s1"},
		{Name: "volume-z", Size: 3 * gib},
		{Name: "vm1", Size: gib}, // not Cinder's
	}
	got := Join(vols, vdisks, "ovs")
	want := []Row{
		{VolumeID: "a", Name: "ok", Status: "available", SizeGiB: 1, VDisk: "volume-a", VDiskSize: gib, Snapshots: 2},
		{VolumeID: "b", Name: "gone", Status: "available", SizeGiB: 1, VDisk: "volume-b", Problem: "vdisk missing"},
		{VolumeID: "c", Name: "small", Status: "in-use", SizeGiB: 2, VDisk: "volume-c", VDiskSize: gib, Parent: "volume-a@s1", Problem: "size differs"},
		{VolumeID: "d", Name: "new", Status: "creating", SizeGiB: 1, VDisk: "volume-d"},
		{VDisk: "volume-z", VDiskSize: 3 * gib, Problem: "not in cinder"},
	}
	if len(got) != len(want) {
		t.Fatalf("Join = %+v; want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d = %+v; want %+v", i, got[i], want[i])
		}
	}
}

// fakeCinder serves the volume type calls of RegisterType the way
// Cinder's v3 API answers them.
type fakeCinder struct {
	mu    sync.Mutex
	types map[string]map[string]any // id -> type
	calls []string
}

func (f *fakeCinder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	if r.Header.Get("X-Auth-Token") != "admin:proj" {
		http.Error(w, "noauth wants user:project", 401)
		return
	}
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == "GET" && r.URL.Path == "/v3/proj/types":
		list := []map[string]any{}
		for _, t := range f.types {
			list = append(list, t)
		}
		json.NewEncoder(w).Encode(map[string]any{"volume_types": list})
	case r.Method == "POST" && r.URL.Path == "/v3/proj/types":
		var req struct {
			VolumeType map[string]any `json:"volume_type"`
		}
		json.Unmarshal(body, &req)
		req.VolumeType["id"] = "t1"
		f.types["t1"] = req.VolumeType
		json.NewEncoder(w).Encode(map[string]any{"volume_type": req.VolumeType})
	case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/extra_specs"):
		var req struct {
			ExtraSpecs map[string]string `json:"extra_specs"`
		}
		json.Unmarshal(body, &req)
		id := strings.Split(r.URL.Path, "/")[4]
		f.types[id]["extra_specs"] = req.ExtraSpecs
		json.NewEncoder(w).Encode(req)
	default:
		http.Error(w, "unexpected", 404)
	}
}

func TestRegisterType(t *testing.T) {
	fake := &fakeCinder{types: map[string]map[string]any{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx := context.Background()
	sc, err := Connect(ctx, srv.URL+"/v3", "proj")
	if err != nil {
		t.Fatal(err)
	}
	vt, created, err := RegisterType(ctx, sc, "ovs", "ovs-backend", map[string]string{"thin": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if !created || vt.Name != "ovs" || vt.ExtraSpecs[BackendSpec] != "ovs-backend" || vt.ExtraSpecs["thin"] != "true" {
		t.Fatalf("first RegisterType = %+v, created %v", vt, created)
	}
	// Again, with another backend: the type is kept, its spec updated.
	vt, created, err = RegisterType(ctx, sc, "ovs", "other", nil)
	if err != nil {
		t.Fatal(err)
	}
	if created || vt.ID != "t1" || vt.ExtraSpecs[BackendSpec] != "other" {
		t.Fatalf("second RegisterType = %+v, created %v", vt, created)
	}
	if specs := fake.types["t1"]["extra_specs"].(map[string]string); specs[BackendSpec] != "other" {
		t.Errorf("stored extra specs = %v", specs)
	}
}
