package runc

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pier-dev/pier/internal/runtime"
)

// BenchmarkStart measures create → serving: from Start of a machine running
// the static test server until it answers HTTP at Addr(). The peer,
// "runc-run", is the same server under a bare `runc run` (no overlay, no
// network namespace, no cgroup limits), measured the same way on loopback,
// so the difference is what pier adds.
//
//	go test -run '^$' -bench Start ./internal/runtime/runc/
func BenchmarkStart(b *testing.B) {
	need(b)
	b.Run("pier", func(b *testing.B) {
		for b.Loop() {
			p, err := drv.Start(context.Background(), runtime.Spec{ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}})
			if err != nil {
				b.Fatal(err)
			}
			waitHTTP(b, p.Addr())
			b.StopTimer()
			p.Signal(syscall.SIGKILL)
			p.Wait()
			b.StartTimer()
		}
	})
	b.Run("runc-run", func(b *testing.B) {
		dir := b.TempDir()
		port := freePort(b)
		writeBareBundle(b, dir, port)
		root := filepath.Join(dir, "root")
		for b.Loop() {
			id := newID()
			cmd := exec.Command("runc", "--root", root, "run", "--bundle", dir, id)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			waitHTTP(b, fmt.Sprintf("127.0.0.1:%d", port))
			b.StopTimer()
			exec.Command("runc", "--root", root, "kill", id, "KILL").Run()
			cmd.Wait()
			exec.Command("runc", "--root", root, "delete", "-f", id).Run()
			b.StartTimer()
		}
	})
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeBareBundle writes `runc spec`'s defaults with the test rootfs
// (read-only, as is) and the host's network.
func writeBareBundle(b *testing.B, dir string, port int) {
	s := &specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{Args: []string{"/bin/machine"}, Cwd: "/", Env: []string{fmt.Sprintf("PORT=%d", port)}, NoNewPrivileges: true},
		Root:    &specs.Root{Path: rootfsDir, Readonly: true},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}}},
	}
	js, _ := json.Marshal(s)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), js, 0o600); err != nil {
		b.Fatal(err)
	}
}

func waitHTTP(b *testing.B, addr string) {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := c.Get("http://" + addr + "/ok"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatalf("%s not serving after 10s", addr)
}
