package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults for the request limits in Options.
const (
	DefaultRequestTimeout     = time.Minute
	DefaultLongRequestTimeout = 10 * time.Minute
	DefaultBodyTimeout        = 10 * time.Second
	DefaultReadHeaderTimeout  = 10 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultMaxConns           = 256
	maxHeaderBytes            = 64 << 10
)

// TokenVerifier tells whether an API token is valid (see TokenFile).
type TokenVerifier interface {
	Verify(token string) bool
}

// guard is the middleware every request passes before its handler: it
// refuses what a browser could be tricked into sending (a foreign Host
// after DNS rebinding, a cross-origin request, a "simple" text/plain POST),
// mutating calls without a valid token when one is required, and request
// bodies that are too large or arrive too slowly; then it gives the
// request its deadline.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkHost(r); err != nil {
			s.writeError(w, r, err, "")
			return
		}
		if err := checkOrigin(r); err != nil {
			s.writeError(w, r, err, "")
			return
		}
		mutating := isMutating(r.Method)
		if err := checkContentType(r, mutating); err != nil {
			s.writeError(w, r, err, "")
			return
		}
		if err := s.checkToken(r, mutating); err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ovs"`)
			s.writeError(w, r, err, "")
			return
		}
		if err := s.readBody(w, r); err != nil {
			w.Header().Set("Connection", "close")
			s.writeError(w, r, err, "")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.timeoutFor(r))
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

func isMutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

func forbidden(format string, args ...any) *httpError {
	return &httpError{http.StatusForbidden, CodeForbidden, fmt.Sprintf(format, args...)}
}

// checkHost refuses a Host the API is not known by. A web page whose name
// an attacker re-points at this machine (DNS rebinding) sends its own
// name as Host; IP literals, localhost and the configured names are safe.
func (s *Server) checkHost(r *http.Request) error {
	host := r.Host
	if host == "" {
		return nil
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.Trim(host, "[]"))
	if net.ParseIP(host) != nil || host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return nil
	}
	for _, h := range s.allowedHosts {
		if strings.EqualFold(h, host) {
			return nil
		}
	}
	return forbidden("Host %q is not a name of this API (allowed: IP addresses, localhost%s); "+
		"add it with --api-host if the API is reached by that name", r.Host, listNames(s.allowedHosts))
}

func listNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return ", " + strings.Join(names, ", ")
}

// checkOrigin refuses requests a browser sends on behalf of another
// origin. Non-browser clients send no Origin.
func checkOrigin(r *http.Request) error {
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "", "same-origin", "none":
	default:
		if !isPageLoad(r) {
			return forbidden("cross-origin request refused (Sec-Fetch-Site: %s)", site)
		}
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || origin == "null" || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return forbidden("cross-origin request from %q refused: the API serves only its own origin", origin)
	}
	return nil
}

// isPageLoad tells a top-level page load of the dashboard (a link to it
// on another site, say) from a request a page makes: the load only
// shows the page, whose own calls are then same-origin. A frame is not a
// page load (the dashboard also refuses to be framed), nor is anything
// under /api/.
func isPageLoad(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.Header.Get("Sec-Fetch-Mode") == "navigate" && r.Header.Get("Sec-Fetch-Dest") == "document" &&
		!strings.HasPrefix(r.URL.Path, "/api/")
}

// checkContentType requires application/json on every request with a body
// and on every mutating request: a browser sends other types (text/plain,
// forms) cross-origin without asking, but never application/json.
func checkContentType(r *http.Request, mutating bool) error {
	hasBody := r.ContentLength > 0 || r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody
	ct := r.Header.Get("Content-Type")
	if !hasBody && (!mutating || r.Method == http.MethodDelete && ct == "") {
		// A DELETE without a body: browsers cannot send one cross-origin
		// without a preflight, which this API never approves.
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		if ct == "" {
			ct = "none"
		}
		return &httpError{http.StatusUnsupportedMediaType, CodeUnsupportedMediaType,
			fmt.Sprintf("Content-Type must be application/json (got %s)", ct)}
	}
	return nil
}

// checkToken verifies the bearer token: always when one is sent, and on
// mutating calls when the server requires one.
func (s *Server) checkToken(r *http.Request, mutating bool) error {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		if s.requireToken && mutating {
			return &httpError{http.StatusUnauthorized, CodeUnauthorized,
				"this call needs an API token (Authorization: Bearer ...): create one with `ovs token create` and pass it in $OVS_TOKEN"}
		}
		return nil
	}
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || s.tokens == nil || !s.tokens.Verify(strings.TrimSpace(token)) {
		return &httpError{http.StatusUnauthorized, CodeUnauthorized, "invalid API token"}
	}
	return nil
}

// readBody reads the whole request body, within the size limit and the
// body timeout, before the handler runs: a client that sends its body
// slowly or never finishes it is cut off instead of holding a connection
// and a goroutine forever.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Now().Add(s.bodyTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err == nil {
		// The deadline must not outlive the body: the server's
		// background read would hit it and cancel the request. On an
		// error it stays, so that the server gives up on the rest of
		// the body at once and closes the connection.
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		var mbe *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &mbe):
			return &httpError{http.StatusRequestEntityTooLarge, CodeTooLarge,
				fmt.Sprintf("request body is larger than %s", FormatSize(mbe.Limit))}
		case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
			return &httpError{http.StatusRequestTimeout, CodeTimeout,
				fmt.Sprintf("request body not received within %v", s.bodyTimeout)}
		}
		return badRequest("reading the request body: %v", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.ContentLength = int64(len(data))
	return nil
}

// timeoutFor is the deadline of a request: long for the operations that
// wait for uploads or copy data, short for the rest.
func (s *Server) timeoutFor(r *http.Request) time.Duration {
	p := r.URL.Path
	for _, suffix := range []string{"/sync", "/rollback", "/clones", "/flatten", "/template", "/scrub", "/move", "/adopt"} {
		if strings.HasSuffix(p, suffix) {
			return s.longTimeout
		}
	}
	if s.mountFor(p) != nil {
		return s.longTimeout
	}
	return s.timeout
}

// mountFor returns the mounted handler serving path p, if any.
func (s *Server) mountFor(p string) http.Handler {
	for prefix, h := range s.mounts {
		if strings.HasPrefix(p, prefix) {
			return h
		}
	}
	return nil
}
