package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/volumedriver"
)

// sizeFlagHelp documents the size syntax (api.ParseSize) in help texts.
const sizeFlagHelp = `

Sizes are a number of bytes or a number with a unit: B, K/KiB, M/MiB,
G/GiB, T/TiB, P/PiB (case-insensitive, optional space). All units are
binary (1024-based); KB, MB, GB, TB and PB are read as KiB, MiB, GiB, TiB
and PiB. Fractions are fine if they come to whole bytes: 1.5GiB.`

func newVDiskCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "vdisk",
		Aliases: []string{"vdisks"},
		Short:   "Create, list, resize, sync, snapshot, clone and delete vdisks",
		Long: "Manage vdisks (virtual block devices) through the OVS REST API given by\n" +
			"--api or $OVS_API." + sizeFlagHelp,
		// Runnable only so that an unknown subcommand is an error.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newVDiskCreateCommand(g),
		newVDiskListCommand(g),
		newVDiskInfoCommand(g),
		newVDiskDeleteCommand(g),
		newVDiskResizeCommand(g),
		newVDiskRenameCommand(g),
		newVDiskSyncCommand(g),
		newVDiskSnapshotCommand(g),
		newVDiskRollbackCommand(g),
		newVDiskCloneCommand(g),
		newVDiskFlattenCommand(g),
		newVDiskSetTemplateCommand(g),
		newVDiskScrubCommand(g),
		newVDiskMoveCommand(g),
		newVDiskSetDTLCommand(g),
		newVDiskSetCHAPCommand(g),
	)
	g.addClientFlags(cmd)
	return cmd
}

// oneName accepts exactly one argument, the vdisk name.
func oneName(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return fmt.Errorf("%s needs the vdisk NAME", commandName(cmd))
	case len(args) > 1:
		return fmt.Errorf("%s takes one vdisk NAME, got %d arguments", commandName(cmd), len(args))
	case args[0] == "":
		return fmt.Errorf("the vdisk NAME must not be empty")
	}
	return nil
}

// commandName is the command's path without the leading "ovs ", for
// messages that "ovs: " already prefixes.
func commandName(cmd *cobra.Command) string {
	return strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
}

func newVDiskCreateCommand(g *globalOptions) *cobra.Command {
	var (
		size, clusterSize sizeValue
		scoMultiplier     int
	)
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE",
		Short: "Create a vdisk",
		Long: "Create a vdisk of the given size. The cluster size (4 KiB to 64 KiB) and\n" +
			"the SCO multiplier (clusters per SCO) are fixed at creation; 0 takes the\n" +
			"defaults (4 KiB clusters, 1024 per SCO = 4 MiB SCOs)." + sizeFlagHelp,
		Example: "  ovs vdisk create vm1-root --size 10GiB\n" +
			"  ovs vdisk create db --size 1.5TiB --cluster-size 8KiB --sco-multiplier 2048",
		Args: oneName,
	}
	cmd.Flags().Var(&size, "size", "size of the vdisk, e.g. 10GiB (required)")
	cmd.Flags().Var(&clusterSize, "cluster-size", "cluster size, e.g. 4KiB (default 4KiB)")
	cmd.Flags().IntVar(&scoMultiplier, "sco-multiplier", 0, "clusters per SCO (default 1024)")
	_ = cmd.MarkFlagRequired("size")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if scoMultiplier < 0 {
			return errors.New("--sco-multiplier must not be negative")
		}
		opts := volumedriver.CreateOptions{ClusterSize: int(clusterSize), SCOMultiplier: scoMultiplier}
		info, err := g.client().Create(cmd.Context(), args[0], int64(size), opts)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			return writeJSON(w, info)
		}
		_, err = fmt.Fprintf(w, "created vdisk %q: %s, %s clusters, %s SCOs\n",
			info.Name, api.FormatSize(info.Size), api.FormatSize(int64(info.ClusterSize)), api.FormatSize(info.SCOSize))
		return err
	}
	return cmd
}

func newVDiskListCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List vdisks",
		Args:    cobra.NoArgs,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		infos, err := g.client().List(cmd.Context())
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			return writeJSON(w, infos)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSIZE\tOWNER\tSTATE\tCLIENTS\tWRITTEN\tPENDING UPLOAD\tSNAPSHOTS")
		for _, v := range infos {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\n", v.Name, api.FormatSize(v.Size), dash(v.Owner), dash(v.State), v.Clients,
				api.FormatSize(v.WrittenBytes), api.FormatSize(v.PendingUploadBytes), v.Snapshots)
		}
		return tw.Flush()
	}
	return cmd
}

func newVDiskInfoCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "info NAME",
		Aliases: []string{"show"},
		Short:   "Show a vdisk",
		Args:    oneName,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info, err := g.client().Info(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		return writeInfo(cmd.OutOrStdout(), info)
	}
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ownerText(v volumedriver.VolumeInfo) string {
	if v.Owner == "" {
		return "-"
	}
	return fmt.Sprintf("%s (epoch %d)", v.Owner, v.OwnerEpoch)
}

func dtlText(v volumedriver.VolumeInfo) string {
	if v.DTLMode == "" {
		return "-"
	}
	return v.DTLMode + ", " + v.DTLState + onNode(v.DTLNode)
}

// writeInfo prints a vdisk as aligned "key: value" lines.
func writeInfo(w io.Writer, v volumedriver.VolumeInfo) error {
	parent := v.Parent
	if parent == "" {
		parent = "-"
	}
	bytesAndSize := func(n int64) string {
		if n < api.KiB {
			return api.FormatSize(n)
		}
		return api.FormatSize(n) + " (" + strconv.FormatInt(n, 10) + " bytes)"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, kv := range [][2]string{
		{"name", v.Name},
		{"id", v.ID},
		{"owner", ownerText(v)},
		{"state", dash(v.State)},
		{"DTL", dtlText(v)},
		{"size", bytesAndSize(v.Size)},
		{"cluster size", api.FormatSize(int64(v.ClusterSize))},
		{"SCO size", api.FormatSize(v.SCOSize)},
		{"created", formatTime(v.CreatedAt)},
		{"clients", strconv.Itoa(v.Clients)},
		{"written", bytesAndSize(v.WrittenBytes)},
		{"pending upload", bytesAndSize(v.PendingUploadBytes)},
		{"write buffer", bytesAndSize(v.WriteBufferBytes)},
		{"stored", bytesAndSize(v.StoredBytes)},
		{"garbage", bytesAndSize(v.GarbageBytes)},
		{"snapshots", strconv.Itoa(v.Snapshots)},
		{"template", yesNo(v.Template)},
		{"parent", parent},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

func newVDiskDeleteCommand(g *globalOptions) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a vdisk",
		Long: "Delete a vdisk and its data. A vdisk that a client (an NBD connection)\n" +
			"has open is refused unless --force is given.",
		Args: oneName,
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete the vdisk even if a client has it open")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := g.client().Delete(cmd.Context(), args[0], force)
		// --force overrides clients, not clones: no hint when it would not help.
		if errors.Is(err, volumedriver.ErrBusy) && !force && !strings.Contains(err.Error(), "force") &&
			!strings.Contains(err.Error(), "clones") {
			return fmt.Errorf("%w (use --force to delete it anyway)", err)
		}
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "deleted vdisk %q\n", args[0])
		return err
	}
	return cmd
}

func newVDiskResizeCommand(g *globalOptions) *cobra.Command {
	var size sizeValue
	cmd := &cobra.Command{
		Use:     "resize NAME --size SIZE",
		Short:   "Grow a vdisk",
		Long:    "Grow a vdisk to a new size. Vdisks cannot shrink." + sizeFlagHelp,
		Example: "  ovs vdisk resize vm1-root --size 20GiB",
		Args:    oneName,
	}
	cmd.Flags().Var(&size, "size", "new size of the vdisk, e.g. 20GiB (required)")
	_ = cmd.MarkFlagRequired("size")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info, err := g.client().Resize(cmd.Context(), args[0], int64(size))
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "resized vdisk %q to %s\n", info.Name, api.FormatSize(info.Size))
		return err
	}
	return cmd
}

func newVDiskSyncCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "sync NAME",
		Short: "Wait until a vdisk's flushed writes are on the backend",
		Long: "Upload everything written to the vdisk and flushed before this command\n" +
			"started to the backend, and return when it is there.",
		Args: oneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().Sync(cmd.Context(), args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "synced vdisk %q to the backend\n", args[0])
			return err
		},
	}
}

func newVDiskScrubCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scrub NAME",
		Short: "Give back the backend space of overwritten data",
		Long: "Rewrite the vdisk's SCOs on the backend without the data that neither\n" +
			"the vdisk nor any of its snapshots can see any more (overwritten, or\n" +
			"only kept by deleted snapshots), and delete SCOs that hold nothing\n" +
			"else. The vdisk stays in use meanwhile.",
		Args: oneName,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c := g.client()
		res, err := withProgress(cmd, *output, "scrub "+args[0], c,
			func(ctx context.Context) (api.Job, error) { return c.ScrubJob(ctx, args[0]) },
			func(ctx context.Context) (volumedriver.ScrubResult, error) { return c.Scrub(ctx, args[0]) })
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		return writeScrubResult(cmd.OutOrStdout(), args[0], res)
	}
	return cmd
}

// writeScrubResult prints what a scrub did as "key: value" lines.
func writeScrubResult(w io.Writer, name string, r volumedriver.ScrubResult) error {
	took := r.Duration
	if took > time.Millisecond {
		took = took.Round(time.Millisecond)
	}
	freed := r.BackendBytesBefore - r.BackendBytesAfter
	if _, err := fmt.Fprintf(w, "scrubbed vdisk %q in %s\n", name, took); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, kv := range [][2]string{
		{"SCOs rewritten", strconv.Itoa(r.SCOsRewritten)},
		{"SCOs deleted", strconv.Itoa(r.SCOsDeleted)},
		{"backend bytes", api.FormatSize(r.BackendBytesBefore) + " → " + api.FormatSize(r.BackendBytesAfter)},
		{"freed", api.FormatSize(max(freed, 0))},
		{"live bytes", api.FormatSize(r.LiveBytes)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}
