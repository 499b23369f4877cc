package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/node"
	"github.com/ovs-storage/ovs/scos/ec"
)

// Long commands (vdisk scrub, flatten, move; backend repair, scrub,
// rebalance, decommission) show their progress when stdout is a terminal:
// they start the call as a job on the node (?async=true), draw a one-line
// bar from its progress a few times a second, then print the result as
// without a terminal. Without one (scripts, -o json) they make the plain
// call and print exactly what they always did.

// progressEvery is how often the bar is redrawn (one poll each).
const progressEvery = 250 * time.Millisecond

// barWidth is the width of the bar itself, in cells.
const barWidth = 24

// progressTerminal returns the terminal stdout is, if it is one and the
// output is for humans.
func progressTerminal(cmd *cobra.Command, output outputFormat) (*os.File, bool) {
	if output == outputJSON {
		return nil, false
	}
	f, ok := cmd.OutOrStdout().(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, false
	}
	return f, true
}

// withProgress runs a long call: as a job followed with a bar when stdout
// is a terminal (start starts it, c polls it), else directly.
func withProgress[T any](cmd *cobra.Command, output outputFormat, label string, c *api.Client,
	start func(context.Context) (api.Job, error), direct func(context.Context) (T, error)) (T, error) {
	var out T
	tty, ok := progressTerminal(cmd, output)
	if !ok {
		return direct(cmd.Context())
	}
	j, err := start(cmd.Context())
	if err != nil {
		return out, err
	}
	width := 0
	if w, _, err := term.GetSize(int(tty.Fd())); err == nil {
		width = w
	}
	j, err = followJob(cmd.Context(), tty, cmd.ErrOrStderr(), c, j, label, width)
	if err != nil {
		return out, err
	}
	return out, api.JobResult(j, &out)
}

// followJob polls job j until it is over, redrawing its bar on w (width
// columns, 0: unknown), and ends the bar's line. Interrupted (Ctrl-C),
// it says on errw that the job goes on, and how to look at it.
func followJob(ctx context.Context, w, errw io.Writer, c *api.Client, j api.Job, label string, width int) (api.Job, error) {
	bar := &progressBar{label: label, width: width, start: time.Now()}
	bar.draw(w, j)
	last, err := c.WaitJob(ctx, j.ID, progressEvery, func(j api.Job) { bar.draw(w, j) })
	if last.ID != "" {
		j = last
	}
	fmt.Fprintln(w)
	if err != nil && ctx.Err() != nil {
		fmt.Fprintf(errw, "the %s job %s goes on on the node; `ovs job show %s` follows it\n", j.Kind, j.ID, j.ID)
		return j, ctx.Err()
	}
	if err != nil {
		return j, fmt.Errorf("following job %s: %w", j.ID, err)
	}
	return j, nil
}

// progressBar draws one job's progress on one line, again and again.
type progressBar struct {
	label string
	width int
	start time.Time // local: the node's clock may differ
	// The stage the rate is measured over, from when this command first
	// saw it.
	stage     string
	stageT    time.Time
	stageDone int64
}

func (b *progressBar) draw(w io.Writer, j api.Job) {
	fmt.Fprint(w, "\r"+b.line(j, time.Now())+"\x1b[K")
}

// line renders the bar: label, stage, bar and percent (when the stage's
// size is known), done/total, rate, elapsed.
func (b *progressBar) line(j api.Job, now time.Time) string {
	if j.Stage != b.stage || b.stageT.IsZero() {
		b.stage, b.stageT, b.stageDone = j.Stage, now, j.Done
	}
	var sb strings.Builder
	sb.WriteString(b.label)
	stage := j.Stage
	if j.State == api.JobDone {
		stage = "done"
	} else if j.State == api.JobFailed {
		stage = "failed"
	}
	if stage != "" {
		sb.WriteString(": " + stage)
	}
	switch {
	case j.State == api.JobDone:
		fmt.Fprintf(&sb, "  [%s] 100%%", strings.Repeat("=", barWidth))
	case j.Total > 0:
		frac := min(float64(j.Done)/float64(j.Total), 1)
		n := int(frac * barWidth)
		fmt.Fprintf(&sb, "  [%s%s] %3d%%", strings.Repeat("=", n), strings.Repeat(" ", barWidth-n), int(frac*100))
	}
	if j.State == api.JobRunning && (j.Total > 0 || j.Done > 0) {
		sb.WriteString("  " + amount(j.Done, j.Unit))
		if j.Total > 0 {
			sb.WriteString("/" + amount(j.Total, j.Unit))
		}
		if dt := now.Sub(b.stageT); dt >= time.Second && j.Done > b.stageDone {
			rate := float64(j.Done-b.stageDone) / dt.Seconds()
			sb.WriteString("  " + amount(int64(rate), j.Unit) + "/s")
		}
	}
	sb.WriteString("  " + clock(now.Sub(b.start)))
	s := sb.String()
	if b.width > 1 && len([]rune(s)) >= b.width {
		s = string([]rune(s)[:b.width-1]) // no wrap: \r would redraw only the last row
	}
	return s
}

// amount formats n units: sizes for bytes, plain numbers otherwise.
func amount(n int64, unit string) string {
	if unit == "bytes" {
		return api.FormatSize(n)
	}
	if unit == "" {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%d %s", n, unit)
}

// clock formats an elapsed time as m:ss (h:mm:ss past an hour).
func clock(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// newJobCommand: `ovs job list|show` looks at the jobs of the node at
// --api (the long commands run as jobs on a terminal; Ctrl-C leaves them
// running).
func newJobCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Look at the long operations running on a node",
		Long: "Long operations (vdisk scrub, flatten, move; backend repair, scrub,\n" +
			"rebalance, decommission) run as jobs on the node when started from a\n" +
			"terminal, or by API calls with ?async=true. The node keeps finished jobs\n" +
			"for a while.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	g.addClientFlags(cmd)
	list := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List the node's jobs", Args: cobra.NoArgs}
	listOut := addOutputFlag(list)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		js, err := g.client().Jobs(cmd.Context())
		if err != nil {
			return err
		}
		if *listOut == outputJSON {
			return writeJSON(cmd.OutOrStdout(), js)
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTATE\tSTAGE\tPROGRESS\tSTARTED")
		for _, j := range js {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.Target, j.State, j.Stage,
				jobAmount(j), j.Started.Local().Format(time.DateTime))
		}
		return tw.Flush()
	}
	show := &cobra.Command{Use: "show ID", Short: "Show a job; on a terminal, follow it until it ends", Args: oneJobID}
	showOut := addOutputFlag(show)
	show.RunE = func(cmd *cobra.Command, args []string) error {
		c := g.client()
		j, err := c.Job(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		if tty, ok := progressTerminal(cmd, *showOut); ok && j.State == api.JobRunning {
			if j, err = followJob(cmd.Context(), tty, cmd.ErrOrStderr(), c, j, j.Kind+" "+j.Target, 0); err != nil {
				return err
			}
		}
		if *showOut == outputJSON {
			return writeJSON(cmd.OutOrStdout(), j)
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "job %s: %s of %s, %s", j.ID, j.Kind, j.Target, j.State)
		if j.State == api.JobRunning {
			fmt.Fprintf(w, " (%s %s)", j.Stage, jobAmount(j))
		}
		fmt.Fprintln(w)
		switch j.State {
		case api.JobFailed:
			return errors.New(j.Error)
		case api.JobDone:
			if len(j.Result) > 0 {
				_, err = fmt.Fprintf(w, "%s\n", j.Result)
			}
		}
		return err
	}
	cmd.AddCommand(list, show)
	return cmd
}

// jobAmount is a job's "done/total unit (percent)".
func jobAmount(j api.Job) string {
	switch {
	case j.Total > 0:
		return fmt.Sprintf("%s/%s (%d%%)", amount(j.Done, j.Unit), amount(j.Total, j.Unit), j.Done*100/j.Total)
	case j.Done > 0:
		return amount(j.Done, j.Unit)
	}
	return ""
}

func oneJobID(cmd *cobra.Command, args []string) error {
	if len(args) != 1 || args[0] == "" {
		return fmt.Errorf("%s takes one job ID", commandName(cmd))
	}
	return nil
}

// jobClient is an API client for the node at --api with the backend
// admin token: it starts backend jobs and polls them.
func (o *backendOptions) jobClient() (*api.Client, error) {
	sec, err := o.secret()
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: o.g.timeout, Transport: bearerTransport{node.BackendAdminToken(sec), http.DefaultTransport}}
	return api.NewClient(o.g.api, hc), nil
}

// drainWithProgress decommissions ASD id and follows the drain (repair
// passes until it is empty) with a bar, then prints what it took.
func (o *backendOptions) drainWithProgress(cmd *cobra.Command, id string) error {
	jc, err := o.jobClient()
	if err != nil {
		return err
	}
	path := "/api/v1/backend/v1/asds/" + url.PathEscape(id) + "/decommission"
	rep, err := withProgress(cmd, outputTable, "decommission "+id, jc,
		func(ctx context.Context) (api.Job, error) {
			return jc.StartJob(ctx, path, url.Values{"wait": {"true"}}, nil)
		},
		func(context.Context) (ec.MaintenanceReport, error) {
			return ec.MaintenanceReport{}, errors.New("decommission: no terminal to follow the drain on")
		})
	if err != nil {
		return err
	}
	writeMaintenanceReport(cmd.OutOrStdout(), "decommission", rep)
	return nil
}
