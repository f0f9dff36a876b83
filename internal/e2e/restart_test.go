package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestGracefulRestartUnderLoad upgrades `pier server` in place under load:
// the binary is replaced on disk, SIGHUP hands the listening sockets to a
// server started from the new binary, and the old one drains and exits.
// The test reports how many requests failed (0 with the hand-off), and
// checks that the apps' machines were adopted, not restarted.
func TestGracefulRestartUnderLoad(t *testing.T) {
	// The server runs from a copy of pier, so the test can replace it.
	bin := filepath.Join(t.TempDir(), "pier")
	copyFile(t, pierBin, bin)
	s := startRuncServerWithBinary(t, bin)
	dir := copyApp(t, "go")
	setVersion(t, dir, "steady", "one", "")
	s.mustPier("launch", dir, "--yes")
	s.mustPier("scale", "count", "2", "-a", "steady")
	eventually(t, 20*time.Second, "two healthy machines", func() error {
		n := 0
		for _, m := range s.status("steady").Machines {
			if m.Healthy {
				n++
			}
		}
		if n != 2 {
			return fmt.Errorf("%d healthy", n)
		}
		return nil
	})
	before := s.status("steady").Machines
	oldPID := s.pid()

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Minute)
	load := func(call func() error) {
		defer wg.Done()
		for time.Now().Before(deadline) {
			select {
			case <-stop:
				return
			default:
			}
			if err := call(); err != nil {
				failed.Add(1)
				mu.Lock()
				if len(failures) < 20 { // a server that is down fails fast: keep a few
					failures = append(failures, err.Error())
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				continue
			}
			ok.Add(1)
		}
	}
	for range 4 {
		wg.Add(1)
		go load(func() error {
			code, body, err := s.get("steady", "/")
			if err != nil || code != 200 || !strings.Contains(body, "version=one") {
				return fmt.Errorf("edge: %d %q %v", code, body, err)
			}
			return nil
		})
	}
	wg.Add(1)
	go load(func() error {
		if out, err := s.pier("apps", "list"); err != nil {
			return fmt.Errorf("API: %v: %s", err, strings.TrimSpace(out))
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond)

	// The upgrade: a new binary in place (rename over, as package managers
	// do), then SIGHUP.
	copyFile(t, pierBin, bin+".new")
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := syscall.Kill(oldPID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the new server took over and the old one exited", func() error {
		if pid := s.pid(); pid == oldPID || pid == 0 {
			return fmt.Errorf("server.pid still %d", pid)
		}
		if syscall.Kill(oldPID, 0) == nil {
			return fmt.Errorf("old server %d still running", oldPID)
		}
		_, err := s.pier("apps", "list")
		return err
	})
	took := time.Since(begin)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("graceful restart under load: %d requests ok, %d failed; the hand-over took %s", ok.Load(), failed.Load(), took.Round(time.Millisecond))
	if failed.Load() != 0 {
		t.Errorf("%d requests failed during the graceful restart, e.g. %v", failed.Load(), failures[:min(5, len(failures))])
	}
	// The mesh's port and the machines' name server went over too, so
	// calls between apps and lookups wait instead of being refused.
	if log := s.log.String(); !strings.Contains(log, "handed the sockets to the new server") ||
		!regexp.MustCompile(`sockets=\S*mesh`).MatchString(log) || !regexp.MustCompile(`sockets=\S*dns-udp`).MatchString(log) {
		t.Errorf("the server log does not show the mesh and DNS sockets handed over")
	}
	newPID := s.pid()
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", newPID)); err != nil || exe != bin {
		t.Errorf("the new server runs %q (%v), want the binary now at %s", exe, err, bin)
	}
	after := s.status("steady").Machines
	if len(after) != len(before) {
		t.Fatalf("machines after the restart: %+v", after)
	}
	for i, m := range after {
		if b := before[i]; m.ID != b.ID || m.PID != b.PID || m.Restarts != 0 {
			t.Errorf("machine after the restart: %+v, before: %+v (want it adopted, not restarted)", m, b)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
