package proxy

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestWakeStartsAScaledToZeroApp: a request to an app with no machine calls
// Wake, and is served by the machine Wake brings, within the wait.
func TestWakeStartsAScaledToZeroApp(t *testing.T) {
	f := newFixture(t)
	f.p.WaitForBackend = wait
	f.p.AddApp("sleepy")
	addr := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "awake") }))
	woken := make(chan string, 1)
	f.p.Wake = func(app string) {
		woken <- app
		time.Sleep(50 * time.Millisecond) // the machine takes a moment to start
		f.p.Add(app, "m1", addr)
	}
	code, body, _ := f.get(t, "sleepy."+domain, "/")
	if code != 200 || body != "awake" {
		t.Fatalf("request to a sleeping app = %d %q", code, body)
	}
	if app := <-woken; app != "sleepy" {
		t.Fatalf("woke %q", app)
	}
	// With a machine in traffic, requests do not wake anything.
	f.get(t, "sleepy."+domain, "/")
	select {
	case app := <-woken:
		t.Fatalf("woke %q although a machine serves", app)
	default:
	}
}

// TestIdleCountsFromTheLastRequest: Idle is zero while a request is in
// flight and grows once the app gets none.
func TestIdleCountsFromTheLastRequest(t *testing.T) {
	f := newFixture(t)
	release := make(chan struct{})
	addr := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	f.p.Add("web", "m1", addr)
	done := make(chan struct{})
	go func() { defer close(done); f.get(t, "web."+domain, "/") }()
	deadline := time.Now().Add(wait)
	for !inflight(f.p, "web") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if d := f.p.Idle("web"); d != 0 {
		t.Fatalf("Idle with a request in flight = %s", d)
	}
	close(release)
	<-done
	time.Sleep(30 * time.Millisecond)
	if d := f.p.Idle("web"); d < 20*time.Millisecond {
		t.Fatalf("Idle after the request = %s", d)
	}
	if d := f.p.Idle("unknown"); d != 0 {
		t.Fatalf("Idle of an unknown app = %s", d)
	}
}

func inflight(p *Proxy, app string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.apps[app] != nil && p.apps[app].inflight > 0
}
