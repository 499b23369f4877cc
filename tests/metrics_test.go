package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// prometheus is Debian's Prometheus server, run by a test on a free port
// with its storage in a temporary directory.
type prometheus struct {
	t   *testing.T
	url string
	log string
}

// startPrometheus runs Prometheus scraping target's /metrics every second.
// Cleanup kills its process group.
func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	port := freePorts(t, 1)[0]
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: ovs
    metrics_path: /metrics
    static_configs:
      - targets: ['%s']
`, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &prometheus{t: t, url: "http://127.0.0.1:" + strconv.Itoa(port), log: filepath.Join(dir, "prometheus.log")}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("prometheus",
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port),
		"--web.console.templates="+filepath.Join(dir, "none"),
		"--web.console.libraries="+filepath.Join(dir, "none"))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, killed as a whole at the end; and killed by
	// the kernel if this test process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			data, _ := os.ReadFile(p.log)
			if len(data) > 16<<10 {
				data = data[len(data)-16<<10:]
			}
			t.Logf("prometheus log (%s):\n%s", p.log, data)
		}
	})
	waitFor(t, 60*time.Second, "prometheus ready", func() bool {
		select {
		case <-exited:
			data, _ := os.ReadFile(p.log)
			t.Fatalf("prometheus exited:\n%s", data)
		default:
		}
		resp, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// sample is one element of an instant query's vector.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  float64
}

// query runs an instant query through Prometheus's HTTP API.
func (p *prometheus) query(q string) ([]sample, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("query %s: %s: %w", q, resp.Status, err)
	}
	if body.Status != "success" || body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: %s %s (%s)", q, body.Status, body.Error, body.Data.ResultType)
	}
	out := make([]sample, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", q, r.Value, err)
		}
		out = append(out, sample{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// TestPrometheusScrapesOVS: a real Prometheus scrapes `ovs up` every
// second while fio writes to a vdisk; a rate() query returns the vdisk's
// write IOPS, and the backend, ASD and arakoon series are there.
func TestPrometheusScrapesOVS(t *testing.T) {
	needFio(t)
	needTools(t, "prometheus")
	c := startCluster(t)
	c.create("prom", "128MiB")
	p := startPrometheus(t, c.APIAddr)

	waitFor(t, 60*time.Second, "prometheus scraping ovs up", func() bool {
		s, err := p.query(`up{job="ovs"}`)
		return err == nil && len(s) == 1 && s[0].Value == 1
	})

	// fio writes for 15s in the background, while the test queries.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fio := exec.CommandContext(ctx, "fio", "--name=prom", "--ioengine=nbd", "--uri="+c.UnixURI("prom"),
		"--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=64m", "--time_based", "--runtime=15")
	fioOut := make(chan error, 1)
	var out []byte
	go func() {
		var err error
		out, err = fio.CombinedOutput()
		fioOut <- err
	}()

	const rateQuery = `rate(ovs_vdisk_ops_total{vdisk="prom",op="write"}[5s])`
	var iops float64
	deadline := time.Now().Add(30 * time.Second)
	for iops == 0 {
		select {
		case err := <-fioOut:
			t.Fatalf("fio ended (%v) before Prometheus saw its writes:\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write rate for the vdisk in Prometheus while fio ran (%s)", rateQuery)
		}
		s, err := p.query(rateQuery)
		if err != nil {
			t.Fatal(err)
		}
		if len(s) == 1 && s[0].Value > 0 {
			iops = s[0].Value
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("Prometheus: %s = %.0f write IOPS while fio runs", rateQuery, iops)

	// The latency histogram is there too, and gives a quantile.
	if s, err := p.query(`histogram_quantile(0.99, rate(ovs_vdisk_latency_seconds_bucket{vdisk="prom",op="write"}[5s]))`); err != nil || len(s) != 1 {
		t.Errorf("p99 write latency: %v %v", s, err)
	} else {
		t.Logf("Prometheus: p99 write latency %.6fs", s[0].Value)
	}

	if err := <-fioOut; err != nil {
		t.Fatalf("fio: %v\n%s", err, out)
	}

	// The node's own JSON counters agree that the vdisk was written.
	resp, err := http.Get(c.APIURL() + "/api/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		VDisks map[string]map[string]uint64 `json:"vdisks"`
	}
	err = json.NewDecoder(resp.Body).Decode(&stats)
	resp.Body.Close()
	if err != nil || stats.VDisks["prom"]["write_ops"] == 0 || stats.VDisks["prom"]["write_bytes"] < 4096*stats.VDisks["prom"]["write_ops"] {
		t.Errorf("/api/v1/stats: %+v %v", stats, err)
	}

	// Backend, ASD and arakoon series: one value per ASD of ovs up, all up;
	// the one arakoon node is the leader.
	for _, tc := range []struct {
		query string
		check func([]sample) bool
	}{
		{`ovs_asd_up`, func(s []sample) bool {
			for _, x := range s {
				if x.Value != 1 {
					return false
				}
			}
			return len(s) == 6
		}},
		{`ovs_asd_free_bytes`, func(s []sample) bool { return len(s) == 6 && s[0].Value > 0 }},
		{`ovs_arakoon_term`, func(s []sample) bool { return len(s) == 1 && s[0].Value >= 1 }},
		{`ovs_arakoon_leader`, func(s []sample) bool { return len(s) == 1 && s[0].Value == 1 }},
		{`ovs_arakoon_applied_index`, func(s []sample) bool { return len(s) == 1 && s[0].Value > 0 }},
		{`ovs_backend_objects`, func(s []sample) bool { return len(s) == 1 }},
		{`ovs_backend_degraded_objects`, func(s []sample) bool { return len(s) == 1 && s[0].Value == 0 }},
		{`ovs_vdisk_dtl_state{vdisk="prom"} == 1`, func(s []sample) bool { return len(s) == 1 }},
		{`ovs_vdisk_pending_upload_bytes{vdisk="prom"}`, func(s []sample) bool { return len(s) == 1 }},
		{`ovs_read_cache_misses_total{vdisk="prom"}`, func(s []sample) bool { return len(s) == 1 }},
	} {
		s, err := p.query(tc.query)
		if err != nil || !tc.check(s) {
			t.Errorf("%s: %+v %v", tc.query, s, err)
		}
	}
}
