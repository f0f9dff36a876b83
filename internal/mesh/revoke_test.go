package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pier-dev/pier/internal/metrics"
)

// holder is a callee app whose calls stay open until someone ends them:
// /ws echoes WebSocket messages and /stream answers a line every 50ms.
// Each handler names itself on ended when its connection or stream is
// gone ("ws", "HTTP/1.1 /stream", "HTTP/2.0 /stream"), so a test sees the
// callee's side of a cut too.
func holder(t *testing.T) (addr string, ended <-chan string) {
	t.Helper()
	ch := make(chan string, 16)
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer func() { c.Close(); ch <- "ws" }()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, append([]byte("echo:"), msg...))
		}
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		defer func() { ch <- r.Proto + " /stream" }()
		w.Header().Set("X-Seen-Xfcc", r.Header.Get("X-Forwarded-Client-Cert"))
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := io.WriteString(w, "tick\n"); err != nil {
				return
			}
			http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
	return serveH2C(t, mux), ch
}

// carry runs another front listener whose connections all come from src
// to api.
func (f *fixture) carry(t *testing.T, src string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { ln.Close(); cancel() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.m.Carry(ctx, c, src, "api")
		}
	}()
	return ln.Addr().String()
}

// openCalls opens, through the front listener at addr, the three kinds of
// long-lived call and checks that each carries bytes.
type openCalls struct {
	ws         *websocket.Conn
	tunnel     net.Conn
	tunnelBody *bufio.Reader
	h2Body     io.ReadCloser
}

func open(t *testing.T, addr string) *openCalls {
	t.Helper()
	oc := &openCalls{}

	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	oc.ws = ws
	if got := wsEcho(ws, "hello"); got != "echo:hello" {
		t.Fatalf("websocket: %q", got)
	}

	// A client that says nothing at first (as the server-speaks-first
	// protocols do) is tunnelled as opaque TCP; it then speaks HTTP/1.1
	// over the tunnel, so the callee sees no mesh header.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	oc.tunnel = c
	time.Sleep(3 * sniffTimeout)
	fmt.Fprint(c, "GET /stream HTTP/1.1\r\nHost: api.internal\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Seen-Xfcc") != "" {
		t.Fatalf("tunnel: %s, the callee saw XFCC %q; want 200 over an opaque tunnel (no mesh header)", resp.Status, resp.Header.Get("X-Seen-Xfcc"))
	}
	oc.tunnelBody = bufio.NewReader(resp.Body)
	if line, err := oc.tunnelBody.ReadString('\n'); err != nil || line != "tick\n" {
		t.Fatalf("tunnel: %q %v", line, err)
	}
	c.SetReadDeadline(time.Time{})

	// A streaming answer on HTTP/2 (h2c), as a gRPC server stream.
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	resp, err = (&http.Client{Transport: tr}).Get("http://" + addr + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.ProtoMajor != 2 || !strings.HasPrefix(resp.Header.Get("X-Seen-Xfcc"), "By=") {
		t.Fatalf("h2c stream: %s, XFCC %q; want HTTP/2 through the mesh", resp.Proto, resp.Header.Get("X-Seen-Xfcc"))
	}
	oc.h2Body = resp.Body
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "tick\n" {
		t.Fatalf("h2c stream: %q %v", line, err)
	}
	return oc
}

// wsEcho sends msg and returns the answer, or the error.
func wsEcho(ws *websocket.Conn, msg string) string {
	if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		return "error " + err.Error()
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer ws.SetReadDeadline(time.Time{})
	_, got, err := ws.ReadMessage()
	if err != nil {
		return "error " + err.Error()
	}
	return string(got)
}

// endsWithin reads from r until it fails, and says how: nil when the
// stream was closed within d, an error when it still carried bytes or
// hung at d.
func endsWithin(d time.Duration, read func() error, setDeadline func(time.Time)) error {
	deadline := time.Now().Add(d)
	setDeadline(deadline)
	for range 10_000 { // bounded: a live stream ticks every 50ms
		err := read()
		if err == nil {
			if time.Now().After(deadline) {
				return errors.New("still carrying bytes")
			}
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("still open at the deadline: %w", err)
		}
		return nil
	}
	return errors.New("still carrying bytes")
}

// Revoking an edge cuts its calls that are open at once, on both sides:
// a WebSocket, an opaque TCP tunnel and a streaming HTTP/2 answer. Another
// caller's calls to the same app go on, and new calls of the revoked edge
// are refused.
func TestRevokeCutsOpenCalls(t *testing.T) {
	backend, ended := holder(t)
	f := newFixture(t, backend)
	f.policy.set("other", "api", true)
	otherAddr := f.carry(t, "other")

	web := open(t, f.front.Addr().String())
	other := open(t, otherAddr)

	f.policy.set("web", "api", false)
	f.m.Revoke("web", "api")

	const within = 5 * time.Second
	if err := endsWithin(within, func() error { _, _, err := web.ws.ReadMessage(); return err },
		func(d time.Time) { web.ws.SetReadDeadline(d) }); err != nil {
		t.Errorf("websocket web -> api after revoke: %v", err)
	}
	if err := endsWithin(within, func() error { _, err := web.tunnelBody.ReadString('\n'); return err },
		func(d time.Time) { web.tunnel.SetReadDeadline(d) }); err != nil {
		t.Errorf("TCP tunnel web -> api after revoke: %v", err)
	}
	// A response body has no deadline: close it at the deadline instead.
	h2 := bufio.NewReader(web.h2Body)
	timer := time.AfterFunc(within, func() { web.h2Body.Close() })
	var err error
	for range 10_000 {
		if _, err = h2.ReadString('\n'); err != nil {
			break
		}
	}
	if !timer.Stop() {
		t.Errorf("HTTP/2 stream web -> api after revoke: still carrying bytes after %s", within)
	}

	// The callee's side of each of web's calls ended too.
	got := map[string]bool{}
	deadline := time.After(within)
	for len(got) < 3 {
		select {
		case name := <-ended:
			got[name] = true
		case <-deadline:
			t.Fatalf("the callee's side of web's calls: only %v ended within %s, want ws, HTTP/1.1 /stream, HTTP/2.0 /stream", got, within)
		}
	}

	// Nothing gets through any more on web's WebSocket.
	if got := wsEcho(web.ws, "after"); !strings.HasPrefix(got, "error") {
		t.Errorf("web's WebSocket after revoke answered %q", got)
	}
	// other's calls are untouched.
	if got := wsEcho(other.ws, "still"); got != "echo:still" {
		t.Errorf("other's WebSocket after revoking web -> api: %q, want an echo", got)
	}
	other.tunnel.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := other.tunnelBody.ReadString('\n'); err != nil || line != "tick\n" {
		t.Errorf("other's tunnel after revoking web -> api: %q %v", line, err)
	}
	// And web's new calls are refused.
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+f.front.Addr().String()+"/ws", nil); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("new websocket web -> api: %v, want 403", err)
	}

	var edge metrics.Stat
	for _, s := range f.rec.Edges(time.Minute) {
		if s.Src == "web" && s.Dst == "api" {
			edge = s
		}
	}
	// Three calls cut, one new call refused.
	if edge.Denied != 4 {
		t.Errorf("web -> api denied %d, want 4 (3 cut, 1 refused)", edge.Denied)
	}
}

// A policy change the mesh is not told of (no Revoke) still ends the calls
// it no longer allows, at the next recheck.
func TestRecheckCutsCallsThePolicyNoLongerAllows(t *testing.T) {
	backend, _ := holder(t)
	f := newFixtureWith(t, backend, func(c *Config) { c.RecheckEvery = 50 * time.Millisecond })
	web := open(t, f.front.Addr().String())
	f.policy.set("web", "api", false)
	if err := endsWithin(5*time.Second, func() error { _, _, err := web.ws.ReadMessage(); return err },
		func(d time.Time) { web.ws.SetReadDeadline(d) }); err != nil {
		t.Errorf("websocket web -> api once the policy denies it: %v", err)
	}
	if err := endsWithin(5*time.Second, func() error { _, err := web.tunnelBody.ReadString('\n'); return err },
		func(d time.Time) { web.tunnel.SetReadDeadline(d) }); err != nil {
		t.Errorf("TCP tunnel web -> api once the policy denies it: %v", err)
	}
}
