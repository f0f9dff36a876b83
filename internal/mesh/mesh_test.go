package mesh

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
)

type memStore struct {
	mu   sync.Mutex
	data []byte
}

func (s *memStore) Load(context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data, nil
}

func (s *memStore) Save(_ context.Context, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data = b
	return nil
}

type allow struct {
	mu sync.Mutex
	m  map[[2]string]bool
}

func (a *allow) Allowed(src, dst string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[[2]string{src, dst}]
}

func (a *allow) set(src, dst string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[[2]string{src, dst}] = ok
}

type fixture struct {
	m      *Mesh
	ca     *identity.Authority
	rec    *metrics.Registry
	policy *allow
	front  net.Listener // stands for the outbound listener: every connection is web → api
}

// newFixture runs a mesh with apps web and api, where api's one machine
// is backend, and web may call api.
func newFixture(t *testing.T, backend string) *fixture {
	t.Helper()
	return newFixtureWith(t, backend, func(*Config) {})
}

// newFixtureWith is newFixture with the mesh's Config changed by edit.
func newFixtureWith(t *testing.T, backend string, edit func(*Config)) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ca, err := identity.Open(ctx, &memStore{}, identity.Options{TrustDomain: "test.pier"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, rec: metrics.New(prometheus.NewRegistry(), metrics.Options{}), policy: &allow{m: map[[2]string]bool{{"web", "api"}: true}}}
	cfg := Config{Identities: ca, Policy: f.policy, Metrics: f.rec, Log: slog.New(slog.DiscardHandler), WaitForBackend: time.Second}
	edit(&cfg)
	f.m = New(cfg)
	f.m.SetService("web", netip.MustParseAddr("100.127.0.1"))
	f.m.SetService("api", netip.MustParseAddr("100.127.0.2"))
	f.m.Add("api", "m1", backend)
	in, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { f.m.Serve(ctx, in, nil); close(done) }()
	for f.m.InboundAddr() == "" {
		time.Sleep(time.Millisecond)
	}
	f.front, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := f.front.Accept()
			if err != nil {
				return
			}
			go f.m.Carry(ctx, c, "web", "api")
		}
	}()
	t.Cleanup(func() { f.front.Close(); cancel(); <-done })
	return f
}

func (f *fixture) url() string { return "http://" + f.front.Addr().String() }

// appServer is the callee app: it answers with the client identity the
// mesh verified and whatever status ?status= asks for.
func appServer(t *testing.T) string {
	t.Helper()
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, append([]byte("echo:"), msg...))
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		code := 200
		fmt.Sscan(r.URL.Query().Get("status"), &code)
		w.Header().Set("X-Proto", r.Proto)
		w.WriteHeader(code)
		fmt.Fprintf(w, "xfcc=%s", r.Header.Get("X-Forwarded-Client-Cert"))
	})
	return serveH2C(t, mux)
}

// serveH2C serves h over HTTP/1.1 and cleartext HTTP/2 on a loopback port
// until the test ends, and returns its address.
func serveH2C(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := &http.Server{Handler: h}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, c *http.Client, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestHTTPThroughTheMesh(t *testing.T) {
	f := newFixture(t, appServer(t))
	code, body, _ := get(t, http.DefaultClient, f.url()+"/hello")
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	want := "URI=spiffe://test.pier/app/web"
	if !strings.Contains(body, want) || !strings.Contains(body, "By=spiffe://test.pier/app/api") || !strings.Contains(body, "Hash=") {
		t.Fatalf("the app saw %q, want the verified caller %s", body, want)
	}

	// A caller cannot forge the identity header.
	req, _ := http.NewRequest("GET", f.url()+"/", nil)
	req.Header.Set("X-Forwarded-Client-Cert", "URI=spiffe://test.pier/app/admin")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), "admin") {
		t.Fatalf("forged header reached the app: %s", b)
	}

	// Without the connection, the callee side refuses with 403.
	f.policy.set("web", "api", false)
	code, body, _ = get(t, http.DefaultClient, f.url()+"/")
	if code != http.StatusForbidden || !strings.Contains(body, "pier connect web api") {
		t.Fatalf("without a connection: %d %q, want 403 naming the fix", code, body)
	}
	f.policy.set("web", "api", true)

	// Metrics: 10 requests of which 3 are 500s, recorded on the edge.
	for i := range 10 {
		status := 200
		if i < 3 {
			status = 500
		}
		get(t, http.DefaultClient, fmt.Sprintf("%s/x?status=%d", f.url(), status))
	}
	var edge metrics.Stat
	for _, s := range f.rec.Edges(time.Minute) {
		if s.Src == "web" && s.Dst == "api" {
			edge = s
		}
	}
	// 1 + 1 before, 10 now; the denied one is not a request.
	if edge.Requests != 12 || edge.Failures != 3 || edge.Denied != 1 {
		t.Fatalf("edge web->api: %+v, want 12 requests, 3 failures, 1 denied", edge)
	}
}

func TestH2CAndWebSocketThroughTheMesh(t *testing.T) {
	f := newFixture(t, appServer(t))
	// HTTP/2 with prior knowledge, as gRPC clients speak it, arrives at
	// the app as HTTP/2.
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	code, _, h := get(t, &http.Client{Transport: tr}, f.url()+"/")
	if code != 200 || h.Get("X-Proto") != "HTTP/2.0" {
		t.Fatalf("h2c: status %d, the app saw %q; want HTTP/2.0", code, h.Get("X-Proto"))
	}
	// HTTP/1.1 stays HTTP/1.1 at the app.
	_, _, h = get(t, http.DefaultClient, f.url()+"/")
	if h.Get("X-Proto") != "HTTP/1.1" {
		t.Fatalf("the app saw %q, want HTTP/1.1", h.Get("X-Proto"))
	}

	ws, _, err := websocket.DefaultDialer.Dial("ws://"+f.front.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for i := range 3 {
		msg := fmt.Sprintf("m%d", i)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.ReadMessage()
		if err != nil || string(got) != "echo:"+msg {
			t.Fatalf("websocket: %q %v", got, err)
		}
	}
}

func TestOpaqueTCPThroughTheMesh(t *testing.T) {
	// A line protocol the client speaks first (like Redis).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "+%s", line)
				}
			}()
		}
	}()
	f := newFixture(t, ln.Addr().String())
	c, err := net.Dial("tcp", f.front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for _, cmd := range []string{"*1 PING\n", "SET k v\n"} {
		fmt.Fprint(c, cmd)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := r.ReadString('\n')
		if err != nil || got != "+"+cmd {
			t.Fatalf("tunnel: %q %v, want %q", got, err, "+"+cmd)
		}
	}
	// Revoking the connection cuts the open tunnel.
	f.policy.set("web", "api", false)
	f.m.Revoke("web", "api")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "after\n")
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("tunnel still open after revoke: %q", got)
	}
	// And a new one is refused.
	c2, err := net.Dial("tcp", f.front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprint(c2, "PING\n")
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := bufio.NewReader(c2).ReadString('\n'); err == nil {
		t.Fatalf("denied tunnel answered %q", got)
	}
	var edge metrics.Stat
	for _, s := range f.rec.Edges(time.Minute) {
		if s.Src == "web" && s.Dst == "api" {
			edge = s
		}
	}
	// The tunnel cut and the one refused both count as denied.
	if edge.TCPOpened != 1 || edge.Denied != 2 || edge.BytesIn == 0 {
		t.Fatalf("edge: %+v, want 1 connection, 2 denied, bytes counted", edge)
	}
}

// The inbound side refuses plaintext, clients without a certificate, and
// certificates from another authority even with the right SPIFFE ID.
func TestInboundRefusesUnverifiedPeers(t *testing.T) {
	f := newFixture(t, appServer(t))
	addr := f.m.InboundAddr()

	// Plain HTTP.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: api.internal\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	c.Close()
	if strings.Contains(string(b), "xfcc") {
		t.Fatalf("plaintext reached the app: %q", b)
	}

	try := func(cert *tls.Certificate) error {
		cfg := &tls.Config{ServerName: "api.internal", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		tc, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer tc.Close()
		fmt.Fprint(tc, "GET / HTTP/1.1\r\nHost: api.internal\r\n\r\n")
		tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return fmt.Errorf("answered %s", resp.Status)
	}
	if err := try(nil); err == nil || strings.Contains(err.Error(), "answered") {
		t.Fatalf("no client certificate: %v, want a refused handshake", err)
	}
	other, err := identity.Open(context.Background(), &memStore{}, identity.Options{TrustDomain: "test.pier"})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := other.Certificate(other.AppID("web"))
	if err != nil {
		t.Fatal(err)
	}
	if err := try(forged); err == nil || strings.Contains(err.Error(), "answered") {
		t.Fatalf("web's identity from another CA: %v, want a refused handshake", err)
	}
	// The real certificate of web gets through (the check above is not
	// refusing everything).
	real, err := f.ca.Certificate(f.ca.AppID("web"))
	if err != nil {
		t.Fatal(err)
	}
	if err := try(real); err == nil || !strings.Contains(err.Error(), "200 OK") {
		t.Fatalf("web's own certificate: %v, want 200", err)
	}
}

// Calls keep working while certificates are renewed and the issuer and
// the trust anchor rotate.
func TestRotationWithoutFailedCalls(t *testing.T) {
	f := newFixture(t, appServer(t))
	ctx := context.Background()
	seen := map[string]bool{}
	for i := range 60 {
		switch i {
		case 20:
			if err := f.ca.RotateIssuer(ctx); err != nil {
				t.Fatal(err)
			}
		case 40:
			if err := f.ca.RotateAnchor(ctx); err != nil {
				t.Fatal(err)
			}
		}
		code, body, _ := get(t, http.DefaultClient, f.url()+"/")
		if code != 200 {
			t.Fatalf("call %d: %d %s", i, code, body)
		}
		_, hash, _ := strings.Cut(body, "Hash=")
		hash, _, _ = strings.Cut(hash, ";")
		seen[hash] = true
	}
	if len(seen) < 3 {
		t.Fatalf("the caller presented %d distinct certificates across two rotations, want 3", len(seen))
	}
}

// Route policies from pier.toml: a timeout turns a slow answer into 504,
// and an idempotent request is retried after a 503; a POST is not.
func TestRouteTimeoutsAndRetries(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.Method]++
		n := calls[r.Method]
		mu.Unlock()
		if n%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	f := newFixture(t, ln.Addr().String())
	f.m.SetRoutes("api", []pier.Route{{Path: "/slow", Timeout: pier.Duration{Duration: 200 * time.Millisecond}}, {Path: "/flaky", Retries: 1}})

	start := time.Now()
	if code, body, _ := get(t, http.DefaultClient, f.url()+"/slow"); code != http.StatusGatewayTimeout {
		t.Fatalf("slow route: %d %s, want 504", code, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the timeout did not cut the call: %s", d)
	}
	if code, body, _ := get(t, http.DefaultClient, f.url()+"/flaky"); code != 200 || body != "ok" {
		t.Fatalf("GET with a retry: %d %q, want 200 after one retry", code, body)
	}
	resp, err := http.Post(f.url()+"/flaky", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("POST: %d, want the 503 (never retried)", resp.StatusCode)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls["GET"] != 2 || calls["POST"] != 1 {
		t.Fatalf("calls: %v, want GET twice and POST once", calls)
	}
}

// The edge proxy reaches the callee side over mTLS with its own identity,
// may call every app, and chooses the machine.
func TestEdgeThroughTheMesh(t *testing.T) {
	f := newFixture(t, appServer(t))
	f.policy.set("web", "api", false) // the edge needs no connection
	c := &http.Client{Transport: f.m.EdgeTransport()}
	send := func(machine string) (int, string) {
		req, _ := http.NewRequest("GET", "https://api.internal/", nil)
		req.Header.Set("Pier-Machine", machine)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := send("m1"); code != 200 || !strings.HasSuffix(body, "URI=spiffe://test.pier/edge") {
		t.Fatalf("edge -> api: %d %q, want 200 with the edge's identity", code, body)
	}
	if code, _ := send("gone"); code != http.StatusServiceUnavailable {
		t.Fatalf("edge -> a machine out of traffic: %d, want 503", code)
	}
	// An app cannot pick machines or pass as the edge.
	f.policy.set("web", "api", true)
	req, _ := http.NewRequest("GET", f.url()+"/", nil)
	req.Header.Set("Pier-Machine", "gone")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasSuffix(string(b), "URI=spiffe://test.pier/app/web") {
		t.Fatalf("web with a Pier-Machine header: %d %q, want 200 as web", resp.StatusCode, b)
	}
}
