package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
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

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// busyboxImage writes an OCI layout holding a static busybox (with httpd
// serving /www on 8080 as its command) and returns its oci: reference.
func busyboxImage(t *testing.T) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("static busybox: %v (scripts/deps.sh installs busybox-static)", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, data []byte) {
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	add(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, app := range []string{"sh", "cat", "ls", "wget", "nc", "sleep", "httpd", "echo", "dd", "head", "hostname", "id", "true", "yes"} {
		add(&tar.Header{Name: "bin/" + app, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil)
	}
	add(&tar.Header{Name: "www/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "www/index.html", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("hello from a machine\n"))
	add(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Cmd: []string{"/bin/httpd", "-f", "-p", "8080", "-h", "/www"}, Env: []string{"PATH=/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "latest"})); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":latest"
}

// apiCall makes an authenticated API call and decodes a JSON answer.
func (s *server) apiCall(method, path string, body any, out any) int {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", s.apiPort, path), r)
	req.Header.Set("Authorization", "Bearer "+s.token())
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type apiMachine struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	PrivateIP string `json:"private_ip"`
	Events    []struct {
		Type    string `json:"type"`
		Request *struct {
			ExitEvent *struct {
				ExitCode  int    `json:"exit_code"`
				Signal    string `json:"signal"`
				OOMKilled bool   `json:"oom_killed"`
			} `json:"exit_event"`
		} `json:"request"`
	} `json:"events"`
	Error string `json:"error"`
}

type execResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Error    string `json:"error"`
}

// TestMachinesAPI drives the machines API against real runc: the round trip
// of every endpoint, isolation seen from inside a machine, OOM, pids limit,
// stop escalation, auto_destroy, and no leftovers once the server stops.
func TestMachinesAPI(t *testing.T) {
	needRunc(t)
	ref := busyboxImage(t)
	net3 := freeSubnet(t)
	bridge := fmt.Sprintf("pe2e%d", net3)
	t.Cleanup(func() { removeBridge(t, bridge) })
	s := startServerWith(t, "--runtime", "runc", "--bridge", bridge, "--subnet", fmt.Sprintf("100.127.%d.0/24", net3), "--machine-idle-timeout", "2s")
	s.mustPier("apps", "create", "sbx")
	base := "/v1/apps/sbx/machines"

	create := func(cfg map[string]any) apiMachine {
		t.Helper()
		var m apiMachine
		if code := s.apiCall("POST", base, map[string]any{"config": cfg}, &m); code != 200 {
			t.Fatalf("create = %d %s", code, m.Error)
		}
		return m
	}
	waitState := func(id, state string) {
		t.Helper()
		var out map[string]any
		if code := s.apiCall("GET", base+"/"+id+"/wait?state="+state+"&timeout=30", nil, &out); code != 200 {
			t.Fatalf("wait %s for %s = %d %v", id, state, code, out)
		}
	}
	execIn := func(id string, cmd ...string) execResult {
		t.Helper()
		var r execResult
		if code := s.apiCall("POST", base+"/"+id+"/exec", map[string]any{"command": cmd, "timeout": 10}, &r); code != 200 {
			t.Fatalf("exec %v = %d %s", cmd, code, r.Error)
		}
		return r
	}

	t.Run("invalid config creates nothing", func(t *testing.T) {
		var e apiMachine
		code := s.apiCall("POST", base, map[string]any{"config": map[string]any{"image": ref, "guest": map[string]any{"memory_mb": -1}}}, &e)
		if code != 400 || !strings.Contains(e.Error, "memory_mb") {
			t.Errorf("memory_mb -1: %d %q", code, e.Error)
		}
		code = s.apiCall("POST", base, map[string]any{"config": map[string]any{"image": "oci:/nonexistent/layout"}}, &e)
		if code != 400 || !strings.Contains(e.Error, "does not exist") {
			t.Errorf("missing image: %d %q", code, e.Error)
		}
		// A check path that names another host would turn the check into
		// a request from the host to pier's own API (SSRF).
		for _, p := range []string{"@127.0.0.1:" + strconv.Itoa(s.apiPort) + "/v1/status", "//127.0.0.1/", "/x HTTP/1.1\r\nHost: evil"} {
			code = s.apiCall("POST", base, map[string]any{"config": map[string]any{"image": ref,
				"checks": map[string]any{"ssrf": map[string]any{"type": "http", "port": 8080, "path": p}}}}, &e)
			if code != 400 || !strings.Contains(e.Error, "checks.ssrf.path") {
				t.Errorf("check path %q: %d %q, want 400 naming checks.ssrf.path", p, code, e.Error)
			}
		}
		var list []apiMachine
		s.apiCall("GET", base, nil, &list)
		if len(list) != 0 {
			t.Errorf("rejected creates left machines: %+v", list)
		}
		if code := s.apiCall("GET", base+"/nope", nil, nil); code != 404 {
			t.Errorf("unknown machine = %d", code)
		}
		if code := s.apiCall("GET", "/v1/apps/ghost/machines", nil, nil); code != 404 {
			t.Errorf("unknown app = %d", code)
		}
	})

	web := create(map[string]any{"image": ref, "guest": map[string]any{"cpus": 1, "memory_mb": 64},
		"services": []map[string]any{{"internal_port": 8080}}, "metadata": map[string]string{"role": "web"},
		"checks": map[string]any{"index": map[string]any{"type": "http", "port": 8080, "path": "/index.html", "interval": "1s"},
			"closed": map[string]any{"type": "tcp", "port": 9, "interval": "1s"}}})
	waitState(web.ID, "started")
	var got apiMachine
	s.apiCall("GET", base+"/"+web.ID, nil, &got)
	if got.State != "started" || got.PrivateIP == "" {
		t.Fatalf("machine = %+v", got)
	}

	t.Run("served from its own address", func(t *testing.T) {
		eventually(t, 10*time.Second, "machine answers", func() error {
			resp, err := http.Get("http://" + net.JoinHostPort(got.PrivateIP, "8080") + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(b), "hello from a machine") {
				return fmt.Errorf("body %q", b)
			}
			return nil
		})
	})

	t.Run("checks", func(t *testing.T) {
		eventually(t, 10*time.Second, "check results", func() error {
			var m struct {
				Checks []struct{ Name, Status string } `json:"checks"`
			}
			s.apiCall("GET", base+"/"+web.ID, nil, &m)
			got := fmt.Sprint(m.Checks)
			if got != "[{closed critical} {index passing}]" {
				return fmt.Errorf("checks = %s", got)
			}
			return nil
		})
	})

	t.Run("services through the edge proxy", func(t *testing.T) {
		s.mustGet("sbx", "/", "hello from a machine")
	})

	t.Run("scale to zero", func(t *testing.T) {
		s.mustPier("apps", "create", "lazy")
		var m apiMachine
		code := s.apiCall("POST", "/v1/apps/lazy/machines", map[string]any{"config": map[string]any{"image": ref, "guest": map[string]any{"memory_mb": 64},
			"services": []map[string]any{{"internal_port": 8080, "autostop": "stop", "autostart": true}}}}, &m)
		if code != 200 {
			t.Fatalf("create = %d %s", code, m.Error)
		}
		s.mustGet("lazy", "/", "hello from a machine")
		var out map[string]any
		if code := s.apiCall("GET", "/v1/apps/lazy/machines/"+m.ID+"/wait?state=stopped&timeout=30", nil, &out); code != 200 {
			t.Fatalf("idle machine did not stop: %d %v", code, out)
		}
		begin := time.Now()
		s.mustGet("lazy", "/", "hello from a machine") // wakes it
		t.Logf("cold start of a stopped machine through the proxy: %s", time.Since(begin))
		var got apiMachine
		s.apiCall("GET", "/v1/apps/lazy/machines/"+m.ID, nil, &got)
		if got.State != "started" {
			t.Errorf("after the request the machine is %s", got.State)
		}
		// Destroying the app takes its machines with it.
		s.mustPier("apps", "destroy", "lazy", "--yes")
		if code := s.apiCall("GET", "/v1/apps/lazy/machines/"+m.ID, nil, nil); code != 404 {
			t.Errorf("machine of a destroyed app: %d", code)
		}
	})

	t.Run("machine from an app release", func(t *testing.T) {
		s.mustPier("launch", copyApp(t, "go"), "--name", "gosrc", "--yes")
		var m apiMachine
		if code := s.apiCall("POST", base, map[string]any{"config": map[string]any{"image": "release:gosrc", "guest": map[string]any{"memory_mb": 128},
			"env": map[string]string{"VERSION": "from-release"}}}, &m); code != 200 {
			t.Fatalf("create from release = %d %s", code, m.Error)
		}
		waitState(m.ID, "started")
		var got apiMachine
		s.apiCall("GET", base+"/"+m.ID, nil, &got)
		eventually(t, 10*time.Second, "release machine answers", func() error {
			resp, err := http.Get("http://" + net.JoinHostPort(got.PrivateIP, "8080") + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(b), "hello from go version=from-release") {
				return fmt.Errorf("body %q", b)
			}
			return nil
		})
		var e apiMachine
		if code := s.apiCall("POST", base, map[string]any{"config": map[string]any{"image": "release:gosrc:v9"}}, &e); code != 400 || !strings.Contains(e.Error, "v9") {
			t.Errorf("unknown release version: %d %q", code, e.Error)
		}
		s.apiCall("DELETE", base+"/"+m.ID+"?force=true", nil, nil)
		s.mustPier("apps", "destroy", "gosrc", "--yes") // its release machine would count below
	})

	t.Run("isolation", func(t *testing.T) {
		hostName, _ := os.ReadFile("/etc/hostname")
		if r := execIn(web.ID, "cat", "/etc/hostname"); strings.TrimSpace(r.Stdout) == strings.TrimSpace(string(hostName)) && len(hostName) > 0 {
			t.Errorf("machine sees the host's /etc/hostname %q", hostName)
		}
		if r := execIn(web.ID, "hostname"); strings.TrimSpace(r.Stdout) != web.ID {
			t.Errorf("hostname inside = %q, want the machine id", r.Stdout)
		}
		if r := execIn(web.ID, "ls", s.dataDir); r.ExitCode == 0 {
			t.Errorf("machine can list pier's data dir: %q", r.Stdout)
		}
		// Only the machine's own processes: pid 1 is its httpd, and the
		// server's pid means nothing there.
		if r := execIn(web.ID, "cat", "/proc/1/cmdline"); !strings.Contains(r.Stdout, "httpd") {
			t.Errorf("pid 1 inside is %q", r.Stdout)
		}
		if r := execIn(web.ID, "cat", fmt.Sprintf("/proc/%d/cmdline", s.cmd.Process.Pid)); strings.Contains(r.Stdout, "pier") {
			t.Errorf("the server's process is visible inside: %q", r.Stdout)
		}
		port := fmt.Sprint(hostService(t))
		gateway := fmt.Sprintf("100.127.%d.1", net3)
		for _, target := range []string{"127.0.0.1:" + port, gateway + ":" + port, fmt.Sprintf("127.0.0.1:%d", s.apiPort)} {
			r := execIn(web.ID, "wget", "-T", "2", "-q", "-O-", "http://"+target+"/")
			if r.ExitCode == 0 || strings.Contains(r.Stdout, "host-secret") {
				t.Errorf("machine reached the host at %s: %q", target, r.Stdout)
			}
		}
		other := create(map[string]any{"image": ref, "guest": map[string]any{"memory_mb": 64}})
		waitState(other.ID, "started")
		var o apiMachine
		s.apiCall("GET", base+"/"+other.ID, nil, &o)
		if r := execIn(web.ID, "wget", "-T", "2", "-q", "-O-", "http://"+o.PrivateIP+":8080/"); r.ExitCode == 0 {
			t.Errorf("machine reached another machine at %s: %q", o.PrivateIP, r.Stdout)
		}
		// Writes in one machine are not seen by another of the same image.
		execIn(web.ID, "sh", "-c", "echo mine > /www/written.txt")
		if r := execIn(other.ID, "cat", "/www/written.txt"); r.ExitCode == 0 {
			t.Errorf("another machine sees the write: %q", r.Stdout)
		}
		if code := s.apiCall("DELETE", base+"/"+other.ID+"?force=true", nil, nil); code != 200 {
			t.Errorf("destroy other = %d", code)
		}
	})

	t.Run("exec exit code and output", func(t *testing.T) {
		r := execIn(web.ID, "sh", "-c", "echo out; echo err >&2; exit 7")
		if r.ExitCode != 7 || r.Stdout != "out\n" || r.Stderr != "err\n" {
			t.Errorf("exec = %+v", r)
		}
		if out, err := s.pier("machines", "exec", web.ID, "-a", "sbx", "--", "sh", "-c", "exit 3"); err == nil {
			t.Errorf("pier machines exec of exit 3 succeeded: %s", out)
		} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Errorf("pier machines exec exit = %v", err)
		}
	})

	t.Run("metadata and leases", func(t *testing.T) {
		if code := s.apiCall("POST", base+"/"+web.ID+"/metadata/team", map[string]string{"value": "core"}, nil); code != 204 {
			t.Errorf("set metadata = %d", code)
		}
		var list []apiMachine
		s.apiCall("GET", base+"?metadata.team=core", nil, &list)
		if len(list) != 1 || list[0].ID != web.ID {
			t.Errorf("filter by metadata: %+v", list)
		}
		var lease struct {
			Data struct {
				Nonce string `json:"nonce"`
			} `json:"data"`
		}
		if code := s.apiCall("POST", base+"/"+web.ID+"/lease", map[string]any{"ttl": 60}, &lease); code != 200 || lease.Data.Nonce == "" {
			t.Fatalf("lease = %d %+v", code, lease)
		}
		if code := s.apiCall("POST", base+"/"+web.ID+"/lease", map[string]any{"ttl": 60}, nil); code != 409 {
			t.Errorf("second lease = %d, want 409", code)
		}
		var shown struct {
			Data struct {
				Nonce       string `json:"nonce"`
				Description string `json:"description"`
			} `json:"data"`
		}
		if code := s.apiCall("GET", base+"/"+web.ID+"/lease", nil, &shown); code != 200 || shown.Data.Nonce != "" {
			t.Errorf("get lease = %d %+v (the nonce is the holder's alone)", code, shown)
		}
		var md map[string]string
		if code := s.apiCall("GET", base+"/"+web.ID+"/metadata", nil, &md); code != 200 || md["team"] != "core" || md["role"] != "web" {
			t.Errorf("get metadata = %d %v", code, md)
		}
		if code := s.apiCall("DELETE", base+"/"+web.ID+"/metadata/team", nil, nil); code != 409 {
			t.Errorf("change without the nonce = %d, want 409", code)
		}
		req, _ := http.NewRequest("DELETE", fmt.Sprintf("http://127.0.0.1:%d%s/%s/lease", s.apiPort, base, web.ID), nil)
		req.Header.Set("Authorization", "Bearer "+s.token())
		req.Header.Set("fly-machine-lease-nonce", lease.Data.Nonce)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("release lease: %v %v", resp, err)
		}
		resp.Body.Close()
		if code := s.apiCall("DELETE", base+"/"+web.ID+"/metadata/team", nil, nil); code != 204 {
			t.Errorf("delete metadata after release = %d", code)
		}
	})

	t.Run("wait timeout and destroy precondition", func(t *testing.T) {
		if code := s.apiCall("GET", base+"/"+web.ID+"/wait?state=stopped&timeout=1", nil, nil); code != 408 {
			t.Errorf("wait timeout = %d, want 408", code)
		}
		if code := s.apiCall("DELETE", base+"/"+web.ID, nil, nil); code != 412 {
			t.Errorf("destroy of a started machine without force = %d, want 412", code)
		}
	})

	t.Run("update restarts with the new config", func(t *testing.T) {
		m := create(map[string]any{"image": ref, "env": map[string]string{"GREETING": "one"}, "guest": map[string]any{"memory_mb": 64}})
		waitState(m.ID, "started")
		var before, after struct {
			InstanceID string `json:"instance_id"`
			State      string `json:"state"`
		}
		s.apiCall("GET", base+"/"+m.ID, nil, &before)
		if code := s.apiCall("POST", base+"/"+m.ID, map[string]any{"config": map[string]any{"image": ref, "env": map[string]string{"GREETING": "two"}, "guest": map[string]any{"memory_mb": 64}}}, &after); code != 200 {
			t.Fatalf("update = %d", code)
		}
		if after.InstanceID == before.InstanceID {
			t.Errorf("update kept instance_id %s", after.InstanceID)
		}
		waitState(m.ID, "started")
		eventually(t, 10*time.Second, "new env inside", func() error {
			var r execResult
			s.apiCall("POST", base+"/"+m.ID+"/exec", map[string]any{"command": []string{"sh", "-c", "echo $GREETING"}}, &r)
			if r.Stdout != "two\n" {
				return fmt.Errorf("GREETING = %q", r.Stdout)
			}
			return nil
		})
		s.apiCall("DELETE", base+"/"+m.ID+"?force=true", nil, nil)
	})

	t.Run("stop escalates to SIGKILL", func(t *testing.T) {
		m := create(map[string]any{"image": ref, "init": map[string]any{"cmd": []string{"sh", "-c", "trap '' TERM; while true; do sleep 1; done"}}, "restart": map[string]any{"policy": "no"}})
		waitState(m.ID, "started")
		begin := time.Now()
		if code := s.apiCall("POST", base+"/"+m.ID+"/stop", map[string]any{"timeout": "1s"}, nil); code != 200 {
			t.Fatalf("stop = %d", code)
		}
		waitState(m.ID, "stopped")
		var got apiMachine
		s.apiCall("GET", base+"/"+m.ID, nil, &got)
		ev := got.Events[0].Request
		if ev == nil || ev.ExitEvent == nil || ev.ExitEvent.Signal != "killed" {
			t.Errorf("exit after stop: %+v (took %s)", got.Events[0], time.Since(begin))
		}
		s.apiCall("POST", base+"/"+m.ID+"/start", nil, nil)
		waitState(m.ID, "started")
		s.apiCall("DELETE", base+"/"+m.ID+"?force=true", nil, nil)
	})

	t.Run("oom killed, host and others unaffected", func(t *testing.T) {
		m := create(map[string]any{"image": ref, "guest": map[string]any{"memory_mb": 32}, "restart": map[string]any{"policy": "no"},
			"init": map[string]any{"cmd": []string{"sh", "-c", "x=$(yes | head -c 100000000); sleep 60"}}})
		waitState(m.ID, "stopped")
		var got apiMachine
		s.apiCall("GET", base+"/"+m.ID, nil, &got)
		if ev := got.Events[0].Request; ev == nil || ev.ExitEvent == nil || !ev.ExitEvent.OOMKilled {
			t.Errorf("exit event of a machine over its memory: %+v", got.Events)
		}
		if r := execIn(web.ID, "echo", "alive"); r.Stdout != "alive\n" {
			t.Errorf("web machine after the other's OOM: %+v", r)
		}
		s.apiCall("DELETE", base+"/"+m.ID, nil, nil)
	})

	t.Run("fork bomb contained", func(t *testing.T) {
		m := create(map[string]any{"image": ref, "restart": map[string]any{"policy": "no"},
			"init": map[string]any{"cmd": []string{"sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 30"}}})
		waitState(m.ID, "started")
		time.Sleep(2 * time.Second)
		if r := execIn(web.ID, "echo", "alive"); r.Stdout != "alive\n" {
			t.Errorf("web machine during a fork bomb elsewhere: %+v", r)
		}
		if out, err := exec.Command("true").CombinedOutput(); err != nil {
			t.Errorf("host cannot fork during the bomb: %v %s", err, out)
		}
		if code := s.apiCall("DELETE", base+"/"+m.ID+"?force=true", nil, nil); code != 200 {
			t.Errorf("destroy bomb = %d", code)
		}
	})

	t.Run("auto_destroy", func(t *testing.T) {
		m := create(map[string]any{"image": ref, "auto_destroy": true, "restart": map[string]any{"policy": "no"},
			"init": map[string]any{"cmd": []string{"true"}}})
		waitState(m.ID, "destroyed")
		if code := s.apiCall("GET", base+"/"+m.ID, nil, nil); code != 404 {
			t.Errorf("auto-destroyed machine = %d, want 404", code)
		}
	})

	t.Run("disk quota", func(t *testing.T) {
		m := create(map[string]any{"image": ref, "guest": map[string]any{"rootfs_size_mb": 32},
			"init": map[string]any{"cmd": []string{"sleep", "300"}}})
		waitState(m.ID, "started")
		// Sandbox code fills its disk: the write fails in the machine.
		r := execIn(m.ID, "sh", "-c", "busybox dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1")
		if !strings.Contains(r.Stdout, "No space left on device") {
			t.Errorf("filling a 32 MB disk: %+v", r)
		}
		if code := s.apiCall("DELETE", base+"/"+m.ID+"?force=true", nil, nil); code != 200 {
			t.Errorf("destroy = %d", code)
		}
	})

	t.Run("cli", func(t *testing.T) {
		out := s.mustPier("machines", "list", "-a", "sbx")
		if !strings.Contains(out, web.ID) || !strings.Contains(out, "started") {
			t.Errorf("machines list:\n%s", out)
		}
		out = s.mustPier("machines", "run", ref, "-a", "sbx", "--memory", "64", "--", "sh", "-c", "sleep 30")
		if !strings.Contains(out, "is started at 100.127.") {
			t.Errorf("machines run:\n%s", out)
		}
	})

	t.Run("restart keeps machines, without duplicates", func(t *testing.T) {
		s.stop(syscall.SIGTERM)
		s.start()
		var list []apiMachine
		s.apiCall("GET", base, nil, &list)
		if len(list) != 2 {
			t.Errorf("after restart: %d machines, want 2 (web and the cli one)", len(list))
		}
		for _, m := range list {
			waitState(m.ID, "started")
		}
		if out := runcList(t, s); strings.Count(out, "running") != 2 {
			t.Errorf("runc containers after restart:\n%s", out)
		}
	})

	// Leak check: once a server told to stop its machines stops (after
	// adopting them from the one before), nothing of them remains.
	s.stop(syscall.SIGTERM)
	s.flags = append(s.flags, "--stop-machines-on-exit")
	s.start()
	s.stop(syscall.SIGTERM)
	if out := runcList(t, s); strings.Contains(out, "running") || strings.Contains(out, "created") {
		t.Errorf("runc containers left after stop:\n%s", out)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), s.dataDir) {
		t.Errorf("mounts left under the data dir")
	}
	if links, _ := exec.Command("ip", "-o", "link", "show", "master", bridge).CombinedOutput(); strings.TrimSpace(string(links)) != "" {
		t.Errorf("veths left on %s:\n%s", bridge, links)
	}
	for _, ctl := range []string{"memory", "pids", "cpu"} {
		if entries, err := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctl, "pier")); err == nil {
			for _, e := range entries {
				if e.IsDir() && (e.Name() == web.ID) {
					t.Errorf("cgroup %s/pier/%s left", ctl, e.Name())
				}
			}
		}
	}
}

func runcList(t *testing.T, s *server) string {
	t.Helper()
	out, _ := exec.Command("runc", "--root", filepath.Join(s.dataDir, "machines", "runc-root"), "list").CombinedOutput()
	return string(out)
}
