package api

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/ovs-storage/ovs/framework/api/apitest"
)

// The dashboard (Options.UI) is served under /ui/ behind the same guard,
// "/" sends a browser there, and a link to it from another site loads it,
// while another site's requests (fetch, frames, forms) stay refused.
func TestUIRoutes(t *testing.T) {
	ui := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-UI", r.URL.Path)
		w.WriteHeader(http.StatusOK)
	})
	withUI := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.DiscardHandler), UI: ui})
	withoutUI := NewServer(apitest.NewFakeVDisks(), Options{Logger: slog.New(slog.DiscardHandler)})
	navigate := map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
	for _, tc := range []struct {
		name         string
		srv          *Server
		method, path string
		host         string
		header       map[string]string
		wantStatus   int
		wantUI       string // the path the UI handler saw
		wantLocation string
	}{
		{name: "page", srv: withUI, method: "GET", path: "/ui/", wantStatus: 200, wantUI: "/ui/"},
		{name: "asset", srv: withUI, method: "GET", path: "/ui/app.js", wantStatus: 200, wantUI: "/ui/app.js"},
		{name: "head", srv: withUI, method: "HEAD", path: "/ui/", wantStatus: 200, wantUI: "/ui/"},
		{name: "root redirects", srv: withUI, method: "GET", path: "/", wantStatus: 302, wantLocation: "/ui/"},
		{name: "no slash redirects", srv: withUI, method: "GET", path: "/ui", wantStatus: 307, wantLocation: "/ui/"},
		{name: "typed in the address bar", srv: withUI, method: "GET", path: "/ui/",
			header:     map[string]string{"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
			wantStatus: 200, wantUI: "/ui/"},
		{name: "link from another site", srv: withUI, method: "GET", path: "/ui/", header: navigate, wantStatus: 200, wantUI: "/ui/"},
		{name: "link from another site to the root", srv: withUI, method: "GET", path: "/", header: navigate,
			wantStatus: 302, wantLocation: "/ui/"},
		{name: "another site frames it", srv: withUI, method: "GET", path: "/ui/",
			header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}, wantStatus: 403},
		{name: "another site fetches it", srv: withUI, method: "GET", path: "/ui/app.js",
			header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, wantStatus: 403},
		{name: "another site navigates to the API", srv: withUI, method: "GET", path: "/api/v1/vdisks", header: navigate, wantStatus: 403},
		{name: "another site posts a form", srv: withUI, method: "POST", path: "/ui/", header: navigate, wantStatus: 403},
		{name: "rebinding host", srv: withUI, method: "GET", path: "/ui/", host: "evil.example", wantStatus: 403},
		{name: "not a read", srv: withUI, method: "POST", path: "/ui/",
			header: map[string]string{"Content-Type": "application/json"}, wantStatus: 405},
		{name: "without a UI", srv: withoutUI, method: "GET", path: "/ui/", wantStatus: 404},
		{name: "without a UI no redirect", srv: withoutUI, method: "GET", path: "/", wantStatus: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "http://127.0.0.1:8800"+tc.path, nil)
			if tc.host != "" {
				req.Host = tc.host
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			tc.srv.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if got := rec.Header().Get("X-UI"); got != tc.wantUI {
				t.Errorf("UI handler saw %q, want %q", got, tc.wantUI)
			}
			if got := rec.Header().Get("Location"); got != tc.wantLocation {
				t.Errorf("Location %q, want %q", got, tc.wantLocation)
			}
		})
	}
}
