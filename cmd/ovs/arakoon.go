package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/arakoon"
	ovsnode "github.com/ovs-storage/ovs/framework/node"
	"github.com/ovs-storage/ovs/framework/secret"
)

// arakoonOptions are the flags shared by the arakoon commands.
type arakoonOptions struct {
	config     string
	timeout    time.Duration
	secretFile string
}

func newArakoonCommand() *cobra.Command {
	o := &arakoonOptions{}
	cmd := &cobra.Command{
		Use:   "arakoon",
		Short: "Run and query arakoon, the replicated KV of the cluster metadata",
		Long: "Arakoon is the consistent, replicated key-value store that holds the OVS\n" +
			"model. `ovs arakoon serve` runs one node of a cluster; the other commands\n" +
			"are clients that find the master through the cluster file given by\n" +
			"--config or $OVS_ARAKOON_CONFIG:\n\n" +
			"  cluster: ovsdb\n" +
			"  nodes:\n" +
			"    - {id: a1, client: 127.0.0.1:8900, raft: 127.0.0.1:8901, data: /var/lib/ovs/arakoon/a1}\n" +
			"  tuning: {heartbeat_timeout: 1s, election_timeout: 1s}   # optional\n" +
			"  secret_file: /etc/ovs/secret\n\n" +
			"Nodes and clients talk TLS and authenticate each other with the cluster\n" +
			"secret: --secret-file, else $OVS_SECRET, $OVS_SECRET_FILE, else the file's\n" +
			"secret_file. A node refuses whoever does not hold it. ovs up writes the\n" +
			"file of its embedded node to DATA/arakoon/cluster.yaml.\n\n" +
			"Keys and values are bytes; values are at most 8 MiB.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVar(&o.config, "config", os.Getenv("OVS_ARAKOON_CONFIG"),
		"cluster file (YAML); $OVS_ARAKOON_CONFIG sets the default")
	cmd.PersistentFlags().StringVar(&o.secretFile, "secret-file", "",
		"file holding the cluster secret (default: $OVS_SECRET, $OVS_SECRET_FILE, then secret_file of the cluster file)")
	cmd.PersistentFlags().DurationVar(&o.timeout, "timeout", 30*time.Second,
		"how long a client command keeps trying (master changes, unreachable nodes)")
	cmd.AddCommand(
		newArakoonServeCommand(o),
		newArakoonGetCommand(o),
		newArakoonSetCommand(o),
		newArakoonDeleteCommand(o),
		newArakoonListCommand(o),
		newArakoonWhoMasterCommand(o),
		newArakoonStatsCommand(o),
		newArakoonMembersCommand(o),
		newArakoonAddNodeCommand(o),
		newArakoonRemoveNodeCommand(o),
		newArakoonBenchCommand(),
	)
	return cmd
}

func (o *arakoonOptions) loadConfig() (*arakoon.Config, error) {
	if o.config == "" {
		return nil, errors.New("no cluster file: give --config or set $OVS_ARAKOON_CONFIG")
	}
	return arakoon.LoadConfig(o.config)
}

// client connects to the cluster of --config; call the returned function
// when done.
func (o *arakoonOptions) client(cmd *cobra.Command) (*arakoon.Client, *arakoon.Config, context.Context, func(), error) {
	cfg, err := o.loadConfig()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	sec, err := o.secret(cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cc := cfg.ClientConfig()
	cc.RetryTimeout = o.timeout
	if cc.TLS, err = sec.ClientTLS(secret.RoleCLI, "cli", secret.RoleArakoon); err != nil {
		return nil, nil, nil, nil, err
	}
	c, err := arakoon.NewClient(cc)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	return c, cfg, ctx, func() { cancel(); c.Close() }, nil
}

// exactArgs is cobra.ExactArgs with a message naming the arguments.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return fmt.Errorf("%s takes %s, got %d argument(s)", commandName(cmd), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

func readOptions(stale bool, node string) []arakoon.ReadOption {
	switch {
	case node != "":
		return []arakoon.ReadOption{arakoon.ReadFrom(node)}
	case stale:
		return []arakoon.ReadOption{arakoon.AllowStale()}
	}
	return nil
}

func newArakoonServeCommand(o *arakoonOptions) *cobra.Command {
	var (
		node     string
		join     bool
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "serve --config CLUSTER.yaml --node ID",
		Short: "Run one arakoon node",
		Long: "Run node ID of the cluster file until SIGINT or SIGTERM. On first start the\n" +
			"nodes of the file (except those marked join) form the cluster; a node\n" +
			"started with --join (or marked join: true) waits until `add-node` adds it\n" +
			"to the live cluster. A master that is stopped hands over to another node.",
		Example: "  ovs arakoon serve --config /etc/ovs/arakoon.yaml --node a1",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if node == "" {
				return errors.New("serve needs --node ID")
			}
			var lv slog.Level
			if err := lv.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cfg, err := o.loadConfig()
			if err != nil {
				return err
			}
			sec, err := o.secret(cfg)
			if err != nil {
				return fmt.Errorf("%w: a node serves only clients and peers holding the cluster secret", err)
			}
			ntls, err := ovsnode.ArakoonNodeTLS(sec, node)
			if err != nil {
				return err
			}
			restrictUmask()
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lv}))
			s, err := arakoon.Start(cfg, node, arakoon.ServerOptions{Join: join, Logger: log, TLS: ntls})
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "id of the node to run (from the cluster file)")
	cmd.Flags().BoolVar(&join, "join", false, "do not bootstrap: wait to be added to a live cluster with add-node")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newArakoonGetCommand(o *arakoonOptions) *cobra.Command {
	var (
		stale bool
		node  string
		raw   bool
	)
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print a key's value",
		Long: "Print the value of KEY followed by a newline (--raw: the exact bytes). The\n" +
			"read is linearizable (served by the master) unless --stale or --node is given.",
		Args: exactArgs("KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			v, err := c.Get(ctx, []byte(args[0]), readOptions(stale, node)...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if _, err := out.Write(v); err != nil {
				return err
			}
			if !raw {
				fmt.Fprintln(out)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&stale, "stale", false, "read from any node without confirming it is current")
	cmd.Flags().StringVar(&node, "node", "", "read (stale) from this node")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the value's exact bytes, without a newline")
	return cmd
}

func newArakoonSetCommand(o *arakoonOptions) *cobra.Command {
	var stdin bool
	cmd := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Set a key",
		Long:  "Set KEY to VALUE, or with --stdin to what standard input holds (at most 8 MiB).",
		Args: func(cmd *cobra.Command, args []string) error {
			if stdin {
				return exactArgs("KEY")(cmd, args)
			}
			return exactArgs("KEY", "VALUE")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var value []byte
			if stdin {
				var err error
				value, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), arakoon.MaxValueSize+1))
				if err != nil {
					return fmt.Errorf("reading the value: %w", err)
				}
			} else {
				value = []byte(args[1])
			}
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			return c.Set(ctx, []byte(args[0]), value)
		},
	}
	cmd.Flags().BoolVar(&stdin, "stdin", false, "read the value from standard input")
	return cmd
}

func newArakoonDeleteCommand(o *arakoonOptions) *cobra.Command {
	var prefix bool
	cmd := &cobra.Command{
		Use:   "delete KEY",
		Short: "Delete a key",
		Long: "Delete KEY; it is an error if KEY does not exist. With --prefix, delete\n" +
			"every key that starts with KEY and print how many there were.",
		Args: exactArgs("KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			if prefix {
				n, err := c.DeletePrefix(ctx, []byte(args[0]))
				if err == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%d keys deleted\n", n)
				}
				return err
			}
			return c.Delete(ctx, []byte(args[0]))
		},
	}
	cmd.Flags().BoolVar(&prefix, "prefix", false, "delete every key starting with KEY")
	return cmd
}

func newArakoonListCommand(o *arakoonOptions) *cobra.Command {
	var (
		prefix string
		limit  int
		stale  bool
		node   string
	)
	cmd := &cobra.Command{
		Use:   "list [--prefix P]",
		Short: "List keys, one a line",
		Long:  "List the keys that start with --prefix (all keys if empty) in order, one a line.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return errors.New("--limit must not be negative")
			}
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			keys, err := c.PrefixKeys(ctx, []byte(prefix), limit, readOptions(stale, node)...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, k := range keys {
				if _, err := fmt.Fprintf(out, "%s\n", k); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "list only keys starting with this")
	cmd.Flags().IntVar(&limit, "limit", 0, "list at most this many keys (0: all)")
	cmd.Flags().BoolVar(&stale, "stale", false, "read from any node without confirming it is current")
	cmd.Flags().StringVar(&node, "node", "", "read (stale) from this node")
	return cmd
}

func newArakoonWhoMasterCommand(o *arakoonOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "who-master",
		Short: "Print the master's id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			m, err := c.WhoMaster(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), m.ID)
			return nil
		},
	}
}

func newArakoonStatsCommand(o *arakoonOptions) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Show a node's statistics",
		Long:  "Show the statistics of the master, or of --node.",
		Args:  cobra.NoArgs,
	}
	format := addOutputFlag(cmd)
	cmd.Flags().StringVar(&node, "node", "", "the node to ask (default: the master)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, ctx, done, err := o.client(cmd)
		if err != nil {
			return err
		}
		defer done()
		st, err := c.Statistics(ctx, node)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if *format == outputJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
		row("cluster", st.Cluster)
		row("node", st.Node)
		row("state", st.State)
		row("master", st.Master)
		row("term", st.Term)
		row("last index", st.LastIndex)
		row("commit index", st.CommitIndex)
		row("applied index", st.AppliedIndex)
		row("last snapshot", st.LastSnapshotIndex)
		row("snapshot restores", st.SnapshotRestores)
		row("keys", st.Keys)
		row("sessions", st.Sessions)
		row("store bytes", st.StoreBytes)
		row("uptime", (time.Duration(st.UptimeSeconds * float64(time.Second))).Round(time.Second))
		var members []string
		for _, m := range st.Members {
			s := m.ID
			if !m.Voter {
				s += " (learner)"
			}
			members = append(members, s)
		}
		row("members", strings.Join(members, ", "))
		ops := make([]string, 0, len(st.Ops))
		for k := range st.Ops {
			ops = append(ops, k)
		}
		sort.Strings(ops)
		for _, k := range ops {
			row("ops "+k, st.Ops[k])
		}
		return tw.Flush()
	}
	return cmd
}

func newArakoonMembersCommand(o *arakoonOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "members",
		Short: "List the cluster's nodes as the master sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			ms, err := c.Members(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tCLIENT\tRAFT")
			for _, m := range ms {
				role := "voter"
				if !m.Voter {
					role = "learner"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.ID, role, m.Client, m.Raft)
			}
			return tw.Flush()
		},
	}
}

func newArakoonAddNodeCommand(o *arakoonOptions) *cobra.Command {
	var (
		client, raftAddr string
		learner          bool
	)
	cmd := &cobra.Command{
		Use:   "add-node ID",
		Short: "Add a node to the live cluster",
		Long: "Add node ID to the running cluster, as a voter or (--learner) a non-voting\n" +
			"replica. Start the node first with `serve --join` (or mark it join: true in\n" +
			"the cluster file). Its addresses come from --client and --raft, or from the\n" +
			"cluster file.",
		Example: "  ovs arakoon serve --config c.yaml --node a4 --join &\n" +
			"  ovs arakoon --config c.yaml add-node a4",
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, cfg, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			n := arakoon.NodeInfo{ID: args[0], Client: client, Raft: raftAddr}
			if nc, ok := cfg.Node(n.ID); ok {
				if n.Client == "" {
					n.Client = nc.Client
				}
				if n.Raft == "" {
					n.Raft = nc.Raft
				}
			}
			if n.Client == "" || n.Raft == "" {
				return fmt.Errorf("node %q is not in %s: give --client and --raft", n.ID, o.config)
			}
			return c.AddNode(ctx, n, learner)
		},
	}
	cmd.Flags().StringVar(&client, "client", "", "the node's client address (default: from the cluster file)")
	cmd.Flags().StringVar(&raftAddr, "raft", "", "the node's raft address (default: from the cluster file)")
	cmd.Flags().BoolVar(&learner, "learner", false, "add a non-voting replica")
	return cmd
}

func newArakoonRemoveNodeCommand(o *arakoonOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-node ID",
		Short: "Remove a node from the live cluster",
		Long:  "Remove node ID from the running cluster. Stop the node afterwards.",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ctx, done, err := o.client(cmd)
			if err != nil {
				return err
			}
			defer done()
			return c.RemoveNode(ctx, args[0])
		},
	}
}

func newArakoonBenchCommand() *cobra.Command {
	var (
		o     arakoon.BenchOptions
		sizes string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure sets/s and gets/s against a bare bbolt store",
		Long: "Start throw-away 1-node and 3-node clusters on loopback in this process and\n" +
			"measure sets/s and linearizable gets/s with concurrent clients, next to a\n" +
			"bare bbolt store on the same disk; print the figures and their ratios.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range strings.Split(sizes, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || (n != 1 && n != 3 && n != 5) {
					return fmt.Errorf("--nodes: %q is not 1, 3 or 5", s)
				}
				o.Sizes = append(o.Sizes, n)
			}
			_, err := arakoon.RunBench(cmd.Context(), o, cmd.OutOrStdout())
			return err
		},
	}
	cmd.Flags().DurationVar(&o.Duration, "duration", 3*time.Second, "length of each phase")
	cmd.Flags().IntVar(&o.Clients, "clients", 64, "concurrent clients")
	cmd.Flags().IntVar(&o.ValueSize, "value-size", 128, "bytes per value")
	cmd.Flags().StringVar(&sizes, "nodes", "1,3", "cluster sizes to measure")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "where to put the stores (default: a temporary directory)")
	return cmd
}

// secret finds the cluster secret: --secret-file, $OVS_SECRET,
// $OVS_SECRET_FILE, then the cluster file's secret_file.
func (o *arakoonOptions) secret(cfg *arakoon.Config) (*secret.Secret, error) {
	if o.secretFile == "" && os.Getenv(secret.EnvValue) == "" && os.Getenv(secret.EnvFile) == "" && cfg.SecretFile != "" {
		return secret.LoadFile(cfg.SecretFile)
	}
	s, err := secret.Resolve(o.secretFile, "")
	if errors.Is(err, secret.ErrNoSecret) {
		return nil, fmt.Errorf("%w, or secret_file in %s", err, o.config)
	}
	return s, err
}
