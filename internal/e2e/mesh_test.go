package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/metrics"
)

// launchApp deploys testdata/apps/<src> as app, with extra pier.toml lines.
func (s *server) launchApp(src, app, toml string) {
	s.t.Helper()
	dir := copyApp(s.t, src)
	writeFile(s.t, filepath.Join(dir, "pier.toml"), "app = \""+app+"\"\n"+toml)
	if out, err := s.pierIn(dir, "launch", "--yes", "--no-resources"); err != nil {
		s.t.Fatalf("launch %s: %v\n%s", app, err, out)
	}
}

// fromMachine has app's machine GET target (a URL inside the machine's
// network) through testdata/apps/meshapp's /call, and returns what it got:
// "<status> <body>" or "error ...".
func (s *server) fromMachine(app, target string) string {
	s.t.Helper()
	code, out := s.call(app, "GET", "/call?url="+url.QueryEscape(target), "")
	if code != 200 {
		s.t.Fatalf("%s /call %s: %d %s", app, target, code, out)
	}
	return out
}

func (s *server) edgeStat(src, dst string) metrics.Stat {
	s.t.Helper()
	var stats []metrics.Stat
	if err := json.Unmarshal([]byte(s.mustPier("stat", "--edges", "--window", "10m", "--json")), &stats); err != nil {
		s.t.Fatal(err)
	}
	for _, st := range stats {
		if st.Src == src && st.Dst == dst {
			return st
		}
	}
	return metrics.Stat{Src: src, Dst: dst}
}

// TestMesh runs apps in runc machines that call each other through the
// mesh: mutual TLS with verified identities, policy from connections,
// HTTP/1.1, gRPC, WebSocket and opaque TCP, golden metrics, and
// certificate rotation under load.
func TestMesh(t *testing.T) {
	// Short-lived certificates, so renewals happen during the test.
	s := startRuncServerWith(t, "--mesh-cert-ttl", "1m")
	s.launchApp("meshapp", "api", "")
	s.launchApp("meshapp", "kv", "[env]\nMODE = \"tcp\"\n")
	s.launchApp("meshapp", "web", "")
	s.launchApp("meshapp", "other", "")

	// No connection: the callee side answers 403 and says how to fix it.
	if got := s.fromMachine("web", "http://api.internal/"); !strings.HasPrefix(got, "403 ") || !strings.Contains(got, "pier connect web api") {
		t.Fatalf("web -> api without a connection: %q, want 403", got)
	}

	out := s.mustPier("connect", "web", "api")
	if !strings.Contains(out, "API_URL") && !strings.Contains(out, "call") {
		t.Logf("connect output: %s", out)
	}
	if _, got := s.call("web", "GET", "/getenv?name=API_URL", ""); got != "http://api.internal" {
		t.Fatalf("API_URL in web = %q", got)
	}
	// The call arrives with the identity the callee side verified from
	// web's client certificate (spiffe://pier.internal/app/web).
	code, got := s.call("web", "GET", "/call?env=API_URL&path=/hello", "")
	if code != 200 || !strings.HasPrefix(got, "200 xfcc=By=spiffe://pier.internal/app/api;Hash=") || !strings.HasSuffix(got, ";URI=spiffe://pier.internal/app/web") {
		t.Fatalf("web -> api: %d %q, want 200 with web's verified SPIFFE ID", code, got)
	}
	// The edge proxy, too, reaches machines over mTLS with its own identity.
	if code, got := s.call("api", "GET", "/", ""); code != 200 || !strings.HasSuffix(got, ";URI=spiffe://pier.internal/edge") {
		t.Fatalf("edge -> api: %d %q, want the edge proxy's SPIFFE ID", code, got)
	}
	// Another app, not connected, is denied.
	if got := s.fromMachine("other", "http://api.internal/"); !strings.HasPrefix(got, "403 ") {
		t.Fatalf("other -> api: %q, want 403", got)
	}
	// Machines cannot reach each other directly, in plaintext or at all.
	api := s.status("api")
	if len(api.Machines) == 0 || api.Machines[0].Addr == "" {
		t.Fatalf("api has no machine address: %+v", api.Machines)
	}
	_, got = s.call("web", "GET", "/dial?addr="+api.Machines[0].Addr, "")
	if !strings.HasPrefix(got, "error") {
		t.Fatalf("web dialled api's machine %s directly: %q, want a refused connection", api.Machines[0].Addr, got)
	}

	// protocols
	{
		if _, got := s.call("web", "GET", "/grpc?target=api.internal:80", ""); got != "grpc SERVING" {
			t.Fatalf("gRPC web -> api: %q", got)
		}
		if _, got := s.call("web", "GET", "/wscall?url="+url.QueryEscape("ws://api.internal/ws"), ""); got != "echo:m0 echo:m1 echo:m2" {
			t.Fatalf("WebSocket web -> api: %q", got)
		}
		// Redis protocol, tunnelled as opaque TCP: denied until connected.
		if _, got := s.call("web", "GET", "/redis?addr=kv.internal:6379", ""); !strings.HasPrefix(got, "error") {
			t.Fatalf("web -> kv without a connection: %q, want an error", got)
		}
		s.mustPier("connect", "web", "kv")
		if _, got := s.call("web", "GET", "/redis?addr=kv.internal:6379", ""); got != "PONG v1" {
			t.Fatalf("Redis protocol web -> kv: %q", got)
		}
		if st := s.edgeStat("web", "kv"); st.TCPOpened < 1 || st.Denied < 1 {
			t.Fatalf("web -> kv metrics: %+v, want a connection and a denial", st)
		}
	}

	// metrics and disconnect
	{
		s.mustPier("connect", "other", "api")
		// 20 requests, 5 of which the app answers with 500.
		for i := range 20 {
			status := 200
			if i%4 == 0 {
				status = 500
			}
			if got := s.fromMachine("other", fmt.Sprintf("http://api.internal/x?status=%d", status)); !strings.HasPrefix(got, fmt.Sprint(status)) {
				t.Fatalf("request %d: %q", i, got)
			}
		}
		st := s.edgeStat("other", "api")
		if st.Requests != 20 || st.Failures != 5 || st.SuccessRate != 0.75 || st.Denied != 1 {
			t.Fatalf("pier stat other -> api: requests %d failures %d success %.3f denied %d; want 20, 5, 0.75, 1", st.Requests, st.Failures, st.SuccessRate, st.Denied)
		}
		if st.P50 <= 0 || st.P99 < st.P50 {
			t.Fatalf("latency percentiles: %+v", st)
		}
		// The same on /metrics, with the documented labels.
		prom := s.api("/metrics")
		for _, want := range []string{`pier_mesh_requests_total{dst_app="api",src_app="other",status_class="5xx"} 5`, `pier_mesh_requests_total{dst_app="api",src_app="other",status_class="2xx"} 15`} {
			if !strings.Contains(string(prom), want) {
				t.Fatalf("/metrics lacks %s", want)
			}
		}

		// Disconnect: the very next request is denied.
		s.mustPier("disconnect", "other", "api")
		if got := s.fromMachine("other", "http://api.internal/"); !strings.HasPrefix(got, "403 ") {
			t.Fatalf("other -> api after disconnect: %q, want 403", got)
		}
		if st := s.edgeStat("other", "api"); st.Denied != 2 {
			t.Fatalf("denied after disconnect: %d, want 2", st.Denied)
		}
		// The connection is gone, not stuck "revoking": connecting again
		// works (it used to say "already connected" for good).
		eventually(t, 15*time.Second, "other -> api forgotten", func() error {
			var conns []struct{ App, Target string }
			out := s.mustPier("connections", "--json")
			if err := json.Unmarshal([]byte(out), &conns); err != nil {
				return fmt.Errorf("connections --json: %v: %s", err, out)
			}
			for _, c := range conns {
				if c.App == "other" && c.Target == "api" {
					return fmt.Errorf("connections still list other -> api:\n%s", out)
				}
			}
			return nil
		})
		s.mustPier("connect", "other", "api")
		s.mustPier("disconnect", "other", "api")
	}

	// learned graph: declared-and-used, declared-but-unused, denied
	{
		s.mustPier("connect", "kv", "web") // declared, never used
		if got := s.fromMachine("web", "http://other.internal/"); !strings.HasPrefix(got, "403 ") {
			t.Fatalf("web -> other: %q, want 403", got)
		}
		var g graph.Graph
		if err := json.Unmarshal([]byte(s.mustPier("graph", "--json")), &g); err != nil {
			t.Fatal(err)
		}
		states := map[string]string{}
		for _, e := range g.Edges {
			states[e.From+"->"+e.To] = e.State
		}
		for edge, want := range map[string]string{"web->api": graph.StateUsed, "web->kv": graph.StateUsed, "kv->web": graph.StateDeclared,
			"web->other": graph.StateDenied, "edge->web": graph.StateUndeclared} {
			if states[edge] != want {
				t.Errorf("graph edge %s: state %q, want %q (all: %v)", edge, states[edge], want, states)
			}
		}
	}

	// identity
	{
		var id control.Identity
		if err := json.Unmarshal([]byte(s.mustPier("mesh", "identity", "web", "--json")), &id); err != nil {
			t.Fatal(err)
		}
		if id.SPIFFEID != "spiffe://pier.internal/app/web" || id.Certificate.Serial == "" || !id.Mesh ||
			id.Certificate.NotAfter.Sub(id.Certificate.NotBefore) > 2*time.Minute+time.Second {
			t.Fatalf("identity: %+v", id)
		}
	}

	// Calls go on without a failure while certificates renew (1m lifetime:
	// every 30s), the issuer rotates and the trust anchor rotates.
	// rotation under load
	{
		type result struct {
			Requests, Failures int
			Errors, Certs      []string
		}
		done := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/load?c=4&seconds=70&url=%s", s.httpPort, url.QueryEscape("http://api.internal/")), nil)
			req.Host = "web.localhost"
			var r result
			resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
			if err != nil {
				r.Errors = []string{err.Error()}
				r.Failures = 1
			} else {
				json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
			}
			done <- r
		}()
		time.Sleep(40 * time.Second)
		s.mustPier("mesh", "rotate")
		time.Sleep(15 * time.Second)
		s.mustPier("mesh", "rotate", "--anchor")
		r := <-done
		if r.Requests < 100 || r.Failures != 0 {
			t.Fatalf("load across rotations: %d requests, %d failures: %v", r.Requests, r.Failures, r.Errors)
		}
		// Renewal at 30s, the issuer at 40s, the anchor at 55s.
		if len(r.Certs) < 4 {
			t.Fatalf("the callee saw %d distinct client certificates (%v), want at least 4", len(r.Certs), r.Certs)
		}
		t.Logf("%d requests, 0 failures, %d certificates", r.Requests, len(r.Certs))
	}
}
