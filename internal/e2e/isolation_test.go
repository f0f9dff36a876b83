package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	port := hostService(t)
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

// outsideHost makes a network namespace standing in for a host beyond pier
// (the internet, the LAN), routed from this host, with a TCP listener on
// addr; it is removed at cleanup. No traffic leaves this machine.
func outsideHost(t *testing.T) (addr string) {
	t.Helper()
	n := freeSubnet(t)
	ns := fmt.Sprintf("pe2eout%d", n)
	hostIP, peerIP := fmt.Sprintf("100.126.%d.1", n), fmt.Sprintf("100.126.%d.2", n)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "pids", ns).Run()
		exec.Command("ip", "netns", "delete", ns).Run()
		exec.Command("ip", "link", "delete", "vo"+ns[4:]).Run()
	})
	run("ip", "link", "add", "vo"+ns[4:], "type", "veth", "peer", "name", "vi"+ns[4:])
	run("ip", "link", "set", "vi"+ns[4:], "netns", ns)
	run("ip", "addr", "add", hostIP+"/30", "dev", "vo"+ns[4:])
	run("ip", "link", "set", "vo"+ns[4:], "up")
	run("ip", "netns", "exec", ns, "ip", "addr", "add", peerIP+"/30", "dev", "vi"+ns[4:])
	run("ip", "netns", "exec", ns, "ip", "link", "set", "vi"+ns[4:], "up")
	run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	listener := exec.Command("ip", "netns", "exec", ns, "python3", "-c",
		"import socket\ns=socket.socket()\ns.bind(('"+peerIP+"',8099))\ns.listen(16)\nwhile True:\n    c,_=s.accept(); c.close()")
	if err := listener.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Process.Kill(); listener.Wait() })
	addr = peerIP + ":8099"
	eventually(t, 5*time.Second, "outside listener up", func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return addr
}

// TestOutboundPolicy: by default an app's machines reach hosts beyond pier;
// with [network] outbound = "deny" they cannot.
func TestOutboundPolicy(t *testing.T) {
	need(t, "python3", "ip")
	s := startRuncServer(t)
	outside := outsideHost(t)
	s.mustPier("launch", copyApp(t, "probe"), "--name", "open", "--yes")
	denied := copyApp(t, "probe")
	writeFile(t, filepath.Join(denied, "pier.toml"), "app = \"closed\"\n[network]\noutbound = \"deny\"\n")
	s.mustPier("launch", denied, "--yes")
	for app, want := range map[string]bool{"open": true, "closed": false} {
		code, body, err := s.get(app, "/connect?addr="+url.QueryEscape(outside))
		if err != nil {
			t.Fatal(err)
		}
		if got := code == 200; got != want {
			t.Errorf("%s connecting outside: %d %q; want connected=%v", app, code, body, want)
		}
	}
}

// TestOutboundDenyNeedsIsolation: the process runtime cannot enforce the
// policy, so such a deploy is refused and nothing changes.
func TestOutboundDenyNeedsIsolation(t *testing.T) {
	s := startServer(t)
	dir := copyApp(t, "go")
	writeFile(t, filepath.Join(dir, "pier.toml"), "app = \"closed\"\n[network]\noutbound = \"deny\"\n")
	out, err := s.pier("launch", dir, "--yes")
	if err == nil || !strings.Contains(out, `outbound = "deny" needs isolated machines`) {
		t.Fatalf("launch: %v\n%s", err, out)
	}
	if rels := s.mustPier("releases", "-a", "closed"); !strings.Contains(rels, "no releases") {
		t.Errorf("a refused deploy made a release:\n%s", rels)
	}
}
