// Package metrics exposes a node's state to Prometheus: the I/O statistics
// and state of the vdisks it serves, the erasure-coded backend and its
// ASDs, and arakoon. Everything is read at scrape time from the parts
// themselves (no copy of their state is kept here), through small
// interfaces so that the collector tests with fakes. A source that fails
// is logged and left out of that scrape; the others are still served.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// VDisks is the volume driver as the collector reads it
// (*volumedriver.Driver).
type VDisks interface {
	IOStats() map[string]volumedriver.IOStats
	List(ctx context.Context) ([]volumedriver.VolumeInfo, error)
}

// Backend is the erasure-coded backend as the collector reads it
// (*ec.Backend).
type Backend interface {
	Status(ctx context.Context) (ec.Status, error)
	ListASDs(ctx context.Context) ([]ec.ASDStatus, error)
}

// Arakoon answers a node's statistics; nodeID "" is the master
// (*arakoon.Client).
type Arakoon interface {
	Statistics(ctx context.Context, nodeID string) (*arakoon.Statistics, error)
}

// Defaults of Sources.
const (
	DefaultTimeout       = 5 * time.Second
	DefaultStatusMaxAge  = 10 * time.Second
	arakoonMemberTimeout = 2 * time.Second
)

// Sources are what a Collector reads. Nil sources are left out.
type Sources struct {
	VDisks  VDisks
	Backend Backend
	Arakoon Arakoon
	Logger  *slog.Logger
	// Timeout bounds the reading of one source in a scrape (default
	// DefaultTimeout), within the scrape request's own deadline.
	Timeout time.Duration
	// StatusMaxAge: the backend's Status scans every manifest, so a
	// result is reused for this long (default DefaultStatusMaxAge);
	// Prometheus scraping every second must not turn into a scan of the
	// whole backend every second. Negative: no reuse.
	StatusMaxAge time.Duration
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Collector is a prometheus.Collector over Sources.
type Collector struct {
	src     Sources
	log     *slog.Logger
	runtime []prometheus.Collector

	statusMu sync.Mutex
	status   ec.Status
	statusAt time.Time
}

// New returns a Collector over src.
func New(src Sources) *Collector {
	if src.Timeout <= 0 {
		src.Timeout = DefaultTimeout
	}
	if src.StatusMaxAge == 0 {
		src.StatusMaxAge = DefaultStatusMaxAge
	}
	if src.Now == nil {
		src.Now = time.Now
	}
	log := src.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Collector{src: src, log: log.With("component", "metrics"),
		// The process's own health (memory, goroutines, file
		// descriptors) comes with the node's metrics, as every Go
		// exporter has it.
		runtime: []prometheus.Collector{
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		}}
}

// Handler serves the metrics in the Prometheus text (or OpenMetrics)
// format. Each scrape has a registry of its own, bound to the request's
// context, so that a scrape the client gave up on (or that passed the
// API's deadline) stops reading the sources.
func (c *Collector) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reg := prometheus.NewRegistry()
		for _, rc := range append([]prometheus.Collector{&scrape{c: c, ctx: r.Context()}}, c.runtime...) {
			if err := reg.Register(rc); err != nil {
				c.log.Error("registering a metrics collector", "err", err)
				http.Error(w, "metrics: "+err.Error(), http.StatusInternalServerError)
				return
			}
		}
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:      slogErrorLog{c.log},
			ErrorHandling: promhttp.ContinueOnError,
		}).ServeHTTP(w, r)
	})
}

// Describe sends the descriptors of every metric the collector has.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range append(allDescs, readCacheDescs...) {
		ch <- d
	}
}

// Collect reads every source; it is Collect of a scrape without a
// request context (a registry of the caller's own).
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.collect(context.Background(), ch)
}

// scrape is the collector bound to one request's context.
type scrape struct {
	c   *Collector
	ctx context.Context
}

func (s *scrape) Describe(ch chan<- *prometheus.Desc) { s.c.Describe(ch) }
func (s *scrape) Collect(ch chan<- prometheus.Metric) { s.c.collect(s.ctx, ch) }

func (c *Collector) collect(ctx context.Context, ch chan<- prometheus.Metric) {
	e := &emitter{ch: ch, log: c.log}
	for _, src := range []struct {
		name string
		on   bool
		fn   func(context.Context, *emitter) error
	}{
		{"vdisks", c.src.VDisks != nil, c.collectVDisks},
		{"backend", c.src.Backend != nil, c.collectBackend},
		{"asds", c.src.Backend != nil, c.collectASDs},
		{"arakoon", c.src.Arakoon != nil, c.collectArakoon},
	} {
		if !src.on {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, c.src.Timeout)
		err := src.fn(sctx, e)
		cancel()
		if err != nil {
			c.log.Warn("metrics: a source failed; its metrics are left out of this scrape", "source", src.name, "err", err)
		}
	}
}

// emitter sends const metrics, logging (not panicking on) the ones the
// client library refuses.
type emitter struct {
	ch  chan<- prometheus.Metric
	log *slog.Logger
}

func (e *emitter) metric(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		e.log.Error("metrics: bad metric", "desc", d.String(), "err", err)
		return
	}
	e.ch <- m
}

func (e *emitter) gauge(d *prometheus.Desc, v float64, labels ...string) {
	e.metric(d, prometheus.GaugeValue, v, labels...)
}

func (e *emitter) counter(d *prometheus.Desc, v float64, labels ...string) {
	e.metric(d, prometheus.CounterValue, v, labels...)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// --- vdisks ------------------------------------------------------------------

// dtlStates are the states ovs_vdisk_dtl_state always has a series for
// (0 or 1), so that a query for one state sees it go to 0.
var dtlStates = []string{
	volumedriver.DTLStateOK, volumedriver.DTLStateCatchingUp, volumedriver.DTLStateDegraded,
	volumedriver.DTLStateStandalone, volumedriver.DTLStateDisabled,
}

func (c *Collector) collectVDisks(ctx context.Context, e *emitter) error {
	// I/O statistics first: they need no lock of a volume, so a scrape
	// still has them when a volume is busy and List runs out of time.
	stats := c.src.VDisks.IOStats()
	names := make([]string, 0, len(stats))
	for n := range stats {
		names = append(names, n)
	}
	sort.Strings(names)
	bounds := volumedriver.LatencyBounds()
	for _, name := range names {
		s := stats[name]
		for _, op := range volumedriver.IOOps() {
			o, l := s.Op(op), op.String()
			e.counter(descVDiskOps, float64(o.Ops), name, l)
			e.counter(descVDiskBytes, float64(o.Bytes), name, l)
			e.counter(descVDiskErrors, float64(o.Errors), name, l)
			buckets := make(map[float64]uint64, len(bounds))
			for i, b := range bounds {
				buckets[b] = o.Buckets[i]
			}
			h, err := prometheus.NewConstHistogram(descVDiskLatency, o.Ops, o.LatencySum.Seconds(), buckets, name, l)
			if err != nil {
				e.log.Error("metrics: bad histogram", "vdisk", name, "op", l, "err", err)
				continue
			}
			e.ch <- h
		}
		e.counter(descCacheHits, float64(s.CacheHits), name)
		e.counter(descCacheMisses, float64(s.CacheMisses), name)
	}
	collectReadCache(c.src.VDisks, e)
	infos, err := c.src.VDisks.List(ctx)
	if err != nil {
		return err
	}
	for _, v := range infos {
		e.gauge(descVDiskSize, float64(v.Size), v.Name)
		e.gauge(descVDiskWriteBuffer, float64(v.WriteBufferBytes), v.Name)
		e.gauge(descVDiskPendingUpload, float64(v.PendingUploadBytes), v.Name)
		e.gauge(descVDiskClients, float64(v.Clients), v.Name)
		e.gauge(descVDiskHealthy, boolValue(v.State == "ok"), v.Name)
		if v.DTLState == "" {
			continue // a vdisk this host could not bring up has none
		}
		known := false
		for _, st := range dtlStates {
			known = known || st == v.DTLState
			e.gauge(descVDiskDTLState, boolValue(st == v.DTLState), v.Name, st)
		}
		if !known {
			e.gauge(descVDiskDTLState, 1, v.Name, v.DTLState)
		}
	}
	return nil
}

// --- backend and ASDs --------------------------------------------------------

// backendStatus returns the backend's Status, reused while younger than
// StatusMaxAge. The lock is held across the scan so that scrapes that
// arrive together share one scan.
func (c *Collector) backendStatus(ctx context.Context) (ec.Status, error) {
	c.statusMu.Lock()
	defer c.statusMu.Unlock()
	now := c.src.Now()
	if c.src.StatusMaxAge > 0 && !c.statusAt.IsZero() && now.Sub(c.statusAt) < c.src.StatusMaxAge {
		return c.status, nil
	}
	s, err := c.src.Backend.Status(ctx)
	if err != nil {
		return ec.Status{}, err
	}
	c.status, c.statusAt = s, now
	return s, nil
}

// maintenanceTasks are the values of ec.MaintenanceProgress.Task.
var maintenanceTasks = []string{"repair", "scrub", "rebalance"}

func (c *Collector) collectBackend(ctx context.Context, e *emitter) error {
	s, err := c.backendStatus(ctx)
	if err != nil {
		return err
	}
	for _, g := range []struct {
		d *prometheus.Desc
		v int64
	}{
		{descBackendObjects, s.Objects}, {descBackendBytes, s.Bytes}, {descBackendStoredBytes, s.StoredBytes},
		{descBackendDegraded, s.Degraded}, {descBackendUnavailable, s.Unavailable}, {descBackendFlagged, s.Flagged},
		{descBackendNamespaces, s.Namespaces}, {descBackendCapacity, s.Capacity}, {descBackendUsed, s.Used},
		{descBackendFree, s.Free}, {descBackendASDs, int64(s.ASDs)}, {descBackendASDsUp, int64(s.ASDsUp)},
	} {
		e.gauge(g.d, float64(g.v))
	}
	m := s.Maintenance
	for _, t := range maintenanceTasks {
		e.gauge(descMaintRunning, boolValue(m.Task == t), t)
	}
	// Done and total are those of the task under way, or of the last one.
	e.gauge(descMaintDone, float64(m.Done))
	e.gauge(descMaintTotal, float64(m.Total))
	if !m.LastPass.IsZero() {
		e.gauge(descMaintLastPass, float64(m.LastPass.UnixNano())/1e9)
	}
	if !m.LastScrub.IsZero() {
		e.gauge(descMaintLastScrub, float64(m.LastScrub.UnixNano())/1e9)
	}
	k := s.Counters
	for _, ct := range []struct {
		d *prometheus.Desc
		v int64
	}{
		{descObjectsRepaired, k.ObjectsRepaired}, {descFragmentsRebuilt, k.FragmentsRebuilt},
		{descFragmentsMoved, k.FragmentsMoved}, {descRepairFailures, k.RepairFailures},
		{descDegradedReads, k.DegradedReads}, {descCorruptFragments, k.CorruptFound},
		{descMissingFragments, k.MissingFound},
	} {
		e.counter(ct.d, float64(ct.v))
	}
	return nil
}

func (c *Collector) collectASDs(ctx context.Context, e *emitter) error {
	asds, err := c.src.Backend.ListASDs(ctx)
	if err != nil {
		return err
	}
	for _, a := range asds {
		e.gauge(descASDUp, boolValue(a.Health == "up"), a.ID, a.Node)
		e.gauge(descASDActive, boolValue(a.State == ec.ASDActive), a.ID, a.Node)
		e.gauge(descASDUsed, float64(a.Used), a.ID, a.Node)
		e.gauge(descASDFree, float64(a.Free), a.ID, a.Node)
		e.gauge(descASDCapacity, float64(a.Capacity), a.ID, a.Node)
		e.gauge(descASDFragments, float64(a.Fragments), a.ID, a.Node)
	}
	return nil
}

// --- arakoon -----------------------------------------------------------------

// collectArakoon asks the master for its statistics and its members, then
// every other member for its own (at once, each within a short timeout:
// a node that is down must not hold up the scrape). A member that does
// not answer has ovs_arakoon_up 0 and no other series.
func (c *Collector) collectArakoon(ctx context.Context, e *emitter) error {
	master, err := c.src.Arakoon.Statistics(ctx, "")
	if err != nil {
		return err
	}
	type result struct {
		id string
		st *arakoon.Statistics
	}
	results := []result{{master.Node, master}}
	var others []string
	for _, m := range master.Members {
		if m.ID != master.Node {
			others = append(others, m.ID)
		}
	}
	sort.Strings(others)
	got := make([]*arakoon.Statistics, len(others))
	var wg sync.WaitGroup
	for i, id := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mctx, cancel := context.WithTimeout(ctx, arakoonMemberTimeout)
			defer cancel()
			st, err := c.src.Arakoon.Statistics(mctx, id)
			if err != nil {
				c.log.Warn("metrics: arakoon node did not answer", "arakoon_node", id, "err", err)
				return
			}
			got[i] = st
		}()
	}
	wg.Wait()
	for i, id := range others {
		results = append(results, result{id, got[i]})
	}
	e.gauge(descArakoonMembers, float64(len(master.Members)))
	for _, r := range results {
		e.gauge(descArakoonUp, boolValue(r.st != nil), r.id)
		if r.st == nil {
			continue
		}
		e.gauge(descArakoonLeader, boolValue(r.st.State == "Leader"), r.id)
		e.gauge(descArakoonTerm, float64(r.st.Term), r.id)
		e.gauge(descArakoonApplied, float64(r.st.AppliedIndex), r.id)
		e.gauge(descArakoonCommit, float64(r.st.CommitIndex), r.id)
		e.gauge(descArakoonLastIndex, float64(r.st.LastIndex), r.id)
		e.gauge(descArakoonKeys, float64(r.st.Keys), r.id)
	}
	return nil
}

// slogErrorLog routes promhttp's error log to slog.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) {
	var errs []error
	for _, x := range v {
		if err, ok := x.(error); ok {
			errs = append(errs, err)
		}
	}
	l.log.Warn("metrics: serving a scrape", "err", errors.Join(errs...), "detail", v)
}
