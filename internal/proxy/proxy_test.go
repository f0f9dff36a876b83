package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const domain = "apps.test"

// wait bounds every wait of these tests on something that should happen; it
// is a correctness bound (the thing never happening is the failure), not a
// performance target.
const wait = 5 * time.Second

// fixture is a proxy served by a real HTTP server, with its own registry.
type fixture struct {
	p   *Proxy
	reg *prometheus.Registry
	srv *httptest.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	p := New(domain, NewMetrics(reg), slog.New(slog.DiscardHandler))
	p.WaitForBackend = 100 * time.Millisecond
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	t.Cleanup(p.CloseIdleConnections)
	return &fixture{p: p, reg: reg, srv: srv}
}

// request sends one request through the proxy with the given Host.
func (f *fixture) request(t *testing.T, method, host, path string, body io.Reader, hdr http.Header) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, f.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	return resp
}

// get returns the status and body of GET path on host through the proxy.
func (f *fixture) get(t *testing.T, host, path string) (int, string, http.Header) {
	t.Helper()
	resp := f.request(t, http.MethodGet, host, path, nil, nil)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s%s: %v", host, path, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// upstream starts a real HTTP server standing in for a machine and returns
// its host:port.
func upstream(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// named answers every request with its name, so tests see which machine
// served a request.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
}

func TestRoutesByHost(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, named("web")))
	f.p.Add("api", "m2", upstream(t, named("api")))

	tests := []struct {
		host     string
		wantCode int
		wantBody string // exact for 200, a substring otherwise
	}{
		{"web.apps.test", 200, "web"},
		{"api.apps.test", 200, "api"},
		{"web.apps.test:8080", 200, "web"},
		{"WEB.Apps.TEST", 200, "web"},
		{"Web.APPS.test:80", 200, "web"},
		{"web.apps.test.", 200, "web"}, // fully qualified
		{"nope.apps.test", 404, "pier"},
		{"nope.apps.test:8080", 404, "pier"},
		{"a.web.apps.test", 404, "pier"}, // nested subdomain is not app "a.web" nor "web"
		{"apps.test", 404, "pier"},
		{"webapps.test", 404, "pier"},
		{"web.other.test", 404, "pier"},
		{"127.0.0.1", 404, "pier"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			code, body, hdr := f.get(t, tt.host, "/")
			if code != tt.wantCode {
				t.Fatalf("status = %d, want %d (body %q)", code, tt.wantCode, body)
			}
			if tt.wantCode == 200 {
				if body != tt.wantBody {
					t.Fatalf("body = %q, want %q", body, tt.wantBody)
				}
				return
			}
			if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Errorf("Content-Type = %q, want an HTML page", ct)
			}
			isHTML := strings.Contains(strings.ToLower(body), "<!doctype html>")
			if !isHTML || !strings.Contains(body, tt.wantBody) {
				t.Errorf("body = %q, want an HTML page mentioning %q", body, tt.wantBody)
			}
			if hdr.Get("X-Pier-Error") == "" {
				t.Error("X-Pier-Error header missing on an error page")
			}
		})
	}
}

func TestNotFoundPageEscapesHost(t *testing.T) {
	f := newFixture(t)
	// Host is the client's and echoed into the page. net/http already
	// refuses hosts with < or >, so & (allowed in a Host) shows whether the
	// page escapes what it echoes.
	code, body, _ := f.get(t, "a&b.apps.test", "/")
	if code != http.StatusNotFound {
		t.Fatalf("status = %d, want 404", code)
	}
	if !strings.Contains(body, "a&amp;b.apps.test") || strings.Contains(body, "a&b") {
		t.Fatalf("page does not escape the Host it echoes: %q", body)
	}
}

func TestRemoveAppStopsAnswering(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, named("web")))
	if code, _, _ := f.get(t, "web.apps.test", "/"); code != 200 {
		t.Fatalf("before RemoveApp: status %d", code)
	}
	f.p.RemoveApp("web")
	if code, _, _ := f.get(t, "web.apps.test", "/"); code != 404 {
		t.Fatalf("after RemoveApp: status %d, want 404", code)
	}
}

func TestAppWithoutMachineIs503AfterWait(t *testing.T) {
	f := newFixture(t)
	f.p.AddApp("idle")
	begin := time.Now()
	code, body, hdr := f.get(t, "idle.apps.test", "/")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503", code)
	}
	// The request must have been held for WaitForBackend first (a lower
	// bound, guaranteed by the timer; no upper bound is asserted).
	if d := time.Since(begin); d < f.p.WaitForBackend {
		t.Errorf("503 after %s, before WaitForBackend (%s)", d, f.p.WaitForBackend)
	}
	if !strings.Contains(body, "pier status -a idle") {
		t.Errorf("503 page does not tell what to do next: %q", body)
	}
	if !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
		t.Errorf("Content-Type = %q", hdr.Get("Content-Type"))
	}
}

func TestRequestWaitsForFirstMachine(t *testing.T) {
	f := newFixture(t)
	f.p.WaitForBackend = wait
	f.p.AddApp("web")

	type result struct {
		code int
		body string
	}
	done := make(chan result, 1)
	go func() {
		// t.Fatal must not be called from here; errors surface as code 0.
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/", nil)
		req.Host = "web.apps.test"
		resp, err := f.srv.Client().Do(req)
		if err != nil {
			done <- result{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(b)}
	}()

	// Give the request time to reach the proxy and park. Whatever the
	// scheduling, it cannot have been answered yet: there is no machine and
	// WaitForBackend is long.
	select {
	case r := <-done:
		t.Fatalf("answered with no machine: %d %q", r.code, r.body)
	case <-time.After(100 * time.Millisecond):
	}
	f.p.Add("web", "m1", upstream(t, named("late")))
	select {
	case r := <-done:
		if r.code != 200 || r.body != "late" {
			t.Fatalf("got %d %q, want 200 from the machine added during the wait", r.code, r.body)
		}
	case <-time.After(wait):
		t.Fatal("the waiting request was not served after Add")
	}
}

func TestForwardedHeaders(t *testing.T) {
	f := newFixture(t)
	seen := make(chan http.Header, 1)
	f.p.Add("web", "m1", upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Seen-Host", r.Host)
		seen <- h
	})))

	tests := []struct {
		name   string
		sent   http.Header
		wantID string // "" means a generated one
	}{
		{"no request id", http.Header{}, ""},
		{"request id kept", http.Header{"X-Request-Id": {"req-abc-123"}}, "req-abc-123"},
		{"spoofed forwarding headers", http.Header{
			"X-Forwarded-For":   {"6.6.6.6"},
			"X-Forwarded-Host":  {"evil.test"},
			"X-Forwarded-Proto": {"https"},
		}, ""},
		// Headers pier's parts pass between them: from a client of the
		// edge they are forgeries.
		{"spoofed internal headers", http.Header{
			"Pier-Upstream-Proto":     {"h2"},
			"Pier-Machine":            {"m-other"},
			"Pier-Anything":           {"x"},
			"X-Pier-Error":            {"x"},
			"X-Forwarded-Client-Cert": {"By=spiffe://pier.internal/app/web;URI=spiffe://pier.internal/app/admin"},
		}, ""},
	}
	hexID := regexp.MustCompile(`^[0-9a-f]{24}$`)
	ids := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.request(t, http.MethodGet, "web.apps.test", "/x", nil, tt.sent)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			h := <-seen
			// The edge proxy is the first hop: what the client claims is
			// replaced, not passed on.
			if got := h.Get("X-Forwarded-For"); got != "127.0.0.1" {
				t.Errorf("X-Forwarded-For = %q, want the client address 127.0.0.1", got)
			}
			if got := h.Get("X-Forwarded-Proto"); got != "http" {
				t.Errorf("X-Forwarded-Proto = %q, want http", got)
			}
			if got := h.Get("X-Forwarded-Host"); got != "web.apps.test" {
				t.Errorf("X-Forwarded-Host = %q, want web.apps.test", got)
			}
			for k := range h {
				if strings.HasPrefix(k, "Pier-") || strings.HasPrefix(k, "X-Pier-") || k == "X-Forwarded-Client-Cert" {
					t.Errorf("the client's %s: %q reached the machine", k, h[k])
				}
			}
			if got := h.Get("Seen-Host"); got != "web.apps.test" {
				t.Errorf("upstream saw Host %q, want the original web.apps.test", got)
			}
			id := h.Get("X-Request-Id")
			if tt.wantID != "" {
				if id != tt.wantID {
					t.Errorf("X-Request-Id = %q, want the client's %q", id, tt.wantID)
				}
				return
			}
			if !hexID.MatchString(id) {
				t.Errorf("generated X-Request-Id = %q, want 24 hex digits", id)
			}
			if ids[id] {
				t.Errorf("X-Request-Id %q generated twice", id)
			}
			ids[id] = true
		})
	}
}

// counting is an upstream that counts the requests it served.
type counting struct {
	mu sync.Mutex
	n  int
}

func (c *counting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *counting) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func TestBalancesAndRemove(t *testing.T) {
	f := newFixture(t)
	var a, b counting
	f.p.Add("web", "a", upstream(t, &a))
	f.p.Add("web", "b", upstream(t, &b))
	f.p.Add("web", "b", "127.0.0.1:1") // a second Add of the same id is ignored

	for range 20 {
		if code, _, _ := f.get(t, "web.apps.test", "/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if a.count() == 0 || b.count() == 0 {
		t.Fatalf("requests per machine: a=%d b=%d; want both to get traffic", a.count(), b.count())
	}
	if a.count()+b.count() != 20 {
		t.Fatalf("a=%d + b=%d != 20", a.count(), b.count())
	}

	f.p.Remove("web", "b")
	if got := f.p.Backends("web"); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Backends after Remove = %v, want [a]", got)
	}
	beforeA, beforeB := a.count(), b.count()
	for range 10 {
		if code, _, _ := f.get(t, "web.apps.test", "/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if b.count() != beforeB {
		t.Errorf("removed machine b got %d more requests", b.count()-beforeB)
	}
	if a.count() != beforeA+10 {
		t.Errorf("a got %d of the 10 requests after b was removed", a.count()-beforeA)
	}
}

// slow is an upstream whose /slow requests are held until released; quick
// requests are counted.
type slow struct {
	name     string
	entered  chan struct{} // receives when a /slow request arrives
	release  chan struct{} // closed by finish to let /slow requests end
	once     sync.Once
	counting counting
}

func (s *slow) finish() { s.once.Do(func() { close(s.release) }) }

func newSlow(name string) *slow {
	return &slow{name: name, entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (s *slow) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/slow" {
		s.entered <- struct{}{}
		<-s.release
		io.WriteString(w, "slow done by "+s.name)
		return
	}
	s.counting.ServeHTTP(w, r)
}

// upstreamSlow starts s and releases its held requests before the server
// is closed, so cleanup never blocks on them.
func upstreamSlow(t *testing.T, s *slow) string {
	t.Helper()
	addr := upstream(t, s)
	t.Cleanup(s.finish)
	return addr
}

// startSlow sends GET /slow in the background and returns the channel of
// its outcome ("<code> <body>" or the error).
func startSlow(f *fixture, host string) <-chan string {
	out := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/slow", nil)
		req.Host = host
		resp, err := f.srv.Client().Do(req)
		if err != nil {
			out <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			out <- err.Error()
			return
		}
		out <- resp.Status + " " + string(b)
	}()
	return out
}

func recv(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestPrefersMachineWithFewestInFlight(t *testing.T) {
	f := newFixture(t)
	a, b := newSlow("a"), newSlow("b")
	f.p.Add("web", "a", upstreamSlow(t, a))
	f.p.Add("web", "b", upstreamSlow(t, b))

	res := startSlow(f, "web.apps.test")
	var busy, free *slow
	select {
	case <-a.entered:
		busy, free = a, b
	case <-b.entered:
		busy, free = b, a
	case <-time.After(wait):
		t.Fatal("slow request never reached a machine")
	}
	for range 6 {
		if code, _, _ := f.get(t, "web.apps.test", "/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if busy.counting.count() != 0 || free.counting.count() != 6 {
		t.Errorf("with one request in flight on %s: busy got %d, free got %d; want 0 and 6",
			busy.name, busy.counting.count(), free.counting.count())
	}
	busy.finish()
	if got := <-res; !strings.HasPrefix(got, "200") {
		t.Fatalf("slow request: %s", got)
	}
}

func TestDrainWaitsForRequestsInFlight(t *testing.T) {
	f := newFixture(t)
	a, b := newSlow("a"), newSlow("b")
	f.p.Add("web", "a", upstreamSlow(t, a))
	res := startSlow(f, "web.apps.test")
	recv(t, a.entered, "the slow request to reach machine a")
	f.p.Add("web", "b", upstreamSlow(t, b))

	drained := make(chan error, 1)
	go func() { drained <- f.p.Drain(context.Background(), "web", "a") }()

	// Drain takes a out of rotation at once...
	deadline := time.Now().Add(wait)
	for !slices.Equal(f.p.Backends("web"), []string{"b"}) {
		if time.Now().After(deadline) {
			t.Fatalf("Backends = %v while draining a, want [b]", f.p.Backends("web"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 4 {
		if code, _, _ := f.get(t, "web.apps.test", "/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if a.counting.count() != 0 || b.counting.count() != 4 {
		t.Errorf("while draining a: a got %d, b got %d new requests; want 0 and 4", a.counting.count(), b.counting.count())
	}
	// ...but returns only once its request in flight is done.
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) with a request still in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	a.finish()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("Drain = %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Drain did not return after the request finished")
	}
	if got := <-res; got != "200 OK slow done by a" {
		t.Fatalf("request in flight during drain: %q, want it to complete", got)
	}
}

func TestDrainTimesOut(t *testing.T) {
	f := newFixture(t)
	a := newSlow("a")
	f.p.Add("web", "a", upstreamSlow(t, a))
	res := startSlow(f, "web.apps.test")
	recv(t, a.entered, "the slow request to reach machine a")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := f.p.Drain(ctx, "web", "a")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a request in flight past its deadline = %v, want DeadlineExceeded", err)
	}
	if got := f.p.Backends("web"); len(got) != 0 {
		t.Errorf("Backends after a timed-out drain = %v, want none", got)
	}
	a.finish()
	if got := <-res; got != "200 OK slow done by a" {
		t.Fatalf("request in flight: %q", got)
	}
}

func TestDrainIdleMachineReturnsAtOnce(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "a", upstream(t, named("a")))
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // an idle machine needs no time at all
	if err := f.p.Drain(ctx, "web", "a"); err != nil {
		t.Fatalf("Drain of an idle machine = %v", err)
	}
	if err := f.p.Drain(ctx, "web", "unknown"); err != nil {
		t.Fatalf("Drain of an unknown machine = %v", err)
	}
	if got := f.p.Backends("web"); len(got) != 0 {
		t.Fatalf("Backends = %v, want none", got)
	}
}

func TestUnreachableMachineIs502(t *testing.T) {
	f := newFixture(t)
	// A port that was just listening and is now closed refuses connections.
	srv := httptest.NewServer(named("gone"))
	addr := srv.Listener.Addr().String()
	srv.Close()
	f.p.Add("web", "m1", addr)
	code, body, _ := f.get(t, "web.apps.test", "/")
	if code != http.StatusBadGateway {
		t.Fatalf("status = %d, want 502", code)
	}
	if !strings.Contains(body, "pier logs") {
		t.Errorf("502 page does not point at the logs: %q", body)
	}
}
