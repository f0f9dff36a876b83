package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/client"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name, rewriting it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

var testNow = time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)

func sampleStats() []metrics.Stat {
	return []metrics.Stat{
		{Src: "edge", Dst: "web", Requests: 7224, Successes: 7221, Failures: 3, SuccessRate: 7221.0 / 7224, RPS: 120.4, P50: 1.23, P95: 8.7, P99: 31.4},
		{Src: "web", Dst: "api", Requests: 60, Successes: 60, SuccessRate: 1, RPS: 1, P50: 0.42, P95: 0.9, P99: 2.05, TCPOpen: 0},
		{Src: "worker", Dst: "api", Requests: 2, Successes: 1, Failures: 1, SuccessRate: 0.5, RPS: 0.033, P50: 250, P95: 1520, P99: 1520},
		{Src: "worker", Dst: "cache-proxy", TCPOpen: 3, TCPOpened: 5},
		{Src: "reports", Dst: "billing", Denied: 5},
	}
}

// sampleApps is sampleStats merged by callee, as /v1/metrics/apps answers.
func sampleApps() []metrics.Stat {
	return []metrics.Stat{
		{Dst: "api", Requests: 62, Successes: 61, Failures: 1, SuccessRate: 61.0 / 62, RPS: 1.033, P50: 0.43, P95: 0.95, P99: 250},
		{Dst: "billing", Denied: 5},
		{Dst: "cache-proxy", TCPOpen: 3, TCPOpened: 5},
		{Dst: "web", Requests: 7224, Successes: 7221, Failures: 3, SuccessRate: 7221.0 / 7224, RPS: 120.4, P50: 1.23, P95: 8.7, P99: 31.4},
	}
}

func TestStatTables(t *testing.T) {
	for _, tc := range []struct {
		file  string
		rows  []metrics.Stat
		edges bool
	}{{"stat_apps.txt", sampleApps(), false}, {"stat_edges.txt", sampleStats(), true}} {
		t.Run(tc.file, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeStats(&b, tc.rows, tc.edges); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.file, b.String())
		})
	}
}

func TestStatFormats(t *testing.T) {
	none := metrics.Stat{}
	some := metrics.Stat{Requests: 30000, Successes: 29999, SuccessRate: 29999.0 / 30000}
	for _, tc := range []struct{ name, got, want string }{
		{"no requests", metrics.FormatPercent(none.SuccessRate, none.Requests), "-"},
		{"all ok", metrics.FormatPercent(metrics.Stat{Requests: 5, Successes: 5, SuccessRate: 1}.SuccessRate, metrics.Stat{Requests: 5, Successes: 5, SuccessRate: 1}.Requests), "100.0%"},
		{"a failure is never rounded away", metrics.FormatPercent(some.SuccessRate, some.Requests), "99.9%"},
		{"half", metrics.FormatPercent(metrics.Stat{Requests: 2, Successes: 1, SuccessRate: 0.5}.SuccessRate, metrics.Stat{Requests: 2, Successes: 1, SuccessRate: 0.5}.Requests), "50.0%"},
		{"idle rate", metrics.FormatRPS(0), "0"},
		{"slow rate", metrics.FormatRPS(0.033), "0.03"},
		{"rate", metrics.FormatRPS(12.04), "12.0"},
		{"fast rate", metrics.FormatRPS(1234.5), "1234"},
		{"latency without requests", latency(none, 0), "-"},
		{"sub-millisecond", latency(some, 0.42), "0.42ms"},
		{"milliseconds", latency(some, 3.14), "3.1ms"},
		{"tens of ms", latency(some, 120.4), "120ms"},
		{"seconds", latency(some, 1520), "1.5s"},
		{"window", shortDuration(time.Minute), "1m"},
		{"hours", shortDuration(2 * time.Hour), "2h"},
		{"seconds window", shortDuration(10 * time.Second), "10s"},
		{"mixed", shortDuration(90 * time.Second), "1m30s"},
		{"expired", timeLeft(-time.Second), "expired"},
		{"minutes", timeLeft(42 * time.Minute), "42m left"},
		{"hours left", timeLeft(23*time.Hour + 59*time.Minute), "23h59m left"},
		{"days", timeLeft(29 * 24 * time.Hour), "29 days left"},
		{"years", timeLeft(10 * 365 * 24 * time.Hour), "10 years left"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

func sampleTop() client.AppStats {
	return client.AppStats{
		Paths: []metrics.Stat{
			{Dst: "web", Method: "GET", Path: "/users/:id", Requests: 1204, Successes: 1204, SuccessRate: 1, RPS: 120.4, P50: 1.2, P99: 9.8},
			{Dst: "web", Method: "POST", Path: "/orders", Requests: 31, Successes: 30, Failures: 1, SuccessRate: 30.0 / 31, RPS: 3.1, P50: 14, P99: 210},
			{Dst: "web", Method: "GET", Path: "(other)", Requests: 2, Successes: 2, SuccessRate: 1, RPS: 0.2, P50: 0.5, P99: 0.7},
		},
		Machines: []metrics.Stat{
			{Dst: "web", Machine: "", Requests: 1, Failures: 1, RPS: 0.1, P50: 0.3, P99: 0.3},
			{Dst: "web", Machine: "m-2f1c", Requests: 620, Successes: 619, SuccessRate: 619.0 / 620, RPS: 62, P50: 1.3, P99: 11, TCPOpen: 1},
			{Dst: "web", Machine: "m-9ab0", Requests: 616, Successes: 616, SuccessRate: 1, RPS: 61.6, P50: 1.1, P99: 9.1},
		},
	}
}

func TestTopSnapshot(t *testing.T) {
	for _, tc := range []struct {
		file string
		s    client.AppStats
	}{
		{"top.txt", sampleTop()},
		{"top_tcp_only.txt", client.AppStats{Machines: []metrics.Stat{{Dst: "web", Machine: "m-1", TCPOpen: 2, TCPOpened: 4}}}},
		{"top_idle.txt", client.AppStats{}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeTop(&b, "web", 10*time.Second, tc.s); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.file, b.String())
		})
	}
}

func sampleAuthority() identity.Status {
	return identity.Status{
		TrustDomain: "pier.internal",
		LeafTTL:     24 * time.Hour,
		Anchors: []identity.CertInfo{
			{Subject: "pier mesh anchor", Serial: "0a1b2c", NotAfter: testNow.Add(5 * 24 * time.Hour)},
			{Subject: "pier mesh anchor", Serial: "3d4e5f", NotAfter: testNow.Add(10 * 365 * 24 * time.Hour)},
		},
		Issuer:          identity.CertInfo{Subject: "pier mesh issuer", Serial: "77aa", NotAfter: testNow.Add(30 * 24 * time.Hour)},
		PreviousIssuers: []identity.CertInfo{{Subject: "pier mesh issuer", Serial: "66bb", NotAfter: testNow.Add(20 * time.Hour)}},
	}
}

func sampleIdentity(mesh bool) control.Identity {
	return control.Identity{
		App:      "web",
		SPIFFEID: "spiffe://pier.internal/app/web",
		Certificate: identity.CertInfo{Subject: "web", SPIFFEID: "spiffe://pier.internal/app/web", Serial: "c0ffee01",
			NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(23*time.Hour + 5*time.Minute)},
		TrustDomain: "pier.internal",
		Machines:    []control.IdentityMachine{{ID: "m-2f1c", State: "started"}, {ID: "m-9ab0", State: "started"}},
		Mesh:        mesh,
		Authority:   sampleAuthority(),
	}
}

func TestMeshOutput(t *testing.T) {
	noMachines := sampleIdentity(false)
	noMachines.Machines = nil
	for _, tc := range []struct {
		file  string
		write func(*bytes.Buffer) error
	}{
		{"mesh_identity.txt", func(b *bytes.Buffer) error { return writeIdentity(b, sampleIdentity(true), testNow) }},
		{"mesh_identity_nomesh.txt", func(b *bytes.Buffer) error { return writeIdentity(b, noMachines, testNow) }},
		{"mesh_status.txt", func(b *bytes.Buffer) error { return writeMeshStatus(b, sampleAuthority(), testNow) }},
		{"mesh_status_fresh.txt", func(b *bytes.Buffer) error {
			st := sampleAuthority()
			st.Anchors, st.PreviousIssuers = st.Anchors[1:], nil
			return writeMeshStatus(b, st, testNow)
		}},
		{"mesh_rotate.txt", func(b *bytes.Buffer) error { writeRotated(b, sampleAuthority(), false, testNow); return nil }},
		{"mesh_rotate_anchor.txt", func(b *bytes.Buffer) error { writeRotated(b, sampleAuthority(), true, testNow); return nil }},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(&b); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.file, b.String())
		})
	}
}

// fakeAPI serves the mesh's read endpoints with the samples above.
func fakeAPI(t *testing.T) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		switch r.URL.Path {
		case "/v1/metrics/apps":
			v = sampleApps()
		case "/v1/metrics/edges":
			v = sampleStats()
		case "/v1/metrics/apps/web":
			if r.URL.Query().Get("window") != "10s" || r.URL.Query().Get("limit") != "20" {
				t.Errorf("top asked %s, want window=10s&limit=20", r.URL.RawQuery)
			}
			v = sampleTop()
		case "/v1/mesh/identities/web":
			v = sampleIdentity(true)
		case "/v1/apps/sleepy": // idle: its machine is stopped, kept for the next request
			v = map[string]any{"name": "sleepy", "count": 1, "release": 1, "url": "http://sleepy.localhost/",
				"machines": []map[string]any{{"id": "5c0ffee", "app": "sleepy", "release": 1, "state": "stopped"}}}
		case "/v1/apps":
			v = []map[string]any{{"name": "sleepy", "count": 1, "release": 1, "url": "http://sleepy.localhost/",
				"machines": []map[string]any{{"id": "5c0ffee", "app": "sleepy", "release": 1, "state": "stopped"}}}}
		default:
			http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("PIER_API", srv.URL)
	t.Setenv("PIER_TOKEN", "tok")
}

// TestCommandsAgainstAPI runs the commands against a fake API: stdout is
// not a terminal, so top prints one snapshot and exits.
func TestCommandsAgainstAPI(t *testing.T) {
	fakeAPI(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"stat"}, []string{"APP  ", "web ", "99.9%", "120"}},
		{[]string{"stat", "--edges", "-w", "5m"}, []string{"FROM", "edge ", "reports", "5 "}},
		{[]string{"stat", "--json"}, []string{`"dst": "web"`, `"dst": "billing"`, `"denied": 5`}},
		{[]string{"top", "web"}, []string{"web, last 10s", "/users/:id", "m-9ab0"}},
		{[]string{"top", "web", "--json"}, []string{`"paths"`, `"machines"`}},
		{[]string{"mesh", "identity", "web"}, []string{"spiffe://pier.internal/app/web", "c0ffee01"}},
		// Stopped machines are listed but do not count as running.
		{[]string{"status", "-a", "sleepy"}, []string{"Machines: 1 wanted, 0 running", "5c0ffee", "stopped"}},
		{[]string{"apps", "list"}, []string{"sleepy", "0/1"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := NewRoot(strings.NewReader(""), &out, &errOut)
			root.SetArgs(tc.args)
			if err := root.ExecuteContext(context.Background()); err != nil {
				t.Fatalf("%v\n%s", err, errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), "\x1b[") {
				t.Errorf("escape codes written to a non-terminal:\n%q", out.String())
			}
		})
	}
}

// TestTopLive redraws with clear-screen codes until its context ends.
func TestTopLive(t *testing.T) {
	fakeAPI(t)
	var out bytes.Buffer
	e := &env{stdout: &out}
	c := client.New(os.Getenv("PIER_API"), "tok")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.topLive(ctx, c, "web", 10*time.Second, 20*time.Millisecond, 20, sampleTop()); err != nil {
		t.Fatal(err)
	}
	frames := strings.Count(out.String(), "\x1b[H\x1b[2J")
	if frames < 2 {
		t.Errorf("%d frames in 200ms at a 20ms interval; want it to redraw", frames)
	}
}

// TestTopFlags refuses an interval that would hammer the API and a limit
// the server would not honour, before asking it anything.
func TestTopFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--interval", "10ms"}, "--interval"},
		{[]string{"--limit", "0"}, "--limit"},
		{[]string{"--limit", "101"}, "--limit"},
	} {
		root := NewRoot(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
		root.SetArgs(append([]string{"top", "web"}, tc.args...))
		if err := root.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one about %s", tc.args, err, tc.want)
		}
	}
}
