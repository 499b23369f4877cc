package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// artifactDir is where tests keep files for CI to archive (screenshots).
const artifactDir = "artifacts"

// browser is a headless Chromium driven over the DevTools protocol.
type browser struct {
	t   *testing.T
	ctx context.Context
	// problems are JavaScript exceptions and security (CSP) reports the
	// page raised: the dashboard must run clean under its own policy.
	mu       sync.Mutex
	problems []string
	shots    int
}

// startBrowser starts Chromium with the flags a root, containerised run
// needs, its profile in a temporary directory. Cleanup closes it and
// checks that no Chromium process is left.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	exe := "/usr/bin/chromium"
	if _, err := os.Stat(exe); err != nil {
		var lerr error
		if exe, lerr = exec.LookPath("chromium"); lerr != nil {
			missingTool(t, "chromium not found (Debian package chromium)")
		}
	}
	profile := t.TempDir()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox, // root in a container: no user namespace for the sandbox
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1360, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{t: t}
	ctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf), chromedp.WithListener(b.listen))
	b.ctx = ctx
	// The tab lives as long as the context of the first run, so that
	// one gets ctx itself, bounded by a timer rather than a child context.
	stuck := time.AfterFunc(60*time.Second, cancelCtx)
	err := chromedp.Do(ctx, chromedp.Navigate("about:blank"))
	stuck.Stop()
	if err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	pid := chromedp.FromContext(ctx).Browser.Process().Pid
	t.Cleanup(func() {
		// Everything the browser started, and anything else using its
		// profile (a helper that double-forked away from it).
		seen := map[proc]bool{}
		var ps []proc
		for _, p := range append(append(descendants(pid), procByPid(pid)), procsWithArg(profile)...) {
			if !seen[p] {
				seen[p] = true
				ps = append(ps, p)
			}
		}
		cancelCtx()
		cancelAlloc() // kills the browser and waits for it
		deadline := time.Now().Add(15 * time.Second)
		for {
			var left []proc
			for _, p := range append(ps, procsWithArg(profile)...) {
				if p.alive() {
					left = append(left, p)
				}
			}
			if len(left) == 0 {
				t.Logf("chromium: its %d processes are gone", len(ps))
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("chromium processes left after closing the browser: %v", killAll(left))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return b
}

// listen records the page's exceptions and security reports. It runs in
// chromedp's message loop, so it only appends.
func (b *browser) listen(ev any) {
	var p string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		p = "exception: " + ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			p += " " + ev.ExceptionDetails.Exception.Description
		}
	case *log.EventEntryAdded:
		if ev.Entry.Source == log.EntrySourceSecurity || ev.Entry.Source == log.EntrySourceViolation {
			p = "security: " + ev.Entry.Text
		}
	}
	if p != "" {
		b.mu.Lock()
		b.problems = append(b.problems, p)
		b.mu.Unlock()
	}
}

func procByPid(pid int) proc {
	_, _, start, _ := procStat(pid)
	return proc{pid, start}
}

// procsWithArg lists the processes whose command line mentions s.
func procsWithArg(s string) []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), s) {
			continue
		}
		out = append(out, procByPid(pid))
	}
	return out
}

// run runs actions with a bound on the whole step.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.screenshot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
}

// waitText waits until the element's text is want (a poll in the page).
func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.trim() === %q; })()`, sel, want)
	b.run(fmt.Sprintf("waiting for %s to read %q", sel, want), chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(0)))
}

func (b *browser) text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(b.eval(fmt.Sprintf(`document.querySelector(%q).textContent`, sel)))
}

// eval evaluates a JavaScript expression whose value is a string.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// gone waits until no element matches sel.
func (b *browser) gone(sel string) {
	b.t.Helper()
	js := fmt.Sprintf(`document.querySelector(%q) === null`, sel)
	b.run("waiting for "+sel+" to go", chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(0)))
}

// screenshot writes the page to artifacts/TEST-NN-step.png.
func (b *browser) screenshot(step string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", step, err)
		return
	}
	if err := os.MkdirAll(artifactDir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	b.shots++
	name := filepath.Join(artifactDir, fmt.Sprintf("%s-%02d-%s.png", strings.ReplaceAll(b.t.Name(), "/", "_"), b.shots, step))
	if err := os.WriteFile(name, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: tests/%s", name)
}

// noErrorShown fails if the page shows an error message.
func (b *browser) noErrorShown(after string) {
	b.t.Helper()
	shown := b.eval(`(() => { const m = document.getElementById('message'); return !m.hidden && m.className === 'error' ? m.textContent : ''; })()`)
	if shown != "" {
		b.screenshot("error")
		b.t.Fatalf("after %s the dashboard shows an error: %s", after, shown)
	}
}

func (b *browser) checkProblems() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("page problem: %s", p)
	}
}

// TestDashboard drives the web dashboard of `ovs up` with headless
// Chromium, as an operator would: it loads the page, creates a vdisk
// (giving the API token the page asks for), snapshots, rolls back,
// resizes, clones and deletes through the page, and checks each result
// with the CLI. Screenshots of each step go to tests/artifacts/.
func TestDashboard(t *testing.T) {
	c := startCluster(t, "--api-require-token")
	b := startBrowser(t)
	token := strings.TrimSpace(runOVS(t, nil, "token", "create", "--data", c.Dir).Stdout)
	if token == "" {
		t.Fatal("ovs token create printed no token")
	}
	if r := runOVS(t, []string{"OVS_API=" + c.APIURL(), "OVS_TOKEN=" + token}, "vdisk", "create", "cli-disk", "--size", "32MiB"); r.Code != 0 {
		t.Fatalf("ovs vdisk create: %v", r)
	}
	ui := c.APIURL() + "/ui/"

	// The page and its headers, as any client sees them.
	resp, err := http.Get(c.APIURL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/ui/" || resp.StatusCode != 200 {
		t.Fatalf("GET / ended at %s with %d, want /ui/ with 200", resp.Request.URL, resp.StatusCode)
	}
	for k, want := range map[string]string{"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("Content-Security-Policy %q is not self-only", csp)
	}

	b.run("loading the vdisk view", chromedp.Navigate(ui+"#/vdisks"),
		chromedp.WaitVisible(chromedp.CSS(`#vdisk-table tr[data-name="cli-disk"]`)))
	b.waitText(`#vdisk-table tr[data-name="cli-disk"] td:nth-child(2)`, "32 MiB")
	// Live IOPS: a dash until GET /api/v1/stats gives two samples (or
	// for good, where the node has no such endpoint).
	iops := b.text(`#vdisk-table tr[data-name="cli-disk"] td:nth-child(6)`)
	if !regexp.MustCompile(`^(–|[\d.,]+ / [\d.,]+)$`).MatchString(iops) {
		t.Errorf("IOPS cell reads %q", iops)
	}
	b.screenshot("vdisks")

	// Create: the API requires a token, so the page asks for one.
	b.run("filling the create form",
		chromedp.SendKeys(chromedp.CSS(`#create-name`), "ui-disk"),
		chromedp.SendKeys(chromedp.CSS(`#create-size`), "64MiB"),
		chromedp.Click(chromedp.CSS(`#create-submit`)),
		chromedp.WaitVisible(chromedp.CSS(`#dialog #dlg-input`)))
	b.waitText("#dlg-title", "API token")
	b.screenshot("token-asked")
	b.run("giving the token",
		chromedp.SendKeys(chromedp.CSS(`#dlg-input`), token),
		chromedp.Click(chromedp.CSS(`#dlg-ok`)),
		chromedp.WaitVisible(chromedp.CSS(`#vdisk-table tr[data-name="ui-disk"]`)))
	b.waitText(`#vdisk-table tr[data-name="ui-disk"] td:nth-child(2)`, "64 MiB")
	b.noErrorShown("create")
	b.screenshot("created")
	if got := c.sizes()["ui-disk"]; got != 64<<20 {
		t.Fatalf("ovs vdisk list: ui-disk has size %d, want 64 MiB (list %v)", got, c.sizes())
	}

	// Snapshot from the vdisk's page.
	b.run("opening the vdisk", chromedp.Click(chromedp.CSS(`#vdisk-table tr[data-name="ui-disk"] a`)),
		chromedp.WaitVisible(chromedp.CSS(`#view-vdisk`)))
	b.waitText("#vd-name", "ui-disk")
	b.run("taking a snapshot",
		chromedp.SendKeys(chromedp.CSS(`#snap-name`), "ui-snap"),
		chromedp.Click(chromedp.CSS(`#snap-submit`)),
		chromedp.WaitVisible(chromedp.CSS(`#snap-table tr[data-snapshot="ui-snap"]`)))
	b.noErrorShown("snapshot")
	b.screenshot("snapshot")
	if !c.hasSnapshot("ui-disk", "ui-snap") {
		t.Fatalf("ovs vdisk snapshot list ui-disk does not list ui-snap")
	}

	// Rollback asks for a confirmation first.
	b.run("rolling back", chromedp.Click(chromedp.CSS(`#snap-table tr[data-snapshot="ui-snap"] button[data-act="rollback"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#dlg-ok`)))
	b.screenshot("rollback-confirm")
	b.run("confirming the rollback", chromedp.Click(chromedp.CSS(`#dlg-ok`)),
		chromedp.WaitNotVisible(chromedp.CSS(`#dialog`)))
	b.waitText("#message", "Rolled ui-disk back to ui-snap.")

	b.run("resizing", chromedp.SendKeys(chromedp.CSS(`#resize-size`), "128MiB"),
		chromedp.Click(chromedp.CSS(`#resize-submit`)))
	b.waitText("#message", "Resized ui-disk to 128 MiB.")
	if got := c.sizes()["ui-disk"]; got != 128<<20 {
		t.Fatalf("after the resize ovs vdisk list says ui-disk has %d bytes, want 128 MiB", got)
	}

	// Clone the snapshot; the page moves to the clone.
	b.run("cloning", chromedp.Click(chromedp.CSS(`#snap-table tr[data-snapshot="ui-snap"] button[data-act="clone"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#dlg-input`)))
	b.run("confirming the clone", chromedp.Click(chromedp.CSS(`#dlg-ok`)))
	b.waitText("#vd-name", "ui-disk-clone")
	b.noErrorShown("clone")
	if _, ok := c.sizes()["ui-disk-clone"]; !ok {
		t.Fatalf("ovs vdisk list does not list the clone ui-disk-clone: %v", c.sizes())
	}

	// Delete the clone: confirmed, then gone from the page and the CLI.
	b.run("deleting", chromedp.Click(chromedp.CSS(`#vd-delete`)), chromedp.WaitVisible(chromedp.CSS(`#dlg-ok`)))
	b.waitText("#dlg-title", "Delete vdisk ui-disk-clone?")
	b.screenshot("delete-confirm")
	b.run("confirming the delete", chromedp.Click(chromedp.CSS(`#dlg-ok`)),
		chromedp.WaitVisible(chromedp.CSS(`#view-vdisks`)))
	b.gone(`#vdisk-table tr[data-name="ui-disk-clone"]`)
	b.noErrorShown("delete")
	if _, ok := c.sizes()["ui-disk-clone"]; ok {
		t.Fatalf("ovs vdisk list still lists ui-disk-clone after the delete")
	}

	// Overview, nodes and, with the cluster admin token, the backend.
	b.run("overview", chromedp.Navigate(ui+"#/overview"))
	b.waitText("#ov-vdisks", "2")
	b.waitText("#ov-nodes", "1 / 1")
	b.screenshot("overview")
	b.run("nodes", chromedp.Navigate(ui+"#/nodes"), chromedp.WaitVisible(chromedp.CSS(`#node-table tbody tr`)))
	b.screenshot("nodes")
	admin := strings.TrimSpace(c.ovsOK("backend", "token", "--data", c.Dir))
	b.run("backend", chromedp.Navigate(ui+"#/backend"), chromedp.Click(chromedp.CSS(`#token-button`)),
		chromedp.WaitVisible(chromedp.CSS(`#dlg-input`)),
		chromedp.SendKeys(chromedp.CSS(`#dlg-input`), admin),
		chromedp.Click(chromedp.CSS(`#dlg-ok`)),
		chromedp.WaitVisible(chromedp.CSS(`#asd-table tbody tr`)))
	b.screenshot("backend")

	b.checkProblems()
}

func (c *cluster) hasSnapshot(vdisk, snap string) bool {
	c.t.Helper()
	var snaps []struct {
		Name string `json:"name"`
	}
	out := c.ovsOK("vdisk", "snapshot", "list", vdisk, "-o", "json")
	if err := json.Unmarshal([]byte(out), &snaps); err != nil {
		c.t.Fatalf("ovs vdisk snapshot list -o json: %v in %q", err, out)
	}
	for _, s := range snaps {
		if s.Name == snap {
			return true
		}
	}
	return false
}

// TestDashboardLiveIOPS checks the page's IOPS arithmetic: a test-only
// proxy in front of `ovs up` answers GET /api/v1/stats with counters that
// grow by exactly 100 reads and 50 writes per second of the times it
// reports, whatever the real clock does, so the page must show 100 / 50.
func TestDashboardLiveIOPS(t *testing.T) {
	c := startCluster(t)
	c.create("busy", "16MiB")
	b := startBrowser(t)

	target, err := url.Parse(c.APIURL())
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	start := time.Now()
	mux := http.NewServeMux()
	mux.Handle("/", proxy)
	mux.HandleFunc("GET /api/v1/stats", func(w http.ResponseWriter, r *http.Request) {
		// In steps of 20 ms, so that both counters are whole numbers.
		steps := int64(time.Since(start) / (20 * time.Millisecond))
		now := epoch.Add(time.Duration(steps) * 20 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"time": now.Format(time.RFC3339Nano),
			"vdisks": map[string]map[string]int64{"busy": {
				"read_ops": 2 * steps, "write_ops": steps, "flush_ops": 0, "trim_ops": 0,
				"read_bytes": 2 * steps * 4096, "write_bytes": steps * 4096,
			}},
		})
	})
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(freePorts(t, 1)[0])))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)

	b.run("loading the vdisk view", chromedp.Navigate(srv.URL+"/ui/#/vdisks"),
		chromedp.WaitVisible(chromedp.CSS(`#vdisk-table tr[data-name="busy"]`)))
	b.waitText(`#vdisk-table tr[data-name="busy"] td:nth-child(6)`, "100 / 50")
	b.screenshot("iops")
	b.run("overview", chromedp.Navigate(srv.URL+"/ui/#/overview"))
	b.waitText("#ov-iops", "100 / 50")
	b.waitText("#ov-bw", "400 KiB/s read, 200 KiB/s written")
	b.screenshot("overview-iops")

	// Data is text: snapshot metadata (free text) holding markup shows as
	// that text, and nothing in it runs or loads.
	const hostile = `<img src=x onerror="document.title='owned'"><script>document.title='owned'</script>`
	c.ovsOK("vdisk", "snapshot", "create", "busy", "tagged", "--metadata", hostile)
	b.run("opening the vdisk", chromedp.Navigate(srv.URL+"/ui/#/vdisk/busy"),
		chromedp.WaitVisible(chromedp.CSS(`#snap-table tr[data-snapshot="tagged"]`)))
	if got := b.text(`#snap-table tr[data-snapshot="tagged"] td:nth-child(5)`); got != hostile {
		t.Errorf("metadata cell reads %q, want the metadata as text %q", got, hostile)
	}
	if n := b.eval(`String(document.querySelectorAll('#snap-table img, #snap-table script').length)`); n != "0" {
		t.Errorf("the metadata became %s elements", n)
	}
	if title := b.eval(`document.title`); title != "OVS · busy" {
		t.Errorf("page title %q: something ran", title)
	}
	b.screenshot("metadata-as-text")
	b.checkProblems()
}
