package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/volumedriver"
)

// templateSnap is the snapshot FakeVDisks.SetTemplate takes of "t".
const templateSnap = "template-20250102-030405"

// seedSnapshots adds to startAPI's vdisks: snapshots "weekly" (1 MiB
// written, synced, metadata "first") then "daily" (2 MiB, not synced) of
// a, "bs" of busy, template t (one snapshot), and clone c of a@weekly.
func seedSnapshots(f *apitest.FakeVDisks) {
	ctx := context.Background()
	must := func(_ any, err error) {
		if err != nil {
			panic(err) // the setup has no *testing.T; this is a bug in the test
		}
	}
	f.SetPending("a", api.MiB, 0)
	must(f.CreateSnapshot(ctx, "a", "weekly", "first"))
	f.SetPending("a", 3*api.MiB, api.MiB)
	must(f.CreateSnapshot(ctx, "a", "daily", ""))
	must(f.CreateSnapshot(ctx, "busy", "bs", ""))
	must(f.Create(ctx, "t", api.GiB, volumedriver.CreateOptions{}))
	must(f.SetTemplate(ctx, "t"))
	must(f.Clone(ctx, "c", "a", "weekly"))
}

// hasCall checks that the driver saw call want.
func hasCall(want apitest.Call) func(*testing.T, *apitest.FakeVDisks) {
	return func(t *testing.T, fake *apitest.FakeVDisks) {
		t.Helper()
		if !slices.Contains(fake.Calls(), want) {
			t.Errorf("no call %+v in %+v", want, fake.Calls())
		}
	}
}

// noCallsOf checks that the driver saw no call of method.
func noCallsOf(method string) func(*testing.T, *apitest.FakeVDisks) {
	return func(t *testing.T, fake *apitest.FakeVDisks) {
		t.Helper()
		for _, c := range fake.Calls() {
			if c.Method == method {
				t.Errorf("unexpected call %+v", c)
			}
		}
	}
}

// lastCall checks the driver's last call.
func lastCall(want apitest.Call) func(*testing.T, *apitest.FakeVDisks) {
	return func(t *testing.T, fake *apitest.FakeVDisks) {
		t.Helper()
		calls := fake.Calls()
		if last := calls[len(calls)-1]; last != want {
			t.Errorf("call = %+v; want %+v", last, want)
		}
	}
}

func TestCLISnapshots(t *testing.T) {
	bigMetadata := strings.Repeat("m", volumedriver.MaxSnapshotMetadata+1)
	runCLITests(t, []cliTest{
		// vdisk snapshot create
		{
			name:       "snapshot create",
			args:       []string{"vdisk", "snapshot", "create", "a", "s3", "--metadata", "kernel 6.12"},
			wantStdout: "created snapshot \"s3\" of vdisk \"a\"\n",
			check:      lastCall(apitest.Call{Method: "CreateSnapshot", Name: "a", Snapshot: "s3", Metadata: "kernel 6.12"}),
		},
		{
			name:       "snapshot create with generated name",
			args:       []string{"vdisk", "snap", "create", "a"},
			wantStdout: "created snapshot \"snap-1\" of vdisk \"a\"\n",
			check:      lastCall(apitest.Call{Method: "CreateSnapshot", Name: "a"}),
		},
		{
			name:      "snapshot create json",
			args:      []string{"vdisk", "snapshot", "create", "a", "s3", "--metadata", "m", "-o", "json"},
			stdoutHas: []string{`"name": "s3"`, `"metadata": "m"`, `"created_at": "2025-01-02T03:04:05Z"`, `"synced": false`},
		},
		{
			name:       "snapshot create duplicate",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "snapshot", "create", "a", "daily"},
			wantCode:   1,
			wantStderr: `ovs: snapshot "daily" of vdisk "a" already exists`,
		},
		{
			name:       "snapshot create metadata too large",
			args:       []string{"vdisk", "snapshot", "create", "a", "--metadata", bigMetadata},
			wantCode:   1,
			wantStderr: `ovs: snapshot metadata is 4097 bytes, the limit is 4096`,
		},
		{
			name:       "snapshot create bad name",
			args:       []string{"vdisk", "snapshot", "create", "a", "x/y"},
			wantCode:   1,
			wantStderr: `ovs: invalid snapshot name "x/y" (use 1-64 of A-Z a-z 0-9 . _ -)`,
		},
		{
			name:       "snapshot create of a template",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "snapshot", "create", "t"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "t" is a read-only template`,
		},
		{
			name:       "snapshot create unknown vdisk",
			args:       []string{"vdisk", "snapshot", "create", "nope", "s"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		{
			name:       "snapshot create without name",
			args:       []string{"vdisk", "snapshot", "create"},
			wantCode:   1,
			wantStderr: `ovs: vdisk snapshot create needs the vdisk NAME`,
			usage:      true,
		},
		{
			name:       "snapshot create too many arguments",
			args:       []string{"vdisk", "snapshot", "create", "a", "s1", "s2"},
			wantCode:   1,
			wantStderr: `ovs: vdisk snapshot create takes the vdisk NAME and at most one SNAPSHOT, got 3 arguments`,
			usage:      true,
		},
		{
			name:       "snapshot create empty snapshot name",
			args:       []string{"vdisk", "snapshot", "create", "a", ""},
			wantCode:   1,
			wantStderr: `ovs: the SNAPSHOT name must not be empty`,
			usage:      true,
			check:      noCallsOf("CreateSnapshot"),
		},
		// vdisk snapshot list
		{
			name:  "snapshot list",
			setup: seedSnapshots,
			args:  []string{"vdisk", "snapshot", "list", "a"},
			wantStdout: "" +
				"NAME    CREATED               WRITTEN  SYNCED\n" +
				"weekly  2025-01-02T03:04:05Z  1 MiB    yes\n" +
				"daily   2025-01-02T03:04:05Z  2 MiB    no\n",
		},
		{
			name:       "snapshot list empty",
			args:       []string{"vdisk", "snapshots", "ls", "a"},
			wantStdout: "NAME  CREATED  WRITTEN  SYNCED\n",
		},
		{
			name:      "snapshot list json",
			setup:     seedSnapshots,
			args:      []string{"vdisk", "snapshot", "list", "a", "-o", "json"},
			stdoutHas: []string{`"name": "weekly"`, `"metadata": "first"`, `"written_bytes": 2097152`, `"synced": true`},
		},
		{
			name:       "snapshot list json empty",
			args:       []string{"vdisk", "snapshot", "list", "a", "-o", "json"},
			wantStdout: "[]\n",
		},
		{
			name:       "snapshot list unknown vdisk",
			args:       []string{"vdisk", "snapshot", "list", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		{
			name:      "snapshot without subcommand shows help",
			args:      []string{"vdisk", "snapshot"},
			stdoutHas: []string{"Available Commands:", "create", "list", "delete"},
		},
		// vdisk snapshot delete
		{
			name:       "snapshot delete",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "snapshot", "delete", "a", "daily"},
			wantStdout: "deleted snapshot \"daily\" of vdisk \"a\"\n",
			check:      lastCall(apitest.Call{Method: "DeleteSnapshot", Name: "a", Snapshot: "daily"}),
		},
		{
			name:       "snapshot delete unknown",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "snapshot", "rm", "a", "nope"},
			wantCode:   1,
			wantStderr: `ovs: snapshot "nope" of vdisk "a" not found`,
		},
		{
			name:       "snapshot delete with clones",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "snapshot", "delete", "a", "weekly"},
			wantCode:   1,
			wantStderr: `ovs: clones [c] are built on a@weekly; flatten or delete them first`,
		},
		{
			name:       "snapshot delete busy, the message lacks the way out",
			setup:      func(f *apitest.FakeVDisks) { f.FailWith("DeleteSnapshot", volumedriver.ErrBusy) },
			args:       []string{"vdisk", "snapshot", "delete", "a", "weekly"},
			wantCode:   1,
			wantStderr: `ovs: snapshot "weekly" of vdisk "a" is in use: clones depend on it (flatten or delete its clones first)`,
		},
		{
			name:       "snapshot delete without snapshot",
			args:       []string{"vdisk", "snapshot", "delete", "a"},
			wantCode:   1,
			wantStderr: `ovs: vdisk snapshot delete needs a SNAPSHOT after the vdisk NAME`,
			usage:      true,
		},
		// vdisk rollback
		{
			name:       "rollback",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "rollback", "a", "weekly"},
			wantStdout: "rolled back vdisk \"a\" to snapshot \"weekly\"\n",
			check: func(t *testing.T, fake *apitest.FakeVDisks) {
				if info, _ := fake.Info(context.Background(), "a"); info.Snapshots != 1 || info.WrittenBytes != api.MiB {
					t.Errorf("after rollback: %+v", info)
				}
			},
		},
		{
			name:       "rollback busy",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "rollback", "busy", "bs"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "busy" is in use by 1 client(s) (use --force to roll back anyway)`,
			check:      lastCall(apitest.Call{Method: "Rollback", Name: "busy", Snapshot: "bs"}),
		},
		{
			name: "rollback busy, the message mentions force already",
			setup: func(f *apitest.FakeVDisks) {
				f.FailWith("Rollback", fmt.Errorf("%w: busy has 1 client(s) connected; use force to roll back anyway", volumedriver.ErrBusy))
			},
			args:       []string{"vdisk", "rollback", "busy", "bs"},
			wantCode:   1,
			wantStderr: `ovs: vdisk is in use: busy has 1 client(s) connected; use force to roll back anyway`,
		},
		{
			name:       "rollback busy with force",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "rollback", "busy", "bs", "--force"},
			wantStdout: "rolled back vdisk \"busy\" to snapshot \"bs\"\n",
			check:      hasCall(apitest.Call{Method: "Rollback", Name: "busy", Snapshot: "bs", Force: true}),
		},
		{
			name: "rollback blocked by clones: no force hint",
			setup: func(f *apitest.FakeVDisks) {
				seedSnapshots(f)
				if _, err := f.Clone(context.Background(), "d", "a", "daily"); err != nil {
					panic(err)
				}
			},
			args:       []string{"vdisk", "rollback", "a", "weekly"},
			wantCode:   1,
			wantStderr: `ovs: rolling back would discard snapshot daily, which clones [d] are built on`,
		},
		{
			name:       "rollback unknown snapshot",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "rollback", "a", "nope"},
			wantCode:   1,
			wantStderr: `ovs: snapshot "nope" of vdisk "a" not found`,
		},
		{
			name:       "rollback a template",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "rollback", "t", templateSnap},
			wantCode:   1,
			wantStderr: `ovs: vdisk "t" is a read-only template`,
		},
		{
			name:       "rollback without snapshot",
			args:       []string{"vdisk", "rollback", "a"},
			wantCode:   1,
			wantStderr: `ovs: vdisk rollback needs a SNAPSHOT after the vdisk NAME`,
			usage:      true,
		},
		// vdisk clone
		{
			name:       "clone",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "clone", "new", "--from", "a@daily"},
			wantStdout: "cloned vdisk \"new\" from a@daily: 1 GiB\n",
			check:      lastCall(apitest.Call{Method: "Clone", Name: "new", Parent: "a", Snapshot: "daily"}),
		},
		{
			name:       "clone a template",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "clone", "vm", "--from", "t"},
			wantStdout: "cloned vdisk \"vm\" from t@" + templateSnap + ": 1 GiB\n",
			check:      lastCall(apitest.Call{Method: "Clone", Name: "vm", Parent: "t"}),
		},
		{
			name:      "clone json",
			setup:     seedSnapshots,
			args:      []string{"vdisk", "clone", "new", "--from=a@weekly", "-o", "json"},
			stdoutHas: []string{`"name": "new"`, `"parent": "a@weekly"`, `"template": false`, `"snapshots": 0`},
		},
		{
			name:       "clone a non-template without snapshot",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "clone", "new", "--from", "a"},
			wantCode:   1,
			wantStderr: `ovs: name a snapshot of a to clone (only templates clone from their latest snapshot)`,
		},
		{
			name:       "clone to a taken name",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "clone", "busy", "--from", "a@daily"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "busy" already exists`,
		},
		{
			name:       "clone unknown snapshot",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "clone", "new", "--from", "a@nope"},
			wantCode:   1,
			wantStderr: `ovs: snapshot "nope" of vdisk "a" not found`,
		},
		{
			name:       "clone unknown parent",
			args:       []string{"vdisk", "clone", "new", "--from", "nope@s"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		{
			name:       "clone source without vdisk",
			args:       []string{"vdisk", "clone", "new", "--from", "@daily"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "@daily" for "--from" flag: expected VDISK or VDISK@SNAPSHOT, the vdisk is missing`,
			usage:      true,
			check:      noCallsAbout("new"),
		},
		{
			name:       "clone source without snapshot after @",
			args:       []string{"vdisk", "clone", "new", "--from", "a@"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "a@" for "--from" flag: expected VDISK or VDISK@SNAPSHOT, the snapshot after @ is missing`,
			usage:      true,
			check:      noCallsAbout("new"),
		},
		{
			name:       "clone source with two @",
			args:       []string{"vdisk", "clone", "new", "--from", "a@b@c"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "a@b@c" for "--from" flag: expected VDISK or VDISK@SNAPSHOT, found more than one @`,
			usage:      true,
		},
		{
			name:       "clone without --from",
			args:       []string{"vdisk", "clone", "new"},
			wantCode:   1,
			wantStderr: `ovs: required flag(s) "from" not set`,
			usage:      true,
		},
		{
			name:       "clone without name",
			args:       []string{"vdisk", "clone", "--from", "a@s"},
			wantCode:   1,
			wantStderr: `ovs: vdisk clone needs the vdisk NAME`,
			usage:      true,
		},
		// vdisk flatten
		{
			name:       "flatten",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "flatten", "c"},
			wantStdout: "flattened vdisk \"c\": it no longer depends on another vdisk\n",
			check: func(t *testing.T, fake *apitest.FakeVDisks) {
				if info, _ := fake.Info(context.Background(), "c"); info.Parent != "" {
					t.Errorf("parent = %q after flatten", info.Parent)
				}
			},
		},
		{
			name:      "flatten json",
			setup:     seedSnapshots,
			args:      []string{"vdisk", "flatten", "c", "-o", "json"},
			stdoutHas: []string{`"name": "c"`},
		},
		{
			name:       "flatten unknown",
			args:       []string{"vdisk", "flatten", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		// vdisk set-template
		{
			name:       "set-template",
			args:       []string{"vdisk", "set-template", "a"},
			wantStdout: "vdisk \"a\" is now a read-only template; clone it with: ovs vdisk clone NEW --from a\n",
			check:      lastCall(apitest.Call{Method: "SetTemplate", Name: "a"}),
		},
		{
			name:      "set-template json",
			args:      []string{"vdisk", "set-template", "a", "-o", "json"},
			stdoutHas: []string{`"template": true`, `"snapshots": 1`},
		},
		{
			name:       "set-template unknown",
			args:       []string{"vdisk", "set-template", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		// vdisk scrub
		{
			name: "scrub",
			setup: func(f *apitest.FakeVDisks) {
				f.SetScrubResult("a", volumedriver.ScrubResult{SCOsRewritten: 3, SCOsDeleted: 5,
					BackendBytesBefore: 40 * api.MiB, BackendBytesAfter: 12 * api.MiB, LiveBytes: 10 * api.MiB,
					Duration: 1500*time.Millisecond + 123*time.Microsecond})
			},
			args: []string{"vdisk", "scrub", "a"},
			wantStdout: "" +
				"scrubbed vdisk \"a\" in 1.5s\n" +
				"SCOs rewritten: 3\n" +
				"SCOs deleted:   5\n" +
				"backend bytes:  40 MiB → 12 MiB\n" +
				"freed:          28 MiB\n" +
				"live bytes:     10 MiB\n",
			check: lastCall(apitest.Call{Method: "Scrub", Name: "a"}),
		},
		{
			name: "scrub json",
			setup: func(f *apitest.FakeVDisks) {
				f.SetScrubResult("a", volumedriver.ScrubResult{SCOsRewritten: 3, BackendBytesBefore: 10, BackendBytesAfter: 4, LiveBytes: 4, Duration: time.Second})
			},
			args: []string{"vdisk", "scrub", "a", "-o", "json"},
			wantStdout: "{\n" +
				"  \"scos_rewritten\": 3,\n" +
				"  \"scos_deleted\": 0,\n" +
				"  \"backend_bytes_before\": 10,\n" +
				"  \"backend_bytes_after\": 4,\n" +
				"  \"live_bytes\": 4,\n" +
				"  \"duration_ns\": 1000000000\n" +
				"}\n",
		},
		{
			name:       "scrub unknown",
			args:       []string{"vdisk", "scrub", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		// info and list show what snapshots added.
		{
			name:      "info of a clone",
			setup:     seedSnapshots,
			args:      []string{"vdisk", "info", "c"},
			stdoutHas: []string{"\nsnapshots:      0\n", "\ntemplate:       no\n", "\nparent:         a@weekly\n"},
		},
		{
			name:      "info of a template",
			setup:     seedSnapshots,
			args:      []string{"vdisk", "info", "t"},
			stdoutHas: []string{"\nsnapshots:      1\n", "\ntemplate:       yes\n", "\nparent:         -\n"},
		},
		{
			name:  "list with snapshots",
			setup: seedSnapshots,
			args:  []string{"vdisk", "list"},
			wantStdout: "" +
				"NAME  SIZE   OWNER  STATE  CLIENTS  WRITTEN  PENDING UPLOAD  SNAPSHOTS\n" +
				"a     1 GiB  -      ok     0        3 MiB    1 MiB           2\n" +
				"busy  2 GiB  -      ok     1        0 B      0 B             1\n" +
				"c     1 GiB  -      ok     0        0 B      0 B             0\n" +
				"t     1 GiB  -      ok     0        0 B      0 B             1\n",
		},
		{
			name:       "delete a vdisk with clones",
			setup:      seedSnapshots,
			args:       []string{"vdisk", "delete", "a"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "a" has clones (c); flatten or delete them first`,
		},
	})
}

func TestSnapshotRef(t *testing.T) {
	for in, want := range map[string]snapshotRef{
		"a":          {"a", ""},
		"a@s":        {"a", "s"},
		"vm-1@daily": {"vm-1", "daily"},
	} {
		var r snapshotRef
		if err := r.Set(in); err != nil || r != want {
			t.Errorf("Set(%q) = %+v, %v; want %+v", in, r, err, want)
		}
		if r.String() != in {
			t.Errorf("String() = %q; want %q", r.String(), in)
		}
	}
	for _, in := range []string{"", "@", "@s", "a@", "a@b@c"} {
		var r snapshotRef
		if err := r.Set(in); err == nil {
			t.Errorf("Set(%q) = %+v; want an error", in, r)
		}
	}
}
