// Command ovs is the OVS binary: every daemon and every command-line tool
// is a subcommand. The CLI commands talk to the REST API (--api, $OVS_API).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the ovs command line args and returns the exit code. Errors
// are printed as "ovs: <message>" on stderr; usage errors (bad flags,
// arguments or commands) are followed by the command's usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var rerr runtimeError
	if !errors.As(err, &rerr) {
		fmt.Fprintf(stderr, "ovs: %v\n\n%s", err, cmd.UsageString())
		return 1
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintln(stderr, "ovs: interrupted")
		return 1
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		fmt.Fprintf(stderr, "ovs: %v (is the API running? --api and $OVS_API set its address)\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "ovs: %v\n", err)
	return 1
}

// runtimeError marks an error returned by a command's RunE, as opposed to
// a usage error raised by cobra before the command ran.
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }
func (e runtimeError) Unwrap() error { return e.err }

// globalOptions holds the persistent flags every API command uses.
type globalOptions struct {
	api string
}

// client returns an API client for the --api address.
func (g *globalOptions) client() *api.Client { return api.NewClient(g.api, nil) }

// newRootCommand builds the ovs command tree. Output goes to stdout and
// stderr; nothing is kept in package state.
func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "ovs",
		Short: "OVS block storage for VMs and containers",
		Long: "OVS is a hyperconverged block storage system: log-structured volumes\n" +
			"on an erasure-coded backend. This one binary runs every daemon and\n" +
			"every command-line tool.",
		Version:           buildVersion(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("ovs version {{.Version}}\n")

	defaultAPI := os.Getenv("OVS_API")
	if defaultAPI == "" {
		defaultAPI = api.DefaultAddress
	}
	root.PersistentFlags().StringVar(&g.api, "api", defaultAPI, "address of the OVS REST API; $OVS_API sets the default")

	root.AddCommand(
		newVDiskCommand(g),
		newVersionCommand(),
		newUpCommand(),
		newArakoonCommand(),
		newASDCommand(),
		newBackendCommand(g),
	)
	markRuntimeErrors(root)
	return root
}

// markRuntimeErrors wraps the RunE of cmd and its subcommands so that
// their errors are told apart from usage errors.
func markRuntimeErrors(cmd *cobra.Command) {
	if f := cmd.RunE; f != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			if err := f(c, args); err != nil {
				return runtimeError{err}
			}
			return nil
		}
	}
	for _, sub := range cmd.Commands() {
		markRuntimeErrors(sub)
	}
}
