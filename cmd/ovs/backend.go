package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/klauspost/reedsolomon"
	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/node"
	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/ec"
)

// backendOptions are the flags of `ovs backend`: the commands go through
// the REST API (--api) under /api/v1/backend, with the cluster's backend
// admin token, derived from the cluster secret.
type backendOptions struct {
	g          *globalOptions
	data       string
	secretFile string
}

// secret is the cluster secret the commands authenticate with.
func (o *backendOptions) secret() (*secret.Secret, error) {
	return secret.Resolve(o.secretFile, o.data)
}

// withAdmin runs fn with the backend admin API of the node at --api.
func (o *backendOptions) withAdmin(cmd *cobra.Command, fn func(ec.Admin) error) error {
	sec, err := o.secret()
	if err != nil {
		return err
	}
	base := strings.TrimRight(o.g.api, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	base = strings.TrimSuffix(base, "/api/v1")
	hc := &http.Client{Timeout: o.g.timeout, Transport: bearerTransport{node.BackendAdminToken(sec), http.DefaultTransport}}
	return fn(ec.NewAdminClient(base+"/api/v1/backend", hc))
}

// bearerTransport adds the token to every request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (t bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	// The REST API wants JSON on every mutating call, with a body or not.
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get("Content-Type") == "" {
		r.Header.Set("Content-Type", "application/json")
	}
	return t.next.RoundTrip(r)
}

func newBackendCommand(g *globalOptions) *cobra.Command {
	o := &backendOptions{g: g}
	cmd := &cobra.Command{
		Use:   "backend",
		Short: "Inspect and manage the erasure-coded backend and its ASDs",
		Long: "Manage the erasure-coded backend of the cluster: its ASDs (storage\n" +
			"daemons), presets (lists of k+m policies), and maintenance (repair, scrub,\n" +
			"rebalance). The commands go through the REST API of any node (--api),\n" +
			"under /api/v1/backend, with the cluster's backend admin token derived\n" +
			"from the cluster secret (--secret-file, $OVS_SECRET, or DATA/secret).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	home, _ := os.UserHomeDir()
	cmd.PersistentFlags().StringVar(&o.data, "data", filepath.Join(home, ".ovs"), "data directory of the node (where DATA/secret is, as given to ovs up)")
	cmd.PersistentFlags().StringVar(&o.secretFile, "secret-file", "",
		"file holding the cluster secret (default: $OVS_SECRET, $OVS_SECRET_FILE, then DATA/secret)")
	cmd.AddCommand(
		newBackendStatusCommand(o),
		newBackendASDCommand(o),
		newBackendPresetCommand(o),
		newBackendMaintenanceCommand(o, "repair", "Repair degraded objects now",
			"Flag objects with fragments on lost, decommissioning or removed ASDs (or\n"+
				"stored with a fallback policy), then rebuild them within their policy.",
			func(ctx context.Context, a ec.Admin) (ec.MaintenanceReport, error) { return a.Repair(ctx) }),
		newBackendMaintenanceCommand(o, "scrub", "Verify every fragment now and repair what is bad",
			"Have each ASD read and check every fragment, repair objects with missing or\n"+
				"corrupt fragments, and delete fragments no object refers to.",
			func(ctx context.Context, a ec.Admin) (ec.MaintenanceReport, error) { return a.Scrub(ctx) }),
		newBackendMaintenanceCommand(o, "rebalance", "Move fragments from fuller ASDs to emptier ones",
			"Move fragments off ASDs holding more than their share (by more than 10%)\n"+
				"onto emptier ones, within each object's policy.",
			func(ctx context.Context, a ec.Admin) (ec.MaintenanceReport, error) { return a.Rebalance(ctx) }),
		newBackendBenchCommand(),
		&cobra.Command{
			Use:   "token",
			Short: "Print the bearer token of the backend admin API under /api/v1/backend",
			Long: "Print the token that /api/v1/backend/... of the REST API requires\n" +
				"(Authorization: Bearer TOKEN). It is derived from the cluster secret.",
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				sec, err := o.secret()
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), node.BackendAdminToken(sec))
				return err
			},
		},
	)
	return cmd
}

func newBackendStatusCommand(o *backendOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show objects, degraded objects, capacity and maintenance",
		Args:  cobra.NoArgs,
	}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return o.withAdmin(cmd, func(a ec.Admin) error {
			s, err := a.Status(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if *output == outputJSON {
				return writeJSON(w, s)
			}
			maint := "idle"
			if s.Maintenance.Task != "" {
				maint = fmt.Sprintf("%s %d/%d", s.Maintenance.Task, s.Maintenance.Done, s.Maintenance.Total)
			}
			c := s.Counters
			tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
			for _, kv := range [][2]string{
				{"objects", fmt.Sprintf("%d (%s, %s in fragments)", s.Objects, api.FormatSize(s.Bytes), api.FormatSize(s.StoredBytes))},
				{"degraded objects", strconv.FormatInt(s.Degraded, 10)},
				{"unavailable objects", strconv.FormatInt(s.Unavailable, 10)},
				{"flagged for repair", strconv.FormatInt(s.Flagged, 10)},
				{"namespaces", strconv.FormatInt(s.Namespaces, 10)},
				{"ASDs", fmt.Sprintf("%d (%d up)", s.ASDs, s.ASDsUp)},
				{"capacity", fmt.Sprintf("%s, %s used, %s free", api.FormatSize(s.Capacity), api.FormatSize(s.Used), api.FormatSize(s.Free))},
				{"default preset", s.Preset},
				{"maintenance", maint},
				{"found", fmt.Sprintf("%d corrupt, %d missing fragments", c.CorruptFound, c.MissingFound)},
				{"repaired", fmt.Sprintf("%d objects: %d fragments rebuilt, %d moved, %d upgraded", c.ObjectsRepaired, c.FragmentsRebuilt, c.FragmentsMoved, c.PolicyUpgrades)},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
			return tw.Flush()
		})
	}
	return cmd
}

func newBackendASDCommand(o *backendOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "asd",
		Aliases: []string{"asds"},
		Short:   "List, add, decommission and remove ASDs",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	list := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List the ASDs", Args: cobra.NoArgs}
	output := addOutputFlag(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return o.withAdmin(cmd, func(a ec.Admin) error {
			asds, err := a.ListASDs(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if *output == outputJSON {
				if asds == nil {
					asds = []ec.ASDStatus{}
				}
				return writeJSON(w, asds)
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDR\tNODE\tSITE\tSTATE\tHEALTH\tUSED\tCAPACITY\tFRAGMENTS\tPID")
			for _, s := range asds {
				pid := "-"
				if s.Pid != 0 {
					pid = strconv.Itoa(s.Pid)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", s.ID, s.Addr, s.Node, s.Site, s.State, s.Health,
					api.FormatSize(s.Used), api.FormatSize(s.Capacity), s.Fragments, pid)
			}
			return tw.Flush()
		})
	}
	oneArg := func(what string) cobra.PositionalArgs {
		return func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 || args[0] == "" {
				return fmt.Errorf("%s takes one %s", commandName(cmd), what)
			}
			return nil
		}
	}
	add := &cobra.Command{
		Use:   "add ADDR",
		Short: "Register the ASD that answers at ADDR",
		Long: "Register an ASD. Its id, node and site come from the daemon itself.\n" +
			"Adding ASDs makes the next maintenance pass rebalance.",
		Example: "  ovs backend asd add 10.0.0.7:8600",
		Args:    oneArg("ADDR (host:port)"),
	}
	addOut := addOutputFlag(add)
	add.RunE = func(cmd *cobra.Command, args []string) error {
		return o.withAdmin(cmd, func(a ec.Admin) error {
			s, err := a.AddASD(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if *addOut == outputJSON {
				return writeJSON(cmd.OutOrStdout(), s)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "added ASD %s at %s (node %s, site %s)\n", s.ID, s.Addr, s.Node, s.Site)
			return err
		})
	}
	decom := &cobra.Command{
		Use:   "decommission ID",
		Short: "Drain an ASD: move its fragments to the others",
		Long: "Stop placing fragments on the ASD and have maintenance rebuild its\n" +
			"fragments on other ASDs. `ovs backend asd list` shows it as\n" +
			"decommissioned once it is empty; then remove it.",
		Args: oneArg("ASD ID"),
	}
	decom.RunE = func(cmd *cobra.Command, args []string) error {
		if _, ok := progressTerminal(cmd, outputTable); ok {
			return o.drainWithProgress(cmd, args[0])
		}
		return o.withAdmin(cmd, func(a ec.Admin) error {
			if err := a.DecommissionASD(cmd.Context(), args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "decommissioning ASD %s: maintenance moves its fragments to other ASDs\n", args[0])
			return err
		})
	}
	var force bool
	remove := &cobra.Command{
		Use:     "remove ID",
		Aliases: []string{"rm"},
		Short:   "Remove an ASD from the registry",
		Long: "Remove a decommissioned (drained) ASD. An ASD that still holds fragments\n" +
			"is refused unless --force, in which case its fragments are rebuilt from\n" +
			"the others (the objects are degraded until then).",
		Args: oneArg("ASD ID"),
	}
	remove.Flags().BoolVar(&force, "force", false, "remove it even if it holds fragments")
	remove.RunE = func(cmd *cobra.Command, args []string) error {
		return o.withAdmin(cmd, func(a ec.Admin) error {
			err := a.RemoveASD(cmd.Context(), args[0], force)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "removed ASD %s\n", args[0])
			return err
		})
	}
	cmd.AddCommand(list, add, decom, remove)
	return cmd
}

func newBackendPresetCommand(o *backendOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "preset",
		Aliases: []string{"presets"},
		Short:   "List and add presets",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	list := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List the presets", Args: cobra.NoArgs}
	output := addOutputFlag(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		return o.withAdmin(cmd, func(a ec.Admin) error {
			ps, err := a.ListPresets(cmd.Context())
			if err != nil {
				return err
			}
			if *output == outputJSON {
				if ps == nil {
					ps = []ec.Preset{}
				}
				return writeJSON(cmd.OutOrStdout(), ps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPOLICIES (k+m c x)\tMAX PER SITE")
			for _, p := range ps {
				var pols []string
				for _, pol := range p.Policies {
					pols = append(pols, pol.String())
				}
				site := "-"
				if p.MaxPerSite > 0 {
					site = strconv.Itoa(p.MaxPerSite)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, strings.Join(pols, ", "), site)
			}
			return tw.Flush()
		})
	}
	var (
		policies   []string
		maxPerSite int
	)
	add := &cobra.Command{
		Use:   "add NAME --policy K,M[,C[,X]] ...",
		Short: "Add a preset",
		Long: "Add a preset: an ordered list of policies. A put uses the first policy\n" +
			"that can be placed on the ASDs that are up; maintenance re-encodes with\n" +
			"an earlier one when it can. K data + M parity fragments, acknowledged\n" +
			"after C are stored (default K+M), at most X per node (default K+M).\n" +
			"--max-per-site bounds the fragments of an object in one site: at most M\n" +
			"for every policy, so that losing a whole site loses no data.",
		Example: "  ovs backend preset add geo --policy 6,3,9,1 --policy 4,2,6,1 --max-per-site 2\n" +
			"  ovs backend preset add wide --policy 8,3,11,1",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 || args[0] == "" {
				return fmt.Errorf("%s takes one preset NAME", commandName(cmd))
			}
			return nil
		},
	}
	add.Flags().StringArrayVar(&policies, "policy", nil, "a policy K,M[,C[,X]]; repeat for fallbacks, best first (required)")
	add.Flags().IntVar(&maxPerSite, "max-per-site", 0, "at most this many fragments of an object per site (0: no bound)")
	_ = add.MarkFlagRequired("policy")
	add.RunE = func(cmd *cobra.Command, args []string) error {
		p := ec.Preset{Name: args[0], MaxPerSite: maxPerSite}
		for _, s := range policies {
			pol, err := ec.ParsePolicy(s)
			if err != nil {
				return err
			}
			p.Policies = append(p.Policies, pol)
		}
		return o.withAdmin(cmd, func(a ec.Admin) error {
			if err := a.AddPreset(cmd.Context(), p); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "added preset %q\n", p.Name)
			return err
		})
	}
	cmd.AddCommand(list, add)
	return cmd
}

func newBackendMaintenanceCommand(o *backendOptions, name, short, long string,
	fn func(context.Context, ec.Admin) (ec.MaintenanceReport, error)) *cobra.Command {
	cmd := &cobra.Command{Use: name, Short: short, Long: long, Args: cobra.NoArgs}
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return o.withAdmin(cmd, func(a ec.Admin) error {
			jc, err := o.jobClient()
			if err != nil {
				return err
			}
			rep, err := withProgress(cmd, *output, "backend "+name, jc,
				func(ctx context.Context) (api.Job, error) {
					return jc.StartJob(ctx, "/api/v1/backend/v1/"+name, nil, nil)
				},
				func(ctx context.Context) (ec.MaintenanceReport, error) { return fn(ctx, a) })
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if *output == outputJSON {
				return writeJSON(w, rep)
			}
			writeMaintenanceReport(w, name, rep)
			return nil
		})
	}
	return cmd
}

// writeMaintenanceReport prints what a maintenance call did.
func writeMaintenanceReport(w io.Writer, name string, rep ec.MaintenanceReport) {
	fmt.Fprintf(w, "%s: %d objects looked at, %d flagged, %d repaired (%d fragments rebuilt, %d moved, %d upgraded), %d still degraded, %d failed\n",
		name, rep.Objects, rep.Flagged, rep.Repaired, rep.FragmentsRebuilt, rep.FragmentsMoved, rep.Upgraded, rep.Remaining, rep.Failed)
	if rep.Scrubbed > 0 || rep.Orphans > 0 {
		fmt.Fprintf(w, "scrubbed %d fragments: %d corrupt, %d missing; %d orphans deleted\n", rep.Scrubbed, rep.Corrupt, rep.Missing, rep.Orphans)
	}
	for _, id := range rep.Drained {
		fmt.Fprintf(w, "ASD %s is drained (decommissioned)\n", id)
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
}

// --- ovs backend bench

type benchOptions struct {
	dir         string
	size        sizeValue
	count       int
	concurrency int
	reads       int
	readDepth   int
}

// benchResult is one row of `ovs backend bench`.
type benchResult struct {
	Backend      string  `json:"backend"`
	PutMBps      float64 `json:"put_mb_s"`
	GetMBps      float64 `json:"get_mb_s"`
	ReadIOPS     float64 `json:"read_4k_iops"`
	PutVsLocal   float64 `json:"put_vs_localdir"`
	GetVsLocal   float64 `json:"get_vs_localdir"`
	ReadVsLocal  float64 `json:"read_4k_vs_localdir"`
	StoredFactor float64 `json:"stored_bytes_factor"`
}

type codecResult struct {
	Policy          string  `json:"policy"`
	EncodeMBps      float64 `json:"encode_mb_s"`
	ReconstructMBps float64 `json:"reconstruct_m_data_mb_s"`
}

func newBackendBenchCommand() *cobra.Command {
	o := &benchOptions{size: 4 << 20}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the erasure-coded backend against the local-directory backend",
		Long: "Start 11 ASDs (child processes) in a scratch directory and measure put\n" +
			"and get throughput of objects (4 MiB by default, like SCOs) with 4+2 and\n" +
			"8+3 presets, and 4 KiB ranged reads (what the volume driver does),\n" +
			"against the local-directory backend on the same disk, as ratios; then\n" +
			"the raw Reed-Solomon encode and reconstruct speed." + sizeFlagHelp,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", "", "scratch directory (default: a temporary one, removed after)")
	f.Var(&o.size, "size", "object size")
	f.IntVar(&o.count, "count", 48, "objects per backend")
	f.IntVar(&o.concurrency, "concurrency", 4, "puts or gets in flight")
	f.IntVar(&o.reads, "reads", 4000, "4 KiB ranged reads per backend")
	f.IntVar(&o.readDepth, "read-depth", 8, "4 KiB ranged reads in flight")
	output := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runBench(cmd.Context(), o, *output, cmd.OutOrStdout())
	}
	return cmd
}

func runBench(ctx context.Context, o *benchOptions, output outputFormat, w io.Writer) error {
	if o.size <= 0 || o.count < 1 || o.concurrency < 1 || o.readDepth < 1 {
		return errors.New("--size, --count, --concurrency and --read-depth must be positive")
	}
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "ovs-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	log := slog.New(slog.DiscardHandler)
	progress := func(format string, args ...any) {
		if output != outputJSON {
			fmt.Fprintf(os.Stderr, format+"\n", args...)
		}
	}
	progress("starting 11 ASDs in %s", dir)
	// A throw-away cluster: its own secret, so the ASDs run as ovs up's do
	// (over TLS), which is part of what is measured.
	sec, err := secret.Ensure(dir)
	if err != nil {
		return err
	}
	tc, err := sec.ClientTLS(secret.RoleBackend, "bench", secret.RoleASD)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: asd.NewTransport(tc)}
	asds, err := asd.StartLocal(ctx, asd.LocalConfig{Dir: filepath.Join(dir, "asds"), Count: 11, Logger: log,
		SecretFile: filepath.Join(dir, secret.FileName), HTTPClient: hc})
	if err != nil {
		return err
	}
	defer asds.Stop()
	kv, err := ec.OpenBoltKV(filepath.Join(dir, "meta.db"))
	if err != nil {
		return err
	}
	defer kv.Close()
	presets := []ec.Preset{
		{Name: "p4-2", Policies: []ec.Policy{{K: 4, M: 2, C: 6, X: 6}}},
		{Name: "p8-3", Policies: []ec.Policy{{K: 8, M: 3, C: 11, X: 11}}},
	}
	ecb, err := ec.New(ctx, ec.Config{KV: kv, Presets: presets, Preset: "p4-2", MaintenanceInterval: -1, Logger: log,
		HTTPClient: hc})
	if err != nil {
		return err
	}
	defer ecb.Close()
	for _, a := range asds.List() {
		if _, err := ecb.AddASD(ctx, a.Addr); err != nil {
			return err
		}
	}
	// The same backend reading over HTTP only (what every read did before
	// the ASDs' binary protocol), for the same-run comparison.
	ecHTTP, err := ec.New(ctx, ec.Config{KV: kv, Preset: "p4-2", MaintenanceInterval: -1, Logger: log,
		HTTPClient: hc, HTTPReads: true})
	if err != nil {
		return err
	}
	defer ecHTTP.Close()
	local, err := scos.NewLocalDir(filepath.Join(dir, "localdir"))
	if err != nil {
		return err
	}
	type target struct {
		name string
		b    scos.Backend
		ns   string
		make func(context.Context) error
	}
	targets := []target{
		{"localdir", local, "bench", func(ctx context.Context) error { return local.CreateNamespace(ctx, "bench") }},
	}
	for _, p := range presets {
		pol := p.Policies[0]
		targets = append(targets, target{fmt.Sprintf("ec %d+%d", pol.K, pol.M), ecb, "bench-" + p.Name,
			func(ctx context.Context) error { return ecb.CreateNamespaceWithPreset(ctx, "bench-"+p.Name, p.Name) }})
	}
	targets = append(targets, target{"ec 4+2 http", ecHTTP, "bench-http",
		func(ctx context.Context) error { return ecHTTP.CreateNamespaceWithPreset(ctx, "bench-http", "p4-2") }})
	base := make([]byte, int(o.size))
	rand.Read(base)
	var results []benchResult
	for _, t := range targets {
		if err := t.make(ctx); err != nil {
			return err
		}
		progress("%s: %d puts and gets of %s, %d 4 KiB reads", t.name, o.count, api.FormatSize(int64(o.size)), o.reads)
		r := benchResult{Backend: t.name}
		total := float64(o.count) * float64(o.size) / 1e6
		d, err := parallel(ctx, o.count, o.concurrency, func(ctx context.Context, i int) error {
			data := make([]byte, len(base))
			copy(data, base)
			binary.LittleEndian.PutUint64(data, uint64(i)) // distinct objects
			return t.b.Put(ctx, t.ns, fmt.Sprintf("obj-%04d", i), data, true)
		})
		if err != nil {
			return fmt.Errorf("%s: put: %w", t.name, err)
		}
		r.PutMBps = total / d.Seconds()
		d, err = parallel(ctx, o.count, o.concurrency, func(ctx context.Context, i int) error {
			data, err := t.b.Get(ctx, t.ns, fmt.Sprintf("obj-%04d", i))
			if err == nil && (len(data) != len(base) || binary.LittleEndian.Uint64(data) != uint64(i)) {
				err = errors.New("wrong data")
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: get: %w", t.name, err)
		}
		r.GetMBps = total / d.Seconds()
		var seq atomic.Uint64
		d, err = parallel(ctx, o.reads, o.readDepth, func(ctx context.Context, i int) error {
			n := seq.Add(0x9e3779b97f4a7c15)
			obj := int(n % uint64(o.count))
			off := int64(n>>20) % (int64(o.size)/4096 - 1) * 4096
			p := make([]byte, 4096)
			return t.b.ReadAt(ctx, t.ns, fmt.Sprintf("obj-%04d", obj), p, off+4096)
		})
		if err != nil {
			return fmt.Errorf("%s: ranged read: %w", t.name, err)
		}
		r.ReadIOPS = float64(o.reads) / d.Seconds()
		r.StoredFactor = 1
		if t.b == ecb || t.b == ecHTTP {
			m, err := ecb.ObjectManifest(ctx, t.ns, "obj-0000")
			if err == nil {
				r.StoredFactor = float64(m.FragmentSize*int64(len(m.Fragments))) / float64(m.Size)
			}
		}
		results = append(results, r)
	}
	for i := range results {
		results[i].PutVsLocal = results[i].PutMBps / results[0].PutMBps
		results[i].GetVsLocal = results[i].GetMBps / results[0].GetMBps
		results[i].ReadVsLocal = results[i].ReadIOPS / results[0].ReadIOPS
	}
	progress("raw Reed-Solomon speed on %s objects", api.FormatSize(int64(o.size)))
	var codecs []codecResult
	for _, km := range [][2]int{{4, 2}, {8, 3}} {
		c, err := benchCodec(km[0], km[1], base)
		if err != nil {
			return err
		}
		codecs = append(codecs, c)
	}
	if output == outputJSON {
		return writeJSON(w, map[string]any{"object_size": int64(o.size), "objects": o.count,
			"concurrency": o.concurrency, "backends": results, "reed_solomon": codecs})
	}
	fmt.Fprintf(w, "%d objects of %s, %d in flight; 4 KiB ranged reads, %d in flight (ec 4+2 http: the ec 4+2 row reading over HTTP only)\n\n",
		o.count, api.FormatSize(int64(o.size)), o.concurrency, o.readDepth)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "BACKEND\tPUT MB/s\tGET MB/s\t4K READS/s\tPUT vs LOCAL\tGET vs LOCAL\t4K vs LOCAL\tSTORED/DATA\t\n")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t\n", r.Backend, r.PutMBps, r.GetMBps, r.ReadIOPS,
			r.PutVsLocal, r.GetVsLocal, r.ReadVsLocal, r.StoredFactor)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "REED-SOLOMON\tENCODE MB/s\tRECONSTRUCT m DATA MB/s\t\n")
	for _, c := range codecs {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t\n", c.Policy, c.EncodeMBps, c.ReconstructMBps)
	}
	return tw.Flush()
}

// parallel runs fn for 0..n-1 with at most conc in flight and returns the
// elapsed time.
func parallel(ctx context.Context, n, conc int, fn func(context.Context, int) error) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		firstErr error
		once     sync.Once
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// benchCodec measures encoding data with k+m, and reconstructing m lost data
// fragments, in MB/s of object data, for about a second each.
func benchCodec(k, m int, data []byte) (codecResult, error) {
	enc, err := reedsolomon.New(k, m)
	if err != nil {
		return codecResult{}, err
	}
	shards, err := enc.Split(data[:len(data):len(data)])
	if err != nil {
		return codecResult{}, err
	}
	measure := func(fn func() error) (float64, error) {
		var n int
		start := time.Now()
		for time.Since(start) < time.Second {
			if err := fn(); err != nil {
				return 0, err
			}
			n++
		}
		return float64(n) * float64(len(data)) / 1e6 / time.Since(start).Seconds(), nil
	}
	r := codecResult{Policy: fmt.Sprintf("%d+%d", k, m)}
	if r.EncodeMBps, err = measure(func() error { return enc.Encode(shards) }); err != nil {
		return r, err
	}
	lost := make([][]byte, len(shards))
	r.ReconstructMBps, err = measure(func() error {
		copy(lost, shards)
		for i := range m {
			lost[i] = lost[i][:0]
		}
		return enc.ReconstructData(lost)
	})
	return r, err
}
