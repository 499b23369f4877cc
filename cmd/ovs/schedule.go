package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/framework/schedule"
)

func newScheduleCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Show and set the automatic snapshot and scrub schedules",
		Long: "Each node takes automatic snapshots of the vdisks it owns, prunes them by a\n" +
			"retention rule, and scrubs them, on the vpool's schedule or a vdisk's own.\n" +
			"Automatic snapshots are named auto-<UTC time>, e.g. auto-20261201T0300Z;\n" +
			"the pruner deletes only those, never a snapshot a user took.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newScheduleShowCommand(g), newScheduleSetCommand(g))
	g.addClientFlags(cmd)
	return cmd
}

func newScheduleShowCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show [VDISK]",
		Short: "Show the vpool's schedule, or a vdisk's",
		Args:  cobra.MaximumNArgs(1),
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var vdisk string
		if len(args) == 1 {
			if vdisk = args[0]; vdisk == "" {
				return errors.New("the vdisk NAME must not be empty")
			}
		}
		in, err := g.client().Schedule(cmd.Context(), vdisk)
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), in)
		}
		return writeSchedule(cmd.OutOrStdout(), in)
	}
	return cmd
}

// Values of the set flags that unset a field.
const (
	unsetVPool   = "vpool"   // a vdisk's field: the vpool's applies
	unsetDefault = "default" // the vpool's snapshots or scrub: the default
)

func newScheduleSetCommand(g *globalOptions) *cobra.Command {
	var vpool bool
	var snapshots, retention, scrub string
	cmd := &cobra.Command{
		Use:   "set [VDISK | --vpool] [--snapshots P] [--retention R] [--scrub P]",
		Short: "Set the vpool's schedule, or a vdisk's override of it",
		Long: "Set the fields given; the others stay as they are.\n\n" +
			"--snapshots: hourly, daily, weekly, a period (30m, 12h, 2d) or off. Without\n" +
			"  a setting, automatic snapshots are off: each one keeps the data\n" +
			"  overwritten after it on the backend for as long as the rule keeps it.\n" +
			"--retention: DEFAULT (one per hour for a day, per day for a week, per\n" +
			"  week for four weeks) or EVERY:FOR pairs, e.g. \"1h:24h,24h:7d,168h:28d\".\n" +
			"  Periods are on a fixed UTC grid (days from 00:00, weeks from Monday);\n" +
			"  the first snapshot of each is kept; the newest is always kept.\n" +
			"--scrub: a period (24h) or off; default: the nodes' scrub_interval (1h).\n\n" +
			"For a vdisk, the value vpool gives a field back to the vpool's schedule;\n" +
			"for the vpool, default unsets --snapshots or --scrub.",
		Args: cobra.MaximumNArgs(1),
	}
	cmd.Flags().BoolVar(&vpool, "vpool", false, "set the vpool's schedule (the default of every vdisk)")
	cmd.Flags().StringVar(&snapshots, "snapshots", "", "hourly, daily, weekly, a period or off")
	cmd.Flags().StringVar(&retention, "retention", "", `DEFAULT or EVERY:FOR,... e.g. "1h:24h,24h:7d,168h:28d"`)
	cmd.Flags().StringVar(&scrub, "scrub", "", "a period (e.g. 24h) or off")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var vdisk string
		switch {
		case vpool && len(args) == 1:
			return errors.New("give a VDISK or --vpool, not both")
		case !vpool && len(args) == 0:
			return errors.New("give the VDISK to set, or --vpool for the vpool's schedule")
		case len(args) == 1:
			if vdisk = args[0]; vdisk == "" {
				return errors.New("the vdisk NAME must not be empty")
			}
		}
		f := cmd.Flags()
		if !f.Changed("snapshots") && !f.Changed("retention") && !f.Changed("scrub") {
			return errors.New("nothing to set: give --snapshots, --retention or --scrub")
		}
		cl := g.client()
		cur, err := cl.Schedule(cmd.Context(), vdisk)
		if err != nil {
			return err
		}
		next := cur.Set
		for _, fl := range []struct {
			name  string
			value string
			field *string
		}{{"snapshots", snapshots, &next.Snapshots}, {"retention", retention, &next.Retention}, {"scrub", scrub, &next.Scrub}} {
			if !f.Changed(fl.name) {
				continue
			}
			v, err := scheduleFlag(fl.name, fl.value, vdisk != "")
			if err != nil {
				return err
			}
			*fl.field = v
		}
		if err := schedule.Check(next); err != nil {
			return err
		}
		in, err := cl.SetSchedule(cmd.Context(), vdisk, next)
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), in)
		}
		return writeSchedule(cmd.OutOrStdout(), in)
	}
	return cmd
}

// scheduleFlag maps a set flag's value onto the model's field ("": unset).
func scheduleFlag(name, v string, forVDisk bool) (string, error) {
	v = strings.TrimSpace(v)
	switch lv := strings.ToLower(v); {
	case v == "":
		return "", fmt.Errorf("--%s: empty", name)
	case lv == unsetVPool && forVDisk:
		return "", nil
	case lv == unsetVPool:
		return "", fmt.Errorf("--%s vpool is for a vdisk (give the vpool's schedule a value, or default)", name)
	case name == "retention" && lv == schedule.DefaultRetentionName:
		return schedule.DefaultRetentionName, nil
	case lv == unsetDefault && !forVDisk:
		return "", nil
	case lv == unsetDefault:
		return "", fmt.Errorf("--%s default is for the vpool (a vdisk takes vpool, or a value)", name)
	}
	return v, nil
}

// writeSchedule prints a schedule as a table of its fields.
func writeSchedule(w io.Writer, in api.ScheduleInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	unset := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	row := func(name string, get func(model.Schedule) string) {
		if in.VDisk != "" && in.VPool != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, unset(get(in.Set)), unset(get(*in.VPool)), get(in.Effective))
			return
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", name, unset(get(in.Set)), get(in.Effective))
	}
	if in.VDisk != "" {
		fmt.Fprintf(tw, "VDISK %s\tSET\tVPOOL\tEFFECTIVE\n", in.VDisk)
	} else {
		fmt.Fprintf(tw, "VPOOL\tSET\tEFFECTIVE\n")
	}
	row("snapshots", func(s model.Schedule) string { return s.Snapshots })
	row("retention", func(s model.Schedule) string { return s.Retention })
	row("scrub", func(s model.Schedule) string { return s.Scrub })
	return tw.Flush()
}
