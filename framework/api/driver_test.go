package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/volumedriver"
)

// The client against the API over the real driver: the driver's errors
// come out with the codes the CLI relies on.
func TestClientOverDriver(t *testing.T) {
	ctx := context.Background()
	backend, err := scos.NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	drv, err := volumedriver.Open(ctx, t.TempDir(), backend, volumedriver.Options{
		ScrubInterval: -1, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	s := NewServer(drv, Options{Logger: slog.New(slog.DiscardHandler)})
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	c := NewClient(ts.URL, ts.Client())

	step := func(what string, err error, want error, msg string) {
		t.Helper()
		switch {
		case want == nil && err != nil:
			t.Fatalf("%s: %v", what, err)
		case want != nil && !errors.Is(err, want):
			t.Errorf("%s: error %v; want %v", what, err, want)
		case want != nil && !strings.Contains(err.Error(), msg):
			t.Errorf("%s: error %q; want it to contain %q", what, err, msg)
		}
	}
	_, err = c.Create(ctx, "a", 16*MiB, volumedriver.CreateOptions{})
	step("create", err, nil, "")
	snap, err := c.CreateSnapshot(ctx, "a", "s1", "meta")
	step("snapshot", err, nil, "")
	if snap.Name != "s1" || snap.Metadata != "meta" {
		t.Errorf("snapshot = %+v", snap)
	}
	_, err = c.CreateSnapshot(ctx, "a", "s1", "")
	step("duplicate snapshot", err, volumedriver.ErrExists, "s1")
	_, err = c.CreateSnapshot(ctx, "a", "", strings.Repeat("x", volumedriver.MaxSnapshotMetadata+1))
	step("metadata too large", err, volumedriver.ErrInvalidArgument, "4096")
	gen, err := c.CreateSnapshot(ctx, "a", "", "")
	step("generated name", err, nil, "")
	snaps, err := c.ListSnapshots(ctx, "a")
	step("list", err, nil, "")
	if len(snaps) != 2 || snaps[0].Name != "s1" || snaps[1].Name != gen.Name {
		t.Errorf("snapshots = %+v", snaps)
	}
	step("delete unknown snapshot", c.DeleteSnapshot(ctx, "a", "nope"), volumedriver.ErrNotFound, "nope")
	step("rollback unknown snapshot", c.Rollback(ctx, "a", "nope", false), volumedriver.ErrNotFound, "nope")
	step("rollback", c.Rollback(ctx, "a", "s1", false), nil, "")
	_, err = c.Clone(ctx, "c", "a", "")
	step("clone non-template without snapshot", err, volumedriver.ErrInvalidArgument, "template")
	info, err := c.Clone(ctx, "c", "a", "s1")
	step("clone", err, nil, "")
	if info.Parent != "a@s1" {
		t.Errorf("clone = %+v", info)
	}
	step("delete snapshot with clones", c.DeleteSnapshot(ctx, "a", "s1"), volumedriver.ErrBusy, "c")
	info, err = c.Flatten(ctx, "c")
	step("flatten", err, nil, "")
	if info.Parent != "" {
		t.Errorf("flattened = %+v", info)
	}
	step("delete snapshot", c.DeleteSnapshot(ctx, "a", "s1"), nil, "")
	info, err = c.SetTemplate(ctx, "a")
	step("set template", err, nil, "")
	if !info.Template || info.Snapshots == 0 {
		t.Errorf("template = %+v", info)
	}
	_, err = c.CreateSnapshot(ctx, "a", "s2", "")
	step("snapshot a template", err, volumedriver.ErrReadOnly, "read-only")
	info, err = c.Clone(ctx, "vm", "a", "")
	step("clone a template", err, nil, "")
	if !strings.HasPrefix(info.Parent, "a@") {
		t.Errorf("clone = %+v", info)
	}
	_, err = c.Scrub(ctx, "vm")
	step("scrub", err, nil, "")
}
