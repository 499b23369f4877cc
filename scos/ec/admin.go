package ec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
)

// Admin is the administration of an erasure-coded backend: what the
// `ovs backend` commands do. *Backend implements it in-process and
// *AdminClient over HTTP (NewAdminHandler serves one for the other).
type Admin interface {
	Status(ctx context.Context) (Status, error)
	ListASDs(ctx context.Context) ([]ASDStatus, error)
	AddASD(ctx context.Context, addr string) (ASDStatus, error)
	DecommissionASD(ctx context.Context, id string) error
	RemoveASD(ctx context.Context, id string, force bool) error
	ListPresets(ctx context.Context) ([]Preset, error)
	AddPreset(ctx context.Context, p Preset) error
	Repair(ctx context.Context) (MaintenanceReport, error)
	Scrub(ctx context.Context) (MaintenanceReport, error)
	Rebalance(ctx context.Context) (MaintenanceReport, error)
}

var _ Admin = (*Backend)(nil)
var _ scos.Backend = (*Backend)(nil)

// ErrInvalidPreset wraps the reasons a preset is refused.
var ErrInvalidPreset = errors.New("invalid preset")

// ASDStatus is an ASD as `ovs backend asd list` shows it.
type ASDStatus struct {
	ID        string    `json:"id"`
	Addr      string    `json:"addr"`
	Node      string    `json:"node"`
	Site      string    `json:"site"`
	State     string    `json:"state"`  // active, decommissioning, decommissioned
	Health    string    `json:"health"` // up, down, unknown
	Used      int64     `json:"used"`
	Capacity  int64     `json:"capacity"`
	Free      int64     `json:"free"`
	Fragments int64     `json:"fragments"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	DownSince time.Time `json:"down_since,omitzero"`
	Error     string    `json:"error,omitempty"`
	Pid       int       `json:"pid,omitempty"` // for ASDs run as local child processes
}

// Status is the state of the backend as `ovs backend status` shows it.
type Status struct {
	Objects     int64 `json:"objects"`
	Bytes       int64 `json:"bytes"`        // logical
	StoredBytes int64 `json:"stored_bytes"` // fragments
	// Degraded objects have a fragment not on an active ASD that is up,
	// or are flagged for repair; Unavailable ones cannot be read now.
	Degraded    int64               `json:"degraded_objects"`
	Unavailable int64               `json:"unavailable_objects"`
	Flagged     int64               `json:"flagged_objects"`
	Namespaces  int64               `json:"namespaces"`
	ASDs        int                 `json:"asds"`
	ASDsUp      int                 `json:"asds_up"`
	Capacity    int64               `json:"capacity"`
	Used        int64               `json:"used"`
	Free        int64               `json:"free"`
	Preset      string              `json:"default_preset"`
	Maintenance MaintenanceProgress `json:"maintenance"`
	Counters    Counters            `json:"counters"`
}

// --- the registry ------------------------------------------------------------

func (b *Backend) record(ctx context.Context, id string) (ASDRecord, []byte, error) {
	raw, err := b.kv.Get(ctx, kvASD+id)
	if errors.Is(err, ErrKeyNotFound) {
		return ASDRecord{}, nil, fmt.Errorf("%w: %s", ErrASDNotFound, id)
	}
	if err != nil {
		return ASDRecord{}, nil, err
	}
	var r ASDRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return ASDRecord{}, nil, fmt.Errorf("asd record %s: %w: %v", id, scos.ErrCorrupt, err)
	}
	return r, raw, nil
}

// updateASD changes a registry record atomically.
func (b *Backend) updateASD(ctx context.Context, id string, fn func(*ASDRecord)) error {
	for {
		r, raw, err := b.record(ctx, id)
		if err != nil {
			return err
		}
		fn(&r)
		out, _ := json.Marshal(r)
		err = b.kv.TestAndSet(ctx, kvASD+id, raw, out)
		if errors.Is(err, ErrKVConflict) {
			continue
		}
		if err != nil {
			return err
		}
		return b.reloadRegistry(ctx)
	}
}

// AddASD registers the ASD that answers at addr (its id, node and site
// come from the daemon). Adding a registered ASD again updates its address
// and reactivates it if it was decommissioned. New ASDs trigger a
// rebalance.
func (b *Backend) AddASD(ctx context.Context, addr string) (ASDStatus, error) {
	c := asd.NewClient(addr, b.hc)
	pctx, cancel := context.WithTimeout(ctx, 3*b.cfg.ProbeTimeout)
	h, err := c.Health(pctx)
	cancel()
	if err != nil {
		return ASDStatus{}, fmt.Errorf("add ASD %s: %w", addr, err)
	}
	if !scos.ValidName(h.ID) || len(h.ID) > maxASDIDLen {
		return ASDStatus{}, fmt.Errorf("add ASD %s: invalid id %q", addr, h.ID)
	}
	for {
		r, raw, err := b.record(ctx, h.ID)
		if errors.Is(err, ErrASDNotFound) {
			r = ASDRecord{ID: h.ID, State: ASDActive, Added: time.Now().UTC()}
		} else if err != nil {
			return ASDStatus{}, err
		}
		r.Addr, r.Node, r.Site = addr, h.Node, h.Site
		if r.State == ASDDecommissioned {
			r.State = ASDActive
		}
		out, _ := json.Marshal(r)
		err = b.kv.TestAndSet(ctx, kvASD+h.ID, raw, out)
		if errors.Is(err, ErrKVConflict) {
			continue
		}
		if err != nil {
			return ASDStatus{}, err
		}
		if raw == nil {
			b.log.Info("ASD added", "asd", h.ID, "addr", addr, "node", h.Node, "site", h.Site)
			b.rebalance.Store(true)
		}
		break
	}
	if err := b.reloadRegistry(ctx); err != nil {
		return ASDStatus{}, err
	}
	b.mu.Lock()
	st := b.asds[h.ID]
	b.mu.Unlock()
	if st != nil {
		b.setHealth(st, h, nil)
	}
	b.fullPass.Store(true)
	b.wake()
	for _, s := range b.asdStatuses() {
		if s.ID == h.ID {
			return s, nil
		}
	}
	return ASDStatus{}, fmt.Errorf("%w: %s", ErrASDNotFound, h.ID)
}

// DecommissionASD drains an ASD: it receives no new fragments and
// maintenance rebuilds its fragments elsewhere; once empty it is
// "decommissioned" and can be removed.
func (b *Backend) DecommissionASD(ctx context.Context, id string) error {
	err := b.updateASD(ctx, id, func(r *ASDRecord) {
		if r.State == ASDActive {
			r.State = ASDDecommissioning
		}
	})
	if err != nil {
		return fmt.Errorf("decommission %s: %w", id, err)
	}
	b.log.Info("ASD decommissioning", "asd", id)
	b.fullPass.Store(true)
	b.wake()
	return nil
}

// RemoveASD drops an ASD from the registry. One that still holds
// fragments is refused unless force, in which case its fragments are
// rebuilt from the others by maintenance.
func (b *Backend) RemoveASD(ctx context.Context, id string, force bool) error {
	r, raw, err := b.record(ctx, id)
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if !force && r.State != ASDDecommissioned {
		n := 0
		if err := b.forEachManifest(ctx, func(_, _ string, m *Manifest, _ []byte) error {
			for _, f := range m.Fragments {
				if f.ASD == id {
					n++
				}
			}
			return nil
		}); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: ASD %s holds %d fragment(s); decommission it and wait until it is drained, or force the removal (its fragments are then rebuilt from the others)",
				ErrASDInUse, id, n)
		}
	}
	if err := b.kv.TestAndSet(ctx, kvASD+id, raw, nil); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	b.log.Info("ASD removed", "asd", id, "forced", force)
	if err := b.reloadRegistry(ctx); err != nil {
		return err
	}
	b.fullPass.Store(true)
	b.wake()
	return nil
}

func (b *Backend) asdStatuses() []ASDStatus {
	var pids map[string]int
	if b.cfg.LocalPids != nil {
		pids = b.cfg.LocalPids()
	}
	b.mu.Lock()
	out := make([]ASDStatus, 0, len(b.asds))
	for id, st := range b.asds {
		s := ASDStatus{ID: id, Addr: st.rec.Addr, Node: st.rec.Node, Site: st.rec.Site, State: st.rec.State,
			Health: "unknown", LastSeen: st.lastSeen, DownSince: st.downSince, Error: st.lastErr, Pid: pids[id]}
		if st.probed {
			s.Health = "down"
			if st.up {
				s.Health = "up"
			}
		}
		if !st.lastSeen.IsZero() {
			c := st.health.Capacity
			s.Used, s.Capacity, s.Free, s.Fragments = c.Used, c.Capacity, c.Free, st.health.Fragments
		}
		out = append(out, s)
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Site != out[j].Site {
			return out[i].Site < out[j].Site
		}
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// ListASDs returns the registered ASDs with their health.
func (b *Backend) ListASDs(ctx context.Context) ([]ASDStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return b.asdStatuses(), nil
}

// flaggedObjects returns the objects flagged for repair, by "ns/name".
func (b *Backend) flaggedObjects(ctx context.Context) (map[string]bool, error) {
	flagged := map[string]bool{}
	err := kvRangeAll(ctx, b.kv, kvDegraded, func(e KV) (bool, error) {
		flagged[e.Key[len(kvDegraded):]] = true
		return true, nil
	})
	return flagged, err
}

// Status counts objects, degraded and unavailable ones (a scan of the
// manifests, reused while nothing it depends on changed: see
// statusCache), and sums the ASDs' capacity.
func (b *Backend) Status(ctx context.Context) (Status, error) {
	s := Status{Preset: b.cfg.Preset, Maintenance: b.progress.snapshot(), Counters: b.stats.snapshot()}
	views := b.asdViews()
	s.ASDs, s.ASDsUp, s.Capacity, s.Used, s.Free = sumCapacity(views)
	flagged, err := b.flaggedObjects(ctx)
	if err != nil {
		return s, err
	}
	s.Flagged = int64(len(flagged))
	if err := kvRangeAll(ctx, b.kv, kvNamespace, func(KV) (bool, error) { s.Namespaces++; return true, nil }); err != nil {
		return s, err
	}
	scan, err := b.objectScan(ctx, views, flagged)
	s.Objects, s.Bytes, s.StoredBytes, s.Degraded, s.Unavailable = scan.Objects, scan.Bytes, scan.StoredBytes, scan.Degraded, scan.Unavailable
	return s, err
}

// --- over HTTP --------------------------------------------------------------------

// errBadRequest: a request the admin handler cannot parse.
var errBadRequest = errors.New("bad request")

// apiError is the JSON body of an error answer; the same shape as the
// ASDs' (see package asd).
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(apiError{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// NewAdminHandler serves an Admin over HTTP (JSON), under /v1/:
//
//	GET    /v1/status                 Status
//	GET    /v1/asds                   []ASDStatus
//	POST   /v1/asds                   {"addr": "host:port"} -> ASDStatus
//	POST   /v1/asds/{id}/decommission  [?wait=true: once drained -> MaintenanceReport]
//	DELETE /v1/asds/{id}[?force=1]
//	GET    /v1/presets                []Preset
//	POST   /v1/presets                Preset
//	POST   /v1/repair|scrub|rebalance MaintenanceReport
func NewAdminHandler(a Admin) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			status, code := http.StatusInternalServerError, "internal"
			switch {
			case errors.Is(err, ErrASDNotFound), errors.Is(err, ErrPresetNotFound):
				status, code = http.StatusNotFound, "not_found"
			case errors.Is(err, ErrPresetExists):
				status, code = http.StatusConflict, "exists"
			case errors.Is(err, ErrASDInUse):
				status, code = http.StatusConflict, "in_use"
			case errors.Is(err, ErrInvalidPreset), errors.Is(err, scos.ErrInvalidName), errors.Is(err, errBadRequest):
				status, code = http.StatusBadRequest, "bad_request"
			case errors.Is(err, asd.ErrUnavailable):
				status, code = http.StatusBadGateway, "unavailable"
			}
			writeError(w, status, code, err.Error())
			return
		}
		if v == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, v)
	}
	decode := func(r *http.Request, v any) error {
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(v); err != nil {
			return fmt.Errorf("%w: request body: %v", errBadRequest, err)
		}
		return nil
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		s, err := a.Status(r.Context())
		reply(w, s, err)
	})
	mux.HandleFunc("GET /v1/asds", func(w http.ResponseWriter, r *http.Request) {
		l, err := a.ListASDs(r.Context())
		reply(w, l, err)
	})
	mux.HandleFunc("POST /v1/asds", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Addr string `json:"addr"`
		}
		if err := decode(r, &req); err != nil {
			reply(w, nil, err)
			return
		}
		s, err := a.AddASD(r.Context(), req.Addr)
		reply(w, s, err)
	})
	mux.HandleFunc("POST /v1/asds/{id}/decommission", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := a.DecommissionASD(r.Context(), id); err != nil || r.URL.Query().Get("wait") != "true" {
			reply(w, nil, err)
			return
		}
		// ?wait=true: answer once drained, with what it took.
		d, ok := a.(Drainer)
		if !ok {
			reply(w, nil, fmt.Errorf("%w: this admin cannot wait for a drain", errBadRequest))
			return
		}
		rep, err := d.WaitDrained(r.Context(), id)
		reply(w, rep, err)
	})
	mux.HandleFunc("DELETE /v1/asds/{id}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, nil, a.RemoveASD(r.Context(), r.PathValue("id"), r.URL.Query().Get("force") == "1"))
	})
	mux.HandleFunc("GET /v1/presets", func(w http.ResponseWriter, r *http.Request) {
		l, err := a.ListPresets(r.Context())
		reply(w, l, err)
	})
	mux.HandleFunc("POST /v1/presets", func(w http.ResponseWriter, r *http.Request) {
		var p Preset
		if err := decode(r, &p); err != nil {
			reply(w, nil, err)
			return
		}
		reply(w, nil, a.AddPreset(r.Context(), p))
	})
	for name, fn := range map[string]func(context.Context) (MaintenanceReport, error){
		"repair": a.Repair, "scrub": a.Scrub, "rebalance": a.Rebalance,
	} {
		mux.HandleFunc("POST /v1/"+name, func(w http.ResponseWriter, r *http.Request) {
			rep, err := fn(r.Context())
			reply(w, rep, err)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// AdminClient is an Admin over HTTP (see NewAdminHandler).
type AdminClient struct {
	base string
	hc   *http.Client
}

var _ Admin = (*AdminClient)(nil)

// NewAdminClient talks to the admin handler at base (an http:// URL or
// host:port). hc nil uses http.DefaultClient.
func NewAdminClient(base string, hc *http.Client) *AdminClient {
	if hc == nil {
		hc = http.DefaultClient
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &AdminClient{base: strings.TrimRight(base, "/"), hc: hc}
}

func (c *AdminClient) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("backend admin %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var ae apiError
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &ae) == nil && ae.Error != "" {
			msg = ae.Error
		}
		kind := map[string]error{
			"not_found": ErrASDNotFound, "exists": ErrPresetExists, "in_use": ErrASDInUse,
			"bad_request": errBadRequest, "unavailable": asd.ErrUnavailable,
		}[ae.Code]
		if ae.Code == "not_found" && strings.Contains(msg, ErrPresetNotFound.Error()) {
			kind = ErrPresetNotFound
		}
		if ae.Code == "bad_request" && strings.Contains(msg, ErrInvalidPreset.Error()) {
			kind = ErrInvalidPreset
		}
		return &remoteError{msg: msg, kind: kind}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("backend admin %s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// remoteError carries a server's message and the sentinel it stands for.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func (c *AdminClient) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.call(ctx, http.MethodGet, "/v1/status", nil, &s)
}

func (c *AdminClient) ListASDs(ctx context.Context) ([]ASDStatus, error) {
	var l []ASDStatus
	return l, c.call(ctx, http.MethodGet, "/v1/asds", nil, &l)
}

func (c *AdminClient) AddASD(ctx context.Context, addr string) (ASDStatus, error) {
	var s ASDStatus
	return s, c.call(ctx, http.MethodPost, "/v1/asds", map[string]string{"addr": addr}, &s)
}

func (c *AdminClient) DecommissionASD(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodPost, "/v1/asds/"+url.PathEscape(id)+"/decommission", nil, nil)
}

func (c *AdminClient) RemoveASD(ctx context.Context, id string, force bool) error {
	q := ""
	if force {
		q = "?force=1"
	}
	return c.call(ctx, http.MethodDelete, "/v1/asds/"+url.PathEscape(id)+q, nil, nil)
}

func (c *AdminClient) ListPresets(ctx context.Context) ([]Preset, error) {
	var l []Preset
	return l, c.call(ctx, http.MethodGet, "/v1/presets", nil, &l)
}

func (c *AdminClient) AddPreset(ctx context.Context, p Preset) error {
	return c.call(ctx, http.MethodPost, "/v1/presets", p, nil)
}

func (c *AdminClient) Repair(ctx context.Context) (MaintenanceReport, error) {
	var r MaintenanceReport
	return r, c.call(ctx, http.MethodPost, "/v1/repair", nil, &r)
}

func (c *AdminClient) Scrub(ctx context.Context) (MaintenanceReport, error) {
	var r MaintenanceReport
	return r, c.call(ctx, http.MethodPost, "/v1/scrub", nil, &r)
}

func (c *AdminClient) Rebalance(ctx context.Context) (MaintenanceReport, error) {
	var r MaintenanceReport
	return r, c.call(ctx, http.MethodPost, "/v1/rebalance", nil, &r)
}

// sumCapacity counts the ASDs and those up, and sums the raw space of the
// active ones that are up. ASDs that share a whole filesystem on a node
// count its capacity and free space once.
func sumCapacity(views map[string]asdView) (asds, up int, capacity, used, free int64) {
	sharedFS := map[string]bool{} // node/fs of ASDs sharing a whole filesystem, counted once
	for _, v := range views {
		asds++
		if !v.up {
			continue
		}
		up++
		if v.rec.State != ASDActive {
			continue
		}
		c := v.health.Capacity
		used += c.Used
		if c.Capacity == c.FSTotal && c.FSID != "" {
			key := v.rec.Node + "/" + c.FSID
			if sharedFS[key] {
				continue
			}
			sharedFS[key] = true
		}
		capacity += c.Capacity
		free += c.Free
	}
	return asds, up, capacity, used, free
}

// Space is the backend's raw space (as Status sums it) and the shape of
// the default preset's first policy, which tells how much of it data can
// use: k/(k+m).
type Space struct {
	Capacity, Used, Free int64
	K, M                 int
}

// Space sums the ASDs' space without Status's scan of every manifest, so
// that it is cheap enough to poll (a cloud's scheduler asks every minute).
func (b *Backend) Space(ctx context.Context) (Space, error) {
	var s Space
	_, _, s.Capacity, s.Used, s.Free = sumCapacity(b.asdViews())
	p, err := b.preset(ctx, b.cfg.Preset)
	if err != nil {
		return s, err
	}
	if len(p.Policies) > 0 {
		s.K, s.M = p.Policies[0].K, p.Policies[0].M
	}
	return s, nil
}
