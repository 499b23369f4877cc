package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/volumedriver"
)

// startAPI serves the REST API over a FakeVDisks holding vdisks "a" (1 GiB,
// 3 MiB written, 1 MiB pending) and "busy" (2 GiB, one client).
func startAPI(t *testing.T) (string, *apitest.FakeVDisks) {
	t.Helper()
	fake := apitest.NewFakeVDisks()
	ctx := context.Background()
	for _, d := range []struct {
		name string
		size int64
	}{{"a", api.GiB}, {"busy", 2 * api.GiB}} {
		if _, err := fake.Create(ctx, d.name, d.size, volumedriver.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	fake.SetPending("a", 3*api.MiB, api.MiB)
	fake.SetClients("busy", 1)
	s := api.NewServer(fake, api.Options{Logger: slog.New(slog.DiscardHandler)})
	s.SetReady(true)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts.URL, fake
}

func runOVS(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// cliTest is one run of the ovs command against the API over the
// FakeVDisks of startAPI.
type cliTest struct {
	name       string
	args       []string // --api is appended
	wantCode   int
	wantStdout string   // exact, unless stdoutHas is set
	stdoutHas  []string // substrings of stdout
	wantStderr string   // exact first line of stderr; "" means none
	usage      bool     // stderr continues with the usage
	setup      func(*apitest.FakeVDisks)
	check      func(t *testing.T, fake *apitest.FakeVDisks)
}

func TestCLI(t *testing.T) {
	runCLITests(t, []cliTest{
		{
			name: "list",
			args: []string{"vdisk", "list"},
			wantStdout: "" +
				"NAME  SIZE   OWNER  STATE  CLIENTS  WRITTEN  PENDING UPLOAD  SNAPSHOTS\n" +
				"a     1 GiB  -      ok     0        3 MiB    1 MiB           0\n" +
				"busy  2 GiB  -      ok     1        0 B      0 B             0\n",
		},
		{
			name:      "list alias",
			args:      []string{"vdisk", "ls"},
			stdoutHas: []string{"NAME", "busy"},
		},
		{
			name:      "list json",
			args:      []string{"vdisk", "list", "-o", "json"},
			stdoutHas: []string{`"name": "a"`, `"pending_upload_bytes": 1048576`, `"name": "busy"`},
		},
		{
			name:       "list bad output format",
			args:       []string{"vdisk", "list", "-o", "yaml"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "yaml" for "-o, --output" flag: must be "table" or "json"`,
			usage:      true,
		},
		{
			name:       "create",
			args:       []string{"vdisk", "create", "c", "--size", "10GiB"},
			wantStdout: "created vdisk \"c\": 10 GiB, 4 KiB clusters, 4 MiB SCOs\n",
			check: func(t *testing.T, fake *apitest.FakeVDisks) {
				calls := fake.Calls()
				want := apitest.Call{Method: "Create", Name: "c", Size: 10 * api.GiB}
				if last := calls[len(calls)-1]; last != want {
					t.Errorf("call = %+v; want %+v", last, want)
				}
			},
		},
		{
			name:       "create with options",
			args:       []string{"vdisk", "create", "c", "--size", "1.5 GiB", "--cluster-size", "8k", "--sco-multiplier", "2048"},
			wantStdout: "created vdisk \"c\": 1.5 GiB, 8 KiB clusters, 16 MiB SCOs\n",
		},
		{
			name:      "create json",
			args:      []string{"vdisk", "create", "c", "--size", "1GiB", "-o", "json"},
			stdoutHas: []string{`"name": "c"`, `"size": 1073741824`, `"cluster_size": 4096`},
		},
		{
			name:       "create duplicate",
			args:       []string{"vdisk", "create", "a", "--size", "10GiB"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "a" already exists`,
		},
		{
			name:       "create bad size",
			args:       []string{"vdisk", "create", "c", "--size", "10XB"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "10XB" for "--size" flag: unknown unit "XB" (use B, KiB, MiB, GiB, TiB, PiB or EiB)`,
			usage:      true,
			check:      noCallsAbout("c"),
		},
		{
			name:       "create zero size",
			args:       []string{"vdisk", "create", "c", "--size", "0"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "0" for "--size" flag: size must be greater than zero`,
			usage:      true,
		},
		{
			name:       "create negative size",
			args:       []string{"vdisk", "create", "c", "--size=-1G"},
			wantCode:   1,
			wantStderr: `ovs: invalid argument "-1G" for "--size" flag: size must not be negative`,
			usage:      true,
		},
		{
			name:       "create size the driver refuses",
			args:       []string{"vdisk", "create", "c", "--size", "1000"},
			wantCode:   1,
			wantStderr: `ovs: size 1000 is not a positive multiple of the cluster size 4096`,
		},
		{
			name:       "create without size",
			args:       []string{"vdisk", "create", "c"},
			wantCode:   1,
			wantStderr: `ovs: required flag(s) "size" not set`,
			usage:      true,
		},
		{
			name:       "create without name",
			args:       []string{"vdisk", "create", "--size", "1G"},
			wantCode:   1,
			wantStderr: `ovs: vdisk create needs the vdisk NAME`,
			usage:      true,
		},
		{
			name:       "create negative sco multiplier",
			args:       []string{"vdisk", "create", "c", "--size", "1G", "--sco-multiplier", "-1"},
			wantCode:   1,
			wantStderr: `ovs: --sco-multiplier must not be negative`,
		},
		{
			name: "info",
			args: []string{"vdisk", "info", "a"},
			wantStdout: "" +
				"name:           a\n" +
				"id:             00000000-0000-0000-0000-000000000001\n" +
				"owner:          -\n" +
				"state:          ok\n" +
				"DTL:            -\n" +
				"size:           1 GiB (1073741824 bytes)\n" +
				"cluster size:   4 KiB\n" +
				"SCO size:       4 MiB\n" +
				"created:        2025-01-02T03:04:05Z\n" +
				"clients:        0\n" +
				"written:        3 MiB (3145728 bytes)\n" +
				"pending upload: 1 MiB (1048576 bytes)\n" +
				"write buffer:   1 MiB (1048576 bytes)\n" +
				"stored:         0 B\n" +
				"garbage:        0 B\n" +
				"snapshots:      0\n" +
				"template:       no\n" +
				"parent:         -\n",
		},
		{
			name:      "info json",
			args:      []string{"vdisk", "info", "busy", "-o", "json"},
			stdoutHas: []string{`"name": "busy"`, `"clients": 1`, `"size": 2147483648`},
		},
		{
			name:       "info unknown",
			args:       []string{"vdisk", "info", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		{
			name:       "info two names",
			args:       []string{"vdisk", "info", "a", "b"},
			wantCode:   1,
			wantStderr: `ovs: vdisk info takes one vdisk NAME, got 2 arguments`,
			usage:      true,
		},
		{
			name:       "delete",
			args:       []string{"vdisk", "delete", "a"},
			wantStdout: "deleted vdisk \"a\"\n",
			check: func(t *testing.T, fake *apitest.FakeVDisks) {
				if _, err := fake.Info(context.Background(), "a"); err == nil {
					t.Error("a was not deleted")
				}
			},
		},
		{
			name:       "delete busy",
			args:       []string{"vdisk", "delete", "busy"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "busy" is in use by 1 client(s) (use --force to delete it anyway)`,
		},
		{
			name: "delete busy, the message mentions force already",
			args: []string{"vdisk", "delete", "busy"},
			setup: func(f *apitest.FakeVDisks) {
				f.FailWith("Delete", fmt.Errorf("%w: busy has 1 client(s) connected; use force to delete anyway", volumedriver.ErrBusy))
			},
			wantCode:   1,
			wantStderr: `ovs: vdisk is in use: busy has 1 client(s) connected; use force to delete anyway`,
		},
		{
			name:       "delete busy with force",
			args:       []string{"vdisk", "rm", "busy", "--force"},
			wantStdout: "deleted vdisk \"busy\"\n",
		},
		{
			name:       "delete unknown",
			args:       []string{"vdisk", "delete", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		{
			name:       "resize",
			args:       []string{"vdisk", "resize", "a", "--size", "2GiB"},
			wantStdout: "resized vdisk \"a\" to 2 GiB\n",
		},
		{
			name:      "resize json",
			args:      []string{"vdisk", "resize", "a", "--size", "3g", "-o", "json"},
			stdoutHas: []string{`"size": 3221225472`},
		},
		{
			name:       "resize shrink",
			args:       []string{"vdisk", "resize", "busy", "--size", "1GiB"},
			wantCode:   1,
			wantStderr: `ovs: cannot shrink vdisk "busy" from 2147483648 to 1073741824 bytes`,
		},
		{
			name:       "resize without size",
			args:       []string{"vdisk", "resize", "a"},
			wantCode:   1,
			wantStderr: `ovs: required flag(s) "size" not set`,
			usage:      true,
		},
		{
			name:       "sync",
			args:       []string{"vdisk", "sync", "a"},
			wantStdout: "synced vdisk \"a\" to the backend\n",
			check: func(t *testing.T, fake *apitest.FakeVDisks) {
				if info, _ := fake.Info(context.Background(), "a"); info.PendingUploadBytes != 0 {
					t.Errorf("pending %d after sync", info.PendingUploadBytes)
				}
			},
		},
		{
			name:       "sync unknown",
			args:       []string{"vdisk", "sync", "nope"},
			wantCode:   1,
			wantStderr: `ovs: vdisk "nope" not found`,
		},
		{
			name:       "unknown subcommand",
			args:       []string{"vdisk", "frob"},
			wantCode:   1,
			wantStderr: `ovs: unknown command "frob" for "ovs vdisk"`,
			usage:      true,
		},
		{
			name:       "unknown command",
			args:       []string{"frob"},
			wantCode:   1,
			wantStderr: `ovs: unknown command "frob" for "ovs"`,
			usage:      true,
		},
		{
			name:       "unknown flag",
			args:       []string{"vdisk", "list", "--colour"},
			wantCode:   1,
			wantStderr: `ovs: unknown flag: --colour`,
			usage:      true,
		},
		{
			name:      "vdisk without subcommand shows help",
			args:      []string{"vdisk"},
			stdoutHas: []string{"Available Commands:", "create", "1024-based"},
		},
		{
			name:      "version",
			args:      []string{"version"},
			stdoutHas: []string{"ovs version "},
		},
	})
}

func runCLITests(t *testing.T, tests []cliTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, fake := startAPI(t)
			if tt.setup != nil {
				tt.setup(fake)
			}
			stdout, stderr, code := runOVS(append(tt.args, "--api", url)...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d; want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout, stderr)
			}
			if tt.stdoutHas != nil {
				for _, s := range tt.stdoutHas {
					if !strings.Contains(stdout, s) {
						t.Errorf("stdout lacks %q:\n%s", s, stdout)
					}
				}
			} else if stdout != tt.wantStdout {
				t.Errorf("stdout =\n%s\nwant\n%s", stdout, tt.wantStdout)
			}
			first, rest, _ := strings.Cut(stderr, "\n")
			if first != tt.wantStderr {
				t.Errorf("stderr first line = %q; want %q", first, tt.wantStderr)
			}
			if hasUsage := strings.Contains(rest, "Usage:"); hasUsage != tt.usage {
				t.Errorf("usage shown = %v; want %v; stderr:\n%s", hasUsage, tt.usage, stderr)
			}
			if tt.check != nil {
				tt.check(t, fake)
			}
		})
	}
}

// noCallsAbout checks that the driver saw no call about vdisk name.
func noCallsAbout(name string) func(*testing.T, *apitest.FakeVDisks) {
	return func(t *testing.T, fake *apitest.FakeVDisks) {
		for _, c := range fake.Calls() {
			if c.Name == name {
				t.Errorf("unexpected call %+v", c)
			}
		}
	}
}

// The json output of list is the API's array, also when empty.
func TestCLIListJSONEmpty(t *testing.T) {
	fake := apitest.NewFakeVDisks()
	s := api.NewServer(fake, api.Options{Logger: slog.New(slog.DiscardHandler)})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	stdout, stderr, code := runOVS("vdisk", "list", "-o", "json", "--api", ts.URL)
	if code != 0 || strings.TrimSpace(stdout) != "[]" {
		t.Fatalf("code %d stdout %q stderr %q", code, stdout, stderr)
	}
	var infos []volumedriver.VolumeInfo
	if err := json.Unmarshal([]byte(stdout), &infos); err != nil || infos == nil {
		t.Fatalf("not a JSON array: %v", err)
	}
	stdout, _, _ = runOVS("vdisk", "list", "--api", ts.URL)
	if stdout != "NAME  SIZE  OWNER  STATE  CLIENTS  WRITTEN  PENDING UPLOAD  SNAPSHOTS\n" {
		t.Errorf("empty table = %q", stdout)
	}
}

// $OVS_API sets the default address; --api overrides it.
func TestCLIAPIFromEnv(t *testing.T) {
	url, _ := startAPI(t)
	t.Setenv("OVS_API", url)
	if stdout, stderr, code := runOVS("vdisk", "info", "a"); code != 0 || !strings.Contains(stdout, "name:") {
		t.Fatalf("with $OVS_API: code %d stdout %q stderr %q", code, stdout, stderr)
	}
	_, stderr, code := runOVS("vdisk", "info", "a", "--api", "http://127.0.0.1:1")
	if code != 1 || !strings.HasPrefix(stderr, "ovs: cannot reach the OVS API at http://127.0.0.1:1") ||
		!strings.Contains(stderr, "$OVS_API") {
		t.Fatalf("--api override: code %d stderr %q", code, stderr)
	}
}

func TestCLIDefaultAPI(t *testing.T) {
	t.Setenv("OVS_API", "")
	root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	if got := root.PersistentFlags().Lookup("api").DefValue; got != "http://127.0.0.1:8800" {
		t.Errorf("default --api = %q", got)
	}
}

// Every command builds anew: two roots share no flag state.
func TestCLINoSharedState(t *testing.T) {
	url, _ := startAPI(t)
	if _, stderr, code := runOVS("vdisk", "create", "x", "--size", "1G", "-o", "json", "--api", url); code != 0 {
		t.Fatal(stderr)
	}
	stdout, stderr, code := runOVS("vdisk", "create", "y", "--size", "1G", "--api", url)
	if code != 0 || stdout != "created vdisk \"y\": 1 GiB, 4 KiB clusters, 4 MiB SCOs\n" {
		t.Fatalf("code %d stdout %q stderr %q", code, stdout, stderr)
	}
}

func TestCLIInterrupted(t *testing.T) {
	url, _ := startAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut bytes.Buffer
	if code := run(ctx, []string{"vdisk", "list", "--api", url}, &out, &errOut); code != 1 || errOut.String() != "ovs: interrupted\n" {
		t.Fatalf("code %d stderr %q", code, errOut.String())
	}
}
