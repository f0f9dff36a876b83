package e2e

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// hostileScript tries, from inside a build, what build code must never do.
// Each attempt prints BLOCKED or LEAKED and the build goes on, so one run
// shows every attempt in the build log.
const hostileScript = `#!/bin/sh
label=$1
try() { what=$1; shift; if "$@" >/dev/null 2>&1; then echo "LEAKED $label: $what"; else echo "BLOCKED $label: $what"; fi; }
try "read the admin token" cat "$DATA/admin.token"
try "read the keyring" ls "$DATA/keys"
try "list the data dir" ls "$DATA"
try "read another app's release" sh -c 'cat "$DATA"/builds/victim/*/server.js'
try "write into another app's release" sh -c 'd=$(ls -d "$DATA"/builds/victim/*/) && echo pwned > "${d}server.js"'
try "find another app's secret in /proc" grep -a -l "SECRET_PATTERN" /proc/[0-9]*/environ
try "see the server's process" grep -a -l "data-d[i]r" /proc/[0-9]*/cmdline
try "write outside the tree (host /usr)" sh -c 'echo x > /usr/local/pier-hostile-build'
try "write outside the tree (data dir)" sh -c 'echo x > "$DATA/hostile"'
try "reach the API on 127.0.0.1" curl -sf -m 3 -o /dev/null "http://127.0.0.1:$API/v1/status"
try "read the CLI credentials" cat "$CREDS"
echo "hostile $label ran as $(id -u):$(id -g)"
`

// TestHostileBuildHarmsNothing launches an app whose [build] command and npm
// postinstall script attack the host, pier and another app: every attempt
// fails, the build log shows it, and the other app is unchanged.
func TestHostileBuildHarmsNothing(t *testing.T) {
	need(t, "node", "npm", "curl")
	s := startRuncServer(t)
	s.mustPier("launch", copyApp(t, "node"), "--name", "victim", "--yes")
	const secret = "victim-secret-7f3a9c"
	s.mustPier("secrets", "set", "-a", "victim", "VICTIM_SECRET="+secret)
	before := s.mustGet("victim", "/", "hello from node")
	victimSum := treeSum(t, filepath.Join(s.dataDir, "builds", "victim"))

	dir := t.TempDir()
	vars := fmt.Sprintf("DATA=%s API=%d CREDS=%s", s.dataDir, s.apiPort, filepath.Join(s.home, ".config/pier/credentials.json"))
	// The pattern matches the secret without being it, so the grep's own
	// command line cannot match.
	pattern := "victim-secret-7f3a9[c]"
	files := map[string]string{
		"hostile.sh": strings.ReplaceAll(hostileScript, "SECRET_PATTERN", pattern),
		"package.json": fmt.Sprintf(`{"name":"hostile","version":"1.0.0","scripts":{"postinstall":"%s sh hostile.sh postinstall","start":"node server.js"}}`,
			vars),
		"server.js": `require("http").createServer((q, r) => r.end("hostile up")).listen(process.env.PORT)`,
		"pier.toml": fmt.Sprintf("app = \"hostile\"\n[build]\ncommand = \"%s sh hostile.sh command && npm install --no-audit --no-fund\"\n", vars),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := s.pier("launch", dir, "--name", "hostile", "--yes")
	if err != nil {
		t.Fatalf("launch hostile: %v\n%s", err, out)
	}
	s.mustGet("hostile", "/", "hostile up")
	logs := s.mustPier("logs", "-a", "hostile", "-n", "500")
	for _, label := range []string{"command", "postinstall"} {
		if n := strings.Count(out, "BLOCKED "+label+":"); n != 11 {
			t.Errorf("%s: %d attempts blocked, want 11:\n%s", label, n, out)
		}
		if !strings.Contains(out, fmt.Sprintf("hostile %s ran as 99999:99999", label)) {
			t.Errorf("%s did not run as the build user:\n%s", label, out)
		}
		if !strings.Contains(logs, "BLOCKED "+label+": read the admin token") {
			t.Errorf("build log lacks the %s attempts:\n%s", label, logs)
		}
	}
	if strings.Contains(out, "LEAKED") {
		t.Errorf("a hostile build step succeeded:\n%s", out)
	}
	for _, p := range []string{"/usr/local/pier-hostile-build", filepath.Join(s.dataDir, "hostile")} {
		if _, err := os.Stat(p); err == nil {
			os.Remove(p)
			t.Errorf("the build wrote %s on the host", p)
		}
	}
	if got := treeSum(t, filepath.Join(s.dataDir, "builds", "victim")); got != victimSum {
		t.Errorf("the victim's builds changed during the hostile build")
	}
	if after := s.mustGet("victim", "/", "hello from node"); after != before {
		t.Errorf("victim answers %q, was %q", after, before)
	}
	// The build's own tree comes back root-owned: nothing it made keeps
	// the build user's identity on the host.
	err = filepath.WalkDir(filepath.Join(s.dataDir, "builds", "hostile"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if uid, _ := owner(path); uid != 0 {
			t.Errorf("%s is owned by uid %d after the build", path, uid)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBuildNetworkPolicy: build steps reach hosts beyond pier by default
// (package registries), and nothing with [build] network = "none".
func TestBuildNetworkPolicy(t *testing.T) {
	need(t, "python3", "ip")
	s := startRuncServer(t)
	outside := outsideHost(t)
	host, port, _ := strings.Cut(outside, ":")
	probe := fmt.Sprintf(`python3 -c 'import socket; socket.create_connection((\"%s\", %s), 3)' && echo REACHED-OUTSIDE || echo UNREACHABLE-OUTSIDE`, host, port)
	for app, want := range map[string]string{"online": "REACHED-OUTSIDE", "offline": "UNREACHABLE-OUTSIDE"} {
		dir := t.TempDir()
		network := ""
		if app == "offline" {
			network = "network = \"none\"\n"
		}
		writeFile(t, filepath.Join(dir, "index.html"), "built "+app)
		writeFile(t, filepath.Join(dir, "pier.toml"), fmt.Sprintf("app = %q\n[build]\nbuilder = \"static\"\n%scommand = \"%s\"\n", app, network, probe))
		out, err := s.pier("launch", dir, "--yes")
		if err != nil {
			t.Fatalf("launch %s: %v\n%s", app, err, out)
		}
		if !strings.Contains(out, want) {
			t.Errorf("%s: build output lacks %s:\n%s", app, want, out)
		}
		s.mustGet(app, "/", "built "+app)
	}
}

// TestBuildNetworkNoneNeedsIsolation: a server that builds on the host
// cannot cut a build off, so it refuses such a deploy and changes nothing.
func TestBuildNetworkNoneNeedsIsolation(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "index.html"), "x")
	writeFile(t, filepath.Join(dir, "pier.toml"), "app = \"offline\"\n[build]\nnetwork = \"none\"\ncommand = \"true\"\n")
	out, err := s.pier("launch", dir, "--yes")
	if err == nil || !strings.Contains(out, `network = "none" needs isolated builds`) {
		t.Fatalf("launch: %v\n%s", err, out)
	}
	if rels := s.mustPier("releases", "-a", "offline"); !strings.Contains(rels, "no releases") {
		t.Errorf("a refused deploy made a release:\n%s", rels)
	}
}

func owner(path string) (uid uint32, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, err
	}
	return fi.Sys().(*syscall.Stat_t).Uid, nil
}

func treeSum(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v\n", path, d.Type())
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
