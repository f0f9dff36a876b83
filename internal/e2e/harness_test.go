// Package e2e holds pier's integration tests: they build the real pier
// binary, run `pier server` on loopback ports with a private data dir and
// HOME, and drive it through the CLI and the edge proxy like a user would.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/resources/daemon"
)

var pierBin string

// baseCache is shared by every server of the run: base images depend only
// on the host's packages, so the suite assembles each one once.
var baseCache string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pier-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pierBin = filepath.Join(dir, "pier")
	baseCache = filepath.Join(dir, "bases")
	build := exec.Command("go", "build", "-o", pierBin, "github.com/pier-dev/pier/cmd/pier")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build pier:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// need skips (or, in CI, fails) a test whose tool is missing.
func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required in CI but missing (scripts/deps.sh installs it)", tool)
			}
			t.Skipf("%s not installed (run scripts/deps.sh)", tool)
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// server is one running `pier server` with its own data dir and HOME.
type server struct {
	t        testing.TB
	root     string // temp dir holding data/ and home/
	dataDir  string
	home     string
	apiPort  int
	httpPort int
	cmd      *exec.Cmd
	log      *bytes.Buffer
	exited   chan struct{}
	flags    []string // extra `pier server` flags
	bin      string   // the pier binary the server runs (default pierBin)
}

// startServer starts a server without isolated machines (most tests need
// none, and the runc runtime touches host networking).
func startServer(t *testing.T) *server {
	return startServerWith(t, "--runtime", "process")
}

// startProcessServer is startServer for benchmarks too.
func startProcessServer(t testing.TB) *server { return startServerWith(t, "--runtime", "process") }

func startServerWith(t testing.TB, flags ...string) *server {
	t.Helper()
	return startServerBin(t, "", flags...)
}

// startServerBin is startServerWith running the pier binary at bin.
func startServerBin(t testing.TB, bin string, flags ...string) *server {
	t.Helper()
	root := t.TempDir()
	s := &server{t: t, root: root, dataDir: filepath.Join(root, "data"), home: filepath.Join(root, "home"),
		apiPort: freePort(t), httpPort: freePort(t), flags: flags, bin: bin}
	s.start()
	t.Cleanup(func() {
		s.stop(syscall.SIGTERM)
		// Isolated machines outlive a server that stops; the next server,
		// told to, adopts and stops them, as an operator would.
		if s.isolated() && s.running() > 0 {
			s.flags = append(s.flags, "--stop-machines-on-exit")
			s.start()
			s.stop(syscall.SIGTERM)
		}
		if n := len(s.monitors()); n > 0 {
			t.Errorf("%d machine monitors left running after the server stopped", n)
		}
		s.killResources()
		if dir := s.serversDir(); dir != "" {
			os.RemoveAll(dir)
		}
		if n := s.running(); n > 0 {
			t.Errorf("%d pier machines left running after the server stopped", n)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.log.String())
		}
	})
	return s
}

// env is the environment of the server and CLI: a private HOME, the real Go
// build cache (so Go builds stay warm across tests) and no PIER_ settings.
func (s *server) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PIER_") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			continue
		}
		env = append(env, kv)
	}
	cache, _ := exec.Command("go", "env", "GOCACHE").Output()
	modcache, _ := exec.Command("go", "env", "GOMODCACHE").Output()
	return append(env, "HOME="+s.home, "GOCACHE="+strings.TrimSpace(string(cache)), "GOMODCACHE="+strings.TrimSpace(string(modcache)))
}

func (s *server) start() {
	s.t.Helper()
	args := append([]string{"server", "--data-dir", s.dataDir,
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", s.apiPort), "--http-addr", fmt.Sprintf("127.0.0.1:%d", s.httpPort)}, s.flags...)
	bin := pierBin
	if s.bin != "" {
		bin = s.bin
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = s.env()
	if s.log == nil {
		s.log = &bytes.Buffer{}
	}
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := s.pier("apps", "list"); err == nil {
			return
		}
		select {
		case <-s.exited:
			s.t.Fatalf("pier server exited at start:\n%s", s.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.t.Fatalf("pier server did not answer within 20s:\n%s", s.log.String())
}

// stop sends sig to the server and waits for it to exit.
func (s *server) stop(sig syscall.Signal) {
	select {
	case <-s.exited:
		return
	default:
	}
	// After a graceful restart the server running is the one that took
	// over (its output still goes to s.log, so s.exited waits for it too).
	if pid := s.pid(); pid > 0 && pid != s.cmd.Process.Pid && syscall.Kill(pid, 0) == nil {
		syscall.Kill(pid, sig)
	} else {
		s.cmd.Process.Signal(sig)
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		s.t.Errorf("pier server did not stop within 30s of %v", sig)
	}
}

// pid is the pid the running server wrote to <data-dir>/server.pid.
func (s *server) pid() int {
	b, _ := os.ReadFile(filepath.Join(s.dataDir, "server.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// isolated reports whether the server runs apps under runc.
func (s *server) isolated() bool {
	for i, f := range s.flags {
		if f == "--runtime" && i+1 < len(s.flags) && s.flags[i+1] == "runc" {
			return true
		}
	}
	return false
}

// running counts the machines of this server that are running on the
// host: runc containers in its state dir, or host processes.
func (s *server) running() int {
	if !s.isolated() {
		return len(s.strays())
	}
	out, _ := exec.Command("runc", "--root", filepath.Join(s.dataDir, "machines", "runc-root"), "list", "-q").Output()
	n := 0
	for _, id := range strings.Fields(string(out)) {
		state, _ := exec.Command("runc", "--root", filepath.Join(s.dataDir, "machines", "runc-root"), "state", id).Output()
		if bytes.Contains(state, []byte(`"status": "running"`)) {
			n++
		}
	}
	return n
}

// startRuncServer starts a server whose apps and machines run under runc,
// on a bridge and /24 of its own.
func startRuncServer(t testing.TB) *server { return startRuncServerWith(t) }

// startRuncServerWith is startRuncServer with more server flags.
func startRuncServerWith(t testing.TB, flags ...string) *server {
	t.Helper()
	return startRuncServerWithBinary(t, "", flags...)
}

// startRuncServerWithBinary is startRuncServerWith running the pier binary
// at bin ("": the one the tests built).
func startRuncServerWithBinary(t testing.TB, bin string, flags ...string) *server {
	t.Helper()
	needRunc(t)
	n := freeSubnet(t)
	bridge := fmt.Sprintf("pe2e%d", n)
	// Registered before the server's own cleanup, so it runs after it: the
	// server keeps its bridge and firewall chains across restarts on
	// purpose, but a test's are of no further use.
	t.Cleanup(func() { removeBridge(t, bridge) })
	return startServerBin(t, bin, append([]string{"--runtime", "runc", "--bridge", bridge, "--subnet", fmt.Sprintf("100.127.%d.0/24", n), "--base-cache", baseCache}, flags...)...)
}

// removeBridge deletes a bridge and the firewall chains pier made for it
// (PIER-<kind>-<bridge> in the filter and nat tables, and the jumps into
// them from any chain).
func removeBridge(t testing.TB, bridge string) {
	for _, table := range []string{"filter", "nat"} {
		rules, _ := exec.Command("iptables", "-w", "-t", table, "-S").Output()
		var chains []string
		for _, rule := range strings.Split(string(rules), "\n") {
			f := strings.Fields(rule)
			switch {
			case len(f) == 2 && f[0] == "-N" && strings.HasPrefix(f[1], "PIER-") && strings.HasSuffix(f[1], "-"+bridge):
				chains = append(chains, f[1])
			case len(f) > 2 && f[0] == "-A" && strings.HasSuffix(rule, "-"+bridge) && strings.Contains(rule, "-j PIER-") && !strings.HasPrefix(f[1], "PIER-"):
				f[0] = "-D"
				exec.Command("iptables", append([]string{"-w", "-t", table}, f...)...).Run()
			}
		}
		for _, chain := range chains {
			exec.Command("iptables", "-w", "-t", table, "-F", chain).Run()
			exec.Command("iptables", "-w", "-t", table, "-X", chain).Run()
		}
	}
	exec.Command("ip", "link", "del", bridge).Run()
	if out, _ := exec.Command("ip", "link", "show", bridge).CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("bridge %s left behind: %s", bridge, out)
	}
}

// needRunc skips (or, in CI, fails) a test that needs the runc runtime.
func needRunc(t testing.TB) {
	t.Helper()
	need(t, "runc", "iptables")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the runc runtime needs root, and CI must test it")
		}
		t.Skip("the runc runtime needs root")
	}
}

// freeSubnet picks N such that 100.127.N.0/24 is not routed on the host.
func freeSubnet(t testing.TB) int {
	t.Helper()
	routes, err := exec.Command("ip", "-o", "route").Output()
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		n := 20 + rand.IntN(230)
		if !bytes.Contains(routes, []byte(fmt.Sprintf("100.127.%d.", n))) {
			return n
		}
	}
	t.Fatal("no free 100.127.N.0/24")
	return 0
}

// forEachRuntime runs body against a server of each app runtime: host
// processes, and isolated runc machines.
func forEachRuntime(t *testing.T, body func(t *testing.T, start func(testing.TB) *server)) {
	t.Run("process", func(t *testing.T) { body(t, startProcessServer) })
	t.Run("runc", func(t *testing.T) { body(t, startRuncServer) })
}

// runDir is where the server's runc driver keeps its machines' bundles
// (runc.defaultRunDir).
func (s *server) runDir() string {
	sum := sha256.Sum256([]byte(filepath.Join(s.dataDir, "machines")))
	return filepath.Join("/run/pier", hex.EncodeToString(sum[:8]))
}

// monitors lists the pids of this server's machine monitors (shims).
func (s *server) monitors() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	want := []byte("PIER_MACHINE_SHIM=" + s.runDir() + "/")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ")); err == nil && bytes.Contains(env, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// strays lists host processes that carry a machine id of this server's
// data dir: machines that outlived their server.
func (s *server) strays() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		// The machine's HOME is the server's, which is unique to this test.
		if bytes.Contains(env, []byte("PIER_MACHINE_ID=")) && bytes.Contains(env, []byte("HOME="+s.home+"\x00")) {
			stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if !bytes.Contains(stat, []byte(") Z ")) { // zombies are already dead
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// pier runs the CLI and returns its combined output.
func (s *server) pier(args ...string) (string, error) {
	return s.pierIn("", args...)
}

func (s *server) pierIn(dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pierBin, args...)
	cmd.Dir = dir
	cmd.Env = s.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustPier runs the CLI and fails the test if it fails.
func (s *server) mustPier(args ...string) string {
	s.t.Helper()
	out, err := s.pier(args...)
	if err != nil {
		s.t.Fatalf("pier %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// status returns `pier status --json` of app.
func (s *server) status(app string) control.AppStatus {
	s.t.Helper()
	var st control.AppStatus
	if err := json.Unmarshal([]byte(s.mustPier("status", "-a", app, "--json")), &st); err != nil {
		s.t.Fatal(err)
	}
	return st
}

var proxyClient = &http.Client{Timeout: 30 * time.Second}

// get requests path of app through the edge proxy.
func (s *server) get(app, path string) (int, string, error) {
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path), nil)
	req.Host = app + ".localhost"
	resp, err := proxyClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// mustGet expects a 200 whose body contains want.
func (s *server) mustGet(app, path, want string) string {
	s.t.Helper()
	code, body, err := s.get(app, path)
	if err != nil || code != 200 || !strings.Contains(body, want) {
		s.t.Fatalf("GET %s%s = %d %q, %v; want 200 containing %q", app, path, code, body, err, want)
	}
	return body
}

// copyApp copies a sample app from testdata into a fresh directory.
func copyApp(t testing.TB, name string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), name)
	src := filepath.Join("..", "..", "testdata", "apps", name)
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// api makes an authenticated GET of the API and returns the body.
func (s *server) api(path string) string {
	s.t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", s.apiPort, path), nil)
	req.Header.Set("Authorization", "Bearer "+s.token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		s.t.Fatalf("GET %s = %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

// token reads the admin token the server created.
func (s *server) token() string {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "admin.token"))
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// hostService listens on every host address, loopback included, answering
// "host-secret" to whoever connects, until the test ends; it returns the port.
// Machines must not reach it.
func hostService(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhost-secret\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// eventually retries f until it returns nil or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// serversDir is where the server's managed resource servers keep their
// files when it runs as root: outside its data dir, so a test removes it.
// resourceDir is where resource name's files live: under the servers dir
// when the server runs as root, else under the data dir.
func (s *server) resourceDir(name string) string {
	if d := s.serversDir(); d != "" {
		return filepath.Join(d, name)
	}
	return filepath.Join(s.dataDir, "resources", name)
}

func (s *server) serversDir() string {
	if os.Geteuid() != 0 {
		return ""
	}
	dir, _ := daemon.ServersDir(daemon.DefaultServersRoot, s.dataDir)
	return dir
}

// killResources kills the managed resource servers (postgres, redis-server)
// of this server: they are detached and outlive pier by design.
func (s *server) killResources() {
	for _, dir := range []string{filepath.Join(s.dataDir, "resources"), s.serversDir()} {
		if dir != "" {
			killServersIn(dir)
		}
	}
}

func killServersIn(dir string) {
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".pid") {
			return nil
		}
		b, _ := os.ReadFile(path)
		first, _, _ := strings.Cut(string(b), "\n")
		if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 1 {
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && (strings.Contains(exe, "postgres") || strings.Contains(exe, "redis")) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}
