package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// TestHTTPSLocalDomain serves apps at https://<app>.localhost with
// certificates from pier's CA: they verify against `pier certs trust`, h2
// is negotiated, TLS 1.1 is refused, and an app with force_https has its
// plain-HTTP requests redirected.
func TestHTTPSLocalDomain(t *testing.T) {
	httpsPort := freePort(t)
	s := startServerWith(t, "--runtime", "process", "--https-addr", fmt.Sprintf("127.0.0.1:%d", httpsPort))
	s.mustPier("launch", copyApp(t, "go"), "--name", "web", "--yes")

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(s.mustPier("certs", "trust"))) {
		t.Fatalf("`pier certs trust` printed no certificate")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", httpsPort)

	t.Run("certificate from pier's CA, h2", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "web.localhost", RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatalf("TLS to web.localhost: %v", err)
		}
		st := conn.ConnectionState()
		conn.Close()
		if st.NegotiatedProtocol != "h2" {
			t.Errorf("ALPN negotiated %q, want h2", st.NegotiatedProtocol)
		}
		if leaf := st.PeerCertificates[0]; !slices.Contains(leaf.DNSNames, "web.localhost") {
			t.Errorf("certificate names %v, want web.localhost", leaf.DNSNames)
		}
		resp, body := httpsGet(t, addr, pool, "web.localhost", "/headers")
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 || !strings.Contains(body, "X-Forwarded-Proto: https\n") {
			t.Errorf("GET https://web.localhost/headers: %s %s\n%s", resp.Status, resp.Proto, body)
		}
	})

	t.Run("TLS 1.1 refused", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "web.localhost", RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
		if err == nil {
			conn.Close()
			t.Fatal("a TLS 1.1 handshake succeeded")
		}
	})

	t.Run("no certificate for unknown names", func(t *testing.T) {
		for _, name := range []string{"nosuchapp.localhost", "www.example.com"} {
			conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, RootCAs: pool})
			if err == nil {
				conn.Close()
				t.Errorf("handshake for %s succeeded", name)
			}
		}
	})

	t.Run("force_https", func(t *testing.T) {
		dir := copyApp(t, "go")
		writeFile(t, filepath.Join(dir, "pier.toml"), "app = \"secure\"\n\n[http]\nforce_https = true\n")
		s.mustPier("launch", dir, "--yes")
		noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		plain := func(host, path string) (*http.Response, error) {
			req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path), strings.NewReader("x"))
			req.Host = host
			resp, err := noRedirect.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			return resp, err
		}
		want := fmt.Sprintf("https://secure.localhost:%d/a/b?x=1&y=2", httpsPort)
		eventually(t, 10*time.Second, "plain HTTP to secure is redirected", func() error {
			resp, err := plain(fmt.Sprintf("secure.localhost:%d", s.httpPort), "/a/b?x=1&y=2")
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
				return fmt.Errorf("%s, Location %q; want 308 to %s", resp.Status, resp.Header.Get("Location"), want)
			}
			return nil
		})
		if resp, err := plain("secure.localhost", "/.well-known/acme-challenge/token"); err != nil || resp.StatusCode == http.StatusPermanentRedirect {
			t.Errorf("ACME challenge path redirected: %v %v", resp, err)
		}
		if resp, err := plain("web.localhost", "/"); err != nil || resp.StatusCode != 200 {
			t.Errorf("app without force_https: %v %v", resp, err)
		}
		if resp, body := httpsGet(t, addr, pool, "secure.localhost", "/"); resp.StatusCode != 200 || !strings.Contains(body, "hello from go") {
			t.Errorf("GET https://secure.localhost/: %s %q", resp.Status, body)
		}
	})
}

// TestHTTPSCustomDomainACME obtains a certificate for a custom domain from
// a real ACME server (pebble, with challtestsrv as its DNS), serves the app
// with it, sees it renewed before it expires, and removes it.
func TestHTTPSCustomDomainACME(t *testing.T) {
	pebble, challtestsrv := findPebble(t)
	certsDir := pebbleCerts(t)
	acmePort, httpsPort := freePort(t), freePort(t)
	minica := filepath.Join(certsDir, "pebble.minica.pem")
	// Certificates live 60 s; renewal starts when 2/3 of that is left
	// (after ~20 s), checked every 2 s.
	s := startServerWith(t, "--runtime", "process", "--https-addr", fmt.Sprintf("127.0.0.1:%d", httpsPort),
		"--acme-ca", fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort), "--acme-ca-root", minica, "--acme-email", "e2e@example.test",
		"--cert-renew-check-interval", "2s", "--cert-renewal-window-ratio", "0.67")
	mgmt := startPebble(t, pebble, challtestsrv, certsDir, acmePort, s.httpPort, 60)
	root := pebbleRoot(t, mgmt, minica)
	s.mustPier("launch", copyApp(t, "go"), "--name", "web", "--yes")
	addr := fmt.Sprintf("127.0.0.1:%d", httpsPort)
	const domain = "www.example.test"

	t.Run("bad requests", func(t *testing.T) {
		for _, tt := range []struct {
			app, domain string
			code        int
			want        string
		}{
			{"web", "*.example.test", 400, "wildcard"},
			{"web", "127.0.0.1", 400, "IP address"},
			{"web", "api.localhost", 400, "server's own names"},
			{"nosuchapp", "api.example.test", 404, "not found"},
		} {
			code, body := s.apiPost("/v1/certs", fmt.Sprintf(`{"app": %q, "domain": %q}`, tt.app, tt.domain))
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Errorf("add %s to %s: %d %s, want %d mentioning %q", tt.domain, tt.app, code, body, tt.code, tt.want)
			}
		}
	})

	s.mustPier("certs", "add", "-a", "web", domain)
	if code, body := s.apiPost("/v1/certs", fmt.Sprintf(`{"app": "web", "domain": %q}`, domain)); code != 409 {
		t.Errorf("adding %s twice: %d %s, want 409", domain, code, body)
	}
	var issued pier.Cert
	eventually(t, 60*time.Second, "certificate issued", func() error {
		var list []pier.Cert
		if err := json.Unmarshal([]byte(s.mustPier("certs", "list", "--json")), &list); err != nil {
			return err
		}
		if len(list) != 1 || list[0].Status != pier.CertIssued {
			return fmt.Errorf("certs: %+v", list)
		}
		issued = list[0]
		return nil
	})
	if issued.Domain != domain || issued.App != "web" || issued.NotAfter.IsZero() || issued.Issuer == "" {
		t.Errorf("issued cert: %+v", issued)
	}
	if out := s.mustPier("certs", "list"); !strings.Contains(out, domain) || !strings.Contains(out, "issued") {
		t.Errorf("pier certs list:\n%s", out)
	}

	first := serve(t, addr, domain, root)
	if !slices.Contains(first.DNSNames, domain) {
		t.Errorf("served certificate names %v, want %s", first.DNSNames, domain)
	}
	if resp, body := httpsGet(t, addr, root, domain, "/"); resp.StatusCode != 200 || !strings.Contains(body, "hello from go") {
		t.Errorf("GET https://%s/: %s %q", domain, resp.Status, body)
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", s.httpPort), nil)
	req.Host = domain
	if resp, err := proxyClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("plain HTTP to %s: %v %v", domain, resp, err)
	} else {
		resp.Body.Close()
	}
	if fi, err := os.Stat(filepath.Join(s.dataDir, "certs")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("certs dir: %v %v, want mode 0700", fi.Mode(), err)
	}

	t.Run("renewed before expiry", func(t *testing.T) {
		deadline := first.NotAfter
		for {
			cur := serve(t, addr, domain, root)
			if cur.SerialNumber.Cmp(first.SerialNumber) != 0 {
				if !time.Now().Before(deadline) {
					t.Fatalf("renewed only after the first certificate expired (%s)", deadline)
				}
				// The window ratio (2/3 of 60 s) has renewal start with
				// 40 s left; pebble's ARI window may pick an earlier time,
				// never a later one. certmagic's default (1/3) would leave
				// only 20 s.
				if left := time.Until(deadline); left < 30*time.Second {
					t.Errorf("renewed with only %s left: the renewal window ratio was not applied", left.Round(time.Second))
				}
				t.Logf("renewed: serial %x -> %x, %s before expiry", first.SerialNumber, cur.SerialNumber, time.Until(deadline).Round(time.Second))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still serving serial %x at its expiry %s", first.SerialNumber, deadline)
			}
			time.Sleep(time.Second)
		}
		eventually(t, 10*time.Second, "renewal recorded in the app's events", func() error {
			if ev := s.api("/v1/apps/web/events"); !strings.Contains(ev, "cert.renew") {
				return fmt.Errorf("events: %s", ev)
			}
			return nil
		})
	})

	t.Run("restart", func(t *testing.T) {
		s.stop(syscall.SIGTERM)
		s.start()
		// Loaded from storage (or renewed meanwhile), not obtained anew
		// from nothing: either way served again without a new `certs add`.
		eventually(t, 30*time.Second, "certificate served after a restart", func() error {
			conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: domain, RootCAs: root})
			if err != nil {
				return err
			}
			return conn.Close()
		})
		eventually(t, 30*time.Second, "app served over HTTPS after a restart", func() error {
			if resp, body := httpsGet(t, addr, root, domain, "/"); resp.StatusCode != 200 || !strings.Contains(body, "hello from go") {
				return fmt.Errorf("%s %q", resp.Status, body)
			}
			return nil
		})
	})

	t.Run("remove", func(t *testing.T) {
		s.mustPier("certs", "remove", domain)
		if conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: domain, RootCAs: root}); err == nil {
			conn.Close()
			t.Error("a removed domain still has a certificate")
		}
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", s.httpPort), nil)
		req.Host = domain
		if resp, err := proxyClient.Do(req); err != nil || resp.StatusCode != 404 {
			t.Errorf("plain HTTP to a removed domain: %v %v, want 404", resp, err)
		} else {
			resp.Body.Close()
		}
		if out := s.mustPier("certs", "list"); !strings.Contains(out, "No custom domains") {
			t.Errorf("pier certs list after remove:\n%s", out)
		}
	})

	t.Run("destroying the app removes its domains", func(t *testing.T) {
		s.mustPier("certs", "add", "-a", "web", "api.example.test")
		s.mustPier("apps", "destroy", "web", "--yes")
		if out := s.mustPier("certs", "list"); !strings.Contains(out, "No custom domains") {
			t.Errorf("pier certs list after destroying the app:\n%s", out)
		}
		// The name is free again.
		s.mustPier("apps", "create", "other")
		s.mustPier("certs", "add", "-a", "other", "api.example.test")
	})
}

// httpsGet requests path of host through the HTTPS listener at addr.
func httpsGet(t *testing.T, addr string, roots *x509.CertPool, host, path string) (*http.Response, string) {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	_, port, _ := net.SplitHostPort(addr)
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("https://" + net.JoinHostPort(host, port) + path)
	if err != nil {
		t.Fatalf("GET https://%s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// serve returns the certificate served for name, verified against roots.
func serve(t *testing.T, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS to %s for %s: %v", addr, name, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// apiPost makes an authenticated POST of the API and returns status and body.
func (s *server) apiPost(path, body string) (int, string) {
	s.t.Helper()
	return s.apiSend(path, "application/json", strings.NewReader(body))
}

// apiSend POSTs body of the content type to the API, with the token, and
// returns status and body.
func (s *server) apiSend(path, contentType string, body io.Reader) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d%s", s.apiPort, path), body)
	req.Header.Set("Authorization", "Bearer "+s.token())
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// findPebble finds pebble and pebble-challtestsrv on PATH or in
// $(go env GOPATH)/bin, where scripts/deps.sh installs them.
func findPebble(t *testing.T) (pebble, challtestsrv string) {
	t.Helper()
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	find := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI but missing (scripts/deps.sh installs it)", name)
		}
		t.Skipf("%s not installed (run scripts/deps.sh)", name)
		return ""
	}
	return find("pebble"), find("pebble-challtestsrv")
}

// pebbleCerts is the test/certs directory of pebble's module: its HTTPS
// certificate for localhost and the minica root that signed it.
func pebbleCerts(t *testing.T) string {
	t.Helper()
	modcache, _ := exec.Command("go", "env", "GOMODCACHE").Output()
	dirs, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(modcache)), "github.com", "letsencrypt", "pebble", "v2@*", "test", "certs"))
	if len(dirs) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("pebble's module (test certificates) is missing from the module cache (scripts/deps.sh installs it)")
		}
		t.Skip("pebble's module is not in the module cache (run scripts/deps.sh)")
	}
	slices.Sort(dirs)
	return dirs[len(dirs)-1]
}

// startPebble runs challtestsrv as the DNS server that resolves every name
// to 127.0.0.1, and pebble with certificates valid for validity seconds,
// validating HTTP-01 challenges on httpPort. It returns pebble's
// management address.
func startPebble(t *testing.T, pebble, challtestsrv, certsDir string, acmePort, httpPort, validity int) string {
	t.Helper()
	dir := t.TempDir()
	dnsPort, mgmtPort, tlsPort, challMgmt := freePort(t), freePort(t), freePort(t), freePort(t)
	run(t, "challtestsrv", exec.Command(challtestsrv, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort), "-management", fmt.Sprintf("127.0.0.1:%d", challMgmt),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""))

	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           fmt.Sprintf("127.0.0.1:%d", acmePort),
		"managementListenAddress": fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate":             filepath.Join(certsDir, "localhost", "cert.pem"),
		"privateKey":              filepath.Join(certsDir, "localhost", "key.pem"),
		"httpPort":                httpPort,
		"tlsPort":                 tlsPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		// certificateValidityPeriod is deprecated and ignored by pebble
		// v2.10: the validity is a profile's.
		"profiles": map[string]any{"default": map[string]any{"description": "short-lived, for renewal tests", "validityPeriod": validity}},
	}}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pebble, "-config", cfgPath, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	run(t, "pebble", cmd)

	roots := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(certsDir, "pebble.minica.pem"))
	if err != nil || !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("pebble's minica root: %v", err)
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	eventually(t, 20*time.Second, "pebble answers", func() error {
		resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/dir", acmePort))
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return fmt.Sprintf("127.0.0.1:%d", mgmtPort)
}

// pebbleRoot fetches the root that pebble's certificates chain to (a new
// one each time pebble starts).
func pebbleRoot(t *testing.T, mgmt, minica string) *x509.CertPool {
	t.Helper()
	ca, _ := os.ReadFile(minica)
	trust := x509.NewCertPool()
	trust.AppendCertsFromPEM(ca)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: trust}}}
	resp, err := c.Get("https://" + mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("pebble's root: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if blk, _ := pem.Decode(b); blk == nil {
		t.Fatalf("pebble's root is not PEM: %q", b)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return pool
}

// run starts cmd for the rest of the test, logging its output if the test
// fails.
func run(t *testing.T, name string, cmd *exec.Cmd) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
}
