package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestStreamsResponse(t *testing.T) {
	f := newFixture(t)
	finish := make(chan struct{})
	var once sync.Once
	end := func() { once.Do(func() { close(finish) }) }
	f.p.Add("web", "m1", upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		http.NewResponseController(w).Flush()
		<-finish
		io.WriteString(w, "second\n")
	})))
	t.Cleanup(end) // before the upstream's Close, which waits for the handler

	resp := f.request(t, http.MethodGet, "web.apps.test", "/events", nil, nil)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		line, err := br.ReadString('\n')
		if err != nil {
			line = "error: " + err.Error()
		}
		first <- line
	}()
	// The upstream has not finished (it waits for finish), so a proxy that
	// buffers whole bodies cannot deliver the first chunk.
	select {
	case line := <-first:
		if line != "first\n" {
			t.Fatalf("first chunk = %q", line)
		}
	case <-time.After(wait):
		t.Fatal("first chunk not delivered while the upstream was still writing: the proxy buffers responses")
	}
	end()
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest = %q, %v", rest, err)
	}
}

func TestStreamsRequestBody(t *testing.T) {
	f := newFixture(t)
	const firstLen = 64 << 10
	gotFirst := make(chan struct{})
	f.p.Add("web", "m1", upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, firstLen/2)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		close(gotFirst)
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, int64(len(buf))+n)
	})))

	pr, pw := io.Pipe()
	const restLen = 4 << 20
	go func() {
		// The rest is written only once the upstream has read the start, so
		// the request completes only if the body streams through the proxy.
		if _, err := pw.Write(bytes.Repeat([]byte("a"), firstLen)); err != nil {
			pw.CloseWithError(err)
			return
		}
		select {
		case <-gotFirst:
		case <-time.After(wait):
			pw.CloseWithError(fmt.Errorf("upstream did not get the start of the body before the end was sent: the proxy buffers request bodies"))
			return
		}
		pw.Write(bytes.Repeat([]byte("b"), restLen))
		pw.Close()
	}()
	resp := f.request(t, http.MethodPost, "web.apps.test", "/upload", pr, nil)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != strconv.Itoa(firstLen+restLen) {
		t.Fatalf("upload: %d %q, want 200 %d", resp.StatusCode, b, firstLen+restLen)
	}
}

// upgradeEcho is an upstream that switches protocols and then greets the
// client and echoes every line back, prefixed.
func upgradeEcho(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || !strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade") {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("upstream hijack: %v", err)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(wait))
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.WriteString("hello from upstream\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo: " + line)
			brw.Flush()
		}
	})
}

// dialUpgrade opens a raw connection to the proxy and switches it to the
// websocket protocol.
func dialUpgrade(t *testing.T, f *fixture, host string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(wait))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", host)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade: %s %q, want 101", resp.Status, b)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("Upgrade header in the 101 = %q", resp.Header.Get("Upgrade"))
	}
	return conn, br
}

func TestUpgradeCarriesBytesBothWays(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, upgradeEcho(t)))
	conn, br := dialUpgrade(t, f, "web.apps.test")

	readLine := func(want string) {
		t.Helper()
		got, err := br.ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
	}
	readLine("hello from upstream\n") // upstream → client, unprompted
	for _, msg := range []string{"ping\n", "second message\n"} {
		if _, err := io.WriteString(conn, msg); err != nil { // client → upstream
			t.Fatal(err)
		}
		readLine("echo: " + msg)
	}
}

func TestH2C(t *testing.T) {
	p := newFixture(t).p
	p.Add("web", "m1", upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "from upstream via %s", r.Host)
	})))

	// Served as internal/server serves the edge: HTTP/1 and h2c.
	srv := httptest.NewUnstartedServer(p)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protocols
	srv.Start()
	t.Cleanup(srv.Close)

	var only http.Protocols
	only.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &only}
	t.Cleanup(tr.CloseIdleConnections)
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "web.apps.test"
	resp, err := (&http.Client{Transport: tr, Timeout: wait}).Do(req)
	if err != nil {
		t.Fatalf("h2c request: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 {
		t.Errorf("ProtoMajor = %d (%s), want 2", resp.ProtoMajor, resp.Proto)
	}
	if resp.StatusCode != 200 || string(b) != "from upstream via web.apps.test" {
		t.Errorf("got %d %q", resp.StatusCode, b)
	}
}
