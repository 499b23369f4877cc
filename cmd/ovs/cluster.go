package main

import (
	"context"
	"fmt"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/framework/node"
	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// newClusterCommand: `ovs cluster init` writes the cluster model.
func newClusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Initialise a cluster of several hosts",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newClusterInitCommand())
	return cmd
}

func newClusterInitCommand() *cobra.Command {
	var (
		arakoonFile, secretFile, id, preset, vpool, dtlMode string
		policies                                            []string
		maxPerSite                                          int
	)
	cmd := &cobra.Command{
		Use:   "init --arakoon CLUSTER.yaml --secret-file SECRET",
		Short: "Write the cluster model (id, vpool, backend preset) into arakoon",
		Long: "Initialise a cluster: write its record (id, vpool, the backend preset new\n" +
			"vdisks use) into the cluster's arakoon, the one source of truth of the\n" +
			"cluster model. Then add each host with ovs node join and run it with\n" +
			"ovs node serve. The default preset is 4+2 with at most 2 fragments per\n" +
			"node (losing a whole node loses no data), falling back to 2+2 (at most 2\n" +
			"per node) while a node is down.",
		Example: "  ovs cluster init --arakoon /etc/ovs/arakoon.yaml --secret-file /etc/ovs/secret --id prod",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sec, err := secret.LoadFile(secretFile)
			if err != nil {
				return err
			}
			mode, err := volumedriver.ParseDTLMode(dtlMode)
			if err != nil {
				return fmt.Errorf("--dtl-mode: %w", err)
			}
			c := model.Cluster{ID: id, Preset: preset, Policies: policies, MaxPerSite: maxPerSite,
				VPool: model.VPool{Name: vpool, DTLMode: string(mode)}}
			// The preset is checked here, not at the first node's start.
			p := ec.Preset{Name: preset, MaxPerSite: maxPerSite}
			for _, s := range policies {
				pol, err := ec.ParsePolicy(s)
				if err != nil {
					return fmt.Errorf("--policy %q: %w", s, err)
				}
				p.Policies = append(p.Policies, pol)
			}
			if err := p.Validate(); err != nil {
				return err
			}
			log := slog.New(slog.DiscardHandler)
			ara, err := node.DialArakoon(arakoonFile, sec, "cli", log)
			if err != nil {
				return err
			}
			defer ara.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			got, err := model.New(model.Arakoon(ara)).Init(ctx, c)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "cluster %s initialised: vpool %s (DTL %s), preset %s %v\n", got.ID, got.VPool.Name, got.VPool.DTLMode, got.Preset, got.Policies)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&arakoonFile, "arakoon", "", "the arakoon cluster file (cluster.yaml) of the cluster (required)")
	f.StringVar(&secretFile, "secret-file", "", "file holding the cluster secret (required; ovs secret files are made by ovs up or ansible)")
	f.StringVar(&id, "id", "ovs", "cluster id")
	f.StringVar(&vpool, "vpool", "default", "name of the vpool")
	f.StringVar(&dtlMode, "dtl-mode", "sync", "the vpool's DTL mode: sync (a flush waits for the DTL on another node), async or none")
	f.StringVar(&preset, "preset", ec.DefaultPresetName, "name of the backend preset new vdisks use")
	f.StringSliceVar(&policies, "policy", []string{"4,2,6,2", "2,2,4,2"}, "policies of the preset, k,m,c,x (data, parity, fragments stored before a write is acknowledged, at most per node), first preferred")
	f.IntVar(&maxPerSite, "max-per-site", 0, "at most this many fragments of an object in one site (0: no bound; a geo preset sets it to at most m)")
	_ = cmd.MarkFlagRequired("arakoon")
	_ = cmd.MarkFlagRequired("secret-file")
	return cmd
}

// newNodeCommand: the storage router daemon and its registration.
func newNodeCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run, join and list the nodes (storage routers) of a cluster",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newNodeServeCommand(), newNodeJoinCommand(), newNodeListCommand(g))
	return cmd
}

func newNodeServeCommand() *cobra.Command {
	var configPath, logLevel string
	cmd := &cobra.Command{
		Use:   "serve --config NODE.yaml",
		Short: "Run a node: volume driver, NBD, iSCSI, I/O forwarding, REST API and the host's ASDs",
		Long: "Run what one host of a cluster runs: the volume driver serving the vdisks\n" +
			"this node owns, NBD and iSCSI exporting every vdisk of the cluster (I/O for a vdisk\n" +
			"owned elsewhere is forwarded to its owner), the forwarding server other\n" +
			"nodes send I/O to, the REST API, and the host's ASDs as supervised child\n" +
			"processes. The node must have been joined (ovs node join). It stops on\n" +
			"SIGINT or SIGTERM.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			prepareProcess(log)
			return node.Run(cmd.Context(), cfg, node.RunOptions{Logger: log, Failpoint: failpointsFromEnv(log)})
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/ovs/node.yaml", "the node's configuration (NODE.yaml)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newNodeJoinCommand() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "join --config NODE.yaml",
		Short: "Register a node in the cluster model",
		Long: "Register the node of NODE.yaml (its id, site and addresses) in the\n" +
			"cluster model in arakoon. Its ASDs are registered when it starts.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := node.LoadConfig(configPath)
			if err != nil {
				return err
			}
			n, err := node.Join(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "node %s joined (site %s, api %s)\n", n.ID, n.Site, n.API)
			return err
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/ovs/node.yaml", "the node's configuration (NODE.yaml)")
	return cmd
}

func newNodeListCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the nodes of the cluster",
		Args:    cobra.NoArgs,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		nodes, err := g.client().Nodes(cmd.Context())
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if *output == outputJSON {
			return writeJSON(w, nodes)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSITE\tSTATE\tVDISKS\tASDS\tAPI\tNBD\tISCSI\tLAST SEEN")
		for _, n := range nodes {
			seen := "-"
			if !n.LastSeen.IsZero() {
				seen = time.Since(n.LastSeen).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", n.ID, n.Site, n.State, n.VDisks, len(n.ASDs), n.API, dash(n.NBD), dash(n.ISCSI), seen)
		}
		return tw.Flush()
	}
	g.addClientFlags(cmd)
	return cmd
}

func newVDiskMoveCommand(g *globalOptions) *cobra.Command {
	var to string
	var force bool
	cmd := &cobra.Command{
		Use:   "move NAME --to NODE",
		Short: "Hand a vdisk to another node",
		Long: "Move a vdisk to another node, live: its owner uploads what the backend\n" +
			"does not have yet, hands it over with a new owner epoch, and the new\n" +
			"owner opens it from the backend. Clients connected to any node go on;\n" +
			"their I/O waits during the handover.\n\n" +
			"--force changes the owner without the old owner's help, for an owner\n" +
			"that is down: what it had not uploaded is lost, and it can no longer\n" +
			"write to the vdisk's namespace (it is fenced).",
		Args: oneName,
	}
	cmd.Flags().StringVar(&to, "to", "", "the node to move the vdisk to (required)")
	cmd.Flags().BoolVar(&force, "force", false, "change the owner without the old owner's help (it is down)")
	_ = cmd.MarkFlagRequired("to")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c := g.client()
		res, err := withProgress(cmd, *output, "move "+args[0]+" to "+to, c,
			func(ctx context.Context) (api.Job, error) { return c.MoveJob(ctx, args[0], to, force) },
			func(ctx context.Context) (api.MoveResult, error) { return c.Move(ctx, args[0], to, force) })
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		if res.From == res.To {
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "vdisk %s is already on %s\n", res.VDisk, res.To)
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "vdisk %s moved from %s to %s (epoch %d) in %s; I/O waited %s (last upload %s, restore on %s %s)\n",
			res.VDisk, res.From, res.To, res.Epoch, res.Took.Round(time.Millisecond), res.HeldIO.Round(time.Millisecond),
			res.Release.Round(time.Millisecond), res.To, res.Adopt.Round(time.Millisecond))
		return err
	}
	return cmd
}

func newVDiskSetDTLCommand(g *globalOptions) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "set-dtl NAME --mode sync|async|none",
		Short: "Set a vdisk's DTL mode",
		Long: "The DTL mirrors every write of a vdisk to another node until it is on\n" +
			"the backend, so that the vdisk fails over with nothing lost when its\n" +
			"owner's host dies. sync: a flush is acknowledged once the DTL has\n" +
			"everything before it on disk too (nothing flushed is lost); async: writes\n" +
			"are shipped in the background (what was in flight may be lost); none:\n" +
			"no DTL (what is not on the backend yet is lost with the host).",
		Args: oneName,
	}
	cmd.Flags().StringVar(&mode, "mode", "", "sync, async or none (required)")
	_ = cmd.MarkFlagRequired("mode")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		in, err := g.client().SetDTL(cmd.Context(), args[0], mode)
		if err != nil {
			return err
		}
		if *output == outputJSON {
			return writeJSON(cmd.OutOrStdout(), in)
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "vdisk %s: DTL %s, %s%s\n", in.Name, in.DTLMode, in.DTLState, onNode(in.DTLNode))
		return err
	}
	return cmd
}

func onNode(n string) string {
	if n == "" {
		return ""
	}
	return " on " + n
}
