// Package dashboard is OVS's web UI: plain HTML, CSS and JavaScript
// modules embedded in the binary and served by the REST API under /ui/.
// The page talks to the same API as the CLI (same-origin fetch, JSON
// bodies, an optional bearer token kept in sessionStorage), so it needs no
// endpoint of its own and no build step.
//
// Every response carries a Content-Security-Policy that allows only this
// origin's scripts, styles and connections and no framing, so that data
// the page shows (vdisk names, error messages) can never run as code even
// if a bug inserted it as markup; the scripts insert it as text.
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
)

// Prefix is the path the dashboard is served under.
const Prefix = "/ui/"

//go:embed assets
var assets embed.FS

// CSP is the Content-Security-Policy of every dashboard response: this
// origin only, no inline script or style, no plugins, no framing.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the dashboard's files for paths under Prefix; "/ui/"
// itself is the page. It serves GET and HEAD only; anything else is the
// caller's router's business (the API answers it with JSON).
type Handler struct {
	files map[string]asset // by path below Prefix; "" is index.html
}

// New returns the dashboard handler. It fails only if the embedded files
// are unreadable, which is a build error.
func New() (*Handler, error) {
	h := &Handler{files: map[string]asset{}}
	err := fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := assets.ReadFile(p)
		if err != nil {
			return fmt.Errorf("dashboard: reading %s: %w", p, err)
		}
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = "application/octet-stream"
		}
		// The host's mime table may be missing or say something else for
		// .js; a module script must be served as JavaScript.
		switch path.Ext(p) {
		case ".js":
			ct = "text/javascript; charset=utf-8"
		case ".html":
			ct = "text/html; charset=utf-8"
		case ".css":
			ct = "text/css; charset=utf-8"
		case ".svg":
			ct = "image/svg+xml"
		}
		sum := sha256.Sum256(body)
		name := strings.TrimPrefix(p, "assets/")
		if name == "index.html" {
			name = ""
		}
		h.files[name] = asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, ok := h.files[""]; !ok {
		return nil, fmt.Errorf("dashboard: no index.html among the embedded assets")
	}
	return h, nil
}

// ServeHTTP serves one embedded file with the security headers.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	setSecurityHeaders(hdr)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, Prefix)
	a, found := h.files[name]
	if !ok || !found {
		http.Error(w, "no such dashboard file", http.StatusNotFound)
		return
	}
	hdr.Set("Content-Type", a.contentType)
	// The files change only with the binary: revalidate each time (an
	// upgraded node must not run yesterday's script against today's API),
	// which the ETag makes a 304.
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("ETag", a.etag)
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatches(match, a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hdr.Set("Content-Length", fmt.Sprint(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(a.body)
	}
}

func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// setSecurityHeaders sets what every dashboard response carries, errors
// included.
func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}
