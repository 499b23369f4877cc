package node

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/secret"
)

// apiOptions are the REST API's options: limits from the config, and the
// token store in DATA. A token is required on mutating calls when the API
// listens beyond loopback (or with api_require_token); DATA gets a first
// token so that the local CLI works out of the box.
func apiOptions(cfg Config, addr net.Addr, log *slog.Logger) (api.Options, error) {
	tokenPath := filepath.Join(cfg.Data, api.TokenFileName)
	if tok, err := api.ReadToken(tokenPath); err != nil {
		return api.Options{}, err
	} else if tok == "" {
		if _, err := api.CreateToken(tokenPath); err != nil {
			return api.Options{}, err
		}
	}
	require := cfg.Limits.APIRequireToken
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		require = true
	}
	if require {
		log.Info("the REST API requires a token on mutating calls", "tokens", tokenPath)
	}
	timeout := cfg.Limits.APITimeout
	if timeout <= 0 {
		timeout = api.DefaultRequestTimeout
	}
	return api.Options{
		Logger:             log.With("component", "api"),
		RequestTimeout:     timeout,
		LongRequestTimeout: 10 * timeout,
		MaxConns:           cfg.Limits.APIMaxConns,
		AllowedHosts:       cfg.Limits.APIHosts,
		RequireToken:       require,
		Tokens:             api.NewTokenFile(tokenPath),
	}, nil
}

// backendAdminPurpose keys the token of the backend admin API.
const backendAdminPurpose = "backend-admin"

// BackendAdminToken is the bearer token /api/v1/backend/... takes.
func BackendAdminToken(sec *secret.Secret) string { return sec.Token(backendAdminPurpose) }

// NodeAPIToken is the token nodes (and the CLI holding the cluster
// secret) present to any node's REST API.
func NodeAPIToken(sec *secret.Secret) string { return sec.Token(nodeAPIPurpose) }

// backendAdminMount serves the backend's admin API (status, ASDs,
// presets, repair, scrub) under /api/v1/backend/, as `ovs backend` uses
// it: behind the REST API's checks (Host, Origin, JSON, deadlines), and
// it takes the cluster's admin token and nothing else: adding an ASD
// decides where fragments go.
func backendAdminMount(admin http.Handler, sec *secret.Secret) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !checkBearer(r, sec, backendAdminPurpose) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("WWW-Authenticate", `Bearer realm="ovs backend admin"`)
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"error":"the backend admin API needs the cluster's admin token (Authorization: Bearer ...; ovs backend token prints it)","code":"unauthorized"}`)
			return
		}
		r2 := r.Clone(r.Context())
		// /api/v1/backend/v1/X (the admin client) and /api/v1/backend/X
		// both reach /v1/X.
		p := strings.TrimPrefix(r.URL.Path, "/api/v1/backend")
		if !strings.HasPrefix(p, "/v1/") {
			p = "/v1" + p
		}
		r2.URL.Path = p
		r2.URL.RawPath = ""
		admin.ServeHTTP(w, r2)
	})
}

// anyToken accepts the API's own tokens and the cluster's tokens of the
// given purposes.
type anyToken struct {
	api      api.TokenVerifier
	sec      *secret.Secret
	purposes []string
}

func (a anyToken) Verify(tok string) bool {
	for _, p := range a.purposes {
		if a.sec.CheckToken(p, tok) {
			return true
		}
	}
	return a.api != nil && a.api.Verify(tok)
}

func checkBearer(r *http.Request, sec *secret.Secret, purpose string) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && sec.CheckToken(purpose, strings.TrimSpace(tok))
}
