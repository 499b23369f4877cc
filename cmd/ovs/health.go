package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/health"
)

// exitError ends the command with a given exit code; err (if any) is
// printed as usual.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (e exitError) Unwrap() error { return e.err }

func newHealthCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Check the health of the cluster",
		Long: "Run the health checks of the cluster on the node the API belongs to and\n" +
			"print ok, warning or error per check:\n\n" +
			"  arakoon           a leader and a reachable majority of voters\n" +
			"  asds              ASDs down; error when the backend cannot take writes\n" +
			"  degraded-objects  objects with fragments missing; error when unreadable\n" +
			"  write-buffer      data waiting for the backend per vdisk: warning above\n" +
			"                    80% of the bound where writes wait, error above 95%\n" +
			"  dtl               vdisks whose DTL is degraded, catching up or standalone\n" +
			"  nodes             nodes that missed their heartbeats\n" +
			"  clock-skew        this node's clock against the others': warning above\n" +
			"                    1s, error above 5s\n\n" +
			"Exit status: 0 when every check is ok, 1 when the worst is a warning,\n" +
			"2 when the worst is an error or the API cannot be reached.",
		Args: cobra.NoArgs,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c := g.client()
		rep, err := c.HealthChecks(cmd.Context())
		if err != nil {
			var opErr *net.OpError
			var ae *api.APIError
			switch {
			case errors.As(err, &opErr) && opErr.Op == "dial":
				err = fmt.Errorf("cannot reach the API at %s: %w (is ovs running? --api and $OVS_API set its address)", c.BaseURL(), err)
			case errors.As(err, &ae):
				err = fmt.Errorf("the API at %s could not run the health checks: %w", c.BaseURL(), err)
			default:
				err = fmt.Errorf("health checks from %s: %w", c.BaseURL(), err)
			}
			return exitError{code: health.Error.ExitCode(), err: err}
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			if err := writeJSON(w, rep); err != nil {
				return err
			}
		} else {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "CHECK\tSTATUS\tMESSAGE")
			for _, ch := range rep.Checks {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", ch.Name, ch.Status, oneLine(ch.Message))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(w, "\n%s (node %s)\n", strings.ToUpper(rep.Status.String()), rep.Node)
		}
		if code := rep.Status.ExitCode(); code != 0 {
			return exitError{code: code}
		}
		return nil
	}
	g.addClientFlags(cmd)
	return cmd
}

// oneLine keeps a message on its table row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
