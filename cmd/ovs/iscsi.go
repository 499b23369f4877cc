package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
)

// newVDiskSetCHAPCommand sets the CHAP secrets of a vdisk's iSCSI target
// (or of discovery). Secrets come from files or the environment, never
// from the command line, where ps would show them.
func newVDiskSetCHAPCommand(g *globalOptions) *cobra.Command {
	var (
		req                          api.CHAPRequest
		secretFile, mutualSecretFile string
		none, discovery              bool
	)
	cmd := &cobra.Command{
		Use:   "set-chap NAME|--discovery --user USER --secret-file FILE [--mutual-user U --mutual-secret-file FILE] | --none",
		Short: "Require iSCSI CHAP for a vdisk's target (or for discovery)",
		Long: "An initiator logging in to the vdisk's iSCSI target must then prove the\n" +
			"secret (CHAP); with --mutual-user the target proves its own secret back\n" +
			"(mutual CHAP). --discovery sets the secrets of discovery sessions\n" +
			"(SendTargets) instead. Secrets are 12 to 255 bytes, read from a file (its\n" +
			"first line) or from $OVS_CHAP_SECRET / $OVS_CHAP_MUTUAL_SECRET, never\n" +
			"from the command line. --none removes CHAP. Every node applies the\n" +
			"change at the next login.",
		Example: "  ovs vdisk set-chap vm1 --user esx --secret-file /etc/ovs/vm1.chap\n" +
			"  ovs vdisk set-chap --discovery --user disc --secret-file /etc/ovs/disc.chap\n" +
			"  ovs vdisk set-chap vm1 --none",
		Args: func(cmd *cobra.Command, args []string) error {
			if discovery {
				if len(args) > 0 {
					return fmt.Errorf("%s --discovery takes no vdisk NAME", commandName(cmd))
				}
				return nil
			}
			return oneName(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.User, "user", "", "the user name the initiator logs in with")
	f.StringVar(&secretFile, "secret-file", "", "file holding the initiator's secret (default $OVS_CHAP_SECRET)")
	f.StringVar(&req.MutualUser, "mutual-user", "", "the target's user name for mutual CHAP")
	f.StringVar(&mutualSecretFile, "mutual-secret-file", "", "file holding the target's secret (default $OVS_CHAP_MUTUAL_SECRET)")
	f.BoolVar(&none, "none", false, "remove CHAP: logins need no secret")
	f.BoolVar(&discovery, "discovery", false, "set the secrets of discovery sessions, not of a vdisk's target")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		name := ""
		if !discovery {
			name = args[0]
		}
		what := "vdisk " + name
		if discovery {
			what = "discovery"
		}
		switch {
		case none && (req.User != "" || req.MutualUser != ""):
			return errors.New("--none takes no user names")
		case none:
			if err := g.client().SetCHAP(cmd.Context(), name, api.CHAPRequest{}); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s: iSCSI CHAP removed\n", what)
			return err
		case req.User == "":
			return errors.New("give --user and --secret-file, or --none")
		}
		var err error
		if req.Secret, err = readSecret(secretFile, "OVS_CHAP_SECRET", "--secret-file"); err != nil {
			return err
		}
		if req.MutualUser != "" {
			if req.MutualSecret, err = readSecret(mutualSecretFile, "OVS_CHAP_MUTUAL_SECRET", "--mutual-secret-file"); err != nil {
				return err
			}
		}
		if err := req.Validate(); err != nil {
			return err
		}
		if err := g.client().SetCHAP(cmd.Context(), name, req); err != nil {
			return err
		}
		mode := "CHAP"
		if req.MutualUser != "" {
			mode = "mutual CHAP"
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: iSCSI logins need %s (user %s)\n", what, mode, req.User)
		return err
	}
	return cmd
}

// readSecret reads a secret from file (its first line) or, without one,
// from the environment variable env.
func readSecret(file, env, flag string) (string, error) {
	if file == "" {
		if s := os.Getenv(env); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("no secret: give %s or set $%s", flag, env)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("reading the secret: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimRight(line, "\r"), nil
}
