package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/volumedriver"
)

// Snapshots and what is built on them: rollback, clones, templates.

func newVDiskSnapshotCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snapshots", "snap"},
		Short:   "Create, list and delete snapshots of a vdisk",
		Long: "A snapshot is a named, read-only point in time of a vdisk. Taking one\n" +
			"costs a flush and a small metadata write, whatever the vdisk's size.\n" +
			"Roll back to a snapshot with \"ovs vdisk rollback\", make a new vdisk from\n" +
			"one with \"ovs vdisk clone\".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newSnapshotCreateCommand(g),
		newSnapshotListCommand(g),
		newSnapshotDeleteCommand(g),
	)
	return cmd
}

// nameAndSnapshot accepts the vdisk NAME and a SNAPSHOT, which may be left
// out if optional.
func nameAndSnapshot(optional bool) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		want := "the vdisk NAME and a SNAPSHOT"
		if optional {
			want = "the vdisk NAME and at most one SNAPSHOT"
		}
		switch {
		case len(args) == 0:
			return fmt.Errorf("%s needs the vdisk NAME", commandName(cmd))
		case len(args) == 1 && !optional:
			return fmt.Errorf("%s needs a SNAPSHOT after the vdisk NAME", commandName(cmd))
		case len(args) > 2:
			return fmt.Errorf("%s takes %s, got %d arguments", commandName(cmd), want, len(args))
		case args[0] == "":
			return errors.New("the vdisk NAME must not be empty")
		case len(args) == 2 && args[1] == "":
			return errors.New("the SNAPSHOT name must not be empty")
		}
		return nil
	}
}

func newSnapshotCreateCommand(g *globalOptions) *cobra.Command {
	var (
		metadata string
		quiesce  quiesceFlags
	)
	cmd := &cobra.Command{
		Use:   "create NAME [SNAPSHOT] [--metadata TEXT] [--quiesce DOMAIN]",
		Short: "Snapshot a vdisk",
		Long: "Take a snapshot of a vdisk. Without a SNAPSHOT name, one is generated\n" +
			"from the time. Snapshot names are 1-64 of A-Z a-z 0-9 . _ -; --metadata\n" +
			fmt.Sprintf("is free text of up to %d bytes kept with the snapshot. --quiesce DOMAIN\n", volumedriver.MaxSnapshotMetadata) +
			"freezes the filesystems of that libvirt domain's guest (qemu guest agent)\n" +
			"while the snapshot is taken, and thaws them whatever happens.",
		Example: "  ovs vdisk snapshot create vm1-root before-upgrade --metadata 'kernel 6.12'\n" +
			"  ovs vdisk snapshot create vm1-root",
		Args: nameAndSnapshot(true),
	}
	cmd.Flags().StringVar(&metadata, "metadata", "", "text to keep with the snapshot")
	quiesce.add(cmd)
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		snapshot := ""
		if len(args) == 2 {
			snapshot = args[1]
		}
		var snap volumedriver.SnapshotInfo
		err := quiesce.run(cmd, args[0], func(ctx context.Context) (err error) {
			snap, err = g.client().CreateSnapshot(ctx, args[0], snapshot, metadata)
			return err
		})
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			return writeJSON(w, snap)
		}
		_, err = fmt.Fprintf(w, "created snapshot %q of vdisk %q\n", snap.Name, args[0])
		return err
	}
	return cmd
}

func newSnapshotListCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list NAME",
		Aliases: []string{"ls"},
		Short:   "List the snapshots of a vdisk, oldest first",
		Long: "List the snapshots of a vdisk, oldest first. WRITTEN is what was written\n" +
			"between the previous snapshot and this one; SYNCED tells whether all of\n" +
			"the snapshot is on the backend.",
		Args: oneName,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		snaps, err := g.client().ListSnapshots(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			return writeJSON(w, snaps)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCREATED\tWRITTEN\tSYNCED")
		for _, s := range snaps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, formatTime(s.CreatedAt), api.FormatSize(s.WrittenBytes), yesNo(s.Synced))
		}
		return tw.Flush()
	}
	return cmd
}

func newSnapshotDeleteCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME SNAPSHOT",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot",
		Long: "Delete a snapshot of a vdisk. The vdisk's data does not change; the\n" +
			"space only the snapshot kept comes back when the vdisk is scrubbed.\n" +
			"A snapshot that clones are built on cannot be deleted.",
		Args: nameAndSnapshot(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := g.client().DeleteSnapshot(cmd.Context(), args[0], args[1])
			if errors.Is(err, volumedriver.ErrBusy) && !strings.Contains(err.Error(), "flatten") {
				return fmt.Errorf("%w (flatten or delete its clones first)", err)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "deleted snapshot %q of vdisk %q\n", args[1], args[0])
			return err
		},
	}
}

func newVDiskRollbackCommand(g *globalOptions) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rollback NAME SNAPSHOT",
		Short: "Return a vdisk to a snapshot",
		Long: "Return a vdisk to a snapshot: every write after it and every later\n" +
			"snapshot are discarded. A vdisk that a client has open is refused unless\n" +
			"--force is given: the client would see its disk change under it.",
		Example: "  ovs vdisk rollback vm1-root before-upgrade",
		Args:    nameAndSnapshot(false),
	}
	cmd.Flags().BoolVar(&force, "force", false, "roll back even if a client has the vdisk open")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := g.client().Rollback(cmd.Context(), args[0], args[1], force)
		if errors.Is(err, volumedriver.ErrBusy) && !force && !strings.Contains(err.Error(), "force") &&
			!strings.Contains(err.Error(), "clones") {
			return fmt.Errorf("%w (use --force to roll back anyway)", err)
		}
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "rolled back vdisk %q to snapshot %q\n", args[0], args[1])
		return err
	}
	return cmd
}

// snapshotRef is the --from flag of clone: VDISK or VDISK@SNAPSHOT.
type snapshotRef struct {
	vdisk, snapshot string
}

func (r *snapshotRef) Set(text string) error {
	vdisk, snapshot, hasAt := strings.Cut(text, "@")
	switch {
	case vdisk == "":
		return errors.New("expected VDISK or VDISK@SNAPSHOT, the vdisk is missing")
	case hasAt && snapshot == "":
		return errors.New("expected VDISK or VDISK@SNAPSHOT, the snapshot after @ is missing")
	case strings.Contains(snapshot, "@"):
		return errors.New("expected VDISK or VDISK@SNAPSHOT, found more than one @")
	}
	*r = snapshotRef{vdisk, snapshot}
	return nil
}

func (r *snapshotRef) String() string {
	if r.snapshot == "" {
		return r.vdisk
	}
	return r.vdisk + "@" + r.snapshot
}

func (r *snapshotRef) Type() string { return "vdisk[@snapshot]" }

func newVDiskCloneCommand(g *globalOptions) *cobra.Command {
	var from snapshotRef
	cmd := &cobra.Command{
		Use:   "clone NEW --from VDISK[@SNAPSHOT]",
		Short: "Make a new vdisk from a snapshot",
		Long: "Make a new vdisk from a snapshot of another. No data is copied: the clone\n" +
			"reads what it has not written itself from the snapshot, so cloning is\n" +
			"instant. Without @SNAPSHOT, VDISK must be a template and its latest\n" +
			"snapshot is used. \"ovs vdisk flatten\" cuts a clone loose from its parent.",
		Example: "  ovs vdisk clone vm2-root --from vm1-root@before-upgrade\n" +
			"  ovs vdisk clone vm3-root --from debian-13",
		Args: oneName,
	}
	cmd.Flags().Var(&from, "from", "the snapshot to clone, VDISK@SNAPSHOT, or a template VDISK (required)")
	_ = cmd.MarkFlagRequired("from")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info, err := g.client().Clone(cmd.Context(), args[0], from.vdisk, from.snapshot)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			return writeJSON(w, info)
		}
		parent := info.Parent
		if parent == "" {
			parent = from.String()
		}
		_, err = fmt.Fprintf(w, "cloned vdisk %q from %s: %s\n", info.Name, parent, api.FormatSize(info.Size))
		return err
	}
	return cmd
}

func newVDiskFlattenCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "flatten NAME",
		Short: "Make a clone independent of its parent",
		Long: "Copy everything a clone still reads from its parent's snapshot into the\n" +
			"clone, then cut it loose: the snapshot can then be deleted. The vdisk\n" +
			"stays in use meanwhile. A vdisk that is not a clone is left as it is.",
		Args: oneName,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c := g.client()
		info, err := withProgress(cmd, *output, "flatten "+args[0], c,
			func(ctx context.Context) (api.Job, error) { return c.FlattenJob(ctx, args[0]) },
			func(ctx context.Context) (volumedriver.VolumeInfo, error) { return c.Flatten(ctx, args[0]) })
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "flattened vdisk %q: it no longer depends on another vdisk\n", info.Name)
		return err
	}
	return cmd
}

func newVDiskSetTemplateCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "set-template NAME",
		Short: "Make a vdisk a read-only template to clone from",
		Long: "Make a vdisk a template: read-only for good, with its latest state kept\n" +
			"as a snapshot (one is taken if needed) on the backend. Clone it with\n" +
			"\"ovs vdisk clone NEW --from NAME\".",
		Args: oneName,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info, err := g.client().SetTemplate(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "vdisk %q is now a read-only template; clone it with: ovs vdisk clone NEW --from %s\n",
			info.Name, info.Name)
		return err
	}
	return cmd
}

// formatTime renders a time for tables and info, "-" if unset.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
