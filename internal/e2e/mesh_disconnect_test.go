package e2e

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestMeshDisconnectCutsOpenCalls is the red team's attack (security issue
// 11, item 6): web's own code opens a WebSocket and an opaque TCP tunnel
// to api while connected, and keeps them across `pier disconnect web api`.
// web cannot start without API_URL, so the disconnect's roll fails and the
// machine holding the calls stays: the calls must end anyway, and soon,
// without waiting for the roll.
func TestMeshDisconnectCutsOpenCalls(t *testing.T) {
	s := startRuncServer(t)
	s.launchApp("meshapp", "api", "")
	s.launchApp("meshapp", "web", `[env]
NEEDS = "API_URL"

[deploy]
wait_timeout = "45s"

[[connections]]
resource = "api"
access = "call"
`)
	if _, got := s.call("web", "GET", "/getenv?name=API_URL", ""); got != "http://api.internal" {
		t.Fatalf("API_URL in web = %q", got)
	}
	before := s.status("web").Machines
	if len(before) != 1 {
		t.Fatalf("web has %d machines, want 1", len(before))
	}

	// Two calls from inside web's machine, held open by the app.
	_, ws := s.call("web", "GET", "/hold?ws="+url.QueryEscape("ws://api.internal/ws"), "")
	if ws != "held 1 echo:p1" {
		t.Fatalf("WebSocket web -> api: %q", ws)
	}
	// Through the tunnel the callee sees no mesh header: "xfcc=" is empty.
	_, tcp := s.call("web", "GET", "/hold?tcp=api.internal:80", "")
	if tcp != "held 2 200 xfcc=" {
		t.Fatalf("TCP tunnel web -> api: %q, want an answer over an opaque tunnel", tcp)
	}
	poke := func(id string) string {
		_, got := s.call("web", "GET", "/poke?id="+id, "")
		return got
	}
	if got := poke("1"); got != "echo:p2" {
		t.Fatalf("WebSocket before disconnect: %q", got)
	}
	if got := poke("2"); got != "200 xfcc=" {
		t.Fatalf("TCP tunnel before disconnect: %q", got)
	}

	type result struct {
		out string
		err error
	}
	disconnected := make(chan result, 1)
	begin := time.Now()
	go func() {
		out, err := s.pier("disconnect", "web", "api")
		disconnected <- result{out, err}
	}()

	// Both calls end within a bound far shorter than the roll, which waits
	// 45s for a machine that never listens.
	const within = 20 * time.Second
	cut := map[string]string{}
	for i := 0; i < 200 && len(cut) < 2 && time.Since(begin) < within; i++ {
		for _, id := range []string{"1", "2"} {
			if _, done := cut[id]; done {
				continue
			}
			if got := poke(id); strings.HasPrefix(got, "error") {
				cut[id] = got
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(cut) < 2 {
		t.Fatalf("open calls still carried bytes %s after `pier disconnect web api` began: WebSocket %q, tunnel %q (cut: %v)",
			within, poke("1"), poke("2"), cut)
	}
	t.Logf("both calls cut %s after the disconnect began: %v", time.Since(begin).Round(100*time.Millisecond), cut)

	var r result
	select {
	case r = <-disconnected:
	case <-time.After(4 * time.Minute):
		t.Fatal("pier disconnect web api did not finish within 4 minutes")
	}
	if !strings.Contains(r.out, "the roll failed") {
		t.Fatalf("pier disconnect web api: %v\n%s\nwant the roll to fail (web cannot start without API_URL)", r.err, r.out)
	}
	// The machine that opened the calls is still the one serving, with
	// its old environment, and its calls stay cut.
	after := s.status("web").Machines
	if len(after) != 1 || after[0].ID != before[0].ID {
		t.Fatalf("web's machines after the failed roll: %+v, want %s still", after, before[0].ID)
	}
	if _, got := s.call("web", "GET", "/getenv?name=API_URL", ""); got != "http://api.internal" {
		t.Fatalf("the old machine's API_URL = %q", got)
	}
	for _, id := range []string{"1", "2"} {
		if got := poke(id); !strings.HasPrefix(got, "error") {
			t.Errorf("held call %s after the disconnect: %q, want it closed", id, got)
		}
	}
	// New calls of every kind are refused.
	if got := s.fromMachine("web", "http://api.internal/"); !strings.HasPrefix(got, "403 ") {
		t.Errorf("web -> api after disconnect: %q, want 403", got)
	}
	if _, got := s.call("web", "GET", "/hold?ws="+url.QueryEscape("ws://api.internal/ws"), ""); !strings.HasPrefix(got, "error") {
		t.Errorf("new WebSocket web -> api after disconnect: %q, want an error", got)
	}
	if _, got := s.call("web", "GET", "/hold?tcp=api.internal:80", ""); !strings.Contains(got, "error") {
		t.Errorf("new TCP tunnel web -> api after disconnect: %q, want an error", got)
	}
	// The cut calls count as denied, with the three refused.
	if st := s.edgeStat("web", "api"); st.Denied != 5 {
		t.Errorf("web -> api denied %d, want 5 (2 cut, 3 refused)", st.Denied)
	}
}
