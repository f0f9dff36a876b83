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

// BenchmarkRecover measures what a restarted server spends adopting the
// machines a previous one left running: Recover of N machines (attach to
// each monitor, claim its address, put back its host-port rules) until
// every one is adopted, and until every one answers again through its
// address. The machines are started once, on a driver that then Detaches;
// each round recovers them on a new driver and detaches again.
//
//	go test -run '^$' -bench Recover -benchtime 3x ./internal/runtime/runc/
func BenchmarkRecover(b *testing.B) {
	need(b)
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("machines=%d", n), func(b *testing.B) {
			subnet := freeSubnet(testBridge, drv.fw.subnet)
			state := filepath.Join(filepath.Dir(stateDir), "state-recover")
			cfg := Config{StateDir: state, Subnet: subnet, Bridge: fmt.Sprintf("pr%d", os.Getpid()%100000)}
			d, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			var ids []string
			for range n {
				spec := runtime.Spec{ID: newID(), Command: []string{"/bin/machine"}, Rootfs: []string{rootfsDir}, HostPorts: []int{9}}
				p, err := d.Start(context.Background(), spec)
				if err != nil {
					b.Fatal(err)
				}
				waitHTTP(b, p.Addr())
				ids = append(ids, spec.ID)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				d.Cleanup(ctx, nil)
				d.Uninstall(ctx)
				os.RemoveAll(state)
			}()
			d.Detach()
			var adopt, serve time.Duration
			for b.Loop() {
				begin := time.Now()
				if d, err = New(cfg); err != nil {
					b.Fatal(err)
				}
				procs := make([]runtime.Process, 0, n)
				for _, id := range ids {
					p, err := d.Recover(context.Background(), id, nil, nil)
					if err != nil {
						b.Fatal(err)
					}
					procs = append(procs, p)
				}
				adopt += time.Since(begin)
				for _, p := range procs {
					waitHTTP(b, p.Addr())
				}
				serve += time.Since(begin)
				b.StopTimer()
				d.Detach()
				b.StartTimer()
			}
			b.ReportMetric(float64(adopt.Milliseconds())/float64(b.N), "ms-adopted/op")
			b.ReportMetric(float64(serve.Milliseconds())/float64(b.N), "ms-serving/op")
		})
	}
}
