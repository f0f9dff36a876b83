package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServerRestartKeepsEverything restarts `pier server` while apps run,
// gracefully and with kill -9: state is intact, apps are served again, and
// no machine process is left over or duplicated.
func TestServerRestartKeepsEverything(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		dir := copyApp(t, "go")
		setVersion(t, dir, "keep", "v-one", "")
		s.mustPier("launch", dir, "--yes")
		s.mustPier("secrets", "set", "-a", "keep", "GREETING_SECRET=sesame")
		s.mustPier("scale", "count", "2", "-a", "keep")
		s.mustPier("launch", copyApp(t, "static"), "--name", "site", "--yes")
		s.mustGet("keep", "/", "secret=sesame")

		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(sig.String(), func(t *testing.T) {
				before := s.status("keep")
				s.stop(sig)
				// Isolated machines outlive the server, stopped or crashed;
				// host processes stop with it.
				if n := s.running(); s.isolated() && n != 3 {
					t.Fatalf("%d machines running after the server stopped (%v), want all 3", n, sig)
				} else if !s.isolated() && sig == syscall.SIGTERM && n > 0 {
					t.Fatalf("%d machines still running after a graceful stop", n)
				}
				s.start()
				eventually(t, 15*time.Second, "apps served after restart", func() error {
					st := s.status("keep")
					healthy := 0
					for _, m := range st.Machines {
						if m.Healthy {
							healthy++
						}
					}
					if healthy != 2 || len(st.Machines) != 2 {
						return fmt.Errorf("machines: %+v", st.Machines)
					}
					if _, body, err := s.get("keep", "/"); err != nil || !strings.Contains(body, "version=v-one secret=sesame") {
						return fmt.Errorf("keep: %q %v", body, err)
					}
					if _, body, err := s.get("site", "/"); err != nil || !strings.Contains(body, "hello from static") {
						return fmt.Errorf("site: %q %v", body, err)
					}
					return nil
				})
				after := s.status("keep")
				if after.Current == nil || before.Current == nil || after.Current.Version != before.Current.Version || after.Count != 2 {
					t.Errorf("state changed across restart: before %+v, after %+v", before.Current, after.Current)
				}
				if s.isolated() { // adopted: the same machines, not restarted
					for i, m := range after.Machines {
						if b := before.Machines[i]; m.ID != b.ID || m.PID != b.PID || m.Restarts != b.Restarts {
							t.Errorf("machine %d after the restart: %+v, before: %+v", i, m, b)
						}
					}
				}
				// Exactly the machines the server knows about run: 2 for keep, 1 for site.
				if n := s.running(); n != 3 {
					t.Errorf("%d machines running, want 3 (2 keep + 1 site)", n)
				}
				if out := s.mustPier("secrets", "list", "-a", "keep"); !strings.Contains(out, "GREETING_SECRET") {
					t.Errorf("secrets lost:\n%s", out)
				}
			})
		}
	})
}

// TestAPIRequiresToken checks that every API route refuses requests without
// the right bearer token.
func TestAPIRequiresToken(t *testing.T) {
	s := startServer(t)
	s.mustPier("apps", "create", "web")
	base := fmt.Sprintf("http://127.0.0.1:%d", s.apiPort)
	routes := []struct{ method, path string }{
		{"GET", "/v1/status"}, {"GET", "/v1/apps"}, {"POST", "/v1/apps"}, {"GET", "/v1/apps/web"},
		{"DELETE", "/v1/apps/web"}, {"POST", "/v1/apps/web/deploys"}, {"GET", "/v1/apps/web/releases"},
		{"POST", "/v1/apps/web/rollback"}, {"POST", "/v1/apps/web/scale"}, {"GET", "/v1/apps/web/secrets"},
		{"POST", "/v1/apps/web/secrets"}, {"POST", "/v1/apps/web/secrets/unset"}, {"GET", "/v1/apps/web/logs"},
		{"GET", "/v1/apps/web/events"}, {"GET", "/metrics"}, {"GET", "/v1/nonexistent"},
	}
	for _, r := range routes {
		for _, tok := range []string{"", "pier_wrong", s.token() + "x"} {
			req, _ := http.NewRequest(r.method, base+r.path, strings.NewReader(`{"app_name":"evil","count":0}`))
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || !strings.Contains(string(body), `"error"`) {
				t.Errorf("%s %s with token %q = %d %s; want 401 with an error", r.method, r.path, tok, resp.StatusCode, body)
			}
		}
	}
	// Nothing changed: the app is still there, no "evil" app was created.
	if out := s.mustPier("apps", "list"); !strings.Contains(out, "web") || strings.Contains(out, "evil") {
		t.Errorf("apps after unauthorised calls:\n%s", out)
	}
	// With the token, the API answers (and /metrics is Prometheus text).
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.mustPierTrim("auth", "token"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "go_goroutines") {
		t.Errorf("GET /metrics with token = %d\n%.300s", resp.StatusCode, body)
	}
	info, err := os.Stat(filepath.Join(s.dataDir, "admin.token"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("admin.token mode = %v, %v; want 0600", info.Mode().Perm(), err)
	}
}

func (s *server) mustPierTrim(args ...string) string { return strings.TrimSpace(s.mustPier(args...)) }

// TestSecretsEncryptedAtRest sets a secret, checks the app sees it, and that
// no file under the data dir holds it in plain text.
func TestSecretsEncryptedAtRest(t *testing.T) {
	s := startServer(t)
	dir := copyApp(t, "go")
	s.mustPier("launch", dir, "--name", "sec", "--yes")
	const value = "correct-horse-battery-staple-42"
	out := s.mustPier("secrets", "set", "-a", "sec", "GREETING_SECRET="+value)
	if !strings.Contains(out, "v2 is live") {
		t.Errorf("setting a secret did not roll the app:\n%s", out)
	}
	s.mustGet("sec", "/", "secret="+value)
	list := s.mustPier("secrets", "list", "-a", "sec")
	if strings.Contains(list, value) || !strings.Contains(list, "GREETING_SECRET") {
		t.Errorf("secrets list:\n%s", list)
	}
	// Stop the server so SQLite's WAL is checkpointed into the main file too.
	s.stop(syscall.SIGTERM)
	err := filepath.WalkDir(s.dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(value)) {
			t.Errorf("%s holds the secret in plain text", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.start()
	out = s.mustPier("secrets", "unset", "-a", "sec", "GREETING_SECRET")
	if !strings.Contains(out, "v3 is live") {
		t.Errorf("unset did not roll:\n%s", out)
	}
	if body := s.mustGet("sec", "/", "hello from go"); strings.Contains(body, value) {
		t.Errorf("secret still visible after unset: %q", body)
	}
}

// TestNoSecretAtRestUnderRunc: with apps in isolated machines, a secret
// and the credentials of every kind of connection are in the app's
// machines, and nowhere under the data dir in plain text: not while the
// machines run (their bundles live on a tmpfs), and not after a restart.
func TestNoSecretAtRestUnderRunc(t *testing.T) {
	s := startRuncServer(t)
	s.mustPier("launch", copyApp(t, "go"), "--name", "web", "--yes")
	const secret = "correct-horse-battery-staple-runc"
	s.mustPier("secrets", "set", "-a", "web", "GREETING_SECRET="+secret)
	values := []string{secret}
	for _, r := range [][2]string{{"postgres", "db"}, {"redis", "cache"}, {"bucket", "files"}} {
		s.mustPier("resources", "create", r[0], r[1])
		s.mustPier("connect", "web", r[1])
		var conn struct {
			Values map[string]string `json:"values"`
		}
		if err := json.Unmarshal([]byte(s.mustPier("connections", "show", "web", r[1], "--reveal", "--json")), &conn); err != nil {
			t.Fatal(err)
		}
		n := len(values)
		for k, v := range conn.Values {
			if strings.Contains(k, "PASSWORD") || strings.Contains(k, "SECRET") {
				values = append(values, v)
			}
		}
		if len(values) == n {
			t.Fatalf("connection to %s has no credentials: %v", r[1], conn.Values)
		}
	}
	s.mustGet("web", "/", "secret="+secret)
	grep := func(when string) {
		t.Helper()
		err := filepath.WalkDir(s.dataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			found, err := fileContains(path, values)
			if errors.Is(err, syscall.EINVAL) {
				return nil // a pinned network namespace (nsfs), not data
			}
			if err != nil {
				return err
			}
			for _, v := range found {
				t.Errorf("%s: %s holds a secret in plain text (%d bytes)", when, path, len(v))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	grep("while running")
	s.stop(syscall.SIGTERM)
	s.start()
	eventually(t, 30*time.Second, "app back after restart", func() error {
		if _, body, err := s.get("web", "/"); err != nil || !strings.Contains(body, "secret="+secret) {
			return fmt.Errorf("web: %q %v", body, err)
		}
		return nil
	})
	grep("after a restart")
}

// fileContains reads path in chunks (machines' disk images are sparse
// files of gigabytes) and returns which of values it holds.
func fileContains(path string, values []string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	longest := 0
	for _, v := range values {
		longest = max(longest, len(v))
	}
	buf := make([]byte, 0, 1<<20+longest)
	chunk := make([]byte, 1<<20)
	hit := map[string]bool{}
	for {
		n, err := f.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for _, v := range values {
			if !hit[v] && bytes.Contains(buf, []byte(v)) {
				hit[v] = true
			}
		}
		// Keep the tail: a value may straddle two chunks.
		if keep := max(longest-1, 0); len(buf) > keep {
			buf = append(buf[:0], buf[len(buf)-keep:]...)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	var out []string
	for _, v := range values {
		if hit[v] {
			out = append(out, v)
		}
	}
	return out, nil
}

func TestFileContains(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	// A value straddling the 1 MiB chunk boundary, and one absent.
	data := append(bytes.Repeat([]byte{0}, 1<<20-3), []byte("sesame-secret")...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := fileContains(path, []string{"sesame-secret", "absent-value"})
	if err != nil || len(got) != 1 || got[0] != "sesame-secret" {
		t.Fatalf("fileContains = %v, %v", got, err)
	}
}
