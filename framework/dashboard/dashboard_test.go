package dashboard

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, path string
		status             int
		ctype, contains    string
	}{
		{"page", "GET", "/ui/", 200, "text/html; charset=utf-8", `<script type="module" src="app.js">`},
		{"script", "GET", "/ui/app.js", 200, "text/javascript; charset=utf-8", "textContent"},
		{"module", "GET", "/ui/format.js", 200, "text/javascript; charset=utf-8", "export function rates"},
		{"style", "GET", "/ui/style.css", 200, "text/css; charset=utf-8", ":root"},
		{"icon", "GET", "/ui/icon.svg", 200, "image/svg+xml", "<svg"},
		{"head", "HEAD", "/ui/", 200, "text/html; charset=utf-8", ""},
		{"index by name is not a second page", "GET", "/ui/index.html", 404, "", ""},
		{"unknown file", "GET", "/ui/nope.js", 404, "", ""},
		{"no directory walk", "GET", "/ui/../go.mod", 404, "", ""},
		{"outside the prefix", "GET", "/other", 404, "", ""},
		{"not a read", "POST", "/ui/", 405, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d", rec.Code, tc.status)
			}
			// Every answer, errors included, carries the security headers.
			for k, want := range map[string]string{
				"Content-Security-Policy": CSP,
				"X-Content-Type-Options":  "nosniff",
				"X-Frame-Options":         "DENY",
			} {
				if got := rec.Header().Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if tc.ctype != "" && rec.Header().Get("Content-Type") != tc.ctype {
				t.Errorf("Content-Type %q, want %q", rec.Header().Get("Content-Type"), tc.ctype)
			}
			if !strings.Contains(rec.Body.String(), tc.contains) {
				t.Errorf("body does not contain %q", tc.contains)
			}
			if tc.method == "HEAD" && rec.Body.Len() != 0 {
				t.Errorf("HEAD answered with %d body bytes", rec.Body.Len())
			}
		})
	}
}

func TestHandlerRevalidates(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ui/app.js", nil))
	etag := rec.Header().Get("ETag")
	if etag == "" || rec.Header().Get("Cache-Control") != "no-cache" {
		t.Fatalf("ETag %q, Cache-Control %q", etag, rec.Header().Get("Cache-Control"))
	}
	for _, tc := range []struct {
		ifNoneMatch string
		status      int
	}{
		{etag, http.StatusNotModified},
		{`"other", ` + etag, http.StatusNotModified},
		{"W/" + etag, http.StatusNotModified},
		{`"other"`, http.StatusOK},
	} {
		req := httptest.NewRequest("GET", "/ui/app.js", nil)
		req.Header.Set("If-None-Match", tc.ifNoneMatch)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.status {
			t.Errorf("If-None-Match %s: status %d, want %d", tc.ifNoneMatch, rec.Code, tc.status)
		}
	}
}

// The page must run under its own CSP: no inline script, style or event
// handler attribute, nothing from another origin; and the scripts must
// put API data into the page as text only.
func TestAssetsFitTheCSP(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	inline := []*regexp.Regexp{
		regexp.MustCompile(`<script(?:[^>]*)>[^<]+</script>`), // inline script body
		regexp.MustCompile(`<style`),
		regexp.MustCompile(`\sstyle=`),
		regexp.MustCompile(`\son[a-z]+=`),
		regexp.MustCompile(`(?:src|href)="(?:https?:)?//`),
	}
	scriptSinks := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function`)
	for name, a := range h.files {
		body := string(a.body)
		switch {
		case name == "" || strings.HasSuffix(name, ".html"):
			for _, re := range inline {
				if m := re.FindString(body); m != "" {
					t.Errorf("%s: %q breaks the CSP", name, m)
				}
			}
		case strings.HasSuffix(name, ".js"):
			if m := scriptSinks.FindString(body); m != "" {
				t.Errorf("%s uses %s: data must go in as text", name, m)
			}
			if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
				t.Errorf("%s names another origin", name)
			}
		case strings.HasSuffix(name, ".css"):
			if strings.Contains(body, "@import") || strings.Contains(body, "url(") {
				t.Errorf("%s loads other resources", name)
			}
		}
	}
}
