package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

func TestGuard(t *testing.T) {
	tokens := NewTokenFile(filepath.Join(t.TempDir(), TokenFileName))
	good, err := CreateToken(tokens.path)
	if err != nil {
		t.Fatal(err)
	}
	admin := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	newServer := func(requireToken bool) *Server {
		return NewServer(apitest.NewFakeVDisks(), Options{
			Logger: slog.New(slog.DiscardHandler), AllowedHosts: []string{"ovs.example"},
			RequireToken: requireToken, Tokens: tokens,
			Mounts: map[string]http.Handler{"/api/v1/backend/": admin},
		})
	}
	const create = `{"name":"x","size":4096}`
	for _, tc := range []struct {
		name         string
		requireToken bool
		method, path string
		host         string
		header       map[string]string
		body         string
		wantStatus   int
		wantCode     string
	}{
		{name: "json create from the CLI", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json"}, wantStatus: 201},
		{name: "json with charset", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json; charset=utf-8"}, wantStatus: 201},
		{name: "text/plain post (a browser's simple request)", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "text/plain"}, wantStatus: 415, wantCode: CodeUnsupportedMediaType},
		{name: "form post", method: "POST", path: "/api/v1/vdisks", body: "name=x",
			header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, wantStatus: 415, wantCode: CodeUnsupportedMediaType},
		{name: "post without a body or type", method: "POST", path: "/api/v1/vdisks/a/sync",
			wantStatus: 415, wantCode: CodeUnsupportedMediaType},
		{name: "delete without a body", method: "DELETE", path: "/api/v1/vdisks/a", wantStatus: 404, wantCode: CodeNotFound}, // passes the guard
		{name: "cross-origin text/plain", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, wantStatus: 403, wantCode: CodeForbidden},
		{name: "cross-origin json", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, wantStatus: 403, wantCode: CodeForbidden},
		{name: "null origin", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json", "Origin": "null"}, wantStatus: 403, wantCode: CodeForbidden},
		{name: "same origin", method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json", "Origin": "http://127.0.0.1:8800"}, wantStatus: 201},
		{name: "cross-site fetch metadata", method: "GET", path: "/api/v1/vdisks",
			header: map[string]string{"Sec-Fetch-Site": "cross-site"}, wantStatus: 403, wantCode: CodeForbidden},
		{name: "rebound host", method: "GET", path: "/api/v1/vdisks", host: "evil.example:8800",
			wantStatus: 403, wantCode: CodeForbidden},
		{name: "rebound host on the admin mount", method: "POST", path: "/api/v1/backend/asds", host: "evil.example",
			header: map[string]string{"Content-Type": "application/json"}, body: `{"addr":"1.2.3.4:1"}`, wantStatus: 403, wantCode: CodeForbidden},
		{name: "text/plain on the admin mount", method: "POST", path: "/api/v1/backend/asds",
			header: map[string]string{"Content-Type": "text/plain"}, body: `{"addr":"1.2.3.4:1"}`, wantStatus: 415, wantCode: CodeUnsupportedMediaType},
		{name: "admin mount", method: "POST", path: "/api/v1/backend/asds",
			header: map[string]string{"Content-Type": "application/json"}, body: `{}`, wantStatus: 204},
		{name: "localhost", method: "GET", path: "/api/v1/vdisks", host: "localhost:8800", wantStatus: 200},
		{name: "ipv6 loopback", method: "GET", path: "/api/v1/vdisks", host: "[::1]:8800", wantStatus: 200},
		{name: "configured name", method: "GET", path: "/api/v1/vdisks", host: "OVS.example", wantStatus: 200},
		{name: "token required, none sent", requireToken: true, method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json"}, wantStatus: 401, wantCode: CodeUnauthorized},
		{name: "token required, wrong one", requireToken: true, method: "DELETE", path: "/api/v1/vdisks/a",
			header: map[string]string{"Authorization": "Bearer ovs_nope"}, wantStatus: 401, wantCode: CodeUnauthorized},
		{name: "token required, admin mount", requireToken: true, method: "POST", path: "/api/v1/backend/asds",
			header: map[string]string{"Content-Type": "application/json"}, body: `{}`, wantStatus: 401, wantCode: CodeUnauthorized},
		{name: "token required, good one", requireToken: true, method: "POST", path: "/api/v1/vdisks", body: create,
			header: map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + good}, wantStatus: 201},
		{name: "token required, reads need none", requireToken: true, method: "GET", path: "/api/v1/vdisks", wantStatus: 200},
		{name: "wrong token on loopback", method: "GET", path: "/api/v1/vdisks",
			header: map[string]string{"Authorization": "Bearer ovs_nope"}, wantStatus: 401, wantCode: CodeUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req := httptest.NewRequest(tc.method, tc.path, body)
			req.Host = "127.0.0.1:8800"
			if tc.host != "" {
				req.Host = tc.host
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			newServer(tc.requireToken).Handler().ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if tc.wantCode != "" && !strings.Contains(rec.Body.String(), `"code":"`+tc.wantCode+`"`) {
				t.Errorf("body %s, want code %s", rec.Body, tc.wantCode)
			}
		})
	}
}

func TestClassifyStorageErrors(t *testing.T) {
	for _, tc := range []struct {
		err        error
		wantStatus int
		wantCode   string
	}{
		{fmt.Errorf("snapshot a: write state.json: %w", &net.OpError{Err: syscall.ENOSPC}), 507, CodeInsufficientStorage},
		{fmt.Errorf("x: %w", syscall.EDQUOT), 507, CodeInsufficientStorage},
		{fmt.Errorf("create a: put: %w: 0 ASDs usable", ec.ErrInsufficientASDs), 503, CodeBackendUnavailable},
		{fmt.Errorf("read: %w", ec.ErrObjectUnavailable), 503, CodeBackendUnavailable},
		{fmt.Errorf("write past the end: %w", volumedriver.ErrOutOfRange), 400, CodeOutOfRange},
		{errors.New("boom"), 500, CodeInternal},
	} {
		status, code := classify(tc.err)
		if status != tc.wantStatus || code != tc.wantCode {
			t.Errorf("classify(%v) = %d %s, want %d %s", tc.err, status, code, tc.wantStatus, tc.wantCode)
		}
	}
}

// TestHealthAsksReady: the health check is 200 only while Ready passes.
func TestHealthAsksReady(t *testing.T) {
	var notReady error = fmt.Errorf("%w: 0 ASDs usable", ec.ErrInsufficientASDs)
	s := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.DiscardHandler),
		Ready: func(context.Context) error { return notReady }})
	s.SetReady(true)
	get := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, newAPIRequest("GET", "/api/v1/health", nil))
		return rec
	}
	if rec := get(); rec.Code != 503 || !strings.Contains(rec.Body.String(), "ASDs") {
		t.Errorf("health while the backend cannot place data: %d %s", rec.Code, rec.Body)
	}
	notReady = nil
	if rec := get(); rec.Code != 200 {
		t.Errorf("health once ready: %d %s", rec.Code, rec.Body)
	}
}

// TestRequestDeadline: a call that the driver does not finish gets a 504
// from the server's own deadline.
func TestRequestDeadline(t *testing.T) {
	s := NewServer(blockingVDisks{apitest.NewFakeVDisks()}, Options{Logger: slog.New(slog.DiscardHandler), RequestTimeout: 100 * time.Millisecond})
	rec := httptest.NewRecorder()
	start := time.Now()
	s.Handler().ServeHTTP(rec, newAPIRequest("GET", "/api/v1/vdisks", nil))
	if rec.Code != http.StatusGatewayTimeout || time.Since(start) > 5*time.Second {
		t.Errorf("blocked list: %d after %v: %s", rec.Code, time.Since(start), rec.Body)
	}
}

type blockingVDisks struct{ *apitest.FakeVDisks }

func (blockingVDisks) List(ctx context.Context) ([]volumedriver.VolumeInfo, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestSlowBodyAndConnectionLimit runs a real listener: a half-sent body
// is cut off after the body timeout, and connections over the cap get a
// 503 at once while the ones under it still work.
func TestSlowBodyAndConnectionLimit(t *testing.T) {
	s := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.DiscardHandler),
		BodyTimeout: 300 * time.Millisecond, MaxConns: 4})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer()
	go hs.Serve(s.Listener(l))
	defer hs.Close()
	addr := l.Addr().String()

	// A body that never finishes.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /api/v1/vdisks HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na", addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("half-sent body: no answer: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("half-sent body: %s", resp.Status)
	}
	c.Close()

	// Idle connections up to the cap, then one more.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	time.Sleep(50 * time.Millisecond) // the closed one is released
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	resp2, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/api/v1/vdisks")
	if err != nil {
		t.Fatalf("over the cap: %v (want a 503 answer)", err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), CodeTooManyConnections) {
		t.Errorf("over the cap: %s %s", resp2.Status, b)
	}
	idle[0].Close()
	idle = idle[1:]
	waitUntil(t, func() bool {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/api/v1/vdisks")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
