package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// machineSet is what the host holds of a server's machines: runc
// containers, monitors, veths on its bridge and cgroups.
type machineSet struct {
	containers, monitors, veths, cgroups int
}

func (s *server) hostMachines(bridge string, ids []string) machineSet {
	s.t.Helper()
	var ms machineSet
	out, _ := exec.Command("runc", "--root", filepath.Join(s.dataDir, "machines", "runc-root"), "list", "-q").Output()
	ms.containers = len(strings.Fields(string(out)))
	ms.monitors = len(s.monitors())
	links, _ := exec.Command("ip", "-o", "link", "show", "master", bridge).Output()
	ms.veths = len(strings.Split(strings.TrimSpace(string(links)), "\n"))
	if strings.TrimSpace(string(links)) == "" {
		ms.veths = 0
	}
	for _, id := range ids {
		for _, dir := range []string{"/sys/fs/cgroup/pier/" + id, "/sys/fs/cgroup/memory/pier/" + id} {
			if _, err := os.Stat(dir); err == nil {
				ms.cgroups++
				break
			}
		}
	}
	return ms
}

func (s *server) bridge() string {
	for i, f := range s.flags {
		if f == "--bridge" && i+1 < len(s.flags) {
			return s.flags[i+1]
		}
	}
	return ""
}

// TestServerCrashRestartsNoMachine kills `pier server` with SIGKILL while a
// bounded load runs against two apps. The apps' machines run on (same
// processes, same ids), what they print while no server runs reaches the
// logs, and the next server adopts them all: no duplicate and no leaked
// machine, monitor, veth or cgroup.
func TestServerCrashRestartsNoMachine(t *testing.T) {
	s := startRuncServer(t)
	for _, app := range []string{"alpha", "beta"} {
		dir := copyApp(t, "go")
		setVersion(t, dir, app, app, "")
		s.mustPier("launch", dir, "--yes")
	}
	s.mustPier("scale", "count", "2", "-a", "beta")
	eventually(t, 20*time.Second, "three healthy machines", func() error {
		n := 0
		for _, app := range []string{"alpha", "beta"} {
			for _, m := range s.status(app).Machines {
				if m.Healthy {
					n++
				}
			}
		}
		if n != 3 {
			return fmt.Errorf("%d healthy", n)
		}
		return nil
	})
	before := map[string][]pier.Machine{"alpha": s.status("alpha").Machines, "beta": s.status("beta").Machines}
	var ids []string
	ips := map[string]string{}
	for app, ms := range before {
		for _, m := range ms {
			ids = append(ids, m.ID)
			var am apiMachine
			s.apiCall("GET", "/v1/apps/"+app+"/machines/"+m.ID, nil, &am)
			ips[m.ID] = am.PrivateIP
		}
	}
	hostBefore := s.hostMachines(s.bridge(), ids)
	if hostBefore != (machineSet{3, 3, 3, 3}) {
		t.Fatalf("before the crash the host holds %+v, want 3 of each", hostBefore)
	}

	// A bounded load on both apps through the edge, across the crash.
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Minute)
	for _, app := range []string{"alpha", "beta"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
				if code, body, err := s.get(app, "/"); err == nil && code == 200 && strings.Contains(body, "version="+app) {
					ok.Add(1)
				} else {
					failed.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	s.stop(syscall.SIGKILL)

	// No server: the machines serve and print on their own (root on the
	// host reaches them directly).
	for _, m := range before["alpha"] {
		resp, err := http.Get("http://" + ips[m.ID] + ":8080/say?line=printed-while-no-server-ran")
		if err != nil {
			t.Fatalf("machine %s while no server runs: %v", m.ID, err)
		}
		resp.Body.Close()
	}
	time.Sleep(200 * time.Millisecond)
	s.start()
	eventually(t, 20*time.Second, "both apps served by the next server", func() error {
		for _, app := range []string{"alpha", "beta"} {
			if _, body, err := s.get(app, "/"); err != nil || !strings.Contains(body, "version="+app) {
				return fmt.Errorf("%s: %q %v", app, body, err)
			}
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("requests across the crash: %d ok, %d failed (the edge was down between the kill and the restart)", ok.Load(), failed.Load())

	for app, ms := range before {
		after := s.status(app).Machines
		if len(after) != len(ms) {
			t.Fatalf("%s has %d machines after the restart, want %d: %+v", app, len(after), len(ms), after)
		}
		for i, m := range after {
			if b := ms[i]; m.ID != b.ID || m.PID != b.PID || m.Restarts != 0 || !m.Healthy {
				t.Errorf("%s machine after the restart: %+v, before: %+v (want the same process, not restarted)", app, m, b)
			}
		}
	}
	if got := s.hostMachines(s.bridge(), ids); got != hostBefore {
		t.Errorf("after the restart the host holds %+v, want what it held before, %+v", got, hostBefore)
	}
	logs := s.mustPier("logs", "-a", "alpha")
	if n := strings.Count(logs, "printed-while-no-server-ran"); n != len(before["alpha"]) {
		t.Errorf("pier logs has %d lines printed while no server ran, want %d:\n%s", n, len(before["alpha"]), logs)
	}
	if n := strings.Count(logs, "listening on"); n != len(before["alpha"]) {
		t.Errorf("pier logs shows %d starts of alpha, want %d (no restarts):\n%s", n, len(before["alpha"]), logs)
	}
	if evs := s.api("/v1/apps/alpha/events"); strings.Contains(evs, "machine.exit") {
		t.Errorf("events show a machine exit across the restart:\n%s", evs)
	}
	var list []machineEvents
	s.apiCall("GET", "/v1/apps/beta/machines", nil, &list)
	for _, m := range list {
		if slices.Contains(m.history(), "exit:starting") {
			t.Errorf("machine %s restarted: %v", m.ID, m.history())
		}
	}
}
