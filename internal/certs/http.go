package certs

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// acmeChallengePath prefixes ACME HTTP-01 challenge requests (RFC 8555 8.3).
const acmeChallengePath = "/.well-known/acme-challenge/"

// HTTPHandler wraps the edge's plain-HTTP handler: it answers ACME HTTP-01
// challenges for custom domains and, when the server serves HTTPS,
// redirects requests for apps whose release sets force_https (308, so the
// method and body are kept). Challenge paths are never redirected.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.issuer != nil && m.issuer.HandleHTTPChallenge(w, r) {
			return
		}
		if m.cfg.HTTPSPort != 0 && !strings.HasPrefix(r.URL.Path, acmeChallengePath) {
			if app := m.cfg.Router.App(r.Host); app != "" && m.force.get(r.Context(), app) {
				http.Redirect(w, r, httpsURL(r, m.cfg.HTTPSPort), http.StatusPermanentRedirect)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// httpsURL is r's URL on the HTTPS listener at port: same host, same path
// and query, the port spelled out unless it is 443.
func httpsURL(r *http.Request, port int) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	switch {
	case port != 443:
		host = net.JoinHostPort(host, strconv.Itoa(port))
	case strings.Contains(host, ":"):
		host = "[" + host + "]"
	}
	return "https://" + host + r.URL.RequestURI()
}

// forceTTL bounds how stale a cached force_https setting may be after a
// deploy changes it.
const forceTTL = time.Second

// forceCache remembers for a short while whether each app's current
// release forces HTTPS, so plain-HTTP requests do not query the store each.
type forceCache struct {
	apps Apps
	mu   sync.Mutex
	m    map[string]forced
}

type forced struct {
	force bool
	at    time.Time
}

func (f *forceCache) get(ctx context.Context, app string) bool {
	now := time.Now()
	f.mu.Lock()
	e, ok := f.m[app]
	f.mu.Unlock()
	if ok && now.Sub(e.at) < forceTTL {
		return e.force
	}
	force := false
	if a, err := f.apps.App(ctx, app); err == nil && a.Release > 0 {
		if rel, err := f.apps.Release(ctx, app, a.Release); err == nil {
			force = rel.Config.ForceHTTPS
		}
	}
	f.mu.Lock()
	// Hosts name apps that may not exist: keep the map bounded.
	if f.m == nil || len(f.m) > 10000 {
		f.m = map[string]forced{}
	}
	f.m[app] = forced{force: force, at: now}
	f.mu.Unlock()
	return force
}
