package ec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	jobprogress "github.com/ovs-storage/ovs/internal/progress"
)

// TestDecommissionWaitDrained: decommission?wait=true over the admin
// handler answers once the ASD is empty and marked decommissioned, with
// what the repair passes did, and the passes reported their progress in
// objects to the request's tracker.
func TestDecommissionWaitDrained(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(8), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	b := e.b
	b.CreateNamespace(ctx, "ns")
	for i := range 10 {
		mustPut(t, b, "ns", fmt.Sprintf("o%02d", i), randBytes(uint64(i), 50000))
	}
	dec := e.asds[0]
	held := dec.fragments(t)
	if held == 0 {
		t.Fatal("placement put nothing on ASD 0")
	}
	tr := jobprogress.New()
	h := NewAdminHandler(b)
	// The tracker comes in through the request's context, as the API's
	// job runner passes it.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(jobprogress.With(r.Context(), tr)))
	}))
	defer srv.Close()

	tests := []struct {
		name, query string
		status      int
	}{
		{"wait", "?wait=true", http.StatusOK},
		{"again, already drained", "?wait=true", http.StatusOK},
		{"unknown ASD", "?wait=true", http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := dec.s.ID()
			if tc.status == http.StatusNotFound {
				id = "asd-nope"
			}
			resp, err := http.Post(srv.URL+"/v1/asds/"+id+"/decommission"+tc.query, "application/json", bytes.NewReader(nil))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != http.StatusOK {
				return
			}
			var rep MaintenanceReport
			if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Drained) != 1 || rep.Drained[0] != id {
				t.Errorf("report %+v: want %s drained", rep, id)
			}
		})
	}
	asds, _ := b.ListASDs(ctx)
	for _, a := range asds {
		if a.ID == dec.s.ID() && a.State != ASDDecommissioned {
			t.Errorf("ASD state %s after the wait", a.State)
		}
	}
	if s := tr.Snapshot(); s.Unit != "objects" || s.Total == 0 || s.Done != s.Total {
		t.Errorf("progress after the drain: %+v, want a finished stage in objects", s)
	}
}
