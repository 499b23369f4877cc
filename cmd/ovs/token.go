package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
)

// newTokenCommand: `ovs token create` makes an API token. The server
// requires one on mutating calls when it listens beyond loopback (or with
// --api-require-token); the CLI sends $OVS_TOKEN, else the newest token in
// DATA/api-tokens.
func newTokenCommand() *cobra.Command {
	var data string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage REST API tokens",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	home, _ := os.UserHomeDir()
	cmd.PersistentFlags().StringVar(&data, "data", filepath.Join(home, ".ovs"), "data directory of the cluster (as given to ovs up)")
	cmd.AddCommand(&cobra.Command{
		Use:   "create",
		Short: "Create an API token and print it",
		Long: "Create a random API token, add it to DATA/api-tokens (mode 0600; a running\n" +
			"ovs up sees it at once) and print it. Give it to remote clients in\n" +
			"$OVS_TOKEN; the CLI on this host reads it from DATA.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			token, err := api.CreateToken(filepath.Join(data, api.TokenFileName))
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), token)
			return nil
		},
	})
	return cmd
}
