package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newVDiskRenameCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rename NAME NEW-NAME",
		Short: "Rename a vdisk",
		Long: "Give a vdisk a new name. Its data, snapshots and clones stay; clients\n" +
			"that opened it by the old name (NBD, iSCSI) must reconnect by the new one.\n" +
			"A crash during the rename leaves the vdisk under one of the two names.",
		Example: "  ovs vdisk rename vm1-root vm1-root-old",
		Args:    cobra.ExactArgs(2),
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info, err := g.client().Rename(cmd.Context(), args[0], args[1])
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), info)
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "renamed vdisk %q to %q\n", args[0], info.Name)
		return err
	}
	return cmd
}
