package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEdgeProxyAndAppLifecycle covers what a user sees of the edge proxy
// (forwarding headers, h2c, the 404 page, metrics) and of an app's life:
// logs -f, scale up and down, destroy.
func TestEdgeProxyAndAppLifecycle(t *testing.T) {
	s := startServer(t)
	s.mustPier("launch", copyApp(t, "go"), "--name", "front", "--yes")

	t.Run("forwarding headers", func(t *testing.T) {
		body := s.mustGet("front", "/headers", "X-Forwarded-For: 127.0.0.1")
		for _, want := range []string{"X-Forwarded-Proto: http\n", fmt.Sprintf("X-Forwarded-Host: front.localhost\n")} {
			if !strings.Contains(body, want) {
				t.Errorf("upstream saw headers:\n%s\nwant %q", body, want)
			}
		}
		if strings.Contains(body, "X-Request-Id: \n") {
			t.Errorf("no request id:\n%s", body)
		}
	})

	t.Run("h2c", func(t *testing.T) {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		c := &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", s.httpPort), nil)
		req.Host = "front.localhost"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || !strings.Contains(string(b), "hello from go") {
			t.Errorf("h2c: %s %q", resp.Proto, b)
		}
	})

	t.Run("unknown host", func(t *testing.T) {
		code, body, err := s.get("nosuchapp", "/")
		if err != nil || code != 404 || !strings.Contains(body, "pier") || !strings.Contains(body, "nosuchapp.localhost") {
			t.Errorf("unknown host: %d %q %v", code, body, err)
		}
	})

	t.Run("metrics per app", func(t *testing.T) {
		b := s.api("/metrics")
		for _, want := range []string{`pier_http_requests_total{app="front",code="200"}`, `pier_http_request_duration_seconds_bucket{app="front"`} {
			if !strings.Contains(b, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("logs follow and scale", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		follow := exec.CommandContext(ctx, pierBin, "logs", "-f", "-n", "0", "-a", "front")
		follow.Env = s.env()
		out, err := follow.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); follow.Wait() }()
		time.Sleep(300 * time.Millisecond) // let the follower subscribe
		s.mustPier("scale", "count", "3", "-a", "front")
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		got := 0
		timeout := time.After(15 * time.Second)
		for got < 2 {
			select {
			case l := <-lines:
				if strings.Contains(l, "listening on") {
					got++
				}
			case <-timeout:
				t.Fatalf("logs -f showed %d of the 2 new machines' start lines", got)
			}
		}
		eventually(t, 10*time.Second, "3 healthy machines", func() error {
			n := 0
			for _, m := range s.status("front").Machines {
				if m.Healthy {
					n++
				}
			}
			if n != 3 {
				return fmt.Errorf("%d healthy", n)
			}
			return nil
		})
		s.mustPier("scale", "count", "1", "-a", "front")
		if st := s.status("front"); len(st.Machines) != 1 || st.Count != 1 {
			t.Errorf("after scale down: count %d, %d machines", st.Count, len(st.Machines))
		}
		s.mustGet("front", "/", "hello from go")
	})

	t.Run("events", func(t *testing.T) {
		b := s.api("/v1/apps/front/events")
		for _, want := range []string{`"type": "app.create"`, `"type": "deploy"`, `"message": "scaled to 3 machine(s)"`, `"message": "scaled to 1 machine(s)"`} {
			if !strings.Contains(b, want) {
				t.Errorf("events lack %s:\n%s", want, b)
			}
		}
	})

	t.Run("destroy", func(t *testing.T) {
		s.mustPier("apps", "destroy", "front", "--yes")
		if code, _, _ := s.get("front", "/"); code != 404 {
			t.Errorf("destroyed app still answers %d", code)
		}
		if _, err := os.Stat(filepath.Join(s.dataDir, "builds", "front")); !os.IsNotExist(err) {
			t.Errorf("builds of a destroyed app remain: %v", err)
		}
		if out := s.mustPier("apps", "list"); strings.Contains(out, "front") {
			t.Errorf("apps list after destroy:\n%s", out)
		}
		if n := s.running(); n != 0 {
			t.Errorf("%d machines of a destroyed app still run", n)
		}
	})
}
