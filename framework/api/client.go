package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/ovs-storage/ovs/volumedriver"
)

// DefaultAddress is where the API listens unless configured otherwise.
const DefaultAddress = "http://127.0.0.1:8800"

// maxResponseBytes bounds what the client reads from a response.
const maxResponseBytes = 64 << 20

// Client talks to the REST API. Its methods mirror the endpoints; a non-2xx
// answer comes back as an *APIError. It implements VDisks.
type Client struct {
	base    *url.URL
	baseErr error
	hc      *http.Client
	token   string
	// forwarded: calls are passed on by a node (see Forwarded).
	forwarded bool
}

var _ VDisks = (*Client)(nil)

// NewClient returns a client for the API at baseURL, such as
// "http://127.0.0.1:8800" (a missing scheme means http; a trailing
// "/api/v1" is optional). A nil httpClient means a plain &http.Client{}:
// no overall timeout, so pass a context with a deadline to bound a call.
// An unusable baseURL makes every call fail with a clear error.
func NewClient(baseURL string, httpClient *http.Client) *Client {
	if httpClient == nil {
		httpClient = &http.Client{}
	}
	c := &Client{hc: httpClient}
	c.base, c.baseErr = parseBaseURL(baseURL)
	return c
}

// WithToken returns a copy of c that sends token as its bearer token
// (needed for mutating calls when the API listens beyond loopback).
func (c *Client) WithToken(token string) *Client {
	c2 := *c
	c2.token = token
	return &c2
}

func parseBaseURL(s string) (*url.URL, error) {
	raw := strings.TrimSpace(s)
	if raw == "" {
		return nil, errors.New("the API address is empty")
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid API address %q: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("invalid API address %q: the scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid API address %q: no host", s)
	}
	u.Path = strings.TrimSuffix(strings.TrimRight(u.Path, "/"), "/api/v1")
	u.RawPath = ""
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// BaseURL returns the API address the client uses.
func (c *Client) BaseURL() string {
	if c.base == nil {
		return ""
	}
	return c.base.String()
}

// Health returns nil if the API reports itself ready.
func (c *Client) Health(ctx context.Context) error {
	var h HealthResponse
	if err := c.do(ctx, http.MethodGet, "/api/v1/health", nil, nil, &h); err != nil {
		return err
	}
	if h.Status != "ok" {
		return fmt.Errorf("the API reports status %q", h.Status)
	}
	return nil
}

// Create creates a vdisk of size bytes.
func (c *Client) Create(ctx context.Context, name string, size int64, opts volumedriver.CreateOptions) (volumedriver.VolumeInfo, error) {
	var info volumedriver.VolumeInfo
	if err := checkName(name); err != nil {
		return info, err
	}
	req := CreateRequest{Name: name, Size: size, ClusterSize: opts.ClusterSize, SCOMultiplier: opts.SCOMultiplier}
	err := c.do(ctx, http.MethodPost, "/api/v1/vdisks", nil, req, &info)
	return info, err
}

// List returns every vdisk, sorted by name; never nil on success.
func (c *Client) List(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	var infos []volumedriver.VolumeInfo
	if err := c.do(ctx, http.MethodGet, "/api/v1/vdisks", nil, nil, &infos); err != nil {
		return nil, err
	}
	if infos == nil {
		infos = []volumedriver.VolumeInfo{}
	}
	return infos, nil
}

// Info returns one vdisk.
func (c *Client) Info(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	var info volumedriver.VolumeInfo
	if err := checkName(name); err != nil {
		return info, err
	}
	err := c.do(ctx, http.MethodGet, vdiskPath(name), nil, nil, &info)
	return info, err
}

// Delete deletes a vdisk. Without force, a vdisk in use fails with an
// error matching volumedriver.ErrBusy.
func (c *Client) Delete(ctx context.Context, name string, force bool) error {
	if err := checkName(name); err != nil {
		return err
	}
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, http.MethodDelete, vdiskPath(name), q, nil, nil)
}

// Resize grows a vdisk to size bytes.
func (c *Client) Resize(ctx context.Context, name string, size int64) (volumedriver.VolumeInfo, error) {
	var info volumedriver.VolumeInfo
	if err := checkName(name); err != nil {
		return info, err
	}
	err := c.do(ctx, http.MethodPost, vdiskPath(name)+"/resize", nil, ResizeRequest{Size: size}, &info)
	return info, err
}

// Sync returns once every write flushed to the vdisk before the call is on
// the backend.
func (c *Client) Sync(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, vdiskPath(name)+"/sync", nil, nil, nil)
}

// CreateSnapshot snapshots vdisk. An empty snapshot name lets the server
// generate one; metadata is free text of at most
// volumedriver.MaxSnapshotMetadata bytes.
func (c *Client) CreateSnapshot(ctx context.Context, vdisk, snapshot, metadata string) (volumedriver.SnapshotInfo, error) {
	var snap volumedriver.SnapshotInfo
	if err := checkName(vdisk); err != nil {
		return snap, err
	}
	req := SnapshotRequest{Name: snapshot, Metadata: metadata}
	err := c.do(ctx, http.MethodPost, vdiskPath(vdisk)+"/snapshots", nil, req, &snap)
	return snap, err
}

// ListSnapshots returns the snapshots of vdisk, oldest first; never nil on
// success.
func (c *Client) ListSnapshots(ctx context.Context, vdisk string) ([]volumedriver.SnapshotInfo, error) {
	if err := checkName(vdisk); err != nil {
		return nil, err
	}
	var snaps []volumedriver.SnapshotInfo
	if err := c.do(ctx, http.MethodGet, vdiskPath(vdisk)+"/snapshots", nil, nil, &snaps); err != nil {
		return nil, err
	}
	if snaps == nil {
		snaps = []volumedriver.SnapshotInfo{}
	}
	return snaps, nil
}

// DeleteSnapshot deletes a snapshot of vdisk. A snapshot that clones
// depend on fails with an error matching volumedriver.ErrBusy.
func (c *Client) DeleteSnapshot(ctx context.Context, vdisk, snapshot string) error {
	if err := checkName(vdisk); err != nil {
		return err
	}
	if err := checkSnapshot(snapshot); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, snapshotPath(vdisk, snapshot), nil, nil, nil)
}

// Rollback returns vdisk to snapshot, discarding later snapshots and
// writes. Without force, a vdisk in use fails with an error matching
// volumedriver.ErrBusy.
func (c *Client) Rollback(ctx context.Context, vdisk, snapshot string, force bool) error {
	if err := checkName(vdisk); err != nil {
		return err
	}
	if err := checkSnapshot(snapshot); err != nil {
		return err
	}
	req := RollbackRequest{Snapshot: snapshot, Force: force}
	return c.do(ctx, http.MethodPost, vdiskPath(vdisk)+"/rollback", nil, req, nil)
}

// Clone creates vdisk name from snapshot of parent and returns the clone.
// An empty snapshot means the latest snapshot of parent, which must then be
// a template.
func (c *Client) Clone(ctx context.Context, name, parent, snapshot string) (volumedriver.VolumeInfo, error) {
	var info volumedriver.VolumeInfo
	if err := checkName(name); err != nil {
		return info, err
	}
	if parent == "" {
		return info, fmt.Errorf("the vdisk to clone must be named: %w", volumedriver.ErrInvalidArgument)
	}
	req := CloneRequest{Name: name, Snapshot: snapshot}
	err := c.do(ctx, http.MethodPost, vdiskPath(parent)+"/clones", nil, req, &info)
	return info, err
}

// Flatten makes the clone name independent of its parent.
func (c *Client) Flatten(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	return c.postInfo(ctx, name, "/flatten")
}

// SetTemplate turns vdisk name into a read-only template.
func (c *Client) SetTemplate(ctx context.Context, name string) (volumedriver.VolumeInfo, error) {
	return c.postInfo(ctx, name, "/template")
}

// Scrub gives back the backend space of vdisk name's unreachable data.
func (c *Client) Scrub(ctx context.Context, name string) (volumedriver.ScrubResult, error) {
	var res volumedriver.ScrubResult
	if err := checkName(name); err != nil {
		return res, err
	}
	err := c.do(ctx, http.MethodPost, vdiskPath(name)+"/scrub", nil, nil, &res)
	return res, err
}

// postInfo POSTs to the vdisk's sub-resource suffix and decodes a VolumeInfo.
func (c *Client) postInfo(ctx context.Context, name, suffix string) (volumedriver.VolumeInfo, error) {
	var info volumedriver.VolumeInfo
	if err := checkName(name); err != nil {
		return info, err
	}
	err := c.do(ctx, http.MethodPost, vdiskPath(name)+suffix, nil, nil, &info)
	return info, err
}

func checkName(name string) error {
	if name == "" {
		return fmt.Errorf("vdisk name must not be empty: %w", volumedriver.ErrInvalidArgument)
	}
	return nil
}

func checkSnapshot(name string) error {
	if name == "" {
		return fmt.Errorf("snapshot name must not be empty: %w", volumedriver.ErrInvalidArgument)
	}
	return nil
}

func vdiskPath(name string) string { return "/api/v1/vdisks/" + url.PathEscape(name) }

func snapshotPath(vdisk, snapshot string) string {
	return vdiskPath(vdisk) + "/snapshots/" + url.PathEscape(snapshot)
}

// do sends a request with in (if not nil) as JSON and decodes a 2xx answer
// into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	if c.baseErr != nil {
		return c.baseErr
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding the request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	target := strings.TrimRight(c.base.String(), "/") + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	// The server wants JSON on every mutating call, with a body or not.
	if in != nil || isMutating(method) && method != http.MethodDelete {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.forwarded {
		req.Header.Set(forwardedHeader, "1")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("cannot reach the OVS API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("reading the answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return responseError(resp, data)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("the answer of %s %s is not the JSON expected: %w", method, path, err)
	}
	return nil
}

func responseError(resp *http.Response, data []byte) error {
	e := &APIError{Status: resp.StatusCode}
	var er ErrorResponse
	if json.Unmarshal(data, &er) == nil && er.Error != "" {
		e.Code, e.Message = er.Code, er.Error
		return e
	}
	// Not one of ours (a proxy, another service on the port).
	snippet := strings.TrimSpace(string(data))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "..."
	}
	e.Message = fmt.Sprintf("unexpected answer from %s: %s", resp.Request.URL.Redacted(), resp.Status)
	if snippet != "" {
		e.Message += ": " + snippet
	}
	return e
}
