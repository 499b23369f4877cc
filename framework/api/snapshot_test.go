package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/volumedriver"
)

// templateSnap is the snapshot FakeVDisks.SetTemplate takes of "t".
const templateSnap = "template-20250102-030405"

// seedSnapshots adds to seed: snapshots "weekly" then "daily" of a, "bs"
// of b (which has a client), template t, and clone c of a@weekly.
func seedSnapshots(t *testing.T, fake *apitest.FakeVDisks) {
	t.Helper()
	ctx := context.Background()
	seed(t, fake)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	fake.SetPending("a", MiB, 0)
	must(fake.CreateSnapshot(ctx, "a", "weekly", "first"))
	fake.SetPending("a", 3*MiB, MiB)
	must(fake.CreateSnapshot(ctx, "a", "daily", ""))
	must(fake.CreateSnapshot(ctx, "b", "bs", ""))
	must(fake.Create(ctx, "t", GiB, volumedriver.CreateOptions{}))
	fake.SetPending("t", 2*MiB, 0)
	must(fake.SetTemplate(ctx, "t"))
	must(fake.Clone(ctx, "c", "a", "weekly"))
}

func TestServerSnapshots(t *testing.T) {
	lastCall := func(t *testing.T, fake *apitest.FakeVDisks, want apitest.Call) {
		t.Helper()
		calls := fake.Calls()
		if last := calls[len(calls)-1]; last != want {
			t.Errorf("call = %+v; want %+v", last, want)
		}
	}
	snapshotNames := func(t *testing.T, fake *apitest.FakeVDisks, vdisk string) string {
		t.Helper()
		snaps, err := fake.ListSnapshots(context.Background(), vdisk)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range snaps {
			names = append(names, s.Name)
		}
		return strings.Join(names, ",")
	}
	runServerTests(t, []serverTest{
		// POST /snapshots
		{
			name: "create snapshot", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/snapshots",
			body: `{"name":"s3","metadata":"before upgrade"}`, wantStatus: 201,
			check: func(t *testing.T, resp *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var snap volumedriver.SnapshotInfo
				mustJSON(t, body, &snap)
				if snap.Name != "s3" || snap.Metadata != "before upgrade" || snap.CreatedAt.IsZero() || snap.Synced {
					t.Errorf("snapshot = %+v", snap)
				}
				if loc := resp.Header.Get("Location"); loc != "/api/v1/vdisks/a/snapshots/s3" {
					t.Errorf("Location = %q", loc)
				}
				lastCall(t, fake, apitest.Call{Method: "CreateSnapshot", Name: "a", Snapshot: "s3", Metadata: "before upgrade"})
			},
		},
		{
			name: "create snapshot without a body", method: "POST", path: "/api/v1/vdisks/a/snapshots", wantStatus: 201,
			check: func(t *testing.T, resp *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var snap volumedriver.SnapshotInfo
				mustJSON(t, body, &snap)
				if snap.Name != "snap-1" || !snap.Synced {
					t.Errorf("snapshot = %+v; want the generated name snap-1, synced", snap)
				}
				if loc := resp.Header.Get("Location"); loc != "/api/v1/vdisks/a/snapshots/snap-1" {
					t.Errorf("Location = %q", loc)
				}
				lastCall(t, fake, apitest.Call{Method: "CreateSnapshot", Name: "a"})
			},
		},
		{
			name: "create snapshot with an empty object", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: ` {} `, wantStatus: 201,
		},
		{
			name: "create snapshot metadata only", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{"metadata":"x"}`, wantStatus: 201,
			check: func(t *testing.T, _ *http.Response, _ []byte, fake *apitest.FakeVDisks) {
				lastCall(t, fake, apitest.Call{Method: "CreateSnapshot", Name: "a", Metadata: "x"})
			},
		},
		{
			name: "create duplicate snapshot", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/snapshots",
			body: `{"name":"daily"}`, wantStatus: 409, wantCode: CodeAlreadyExists, wantMsg: `snapshot "daily" of vdisk "a" already exists`,
		},
		{
			name: "create snapshot, bare sentinel gets the names", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{"name":"x"}`,
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.FailWith("CreateSnapshot", volumedriver.ErrExists)
			},
			wantStatus: 409, wantCode: CodeAlreadyExists, wantMsg: `snapshot "x" of vdisk "a" already exists`,
		},
		{
			name: "create snapshot metadata too large", method: "POST", path: "/api/v1/vdisks/a/snapshots",
			body:       `{"metadata":"` + strings.Repeat("m", volumedriver.MaxSnapshotMetadata+1) + `"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: "snapshot metadata is 4097 bytes, the limit is 4096",
		},
		{
			name: "create snapshot metadata at the limit", method: "POST", path: "/api/v1/vdisks/a/snapshots",
			body: `{"metadata":"` + strings.Repeat("m", volumedriver.MaxSnapshotMetadata) + `"}`, wantStatus: 201,
		},
		{
			name: "create snapshot bad name", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{"name":"a b"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `invalid snapshot name "a b"`,
		},
		{
			name: "create snapshot of a template", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/t/snapshots",
			wantStatus: 409, wantCode: CodeReadOnly, wantMsg: `vdisk "t" is a read-only template`,
		},
		{
			name: "create snapshot, bare read-only sentinel gets the name", method: "POST", path: "/api/v1/vdisks/a/snapshots",
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.FailWith("CreateSnapshot", volumedriver.ErrReadOnly)
			},
			wantStatus: 409, wantCode: CodeReadOnly, wantMsg: `vdisk "a" is a read-only template`,
		},
		{
			name: "create snapshot of unknown vdisk", method: "POST", path: "/api/v1/vdisks/nope/snapshots",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "create snapshot unknown field", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{"snapshot":"x"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `unknown field "snapshot"`,
		},
		{
			name: "create snapshot metadata of wrong type", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{"metadata":{}}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `field "metadata" must be a string, not a JSON object`,
		},
		{
			name: "create snapshot malformed body", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{"name":`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `ends too early`,
		},
		{
			name: "create snapshot trailing data", method: "POST", path: "/api/v1/vdisks/a/snapshots", body: `{} {}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `single JSON object`,
		},
		// GET /snapshots
		{
			name: "list snapshots oldest first", setup: seedSnapshots, method: "GET", path: "/api/v1/vdisks/a/snapshots", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var snaps []volumedriver.SnapshotInfo
				mustJSON(t, body, &snaps)
				if len(snaps) != 2 || snaps[0].Name != "weekly" || snaps[1].Name != "daily" {
					t.Fatalf("snapshots = %+v; want weekly, daily", snaps)
				}
				if s := snaps[0]; s.Metadata != "first" || s.WrittenBytes != MiB || !s.Synced {
					t.Errorf("weekly = %+v", s)
				}
				if s := snaps[1]; s.WrittenBytes != 2*MiB || s.Synced {
					t.Errorf("daily = %+v", s)
				}
				var raw []map[string]any
				mustJSON(t, body, &raw)
				for _, k := range []string{"name", "created_at", "metadata", "written_bytes", "synced"} {
					if _, ok := raw[0][k]; !ok {
						t.Errorf("field %q missing from %s", k, body)
					}
				}
			},
		},
		{
			name: "list no snapshots is an array", method: "GET", path: "/api/v1/vdisks/a/snapshots", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				if strings.TrimSpace(string(body)) != "[]" {
					t.Errorf("body = %s; want []", body)
				}
			},
		},
		{
			name: "list snapshots of unknown vdisk", method: "GET", path: "/api/v1/vdisks/nope/snapshots",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		// DELETE /snapshots/{snapshot}
		{
			name: "delete snapshot", setup: seedSnapshots, method: "DELETE", path: "/api/v1/vdisks/a/snapshots/daily", wantStatus: 204,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				if len(body) != 0 {
					t.Errorf("204 with body %q", body)
				}
				lastCall(t, fake, apitest.Call{Method: "DeleteSnapshot", Name: "a", Snapshot: "daily"})
				if got := snapshotNames(t, fake, "a"); got != "weekly" {
					t.Errorf("snapshots left: %q", got)
				}
			},
		},
		{
			name: "delete unknown snapshot", setup: seedSnapshots, method: "DELETE", path: "/api/v1/vdisks/a/snapshots/nope",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `snapshot "nope" of vdisk "a" not found`,
		},
		{
			name: "delete snapshot, bare sentinel gets the names", method: "DELETE", path: "/api/v1/vdisks/a/snapshots/x",
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.FailWith("DeleteSnapshot", volumedriver.ErrSnapshotNotFound)
			},
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `snapshot "x" of vdisk "a" not found`,
		},
		{
			name: "delete snapshot, bare busy gets the names", method: "DELETE", path: "/api/v1/vdisks/a/snapshots/x",
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.FailWith("DeleteSnapshot", volumedriver.ErrBusy)
			},
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `snapshot "x" of vdisk "a" is in use: clones depend on it`,
		},
		{
			name: "delete snapshot with clones", setup: seedSnapshots, method: "DELETE", path: "/api/v1/vdisks/a/snapshots/weekly",
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `clones [c] are built on a@weekly`,
		},
		{
			name: "delete snapshot of unknown vdisk", method: "DELETE", path: "/api/v1/vdisks/nope/snapshots/x",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "delete snapshot escaped name", method: "DELETE", path: "/api/v1/vdisks/a/snapshots/x%20y",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `snapshot "x y" of vdisk "a" not found`,
		},
		{
			name: "delete snapshot without a name", method: "DELETE", path: "/api/v1/vdisks/a/snapshots/",
			wantStatus: 404, wantCode: CodeUnknownRoute,
		},
		{
			name: "wrong method on a snapshot", method: "GET", path: "/api/v1/vdisks/a/snapshots/x",
			wantStatus: 405, wantCode: CodeMethodNotAllowed,
			check: func(t *testing.T, resp *http.Response, _ []byte, _ *apitest.FakeVDisks) {
				if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "DELETE") {
					t.Errorf("Allow = %q", allow)
				}
			},
		},
		{
			name: "wrong method on snapshots", method: "PUT", path: "/api/v1/vdisks/a/snapshots",
			wantStatus: 405, wantCode: CodeMethodNotAllowed,
		},
		// POST /rollback
		{
			name: "rollback", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/rollback", body: `{"snapshot":"weekly"}`, wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Name != "a" || info.Snapshots != 1 || info.WrittenBytes != MiB {
					t.Errorf("info = %+v; want a with 1 snapshot, 1 MiB written", info)
				}
				lastCall(t, fake, apitest.Call{Method: "Info", Name: "a"})
				calls := fake.Calls()
				if c := calls[len(calls)-2]; c != (apitest.Call{Method: "Rollback", Name: "a", Snapshot: "weekly"}) {
					t.Errorf("call = %+v", c)
				}
			},
		},
		{
			name: "rollback busy", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/b/rollback", body: `{"snapshot":"bs"}`,
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `vdisk "b" is in use by 1 client(s)`,
		},
		{
			name: "rollback busy, bare sentinel", method: "POST", path: "/api/v1/vdisks/b/rollback", body: `{"snapshot":"bs"}`,
			setup:      func(t *testing.T, f *apitest.FakeVDisks) { seed(t, f); f.FailWith("Rollback", volumedriver.ErrBusy) },
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `vdisk "b" is in use`,
		},
		{
			name: "rollback busy with force", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/b/rollback",
			body: `{"snapshot":"bs","force":true}`, wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, _ []byte, fake *apitest.FakeVDisks) {
				calls := fake.Calls()
				if c := calls[len(calls)-2]; c != (apitest.Call{Method: "Rollback", Name: "b", Snapshot: "bs", Force: true}) {
					t.Errorf("call = %+v", c)
				}
			},
		},
		{
			name: "rollback unknown snapshot", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/rollback", body: `{"snapshot":"nope"}`,
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `snapshot "nope" of vdisk "a" not found`,
		},
		{
			name: "rollback unknown vdisk", method: "POST", path: "/api/v1/vdisks/nope/rollback", body: `{"snapshot":"x"}`,
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "rollback a template", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/t/rollback",
			body: `{"snapshot":"` + templateSnap + `"}`, wantStatus: 409, wantCode: CodeReadOnly, wantMsg: `vdisk "t" is a read-only template`,
		},
		{
			name: "rollback blocked by a clone of a later snapshot", method: "POST", path: "/api/v1/vdisks/a/rollback", body: `{"snapshot":"weekly"}`,
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seedSnapshots(t, f)
				if _, err := f.Clone(context.Background(), "d", "a", "daily"); err != nil {
					t.Fatal(err)
				}
			},
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `discard snapshot daily, which clones [d] are built on`,
		},
		{
			name: "rollback without snapshot", method: "POST", path: "/api/v1/vdisks/a/rollback", body: `{"force":true}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"snapshot" is required`,
		},
		{
			name: "rollback empty body", method: "POST", path: "/api/v1/vdisks/a/rollback",
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `request body is empty`,
		},
		{
			name: "rollback force of wrong type", method: "POST", path: "/api/v1/vdisks/a/rollback", body: `{"snapshot":"x","force":"yes"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `field "force" must be true or false, not a JSON string`,
		},
		{
			name: "rollback info fails afterwards", method: "POST", path: "/api/v1/vdisks/a/rollback", body: `{"snapshot":"weekly"}`, wantStatus: 200,
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seedSnapshots(t, f)
				f.FailWith("Info", errors.New("gone"))
			},
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				if strings.TrimSpace(string(body)) != "{}" {
					t.Errorf("body = %s; want {}", body)
				}
			},
		},
		{
			name: "wrong method on rollback", method: "GET", path: "/api/v1/vdisks/a/rollback",
			wantStatus: 405, wantCode: CodeMethodNotAllowed,
		},
		// POST /clones
		{
			name: "clone", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"new","snapshot":"daily"}`, wantStatus: 201,
			check: func(t *testing.T, resp *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Name != "new" || info.Parent != "a@daily" || info.Size != GiB || info.Template || info.Snapshots != 0 {
					t.Errorf("clone = %+v", info)
				}
				if loc := resp.Header.Get("Location"); loc != "/api/v1/vdisks/new" {
					t.Errorf("Location = %q", loc)
				}
				lastCall(t, fake, apitest.Call{Method: "Clone", Name: "new", Parent: "a", Snapshot: "daily"})
			},
		},
		{
			name: "clone a template's latest snapshot", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/t/clones", body: `{"name":"vm"}`, wantStatus: 201,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Parent != "t@"+templateSnap {
					t.Errorf("parent = %q", info.Parent)
				}
				lastCall(t, fake, apitest.Call{Method: "Clone", Name: "vm", Parent: "t"})
			},
		},
		{
			name: "clone no snapshot of a non-template", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"new"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `name a snapshot of a to clone`,
		},
		{
			name: "clone to a taken name", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"b","snapshot":"daily"}`,
			wantStatus: 409, wantCode: CodeAlreadyExists, wantMsg: `vdisk "b" already exists`,
		},
		{
			name: "clone, bare exists sentinel names the new vdisk", method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"new","snapshot":"s"}`,
			setup:      func(t *testing.T, f *apitest.FakeVDisks) { seed(t, f); f.FailWith("Clone", volumedriver.ErrExists) },
			wantStatus: 409, wantCode: CodeAlreadyExists, wantMsg: `vdisk "new" already exists`,
		},
		{
			name: "clone, bare not-found sentinel names the parent", method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"new"}`,
			setup:      func(t *testing.T, f *apitest.FakeVDisks) { seed(t, f); f.FailWith("Clone", volumedriver.ErrNotFound) },
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "a" not found`,
		},
		{
			name: "clone unknown parent", method: "POST", path: "/api/v1/vdisks/nope/clones", body: `{"name":"new","snapshot":"s"}`,
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "clone unknown snapshot", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"new","snapshot":"nope"}`,
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `snapshot "nope" of vdisk "a" not found`,
		},
		{
			name: "clone without name", method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"snapshot":"s"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"name" is required`,
		},
		{
			name: "clone bad name", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"x@y","snapshot":"daily"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `invalid vdisk name "x@y"`,
		},
		{
			name: "clone unknown field", method: "POST", path: "/api/v1/vdisks/a/clones", body: `{"name":"new","parent":"a"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `unknown field "parent"`,
		},
		// POST /flatten
		{
			name: "flatten", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/c/flatten", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Name != "c" || info.Parent != "" {
					t.Errorf("info = %+v", info)
				}
				var m map[string]any
				mustJSON(t, body, &m)
				if _, ok := m["parent"]; ok {
					t.Errorf("parent in %s", body)
				}
				// Now weekly has no clones left.
				if err := fake.DeleteSnapshot(context.Background(), "a", "weekly"); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "flatten unknown", method: "POST", path: "/api/v1/vdisks/nope/flatten",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "flatten fails", method: "POST", path: "/api/v1/vdisks/a/flatten",
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.FailWith("Flatten", errors.New("backend unreachable"))
			},
			wantStatus: 500, wantCode: CodeInternal, wantMsg: "backend unreachable",
		},
		// POST /template
		{
			name: "set template", method: "POST", path: "/api/v1/vdisks/a/template", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if !info.Template || info.Snapshots != 1 {
					t.Errorf("info = %+v; want a template with one snapshot", info)
				}
				lastCall(t, fake, apitest.Call{Method: "SetTemplate", Name: "a"})
			},
		},
		{
			name: "set template twice", setup: seedSnapshots, method: "POST", path: "/api/v1/vdisks/t/template", wantStatus: 200,
		},
		{
			name: "set template unknown", method: "POST", path: "/api/v1/vdisks/nope/template",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "wrong method on template", method: "DELETE", path: "/api/v1/vdisks/a/template",
			wantStatus: 405, wantCode: CodeMethodNotAllowed,
		},
		// POST /scrub
		{
			name: "scrub", method: "POST", path: "/api/v1/vdisks/a/scrub", wantStatus: 200,
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.SetScrubResult("a", volumedriver.ScrubResult{SCOsRewritten: 3, SCOsDeleted: 5,
					BackendBytesBefore: 40 * MiB, BackendBytesAfter: 12 * MiB, LiveBytes: 10 * MiB, Duration: 1500 * time.Millisecond})
			},
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				want := `{"scos_rewritten":3,"scos_deleted":5,"backend_bytes_before":41943040,"backend_bytes_after":12582912,"live_bytes":10485760,"duration_ns":1500000000}`
				if got := strings.TrimSpace(string(body)); got != want {
					t.Errorf("body = %s; want %s", got, want)
				}
				lastCall(t, fake, apitest.Call{Method: "Scrub", Name: "a"})
			},
		},
		{
			name: "scrub unknown", method: "POST", path: "/api/v1/vdisks/nope/scrub",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "scrub canceled", method: "POST", path: "/api/v1/vdisks/a/scrub",
			setup:      func(t *testing.T, f *apitest.FakeVDisks) { seed(t, f); f.FailWith("Scrub", context.Canceled) },
			wantStatus: 503, wantCode: CodeCanceled,
		},
		// The vdisk endpoints show what the snapshots added.
		{
			name: "info of a clone", setup: seedSnapshots, method: "GET", path: "/api/v1/vdisks/c", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var m map[string]any
				mustJSON(t, body, &m)
				if m["parent"] != "a@weekly" || m["template"] != false || m["snapshots"] != float64(0) {
					t.Errorf("info = %s", body)
				}
			},
		},
		{
			name: "info of a template", setup: seedSnapshots, method: "GET", path: "/api/v1/vdisks/t", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if !info.Template || info.Snapshots != 1 || info.Parent != "" {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name: "delete a vdisk with clones", setup: seedSnapshots, method: "DELETE", path: "/api/v1/vdisks/a?force=true",
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `vdisk "a" has clones (c)`,
		},
		{
			name: "resize, bare read-only sentinel", method: "POST", path: "/api/v1/vdisks/a/resize", body: `{"size":"2GiB"}`,
			setup:      func(t *testing.T, f *apitest.FakeVDisks) { seed(t, f); f.FailWith("Resize", volumedriver.ErrReadOnly) },
			wantStatus: 409, wantCode: CodeReadOnly, wantMsg: `vdisk "a" is a read-only template`,
		},
	})
}

// ErrReadOnly wrapped with context is still read_only, not some other
// code it might be checked against first.
func TestClassifyReadOnly(t *testing.T) {
	for _, err := range []error{
		volumedriver.ErrReadOnly,
		errors.Join(errors.New("t"), volumedriver.ErrReadOnly),
		&sentinelError{"x", volumedriver.ErrReadOnly},
	} {
		if status, code := classify(err); status != http.StatusConflict || code != CodeReadOnly {
			t.Errorf("classify(%v) = %d %s; want 409 read_only", err, status, code)
		}
	}
}

func TestClientSnapshots(t *testing.T) {
	ctx := context.Background()
	seedTree := func(f *apitest.FakeVDisks) {
		seedFake(f)
		f.SetPending("a", MiB, 0)
		f.CreateSnapshot(ctx, "a", "weekly", "first")
		f.SetPending("a", 3*MiB, 0)
		f.CreateSnapshot(ctx, "a", "daily", "")
		f.CreateSnapshot(ctx, "b", "bs", "")
		f.Create(ctx, "t", GiB, volumedriver.CreateOptions{})
		f.SetTemplate(ctx, "t")
		f.Clone(ctx, "c", "a", "weekly")
	}
	wantCall := func(want apitest.Call) func(*testing.T, any, *apitest.FakeVDisks) {
		return func(t *testing.T, _ any, fake *apitest.FakeVDisks) {
			t.Helper()
			for _, c := range fake.Calls() {
				if c == want {
					return
				}
			}
			t.Errorf("no call %+v in %+v", want, fake.Calls())
		}
	}
	runClientTests(t, []clientTest{
		{
			name:  "create snapshot",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return c.CreateSnapshot(ctx, "a", "s3", "meta") },
			want: func(t *testing.T, got any, fake *apitest.FakeVDisks) {
				snap := got.(volumedriver.SnapshotInfo)
				if snap.Name != "s3" || snap.Metadata != "meta" || !snap.CreatedAt.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) {
					t.Errorf("snapshot = %+v", snap)
				}
				wantCall(apitest.Call{Method: "CreateSnapshot", Name: "a", Snapshot: "s3", Metadata: "meta"})(t, got, fake)
			},
		},
		{
			name: "create snapshot with generated name",
			call: func(c *Client) (any, error) { return c.CreateSnapshot(ctx, "a", "", "") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if snap := got.(volumedriver.SnapshotInfo); snap.Name != "snap-1" {
					t.Errorf("snapshot = %+v", snap)
				}
			},
		},
		{
			name:    "create duplicate snapshot",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return c.CreateSnapshot(ctx, "a", "daily", "") },
			wantErr: volumedriver.ErrExists, wantMsg: `snapshot "daily" of vdisk "a" already exists`, status: 409,
		},
		{
			name:    "create snapshot metadata too large",
			call:    func(c *Client) (any, error) { return c.CreateSnapshot(ctx, "a", "", strings.Repeat("x", 5000)) },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "the limit is 4096", status: 400,
		},
		{
			name:    "create snapshot of a template",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return c.CreateSnapshot(ctx, "t", "x", "") },
			wantErr: volumedriver.ErrReadOnly, wantMsg: `vdisk "t" is a read-only template`, status: 409,
		},
		{
			name:    "create snapshot empty vdisk name",
			call:    func(c *Client) (any, error) { return c.CreateSnapshot(ctx, "", "x", "") },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "vdisk name must not be empty",
		},
		{
			name:  "list snapshots",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return c.ListSnapshots(ctx, "a") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				snaps := got.([]volumedriver.SnapshotInfo)
				if len(snaps) != 2 || snaps[0].Name != "weekly" || snaps[0].Metadata != "first" || snaps[1].Name != "daily" || snaps[1].WrittenBytes != 2*MiB {
					t.Errorf("snapshots = %+v", snaps)
				}
			},
		},
		{
			name: "list no snapshots",
			call: func(c *Client) (any, error) { return c.ListSnapshots(ctx, "a") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if snaps := got.([]volumedriver.SnapshotInfo); snaps == nil || len(snaps) != 0 {
					t.Errorf("snapshots = %#v; want an empty non-nil slice", snaps)
				}
			},
		},
		{
			name:    "list snapshots of unknown vdisk",
			call:    func(c *Client) (any, error) { return c.ListSnapshots(ctx, "nope") },
			wantErr: volumedriver.ErrNotFound, wantMsg: `vdisk "nope" not found`, status: 404,
		},
		{
			name:  "delete snapshot",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return nil, c.DeleteSnapshot(ctx, "a", "daily") },
			want:  wantCall(apitest.Call{Method: "DeleteSnapshot", Name: "a", Snapshot: "daily"}),
		},
		{
			name:    "delete snapshot needing escapes",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return nil, c.DeleteSnapshot(ctx, "a", "x/y?z") },
			wantErr: volumedriver.ErrNotFound, wantMsg: `snapshot "x/y?z" of vdisk "a" not found`, status: 404,
		},
		{
			name:    "delete unknown snapshot",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return nil, c.DeleteSnapshot(ctx, "a", "nope") },
			wantErr: volumedriver.ErrNotFound, wantMsg: `snapshot "nope" of vdisk "a" not found`, status: 404,
		},
		{
			name:    "delete snapshot with clones",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return nil, c.DeleteSnapshot(ctx, "a", "weekly") },
			wantErr: volumedriver.ErrBusy, wantMsg: "flatten or delete them first", status: 409,
		},
		{
			name:    "delete snapshot empty name",
			call:    func(c *Client) (any, error) { return nil, c.DeleteSnapshot(ctx, "a", "") },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "snapshot name must not be empty",
		},
		{
			name:  "rollback",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return nil, c.Rollback(ctx, "a", "weekly", false) },
			want: func(t *testing.T, _ any, fake *apitest.FakeVDisks) {
				if info, _ := fake.Info(ctx, "a"); info.Snapshots != 1 {
					t.Errorf("info after rollback = %+v", info)
				}
			},
		},
		{
			name:    "rollback busy",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return nil, c.Rollback(ctx, "b", "bs", false) },
			wantErr: volumedriver.ErrBusy, wantMsg: `vdisk "b" is in use by 1 client(s)`, status: 409,
		},
		{
			name:  "rollback busy with force",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return nil, c.Rollback(ctx, "b", "bs", true) },
			want:  wantCall(apitest.Call{Method: "Rollback", Name: "b", Snapshot: "bs", Force: true}),
		},
		{
			name:    "rollback unknown snapshot",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return nil, c.Rollback(ctx, "a", "nope", false) },
			wantErr: volumedriver.ErrNotFound, wantMsg: `snapshot "nope" of vdisk "a" not found`, status: 404,
		},
		{
			name:    "rollback a template",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return nil, c.Rollback(ctx, "t", templateSnap, false) },
			wantErr: volumedriver.ErrReadOnly, status: 409,
		},
		{
			name:    "rollback empty snapshot",
			call:    func(c *Client) (any, error) { return nil, c.Rollback(ctx, "a", "", false) },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "snapshot name must not be empty",
		},
		{
			name:  "clone",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return c.Clone(ctx, "new", "a", "daily") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if info := got.(volumedriver.VolumeInfo); info.Name != "new" || info.Parent != "a@daily" {
					t.Errorf("clone = %+v", info)
				}
			},
		},
		{
			name:  "clone a template",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return c.Clone(ctx, "vm", "t", "") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if info := got.(volumedriver.VolumeInfo); info.Parent != "t@"+templateSnap {
					t.Errorf("clone = %+v", info)
				}
			},
		},
		{
			name:    "clone a non-template without snapshot",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return c.Clone(ctx, "new", "a", "") },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "only templates clone from their latest snapshot", status: 400,
		},
		{
			name:    "clone to a taken name",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return c.Clone(ctx, "c", "a", "daily") },
			wantErr: volumedriver.ErrExists, wantMsg: `vdisk "c" already exists`, status: 409,
		},
		{
			name:    "clone unknown snapshot",
			setup:   seedTree,
			call:    func(c *Client) (any, error) { return c.Clone(ctx, "new", "a", "nope") },
			wantErr: volumedriver.ErrNotFound, wantMsg: `snapshot "nope" of vdisk "a" not found`, status: 404,
		},
		{
			name:    "clone empty parent",
			call:    func(c *Client) (any, error) { return c.Clone(ctx, "new", "", "s") },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "the vdisk to clone must be named",
		},
		{
			name:    "clone empty name",
			call:    func(c *Client) (any, error) { return c.Clone(ctx, "", "a", "s") },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "vdisk name must not be empty",
		},
		{
			name:  "flatten",
			setup: seedTree,
			call:  func(c *Client) (any, error) { return c.Flatten(ctx, "c") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if info := got.(volumedriver.VolumeInfo); info.Name != "c" || info.Parent != "" {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name:    "flatten unknown",
			call:    func(c *Client) (any, error) { return c.Flatten(ctx, "nope") },
			wantErr: volumedriver.ErrNotFound, status: 404,
		},
		{
			name: "set template",
			call: func(c *Client) (any, error) { return c.SetTemplate(ctx, "a") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if info := got.(volumedriver.VolumeInfo); !info.Template || info.Snapshots != 1 {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name:    "set template unknown",
			call:    func(c *Client) (any, error) { return c.SetTemplate(ctx, "nope") },
			wantErr: volumedriver.ErrNotFound, status: 404,
		},
		{
			name: "scrub",
			setup: func(f *apitest.FakeVDisks) {
				seedFake(f)
				f.SetScrubResult("a", volumedriver.ScrubResult{SCOsRewritten: 1, SCOsDeleted: 2, BackendBytesBefore: 3, BackendBytesAfter: 4, LiveBytes: 5, Duration: 6})
			},
			call: func(c *Client) (any, error) { return c.Scrub(ctx, "a") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				want := volumedriver.ScrubResult{SCOsRewritten: 1, SCOsDeleted: 2, BackendBytesBefore: 3, BackendBytesAfter: 4, LiveBytes: 5, Duration: 6}
				if res := got.(volumedriver.ScrubResult); res != want {
					t.Errorf("result = %+v; want %+v", res, want)
				}
			},
		},
		{
			name:    "scrub unknown",
			call:    func(c *Client) (any, error) { return c.Scrub(ctx, "nope") },
			wantErr: volumedriver.ErrNotFound, status: 404,
		},
		{
			name:    "scrub empty name",
			call:    func(c *Client) (any, error) { return c.Scrub(ctx, "") },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "vdisk name must not be empty",
		},
	})
}
