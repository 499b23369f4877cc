// Command ovs is the OVS binary: every daemon and every command-line tool
// is a subcommand. The CLI commands talk to the REST API (--api, $OVS_API).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/internal/timerslack"
)

func main() {
	if isDaemon(os.Args[1:]) {
		if err := timerslack.Ensure(timerslack.Daemon); err != nil {
			fmt.Fprintf(os.Stderr, "ovs: warning: running with the default timer slack: %v\n", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// isDaemon reports whether args run a daemon (ovs up, ovs node serve, ovs
// asd serve, ovs arakoon serve): they run with the timer slack of
// internal/timerslack.
func isDaemon(args []string) bool {
	if len(args) > 0 && args[0] == "up" {
		return true
	}
	if len(args) > 1 && args[1] == "serve" {
		switch args[0] {
		case "node", "asd", "arakoon":
			return true
		}
	}
	return false
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
	var ee exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "ovs: %v\n", ee.err)
		}
		return ee.code
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
	// timeout bounds one API call; 0 means none (the server's own
	// deadlines still apply).
	timeout time.Duration
	// tokenFile holds API tokens (DATA/api-tokens); $OVS_TOKEN wins.
	tokenFile string
}

// client returns an API client for the --api address, with the call
// timeout and the API token ($OVS_TOKEN, else the newest in the token
// file, if readable).
func (g *globalOptions) client() *api.Client {
	c := api.NewClient(g.api, &http.Client{Timeout: g.timeout})
	token := os.Getenv("OVS_TOKEN")
	if token == "" && g.tokenFile != "" {
		token, _ = api.ReadToken(g.tokenFile) // unreadable: calls that need it say so
	}
	if token != "" {
		c = c.WithToken(token)
	}
	return c
}

// addClientFlags adds the flags of the API client (timeout, token file)
// to cmd and its subcommands.
func (g *globalOptions) addClientFlags(cmd *cobra.Command) {
	data := os.Getenv("OVS_DATA")
	if data == "" {
		home, _ := os.UserHomeDir()
		data = filepath.Join(home, ".ovs")
	}
	cmd.PersistentFlags().DurationVar(&g.timeout, "timeout", defaultCallTimeout,
		"give up on an API call after this long (0: wait as long as the server allows)")
	cmd.PersistentFlags().StringVar(&g.tokenFile, "token-file", filepath.Join(data, api.TokenFileName),
		"API token file (DATA/api-tokens of the cluster; $OVS_TOKEN wins)")
}

// defaultCallTimeout is a bit over the server's longest deadline, so that
// the server's own timeout answer is what the user sees.
const defaultCallTimeout = 11 * time.Minute

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
		newTokenCommand(),
		newClusterCommand(),
		newNodeCommand(g),
		newOpenStackCommand(g),
		newHealthCommand(g),
		newJobCommand(g),
		newScheduleCommand(g),
		newDockerPluginCommand(g),
		newLibvirtCommand(g),
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
