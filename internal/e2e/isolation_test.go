package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAppMachinesAreIsolated launches an app under the runc runtime and
// checks, from inside it, what it can see and reach: not the host's files,
// pier's data or credentials, the host's services or other apps; it runs
// unprivileged and cannot write its own release.
func TestAppMachinesAreIsolated(t *testing.T) {
	need(t, "python3")
	s := startRuncServer(t)
	s.mustPier("launch", copyApp(t, "probe"), "--name", "probe", "--yes")
	s.mustPier("secrets", "set", "-a", "probe", "ONLY_FOR_PROBE=s3cret")
	s.mustPier("launch", copyApp(t, "go"), "--name", "neighbour", "--yes")

	probe := func(path string, q url.Values) (int, string) {
		t.Helper()
		code, body, err := s.get("probe", path+"?"+q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		return code, body
	}
	if code, body := probe("/whoami", nil); code != 200 || body != "65534:65534" {
		t.Errorf("app runs as %q (%d), want nobody 65534:65534", body, code)
	}
	hostName, _ := os.ReadFile("/etc/hostname")
	if _, body := probe("/read", url.Values{"path": {"/etc/hostname"}}); len(hostName) > 0 && strings.TrimSpace(body) == strings.TrimSpace(string(hostName)) {
		t.Errorf("app reads the host's /etc/hostname")
	}
	for _, p := range []string{filepath.Join(s.dataDir, "admin.token"), filepath.Join(s.home, ".config/pier/credentials.json"), "/etc/shadow", "/root", "/work", s.dataDir} {
		if code, body := probe("/list", url.Values{"path": {p}}); code == 200 {
			t.Errorf("app lists %s: %q", p, body)
		}
		if code, body := probe("/read", url.Values{"path": {p}}); code == 200 {
			t.Errorf("app reads %s: %.80q", p, body)
		}
	}
	if code, body := probe("/write", url.Values{"path": {"/app/app.py"}}); code == 200 {
		t.Errorf("app overwrote its own release: %q", body)
	}
	if code, body := probe("/write", url.Values{"path": {"/tmp/scratch"}}); code != 200 {
		t.Errorf("app cannot write /tmp: %q", body)
	}
	var env map[string]string
	_, body := probe("/env", nil)
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatalf("env: %v %q", err, body)
	}
	if env["ONLY_FOR_PROBE"] != "s3cret" || env["PORT"] != "8080" {
		t.Errorf("app env lacks its secret or PORT: %v", env)
	}
	for k := range env {
		if k == "PIER_TOKEN" || k == "PIER_API" || strings.HasPrefix(k, "GOCACHE") {
			t.Errorf("server setting %s leaked into the app", k)
		}
	}
	// Host services, on loopback and on the bridge gateway, and the
	// neighbour app's machine.
	ln, err := net.Listen("tcp", "0.0.0.0:0")
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
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	st := s.status("neighbour")
	gateway := st.Machines[0].Addr[:strings.LastIndex(st.Machines[0].Addr, ".")] + ".1"
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", s.apiPort), fmt.Sprintf("127.0.0.1:%d", port),
		fmt.Sprintf("%s:%d", gateway, port), fmt.Sprintf("%s:%d", gateway, s.apiPort), st.Machines[0].Addr} {
		if code, body := probe("/connect", url.Values{"addr": {addr}}); code == 200 {
			t.Errorf("app connected to %s: %q", addr, body)
		}
	}
	// The neighbour is reachable the way it should be: through the proxy.
	s.mustGet("neighbour", "/", "hello from go")
}
