package asd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// Client talks to one ASD. Errors wrap ErrFragmentNotFound,
// ErrFragmentCorrupt, ErrFull or, when the daemon does not answer,
// ErrUnavailable (together with the context's error on a timeout).
type Client struct {
	addr string
	base string
	hc   *http.Client
	id   string // the ASD meant, if known: it refuses requests meant for another
	// tlsConf is the TLS configuration of hc's transport, if any (what
	// binary connections use too).
	tlsConf *tls.Config
	wire    *wirePool    // binary reads (WithWire); nil: HTTP only
	local   *localHTTP   // HTTP over the ASD's local socket (WithWire); nil: none
	direct  *localReader // reads from the ASD's files (WithWire); nil: none
}

// NewTransport returns an HTTP transport suited to talking to ASDs:
// short dial timeout, many idle connections per daemon, no compression.
// With a TLS configuration (the cluster's credentials) it talks to ASDs
// over TLS; see NewClient.
func NewTransport(tc ...*tls.Config) *http.Transport {
	t := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	if len(tc) > 0 && tc[0] != nil {
		t.TLSClientConfig = tc[0]
	}
	return t
}

// NewClient returns a client for the ASD at addr (host:port or a URL).
// hc nil uses a client of its own. A host:port is reached over https when
// hc's transport has a TLS configuration (the cluster's credentials:
// then the ASD's certificate is checked before anything is sent), over
// plain http otherwise.
func NewClient(addr string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: NewTransport()}
	}
	var tc *tls.Config
	if t, ok := hc.Transport.(*http.Transport); ok {
		tc = t.TLSClientConfig
	}
	base := addr
	if !strings.Contains(base, "://") {
		scheme := "http://"
		if tc != nil {
			scheme = "https://"
		}
		base = scheme + base
	}
	return &Client{addr: addr, base: strings.TrimRight(base, "/"), hc: hc, tlsConf: tc}
}

// For returns a client whose requests are meant for the ASD of the given
// id: any other ASD answering at the address refuses them (409), so that
// nothing meant for one ASD lands on another.
func (c *Client) For(id string) *Client {
	c2 := *c
	c2.id = id
	if c.wire != nil {
		c2.wire = nil
		return c2.WithWire(c.wire.cfg)
	}
	return &c2
}

// Addr returns the address the client talks to.
func (c *Client) Addr() string { return c.addr }

// do sends a request, over the ASD's local socket when the client has one
// that answers (see localsock.go), over its address otherwise.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte, hdr http.Header) (*http.Response, error) {
	if c.local.usable() {
		resp, err := c.doVia(ctx, c.local.hc, localBase, method, path, q, body, hdr)
		if !c.local.fallBack(err) {
			return resp, err
		}
	}
	return c.doVia(ctx, c.hc, c.base, method, path, q, body, hdr)
}

func (c *Client) doVia(ctx context.Context, hc *http.Client, base, method, path string, q url.Values, body []byte, hdr http.Header) (*http.Response, error) {
	u := base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("asd %s: %w", c.addr, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.id != "" {
		req.Header.Set(asdIDHeader, c.id)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.transportErr(ctx, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, c.statusErr(resp)
	}
	return resp, nil
}

// transportErr: a daemon that does not answer is unavailable, unless the
// caller itself gave up.
func (c *Client) transportErr(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("asd %s: %w", c.addr, ctx.Err())
	}
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("asd %s: %w: %w", c.addr, ErrUnavailable, err)
}

func (c *Client) statusErr(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ae asdError
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &ae) == nil && ae.Error != "" {
		msg = ae.Error
	}
	var kind error
	switch resp.StatusCode {
	case http.StatusNotFound:
		kind = ErrFragmentNotFound
	case http.StatusUnprocessableEntity:
		kind = ErrFragmentCorrupt
	case http.StatusInsufficientStorage:
		kind = ErrFull
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		kind = ErrUnavailable
	}
	if kind != nil {
		// The daemon's message already names the condition; keep the
		// sentinel for errors.Is without repeating it.
		return &asdStatusError{addr: c.addr, status: resp.StatusCode, msg: msg, kind: kind}
	}
	return &asdStatusError{addr: c.addr, status: resp.StatusCode, msg: msg}
}

type asdStatusError struct {
	addr   string
	status int
	msg    string
	kind   error
}

func (e *asdStatusError) Error() string {
	if e.kind != nil && !strings.Contains(strings.ToLower(e.msg), strings.ToLower(e.kind.Error())) {
		return fmt.Sprintf("asd %s: %v: %s", e.addr, e.kind, e.msg)
	}
	return fmt.Sprintf("asd %s: %s", e.addr, e.msg)
}

func (e *asdStatusError) Unwrap() error { return e.kind }

// Put stores data as fragment key (replacing one of the same key). It
// returns once the daemon has fsynced it.
func (c *Client) Put(ctx context.Context, key, tag string, data []byte) error {
	return c.PutCRC(ctx, key, tag, data, crc32c.Checksum(data))
}

// PutCRC is Put for a caller that has computed the CRC-32C of data already
// (the erasure-coded backend records every fragment's in its manifest):
// the ASD refuses a body that does not have this checksum, so a fragment
// damaged between the caller's checksum and the ASD's disk is never
// stored, and the bytes are not checksummed once more just to say so.
func (c *Client) PutCRC(ctx context.Context, key, tag string, data []byte, crc uint32) error {
	hdr := http.Header{}
	hdr.Set("X-Ovs-Crc32c", fmt.Sprintf("%08x", crc))
	hdr.Set("Content-Type", "application/octet-stream")
	if tag != "" {
		hdr.Set("X-Ovs-Tag", tag)
	}
	if data == nil {
		data = []byte{}
	}
	resp, err := c.do(ctx, http.MethodPut, "/v1/fragments/"+url.PathEscape(key), nil, data, hdr)
	if err != nil {
		return fmt.Errorf("put fragment %s: %w", key, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil
}

// Get reads length bytes at off of fragment key; length < 0 reads it
// whole. The daemon verifies what it sends. It also returns the checksum
// of the whole fragment, which the caller can check against its records.
// With WithWire, ranged reads go over the binary protocol.
func (c *Client) Get(ctx context.Context, key string, off, length int64) ([]byte, uint32, error) {
	if c.wire != nil && length >= 0 {
		data, crc, err := c.getWire(ctx, key, off, length)
		if !errors.Is(err, ErrNoWire) {
			return data, crc, err
		}
	}
	var q url.Values
	if off != 0 || length >= 0 {
		q = url.Values{"offset": {strconv.FormatInt(off, 10)}}
		if length >= 0 {
			q.Set("length", strconv.FormatInt(length, 10))
		}
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/fragments/"+url.PathEscape(key), q, nil, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("get fragment %s: %w", key, err)
	}
	defer resp.Body.Close()
	crc, err := strconv.ParseUint(resp.Header.Get("X-Ovs-Crc32c"), 16, 32)
	if err != nil {
		return nil, 0, fmt.Errorf("get fragment %s: asd %s: no X-Ovs-Crc32c in the answer", key, c.addr)
	}
	if resp.ContentLength < 0 || resp.ContentLength > MaxFragmentSize || length >= 0 && resp.ContentLength != length {
		return nil, 0, fmt.Errorf("get fragment %s: asd %s: answer of %d bytes, asked for %d", key, c.addr, resp.ContentLength, length)
	}
	data := make([]byte, resp.ContentLength)
	if _, err := io.ReadFull(resp.Body, data); err != nil {
		return nil, 0, fmt.Errorf("get fragment %s: %w", key, c.transportErr(ctx, err))
	}
	return data, uint32(crc), nil
}

func (c *Client) getJSON(ctx context.Context, method, path string, q url.Values, out any) error {
	resp, err := c.do(ctx, method, path, q, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(out); err != nil {
		return fmt.Errorf("asd %s: %s %s: bad answer: %w", c.addr, method, path, c.transportErrIfCtx(ctx, err))
	}
	return nil
}

func (c *Client) transportErrIfCtx(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return c.transportErr(ctx, err)
	}
	return err
}

// Stat returns a fragment's header information without reading its data.
func (c *Client) Stat(ctx context.Context, key string) (FragmentInfo, error) {
	var fi FragmentInfo
	if err := c.getJSON(ctx, http.MethodGet, "/v1/fragments/"+url.PathEscape(key)+"/stat", nil, &fi); err != nil {
		return FragmentInfo{}, fmt.Errorf("stat fragment %s: %w", key, err)
	}
	return fi, nil
}

// Verify has the daemon read the whole fragment and check its checksums.
func (c *Client) Verify(ctx context.Context, key string) (FragmentInfo, error) {
	var fi FragmentInfo
	if err := c.getJSON(ctx, http.MethodPost, "/v1/fragments/"+url.PathEscape(key)+"/verify", nil, &fi); err != nil {
		return FragmentInfo{}, fmt.Errorf("verify fragment %s: %w", key, err)
	}
	return fi, nil
}

// Delete removes a fragment.
func (c *Client) Delete(ctx context.Context, key string) error {
	resp, err := c.do(ctx, http.MethodDelete, "/v1/fragments/"+url.PathEscape(key), nil, nil, nil)
	if err != nil {
		return fmt.Errorf("delete fragment %s: %w", key, err)
	}
	resp.Body.Close()
	return nil
}

// List returns up to limit fragments whose keys start with prefix and sort
// after after; details reads each header (tag, checksum, creation time).
func (c *Client) List(ctx context.Context, prefix, after string, limit int, details bool) (FragmentList, error) {
	q := url.Values{}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if details {
		q.Set("details", "1")
	}
	var fl FragmentList
	if err := c.getJSON(ctx, http.MethodGet, "/v1/fragments", q, &fl); err != nil {
		return FragmentList{}, fmt.Errorf("list fragments: %w", err)
	}
	return fl, nil
}

// ListAll pages through every fragment of the daemon.
func (c *Client) ListAll(ctx context.Context, details bool) ([]FragmentInfo, error) {
	var out []FragmentInfo
	after := ""
	for {
		fl, err := c.List(ctx, "", after, defaultListLimit, details)
		if err != nil {
			return nil, err
		}
		out = append(out, fl.Fragments...)
		if !fl.Truncated || len(fl.Fragments) == 0 {
			return out, nil
		}
		after = fl.Fragments[len(fl.Fragments)-1].Key
	}
}

// Health returns the daemon's identity, fragment count and capacity.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	if err := c.getJSON(ctx, http.MethodGet, "/v1/health", nil, &h); err != nil {
		return Health{}, fmt.Errorf("health: %w", err)
	}
	if h.APIVersion != asdAPIVersion {
		return Health{}, fmt.Errorf("asd %s: %w: API version %d (this build speaks %d)",
			c.addr, scos.ErrUnsupportedFormat, h.APIVersion, asdAPIVersion)
	}
	return h, nil
}
