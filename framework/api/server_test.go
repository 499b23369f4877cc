package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/volumedriver"
)

var (
	_ VDisks = (*apitest.FakeVDisks)(nil)
	_ VDisks = (*volumedriver.Driver)(nil) // the real engine fits the interface
)

// panickyVDisks panics in List, to test the server's recovery.
type panickyVDisks struct{ *apitest.FakeVDisks }

func (panickyVDisks) List(context.Context) ([]volumedriver.VolumeInfo, error) { panic("boom") }

func newTestServer(t *testing.T, vd VDisks) (*Server, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	s := NewServer(vd, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	s.SetReady(true)
	return s, &logs
}

// seed creates vdisks a (1 GiB) and b (2 GiB, one client) in fake.
func seed(t *testing.T, fake *apitest.FakeVDisks) {
	t.Helper()
	ctx := context.Background()
	if _, err := fake.Create(ctx, "b", 2*GiB, volumedriver.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := fake.Create(ctx, "a", GiB, volumedriver.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fake.SetClients("b", 1)
}

// serverTest is one request to a Server over a FakeVDisks.
type serverTest struct {
	name       string
	setup      func(*testing.T, *apitest.FakeVDisks) // nil means seed
	method     string
	path       string
	body       string
	wantStatus int
	wantCode   string // error code for non-2xx
	wantMsg    string // substring of the error message
	check      func(t *testing.T, resp *http.Response, body []byte, fake *apitest.FakeVDisks)
}

func TestServer(t *testing.T) {
	runServerTests(t, []serverTest{
		{
			name: "list", method: "GET", path: "/api/v1/vdisks", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var infos []volumedriver.VolumeInfo
				mustJSON(t, body, &infos)
				if len(infos) != 2 || infos[0].Name != "a" || infos[1].Name != "b" {
					t.Errorf("list = %+v; want a, b in order", infos)
				}
			},
		},
		{
			name: "list empty is an array", setup: func(*testing.T, *apitest.FakeVDisks) {}, method: "GET", path: "/api/v1/vdisks", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				if strings.TrimSpace(string(body)) != "[]" {
					t.Errorf("body = %s; want []", body)
				}
			},
		},
		{
			name: "list failure is 500 with the message", method: "GET", path: "/api/v1/vdisks",
			setup: func(_ *testing.T, f *apitest.FakeVDisks) {
				f.FailWith("List", errors.New("metadata store unreachable"))
			},
			wantStatus: 500, wantCode: CodeInternal, wantMsg: "metadata store unreachable",
		},
		{
			name: "create with integer size", method: "POST", path: "/api/v1/vdisks",
			body:       `{"name":"c","size":1073741824}`,
			wantStatus: 201,
			check: func(t *testing.T, resp *http.Response, body []byte, fake *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Name != "c" || info.Size != GiB || info.ClusterSize != 4096 {
					t.Errorf("info = %+v", info)
				}
				if loc := resp.Header.Get("Location"); loc != "/api/v1/vdisks/c" {
					t.Errorf("Location = %q", loc)
				}
			},
		},
		{
			name: "create with string sizes and options", method: "POST", path: "/api/v1/vdisks",
			body:       `{"name":"c","size":"10GiB","cluster_size":"8KiB","sco_multiplier":512}`,
			wantStatus: 201,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				calls := fake.Calls()
				last := calls[len(calls)-1]
				want := apitest.Call{Method: "Create", Name: "c", Size: 10 * GiB, Opts: volumedriver.CreateOptions{ClusterSize: 8192, SCOMultiplier: 512}}
				if last != want {
					t.Errorf("call = %+v; want %+v", last, want)
				}
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.SCOSize != 4*MiB {
					t.Errorf("sco size = %d", info.SCOSize)
				}
			},
		},
		{
			name: "create with fractional size", method: "POST", path: "/api/v1/vdisks",
			body: `{"name":"c","size":"1.5 GiB"}`, wantStatus: 201,
		},
		{
			name: "create duplicate", method: "POST", path: "/api/v1/vdisks", body: `{"name":"a","size":"1GiB"}`,
			wantStatus: 409, wantCode: CodeAlreadyExists, wantMsg: `vdisk "a" already exists`,
		},
		{
			name: "create bare sentinel gets the name", method: "POST", path: "/api/v1/vdisks", body: `{"name":"z","size":"1GiB"}`,
			setup:      func(_ *testing.T, f *apitest.FakeVDisks) { f.FailWith("Create", volumedriver.ErrExists) },
			wantStatus: 409, wantCode: CodeAlreadyExists, wantMsg: `vdisk "z" already exists`,
		},
		{
			name: "create driver rejects size", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":1000}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: "multiple of the cluster size",
		},
		{
			name: "create bad size unit", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":"10XB"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `invalid size "10XB": unknown unit "XB"`,
		},
		{
			name: "create negative size", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":-5}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"size" must not be negative`,
		},
		{
			name: "create zero size", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":0}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"size" must be greater than zero`,
		},
		{
			name: "create fractional number size", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":1.5e9}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `whole number of bytes`,
		},
		{
			name: "create huge size", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":99999999999999999999}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `too large`,
		},
		{
			name: "create size of wrong type", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":true}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"size" must be a number of bytes or a string`,
		},
		{
			name: "create without size", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"size" is required`,
		},
		{
			name: "create without name", method: "POST", path: "/api/v1/vdisks", body: `{"size":"1GiB"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"name" is required`,
		},
		{
			name: "create name of wrong type", method: "POST", path: "/api/v1/vdisks", body: `{"name":5,"size":"1GiB"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `field "name" must be a string, not a JSON number`,
		},
		{
			name: "create negative sco multiplier", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":"1GiB","sco_multiplier":-1}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"sco_multiplier" must not be negative`,
		},
		{
			name: "create unknown field", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":"1GiB","colour":"red"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `unknown field "colour"`,
		},
		{
			name: "create malformed JSON", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c",}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `not valid JSON`,
		},
		{
			name: "create truncated JSON", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c"`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `ends too early`,
		},
		{
			name: "create empty body", method: "POST", path: "/api/v1/vdisks",
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `request body is empty`,
		},
		{
			name: "create array body", method: "POST", path: "/api/v1/vdisks", body: `[1]`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `must be a JSON object, not a JSON array`,
		},
		{
			name: "create trailing data", method: "POST", path: "/api/v1/vdisks", body: `{"name":"c","size":"1GiB"} {}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `single JSON object`,
		},
		{
			name: "create body too large", method: "POST", path: "/api/v1/vdisks",
			body:       `{"name":"` + strings.Repeat("x", 2<<20) + `","size":"1GiB"}`,
			wantStatus: 413, wantCode: CodeTooLarge, wantMsg: `larger than 1 MiB`,
		},
		{
			name: "info", method: "GET", path: "/api/v1/vdisks/a", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var m map[string]any
				mustJSON(t, body, &m)
				for _, k := range []string{"name", "id", "size", "cluster_size", "sco_size", "created_at", "clients", "written_bytes", "pending_upload_bytes", "write_buffer_bytes"} {
					if _, ok := m[k]; !ok {
						t.Errorf("field %q missing from %s", k, body)
					}
				}
			},
		},
		{
			name: "info unknown", method: "GET", path: "/api/v1/vdisks/nope",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "nope" not found`,
		},
		{
			name: "info escaped name", method: "GET", path: "/api/v1/vdisks/a%20b",
			wantStatus: 404, wantCode: CodeNotFound, wantMsg: `vdisk "a b" not found`,
		},
		{
			name: "delete", method: "DELETE", path: "/api/v1/vdisks/a", wantStatus: 204,
			check: func(t *testing.T, _ *http.Response, body []byte, fake *apitest.FakeVDisks) {
				if len(body) != 0 {
					t.Errorf("204 with body %q", body)
				}
				if _, err := fake.Info(context.Background(), "a"); !errors.Is(err, volumedriver.ErrNotFound) {
					t.Errorf("a still there: %v", err)
				}
			},
		},
		{
			name: "delete busy", method: "DELETE", path: "/api/v1/vdisks/b",
			wantStatus: 409, wantCode: CodeBusy, wantMsg: `vdisk "b" is in use by 1 client(s)`,
		},
		{
			name: "delete busy with force", method: "DELETE", path: "/api/v1/vdisks/b?force=true", wantStatus: 204,
		},
		{
			name: "delete bad force", method: "DELETE", path: "/api/v1/vdisks/b?force=yes",
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `invalid value "yes" for query parameter "force"`,
		},
		{
			name: "delete unknown", method: "DELETE", path: "/api/v1/vdisks/nope",
			wantStatus: 404, wantCode: CodeNotFound,
		},
		{
			name: "resize", method: "POST", path: "/api/v1/vdisks/a/resize", body: `{"size":"2GiB"}`, wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Size != 2*GiB {
					t.Errorf("size = %d", info.Size)
				}
			},
		},
		{
			name: "resize with PATCH", method: "PATCH", path: "/api/v1/vdisks/a", body: `{"size":3221225472}`, wantStatus: 200,
		},
		{
			name: "resize shrink", method: "POST", path: "/api/v1/vdisks/b/resize", body: `{"size":"1GiB"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `cannot shrink vdisk "b"`,
		},
		{
			name: "resize unknown", method: "POST", path: "/api/v1/vdisks/nope/resize", body: `{"size":"1GiB"}`,
			wantStatus: 404, wantCode: CodeNotFound,
		},
		{
			name: "resize without size", method: "PATCH", path: "/api/v1/vdisks/a", body: `{}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `"size" is required`,
		},
		{
			name: "resize unknown field", method: "PATCH", path: "/api/v1/vdisks/a", body: `{"size":"2GiB","name":"x"}`,
			wantStatus: 400, wantCode: CodeInvalidArgument, wantMsg: `unknown field "name"`,
		},
		{
			name: "sync", method: "POST", path: "/api/v1/vdisks/a/sync", wantStatus: 200,
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.SetPending("a", 100, 50)
			},
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				var info volumedriver.VolumeInfo
				mustJSON(t, body, &info)
				if info.Name != "a" || info.PendingUploadBytes != 0 || info.WrittenBytes != 100 {
					t.Errorf("info = %+v", info)
				}
			},
		},
		{
			name: "sync info fails afterwards", method: "POST", path: "/api/v1/vdisks/a/sync", wantStatus: 200,
			setup: func(t *testing.T, f *apitest.FakeVDisks) {
				seed(t, f)
				f.FailWith("Info", volumedriver.ErrNotFound)
			},
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				if strings.TrimSpace(string(body)) != "{}" {
					t.Errorf("body = %s; want {}", body)
				}
			},
		},
		{
			name: "sync unknown", method: "POST", path: "/api/v1/vdisks/nope/sync",
			wantStatus: 404, wantCode: CodeNotFound,
		},
		{
			name: "sync closed", method: "POST", path: "/api/v1/vdisks/a/sync",
			setup:      func(t *testing.T, f *apitest.FakeVDisks) { seed(t, f); f.FailWith("Sync", volumedriver.ErrClosed) },
			wantStatus: 503, wantCode: CodeClosed, wantMsg: `vdisk "a" is closed`,
		},
		{
			name: "unknown route", method: "GET", path: "/api/v1/nothing",
			wantStatus: 404, wantCode: CodeUnknownRoute, wantMsg: "no such API endpoint: GET /api/v1/nothing",
		},
		{
			name: "empty vdisk name", method: "GET", path: "/api/v1/vdisks/",
			wantStatus: 404, wantCode: CodeUnknownRoute,
		},
		{
			name: "root", method: "GET", path: "/",
			wantStatus: 404, wantCode: CodeUnknownRoute,
		},
		{
			name: "wrong method on collection", method: "PUT", path: "/api/v1/vdisks",
			wantStatus: 405, wantCode: CodeMethodNotAllowed, wantMsg: "method PUT is not allowed on /api/v1/vdisks",
			check: func(t *testing.T, resp *http.Response, _ []byte, _ *apitest.FakeVDisks) {
				if allow := resp.Header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "POST") {
					t.Errorf("Allow = %q", allow)
				}
			},
		},
		{
			name: "wrong method on sync", method: "GET", path: "/api/v1/vdisks/a/sync",
			wantStatus: 405, wantCode: CodeMethodNotAllowed,
		},
		{
			name: "health", method: "GET", path: "/api/v1/health", wantStatus: 200,
			check: func(t *testing.T, _ *http.Response, body []byte, _ *apitest.FakeVDisks) {
				if strings.TrimSpace(string(body)) != `{"status":"ok"}` {
					t.Errorf("body = %s", body)
				}
			},
		},
	})
}

func runServerTests(t *testing.T, tests []serverTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := apitest.NewFakeVDisks()
			if tt.setup != nil {
				tt.setup(t, fake)
			} else {
				seed(t, fake)
			}
			s, _ := newTestServer(t, fake)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req := newAPIRequest(tt.method, tt.path, body)
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			resp := rec.Result()
			got := rec.Body.Bytes()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d; want %d; body %s", resp.StatusCode, tt.wantStatus, got)
			}
			if resp.StatusCode != http.StatusNoContent {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q", ct)
				}
			}
			if tt.wantStatus >= 300 {
				var er ErrorResponse
				mustJSON(t, got, &er)
				if er.Code != tt.wantCode {
					t.Errorf("code = %q; want %q (message %q)", er.Code, tt.wantCode, er.Error)
				}
				if er.Error == "" || !strings.Contains(er.Error, tt.wantMsg) {
					t.Errorf("message = %q; want it to contain %q", er.Error, tt.wantMsg)
				}
			}
			if tt.check != nil {
				tt.check(t, resp, got, fake)
			}
		})
	}
}

func TestServerHealthBeforeReady(t *testing.T) {
	s := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.DiscardHandler)})
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, newAPIRequest("GET", "/api/v1/health", nil))
		var h HealthResponse
		mustJSON(t, rec.Body.Bytes(), &h)
		return rec.Code, h.Status
	}
	if code, status := get(); code != 503 || status != "starting" {
		t.Errorf("before ready: %d %q; want 503 starting", code, status)
	}
	s.SetReady(true)
	if code, status := get(); code != 200 || status != "ok" {
		t.Errorf("after ready: %d %q; want 200 ok", code, status)
	}
	s.SetReady(false)
	if code, _ := get(); code != 503 {
		t.Errorf("after unready: %d; want 503", code)
	}
}

func TestServerLogs(t *testing.T) {
	fake := apitest.NewFakeVDisks()
	fake.FailWith("List", errors.New("disk on fire"))
	s, logs := newTestServer(t, fake)
	for _, path := range []string{"/api/v1/health", "/api/v1/vdisks"} {
		s.Handler().ServeHTTP(httptest.NewRecorder(), newAPIRequest("GET", path, nil))
	}
	out := logs.String()
	for _, want := range []string{
		`level=DEBUG msg="api: request" method=GET path=/api/v1/health status=200`,
		`level=ERROR msg="api: request failed" method=GET path=/api/v1/vdisks err="disk on fire"`,
		`level=DEBUG msg="api: request" method=GET path=/api/v1/vdisks status=500`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
}

func TestServerRecoversPanics(t *testing.T) {
	s, logs := newTestServer(t, panickyVDisks{apitest.NewFakeVDisks()})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, newAPIRequest("GET", "/api/v1/vdisks", nil))
	if rec.Code != 500 {
		t.Fatalf("status = %d", rec.Code)
	}
	var er ErrorResponse
	mustJSON(t, rec.Body.Bytes(), &er)
	if er.Code != CodeInternal || strings.Contains(er.Error, "boom") {
		t.Errorf("error = %+v; want internal without the panic value", er)
	}
	if !strings.Contains(logs.String(), "panic=boom") {
		t.Errorf("panic not logged:\n%s", logs)
	}
}

// The request's context reaches the driver: a canceled request does not
// run the operation.
func TestServerPassesRequestContext(t *testing.T) {
	fake := apitest.NewFakeVDisks()
	s, _ := newTestServer(t, fake)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, newAPIRequest("POST", "/api/v1/vdisks", strings.NewReader(`{"name":"a","size":4096}`)).WithContext(ctx))
	var er ErrorResponse
	mustJSON(t, rec.Body.Bytes(), &er)
	if rec.Code != 503 || er.Code != CodeCanceled {
		t.Errorf("status %d code %q; want 503 canceled", rec.Code, er.Code)
	}
	if _, err := fake.Info(context.Background(), "a"); !errors.Is(err, volumedriver.ErrNotFound) {
		t.Errorf("vdisk created despite canceled context: %v", err)
	}
}

func TestServerMaxBodyOption(t *testing.T) {
	s := NewServer(apitest.NewFakeVDisks(), Options{MaxBodyBytes: 16, Logger: slog.New(slog.DiscardHandler)})
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, newAPIRequest("POST", "/api/v1/vdisks", strings.NewReader(`{"name":"abcdefghijkl","size":4096}`)))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("status = %d; want 413", rec.Code)
	}
}

func mustJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decoding %s: %v", data, err)
	}
}

// newAPIRequest is httptest.NewRequest as the CLI sends it: to a loopback
// Host, and with Content-Type application/json on mutating calls.
func newAPIRequest(method, target string, body io.Reader) *http.Request {
	req := httptest.NewRequest(method, target, body)
	req.Host = "127.0.0.1:8800"
	if isMutating(method) && method != http.MethodDelete || body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}
