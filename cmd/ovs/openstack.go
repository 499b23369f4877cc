package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/plugins/cinder"
)

// openstackOptions are the flags of `ovs openstack`: where Cinder is.
type openstackOptions struct {
	cinder  string
	project string
}

// newOpenStackCommand: `ovs openstack` does in Cinder what an operator
// needs to put OVS behind it (the driver itself is plugins/cinder).
func newOpenStackCommand(g *globalOptions) *cobra.Command {
	o := &openstackOptions{}
	cmd := &cobra.Command{
		Use:   "openstack",
		Short: "Register OVS in OpenStack Cinder and compare Cinder's volumes with the vdisks",
		Long: "Talk to OpenStack Cinder (block storage API v3). With --cinder URL, a Cinder\n" +
			"with auth_strategy = noauth; otherwise Keystone credentials from the OS_*\n" +
			"environment variables (OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, ...).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVar(&o.cinder, "cinder", "", "Cinder endpoint with auth_strategy = noauth, e.g. http://host:8776/v3 (default: Keystone from OS_*)")
	cmd.PersistentFlags().StringVar(&o.project, "project", cinder.NoAuthProject, "project id (hex) for a noauth Cinder")
	g.addClientFlags(cmd)

	var name, backend string
	var specs []string
	register := &cobra.Command{
		Use:   "register-type",
		Short: "Create (or update) the Cinder volume type that puts volumes on OVS",
		Long: "Create the volume type --name with the extra spec volume_backend_name =\n" +
			"--backend-name (the volume_backend_name of the OVS section in cinder.conf),\n" +
			"plus any --extra-spec key=value. An existing type of that name gets the\n" +
			"extra specs set.",
		Args: cobra.NoArgs,
	}
	register.Flags().StringVar(&name, "name", "ovs", "name of the volume type")
	register.Flags().StringVar(&backend, "backend-name", "ovs", "volume_backend_name of the OVS backend in cinder.conf")
	register.Flags().StringArrayVar(&specs, "extra-spec", nil, "more extra specs, key=value (repeatable)")
	regOut := addOutputFlag(register)
	register.RunE = func(cmd *cobra.Command, _ []string) error {
		extra := map[string]string{}
		for _, s := range specs {
			k, v, ok := strings.Cut(s, "=")
			if !ok || k == "" {
				return fmt.Errorf("--extra-spec %q: want key=value", s)
			}
			extra[k] = v
		}
		sc, err := cinder.Connect(cmd.Context(), o.cinder, o.project)
		if err != nil {
			return err
		}
		vt, created, err := cinder.RegisterType(cmd.Context(), sc, name, backend, extra)
		if err != nil {
			return err
		}
		if *regOut == outputJSON {
			return writeJSON(cmd.OutOrStdout(), vt)
		}
		verb := "updated"
		if created {
			verb = "created"
		}
		fmt.Fprintf(cmd.OutOrStdout(), "volume type %s (%s) %s: %s=%s\n", vt.Name, vt.ID, verb, cinder.BackendSpec, backend)
		return nil
	}

	status := &cobra.Command{
		Use:   "status",
		Short: "List Cinder's volumes on the OVS backend beside their vdisks",
		Long: "List every Cinder volume on backend --backend-name (all projects; needs an\n" +
			"admin) with its vdisk from the OVS API (--api), and vdisks named like Cinder\n" +
			"volumes that Cinder does not know. PROBLEM says what does not match.",
		Args: cobra.NoArgs,
	}
	status.Flags().StringVar(&backend, "backend-name", "ovs", "volume_backend_name of the OVS backend in cinder.conf")
	stOut := addOutputFlag(status)
	status.RunE = func(cmd *cobra.Command, _ []string) error {
		sc, err := cinder.Connect(cmd.Context(), o.cinder, o.project)
		if err != nil {
			return err
		}
		vols, err := cinder.ListVolumes(cmd.Context(), sc)
		if err != nil {
			return err
		}
		vdisks, err := g.client().List(cmd.Context())
		if err != nil {
			return fmt.Errorf("list vdisks: %w", err)
		}
		rows := cinder.Join(vols, vdisks, backend)
		w := cmd.OutOrStdout()
		if *stOut == outputJSON {
			if rows == nil {
				rows = []cinder.Row{}
			}
			return writeJSON(w, rows)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "VOLUME\tNAME\tSTATUS\tSIZE\tVDISK\tVDISK SIZE\tSNAPSHOTS\tPARENT\tPROBLEM")
		for _, r := range rows {
			size, vsize := "-", "-"
			if r.VolumeID != "" {
				size = fmt.Sprintf("%dGiB", r.SizeGiB)
			}
			if r.VDiskSize > 0 {
				vsize = api.FormatSize(r.VDiskSize)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", dash(r.VolumeID), dash(r.Name), dash(r.Status),
				size, r.VDisk, vsize, r.Snapshots, dash(r.Parent), dash(r.Problem))
		}
		return tw.Flush()
	}
	cmd.AddCommand(register, status)
	return cmd
}
