package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/volumedriver"
)

// newClientServer serves a Server over fake and returns a client for it.
func newClientServer(t *testing.T, fake *apitest.FakeVDisks) (*Client, *Server) {
	t.Helper()
	s := NewServer(fake, Options{Logger: slog.New(slog.DiscardHandler)})
	s.SetReady(true)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return NewClient(ts.URL, ts.Client()), s
}

// clientTest is one call of a Client to a Server over a FakeVDisks.
type clientTest struct {
	name    string
	setup   func(*apitest.FakeVDisks) // nil means seedFake
	call    func(*Client) (any, error)
	want    func(t *testing.T, got any, fake *apitest.FakeVDisks)
	wantErr error  // matched with errors.Is
	wantMsg string // substring of the error
	status  int    // APIError.Status, if an error
}

func TestClient(t *testing.T) {
	ctx := context.Background()
	runClientTests(t, []clientTest{
		{
			name: "create",
			call: func(c *Client) (any, error) {
				return c.Create(ctx, "c", 10*GiB, volumedriver.CreateOptions{ClusterSize: 8192, SCOMultiplier: 512})
			},
			want: func(t *testing.T, got any, fake *apitest.FakeVDisks) {
				info := got.(volumedriver.VolumeInfo)
				if info.Name != "c" || info.Size != 10*GiB || info.ClusterSize != 8192 || info.SCOSize != 4*MiB {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name:    "create duplicate",
			call:    func(c *Client) (any, error) { return c.Create(ctx, "a", GiB, volumedriver.CreateOptions{}) },
			wantErr: volumedriver.ErrExists, wantMsg: `vdisk "a" already exists`, status: 409,
		},
		{
			name:    "create bad size",
			call:    func(c *Client) (any, error) { return c.Create(ctx, "c", -1, volumedriver.CreateOptions{}) },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: `"size" must not be negative`, status: 400,
		},
		{
			name:    "create empty name",
			call:    func(c *Client) (any, error) { return c.Create(ctx, "", GiB, volumedriver.CreateOptions{}) },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: "vdisk name must not be empty",
		},
		{
			name: "list",
			call: func(c *Client) (any, error) { return c.List(ctx) },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				infos := got.([]volumedriver.VolumeInfo)
				if len(infos) != 2 || infos[0].Name != "a" || infos[1].Name != "b" || infos[1].Clients != 1 {
					t.Errorf("list = %+v", infos)
				}
			},
		},
		{
			name:  "list empty",
			setup: func(*apitest.FakeVDisks) {},
			call:  func(c *Client) (any, error) { return c.List(ctx) },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if infos := got.([]volumedriver.VolumeInfo); infos == nil || len(infos) != 0 {
					t.Errorf("list = %#v; want an empty non-nil slice", infos)
				}
			},
		},
		{
			name: "info",
			call: func(c *Client) (any, error) { return c.Info(ctx, "a") },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				info := got.(volumedriver.VolumeInfo)
				if info.Name != "a" || info.Size != GiB || !info.CreatedAt.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name:    "info unknown",
			call:    func(c *Client) (any, error) { return c.Info(ctx, "nope") },
			wantErr: volumedriver.ErrNotFound, wantMsg: `vdisk "nope" not found`, status: 404,
		},
		{
			name:    "info name needing escapes",
			call:    func(c *Client) (any, error) { return c.Info(ctx, "a/b?c d") },
			wantErr: volumedriver.ErrNotFound, wantMsg: `vdisk "a/b?c d" not found`, status: 404,
		},
		{
			name: "delete",
			call: func(c *Client) (any, error) { return nil, c.Delete(ctx, "a", false) },
			want: func(t *testing.T, _ any, fake *apitest.FakeVDisks) {
				if _, err := fake.Info(ctx, "a"); !errors.Is(err, volumedriver.ErrNotFound) {
					t.Errorf("not deleted: %v", err)
				}
			},
		},
		{
			name:    "delete busy",
			call:    func(c *Client) (any, error) { return nil, c.Delete(ctx, "b", false) },
			wantErr: volumedriver.ErrBusy, wantMsg: `vdisk "b" is in use`, status: 409,
		},
		{
			name: "delete busy with force",
			call: func(c *Client) (any, error) { return nil, c.Delete(ctx, "b", true) },
			want: func(t *testing.T, _ any, fake *apitest.FakeVDisks) {
				calls := fake.Calls()
				if last := calls[len(calls)-1]; last != (apitest.Call{Method: "Delete", Name: "b", Force: true}) {
					t.Errorf("call = %+v", last)
				}
			},
		},
		{
			name: "resize",
			call: func(c *Client) (any, error) { return c.Resize(ctx, "a", 4*GiB) },
			want: func(t *testing.T, got any, _ *apitest.FakeVDisks) {
				if info := got.(volumedriver.VolumeInfo); info.Size != 4*GiB {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name:    "resize shrink",
			call:    func(c *Client) (any, error) { return c.Resize(ctx, "b", GiB) },
			wantErr: volumedriver.ErrInvalidArgument, wantMsg: `cannot shrink vdisk "b"`, status: 400,
		},
		{
			name: "sync",
			setup: func(f *apitest.FakeVDisks) {
				seedFake(f)
				f.SetPending("a", 10, 10)
			},
			call: func(c *Client) (any, error) { return nil, c.Sync(ctx, "a") },
			want: func(t *testing.T, _ any, fake *apitest.FakeVDisks) {
				if info, _ := fake.Info(ctx, "a"); info.PendingUploadBytes != 0 {
					t.Errorf("pending = %d after sync", info.PendingUploadBytes)
				}
			},
		},
		{
			name:    "sync closed",
			setup:   func(f *apitest.FakeVDisks) { seedFake(f); f.FailWith("Sync", volumedriver.ErrClosed) },
			call:    func(c *Client) (any, error) { return nil, c.Sync(ctx, "a") },
			wantErr: volumedriver.ErrClosed, status: 503,
		},
		{
			name:    "internal error",
			setup:   func(f *apitest.FakeVDisks) { f.FailWith("List", errors.New("metadata store unreachable")) },
			call:    func(c *Client) (any, error) { return c.List(ctx) },
			wantMsg: "metadata store unreachable", status: 500,
		},
		{
			name: "health",
			call: func(c *Client) (any, error) { return nil, c.Health(ctx) },
		},
	})
}

func runClientTests(t *testing.T, tests []clientTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := apitest.NewFakeVDisks()
			if tt.setup != nil {
				tt.setup(fake)
			} else {
				seedFake(fake)
			}
			c, _ := newClientServer(t, fake)
			got, err := tt.call(c)
			if tt.wantErr == nil && tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("error: %v", err)
				}
				if tt.want != nil {
					tt.want(t, got, fake)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; want %v %q", tt.wantErr, tt.wantMsg)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v does not match %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			var ae *APIError
			if tt.status != 0 && (!errors.As(err, &ae) || ae.Status != tt.status) {
				t.Errorf("error %#v; want *APIError with status %d", err, tt.status)
			}
		})
	}
}

func seedFake(f *apitest.FakeVDisks) {
	ctx := context.Background()
	f.Create(ctx, "b", 2*GiB, volumedriver.CreateOptions{})
	f.Create(ctx, "a", GiB, volumedriver.CreateOptions{})
	f.SetClients("b", 1)
}

func TestClientHealthNotReady(t *testing.T) {
	c, s := newClientServer(t, apitest.NewFakeVDisks())
	s.SetReady(false)
	err := c.Health(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 503 || ae.Code != CodeUnavailable {
		t.Fatalf("Health = %v; want a 503 unavailable APIError", err)
	}
}

func TestAPIErrorIs(t *testing.T) {
	tests := []struct {
		code string
		is   error
	}{
		{CodeNotFound, volumedriver.ErrNotFound},
		{CodeAlreadyExists, volumedriver.ErrExists},
		{CodeInvalidArgument, volumedriver.ErrInvalidArgument},
		{CodeBusy, volumedriver.ErrBusy},
		{CodeReadOnly, volumedriver.ErrReadOnly},
		{CodeClosed, volumedriver.ErrClosed},
		{CodeOutOfRange, volumedriver.ErrOutOfRange},
	}
	all := []error{volumedriver.ErrNotFound, volumedriver.ErrExists, volumedriver.ErrInvalidArgument,
		volumedriver.ErrBusy, volumedriver.ErrReadOnly, volumedriver.ErrClosed, volumedriver.ErrOutOfRange}
	for _, tt := range tests {
		err := error(&APIError{Status: 400, Code: tt.code, Message: "m"})
		for _, s := range all {
			if got, want := errors.Is(err, s), s == tt.is; got != want {
				t.Errorf("errors.Is(%s, %v) = %v; want %v", tt.code, s, got, want)
			}
		}
	}
	for _, code := range []string{CodeUnknownRoute, CodeInternal, ""} {
		err := error(&APIError{Status: 404, Code: code})
		for _, s := range all {
			if errors.Is(err, s) {
				t.Errorf("errors.Is(%q, %v) = true", code, s)
			}
		}
	}
	if msg := (&APIError{Status: 502}).Error(); msg != "HTTP 502 Bad Gateway" {
		t.Errorf("Error() without message = %q", msg)
	}
}

func TestClientTransportErrors(t *testing.T) {
	ctx := context.Background()

	// Nothing listening.
	ts := httptest.NewServer(http.NotFoundHandler())
	url := ts.URL
	ts.Close()
	_, err := NewClient(url, nil).List(ctx)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the OVS API at "+url) {
		t.Errorf("closed server: %v", err)
	}

	// Not our API: a plain-text 404.
	ts = httptest.NewServer(http.NotFoundHandler())
	defer ts.Close()
	_, err = NewClient(ts.URL, nil).List(ctx)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "" || !strings.Contains(ae.Message, "404 page not found") {
		t.Errorf("foreign server: %#v", err)
	}
	if errors.Is(err, volumedriver.ErrNotFound) {
		t.Errorf("a foreign 404 must not look like a missing vdisk")
	}

	// Bad addresses fail every call with a clear error.
	for addr, want := range map[string]string{
		"":                "the API address is empty",
		"ftp://host:1":    "scheme must be http or https",
		"http://":         "no host",
		"http://a b:8800": "invalid API address",
	} {
		if err := NewClient(addr, nil).Health(ctx); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewClient(%q).Health = %v; want %q", addr, err, want)
		}
	}

	// Canceled context.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := NewClient(ts.URL, nil).List(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

func TestClientBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8800":          "http://127.0.0.1:8800",
		"http://127.0.0.1:8800/":         "http://127.0.0.1:8800",
		"127.0.0.1:8800":                 "http://127.0.0.1:8800",
		"https://ovs.example/api/v1/":    "https://ovs.example",
		"http://proxy/ovs/api/v1":        "http://proxy/ovs",
		" http://h:1?x=1#frag ":          "http://h:1",
		"http://[::1]:8800":              "http://[::1]:8800",
		"http://user:pw@h:1/prefix/":     "http://user:pw@h:1/prefix",
		"http://h:1/with%20space/api/v1": "http://h:1/with%20space",
	} {
		if got := NewClient(in, nil).BaseURL(); got != want {
			t.Errorf("NewClient(%q).BaseURL() = %q; want %q", in, got, want)
		}
	}
}

// The client works against a server mounted under a path prefix.
func TestClientPrefix(t *testing.T) {
	fake := apitest.NewFakeVDisks()
	seedFake(fake)
	s := NewServer(fake, Options{Logger: slog.New(slog.DiscardHandler)})
	mux := http.NewServeMux()
	mux.Handle("/ovs/", http.StripPrefix("/ovs", s.Handler()))
	ts := httptest.NewServer(mux)
	defer ts.Close()
	infos, err := NewClient(ts.URL+"/ovs/", nil).List(context.Background())
	if err != nil || len(infos) != 2 {
		t.Fatalf("List = %v, %v", infos, err)
	}
}
