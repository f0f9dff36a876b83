package certs

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/pier-dev/pier/internal/pier"
)

// fakeStore is an in-memory Store and Apps.
type fakeStore struct {
	mu     sync.Mutex
	certs  map[string]pier.Cert
	apps   map[string]pier.RunConfig // app -> config of its current release
	events []string
}

func newFakeStore(apps map[string]pier.RunConfig) *fakeStore {
	return &fakeStore{certs: map[string]pier.Cert{}, apps: apps}
}

func (f *fakeStore) CreateCert(ctx context.Context, c pier.Cert) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.certs[c.Domain]; ok {
		return pier.Errorf(pier.Conflict, "taken")
	}
	if _, ok := f.apps[c.App]; !ok {
		return pier.Errorf(pier.NotFound, "no app")
	}
	f.certs[c.Domain] = c
	return nil
}

func (f *fakeStore) DeleteCert(ctx context.Context, domain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.certs[domain]; !ok {
		return pier.Errorf(pier.NotFound, "no domain")
	}
	delete(f.certs, domain)
	return nil
}

func (f *fakeStore) Certs(ctx context.Context) ([]pier.Cert, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []pier.Cert
	for _, c := range f.certs {
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeStore) AddEvent(ctx context.Context, app, typ, msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, app+" "+typ)
	return nil
}

func (f *fakeStore) App(ctx context.Context, name string) (pier.App, error) {
	if _, ok := f.apps[name]; !ok {
		return pier.App{}, pier.Errorf(pier.NotFound, "no app %s", name)
	}
	return pier.App{Name: name, Release: 1}, nil
}

func (f *fakeStore) Release(ctx context.Context, app string, v int) (pier.Release, error) {
	return pier.Release{App: app, Version: v, Config: f.apps[app]}, nil
}

// fakeRouter routes <app>.localhost and the custom domains it is given.
type fakeRouter struct {
	mu      sync.Mutex
	domains map[string]string
}

func (r *fakeRouter) SetDomains(d map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.domains = d
}

func (r *fakeRouter) App(host string) string {
	host, _, _ = strings.Cut(host, ":")
	r.mu.Lock()
	defer r.mu.Unlock()
	if app, ok := r.domains[host]; ok {
		return app
	}
	app, _ := strings.CutSuffix(host, ".localhost")
	return app
}

// fakeCA records the names it is asked to certify.
type fakeCA struct{ asked []string }

func (c *fakeCA) ServerCertificate(names ...string) (*tls.Certificate, error) {
	c.asked = append(c.asked, names...)
	return &tls.Certificate{}, nil
}

func (c *fakeCA) AnchorsPEM() []byte { return []byte("PEM") }

func open(t *testing.T, httpsPort int, st *fakeStore, ca LocalCA) (*Manager, *fakeRouter) {
	t.Helper()
	r := &fakeRouter{}
	// Not t.TempDir: certmagic's background obtain attempts (against a CA
	// that is not there) may still write to it after Close.
	dir, err := os.MkdirTemp("", "pier-certs-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m, err := Open(context.Background(), Config{Dir: dir, Domain: "localhost", HTTPSPort: httpsPort, HTTPAddr: "127.0.0.1:1",
		ACMECA: "https://127.0.0.1:1/dir", LocalCA: ca, Store: st, Apps: st, Router: r, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, r
}

func TestRedirects(t *testing.T) {
	st := newFakeStore(map[string]pier.RunConfig{"secure": {ForceHTTPS: true}, "plain": {}})
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") })
	tests := []struct {
		name      string
		httpsPort int
		method    string
		host, uri string
		wantCode  int
		wantLoc   string
	}{
		{"force", 8443, "GET", "secure.localhost:8080", "/a/b?x=1&y=2", 308, "https://secure.localhost:8443/a/b?x=1&y=2"},
		{"default port", 443, "GET", "secure.localhost", "/", 308, "https://secure.localhost/"},
		{"post keeps method", 443, "POST", "secure.localhost:80", "/form", 308, "https://secure.localhost/form"},
		{"escaped path", 443, "GET", "secure.localhost", "/a%20b", 308, "https://secure.localhost/a%20b"},
		{"custom domain", 443, "GET", "www.example.com", "/", 308, "https://www.example.com/"},
		{"acme challenge", 443, "GET", "secure.localhost", "/.well-known/acme-challenge/tok", 200, ""},
		{"app without force_https", 443, "GET", "plain.localhost", "/", 200, ""},
		{"unknown app", 443, "GET", "nope.localhost", "/", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, r := open(t, tt.httpsPort, st, nil)
			r.SetDomains(map[string]string{"www.example.com": "secure"})
			req := httptest.NewRequest(tt.method, "http://"+tt.host+tt.uri, nil)
			w := httptest.NewRecorder()
			m.HTTPHandler(next).ServeHTTP(w, req)
			if w.Code != tt.wantCode || w.Header().Get("Location") != tt.wantLoc {
				t.Errorf("%d %q, want %d %q", w.Code, w.Header().Get("Location"), tt.wantCode, tt.wantLoc)
			}
		})
	}
	t.Run("no HTTPS listener", func(t *testing.T) {
		m, _ := open(t, 0, st, nil)
		w := httptest.NewRecorder()
		m.HTTPHandler(next).ServeHTTP(w, httptest.NewRequest("GET", "http://secure.localhost/", nil))
		if w.Code != 200 {
			t.Errorf("redirected without an HTTPS listener: %d", w.Code)
		}
	})
}

func TestHTTPSURL(t *testing.T) {
	tests := []struct {
		host string
		port int
		want string
	}{
		{"web.localhost:8080", 8443, "https://web.localhost:8443/p?q"},
		{"web.localhost", 443, "https://web.localhost/p?q"},
		{"[::1]:8080", 443, "https://[::1]/p?q"},
		{"[::1]:8080", 8443, "https://[::1]:8443/p?q"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/p?q", nil)
		r.Host = tt.host
		if got := httpsURL(r, tt.port); got != tt.want {
			t.Errorf("httpsURL(%s, %d) = %s, want %s", tt.host, tt.port, got, tt.want)
		}
	}
}

func TestGetCertificate(t *testing.T) {
	st := newFakeStore(map[string]pier.RunConfig{"web": {}})
	ca := &fakeCA{}
	m, _ := open(t, 8443, st, ca)
	for _, tt := range []struct {
		sni     string
		wantErr string
	}{
		{"web.localhost", ""},
		{"WEB.localhost.", ""},
		{"", "no server name"},
		{"nope.localhost", "no certificate for nope.localhost"},
		{"a.web.localhost", "not an app of this server"},
		{"www.example.com", "not an app of this server"},
	} {
		_, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: tt.sni})
		if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("SNI %q: %v, want error %q", tt.sni, err, tt.wantErr)
		}
	}
	if strings.Join(ca.asked, ",") != "web.localhost,web.localhost" {
		t.Errorf("CA asked for %v", ca.asked)
	}
	if pem, err := m.CAPEM(); err != nil || string(pem) != "PEM" {
		t.Errorf("CAPEM = %q, %v", pem, err)
	}
}

func TestAddRemove(t *testing.T) {
	st := newFakeStore(map[string]pier.RunConfig{"web": {}})
	m, r := open(t, 8443, st, nil)
	ctx := context.Background()
	if _, err := m.Add(ctx, "web", "*.example.com"); pier.KindOf(err) != pier.Invalid {
		t.Fatalf("wildcard: %v", err)
	}
	if _, err := m.Add(ctx, "nope", "www.example.com"); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("unknown app: %v", err)
	}
	c, err := m.Add(ctx, "web", "WWW.Example.com.")
	if err != nil || c.Domain != "www.example.com" || c.Status == "" {
		t.Fatalf("add: %+v, %v", c, err)
	}
	if _, err := m.Add(ctx, "web", "www.example.com"); pier.KindOf(err) != pier.Conflict {
		t.Fatalf("duplicate: %v", err)
	}
	if r.App("www.example.com") != "web" {
		t.Fatalf("not routed: %v", r.domains)
	}
	if err := m.Remove(ctx, "www.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "www.example.com"); pier.KindOf(err) != pier.NotFound {
		t.Fatalf("remove twice: %v", err)
	}
	if _, ok := r.domains["www.example.com"]; ok {
		t.Fatal("still routed after remove")
	}
	if got := strings.Join(st.events, ","); got != "web cert.add,web cert.remove" {
		t.Errorf("events: %s", got)
	}

	// A server without an HTTPS listener refuses custom domains.
	m2, _ := open(t, 0, newFakeStore(map[string]pier.RunConfig{"web": {}}), nil)
	if _, err := m2.Add(ctx, "web", "www.example.com"); pier.KindOf(err) != pier.Precondition {
		t.Fatalf("without HTTPS: %v", err)
	}
	if _, err := m2.CAPEM(); pier.KindOf(err) != pier.Unavailable {
		t.Fatalf("CAPEM without a CA: %v", err)
	}
}

func TestAppDestroyedForgetsItsDomains(t *testing.T) {
	st := newFakeStore(map[string]pier.RunConfig{"web": {}, "api": {}})
	m, r := open(t, 8443, st, nil)
	ctx := context.Background()
	for d, app := range map[string]string{"a.example.com": "web", "b.example.com": "web", "c.example.com": "api"} {
		if _, err := m.Add(ctx, app, d); err != nil {
			t.Fatal(err)
		}
	}
	m.AppDestroyed("web")
	if len(r.domains) != 1 || r.domains["c.example.com"] != "api" {
		t.Fatalf("routes after destroying web: %v", r.domains)
	}
}
