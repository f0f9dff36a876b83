package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// setVersion rewrites the sample's pier.toml so the next deploy serves v.
func setVersion(t *testing.T, dir, app, v string, extra string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "pier.toml"), fmt.Sprintf("app = %q\n%s\n[env]\nVERSION = %q\n", app, extra, v))
}

var versionRE = regexp.MustCompile(`version=(\S+)`)

// TestZeroDowntimeDeploys keeps a bounded load on an app while it is
// redeployed twice and rolled back once: every request must succeed, and the
// version served must change.
func TestZeroDowntimeDeploys(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		dir := copyApp(t, "go")
		const app = "zdt"
		setVersion(t, dir, app, "one", "[[checks]]\npath = \"/healthz\"\ninterval = \"500ms\"")
		s.mustPier("launch", dir, "--yes")
		s.mustPier("scale", "count", "2", "-a", app)
		eventually(t, 10*time.Second, "two healthy machines", func() error {
			st := s.status(app)
			healthy := 0
			for _, m := range st.Machines {
				if m.Healthy {
					healthy++
				}
			}
			if healthy != 2 {
				return fmt.Errorf("%d healthy of %d", healthy, len(st.Machines))
			}
			return nil
		})

		var ok, failed atomic.Int64
		var mu sync.Mutex
		seen := map[string]int{}
		var failures []string
		stop := make(chan struct{})
		var wg sync.WaitGroup
		deadline := time.Now().Add(3 * time.Minute) // bound the loop even if the test stalls
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline); i++ {
					select {
					case <-stop:
						return
					default:
					}
					path := "/"
					if (i+w)%5 == 0 {
						path = "/slow" // in flight while machines drain
					}
					code, body, err := s.get(app, path)
					if err != nil || code != 200 {
						failed.Add(1)
						mu.Lock()
						if len(failures) < 20 {
							failures = append(failures, fmt.Sprintf("%s: %d %v %q", path, code, err, body))
						}
						mu.Unlock()
						time.Sleep(20 * time.Millisecond)
						continue
					}
					ok.Add(1)
					if m := versionRE.FindStringSubmatch(body); m != nil {
						mu.Lock()
						seen[m[1]]++
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		setVersion(t, dir, app, "two", "[[checks]]\npath = \"/healthz\"\ninterval = \"500ms\"")
		s.mustPier("deploy", dir)
		time.Sleep(300 * time.Millisecond)
		setVersion(t, dir, app, "three", "[deploy]\nstrategy = \"immediate\"")
		s.mustPier("deploy", dir)
		time.Sleep(300 * time.Millisecond)
		out := s.mustPier("rollback", "-a", app)
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()

		if !strings.Contains(out, "v4 (rollback to v2) is live") {
			t.Errorf("rollback output:\n%s", out)
		}
		t.Logf("requests: %d ok, %d failed; versions served: %v", ok.Load(), failed.Load(), seen)
		if failed.Load() != 0 {
			t.Fatalf("%d requests failed during deploys, e.g. %v", failed.Load(), failures[:min(len(failures), 5)])
		}
		for _, v := range []string{"one", "two", "three"} {
			if seen[v] == 0 {
				t.Errorf("version %s was never served: %v", v, seen)
			}
		}
		s.mustGet(app, "/", "version=two")
		if ok.Load() < 100 {
			t.Errorf("only %d requests made: the load was too light to prove anything", ok.Load())
		}
		rels := s.mustPier("releases", "-a", app)
		for _, want := range []string{"v4  active   rollback to v2", "v3  retired", "v1  retired"} {
			if !strings.Contains(strings.Join(strings.Fields(rels), " "), strings.Join(strings.Fields(want), " ")) {
				t.Errorf("releases lack %q:\n%s", want, rels)
			}
		}
		if st := s.status(app); len(st.Machines) != 2 {
			t.Errorf("after deploys: %d machines, want 2 (old ones must be stopped)", len(st.Machines))
		}
	})
}

// TestFailedReleaseKeepsServing deploys releases that exit at start or never
// become healthy: the deploy fails with a clear message and the previous
// release keeps serving.
func TestFailedReleaseKeepsServing(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		dir := copyApp(t, "go")
		const app = "fail"
		setVersion(t, dir, app, "good", "")
		s.mustPier("launch", dir, "--yes")
		s.mustGet(app, "/", "version=good")

		tests := []struct {
			name, config, want string
		}{
			{"exits at start", "[build]\nstart = \"echo boom >&2; exit 3\"", "exited with exit code 3 before passing its health checks"},
			{"never healthy", "[build]\nstart = \"sleep 600\"\n[deploy]\nwait_timeout = \"2s\"", "did not pass its health checks within 2s"},
			{"build fails", "[build]\ncommand = \"echo compiling; exit 7\"", "build step `echo compiling; exit 7` failed"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				setVersion(t, dir, app, "bad", tt.config)
				out, err := s.pier("deploy", dir)
				if err == nil {
					t.Fatalf("deploy of a broken release succeeded:\n%s", out)
				}
				if !strings.Contains(out, tt.want) {
					t.Errorf("deploy output lacks %q:\n%s", tt.want, out)
				}
				s.mustGet(app, "/", "version=good")
				st := s.status(app)
				if st.Current == nil || st.Current.Version != 1 || len(st.Machines) != 1 || st.Machines[0].Release != 1 {
					t.Errorf("after failed deploy: current %+v, machines %+v", st.Current, st.Machines)
				}
			})
		}
		if out := s.mustPier("deploy", dir, "--help"); !strings.Contains(out, "keeps serving") {
			t.Errorf("deploy --help does not explain failures:\n%s", out)
		}
		if rels := s.mustPier("releases", "-a", app); strings.Count(rels, "failed") != 2 {
			t.Errorf("want the two rolled-out bad releases marked failed (a failed build makes none):\n%s", rels)
		}
	})
}

// TestCrashedMachineComesBack kills a machine with SIGKILL; the machine manager
// must bring it back and the app must serve again within seconds.
func TestCrashedMachineComesBack(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		dir := copyApp(t, "python")
		need(t, "python3")
		s.mustPier("launch", dir, "--name", "crashy", "--yes")
		s.mustGet("crashy", "/", "hello from python")
		before := s.status("crashy").Machines[0]
		if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "app serving again after kill -9", func() error {
			st := s.status("crashy")
			if len(st.Machines) != 1 || st.Machines[0].Restarts < 1 || !st.Machines[0].Healthy {
				return fmt.Errorf("machines: %+v", st.Machines)
			}
			_, body, err := s.get("crashy", "/")
			if err != nil || !strings.Contains(body, "hello from python") {
				return fmt.Errorf("GET: %q %v", body, err)
			}
			return nil
		})
		if after := s.status("crashy").Machines[0]; after.PID == before.PID || after.ID != before.ID {
			t.Errorf("machine after restart: %+v (before %+v)", after, before)
		}
		if logs := s.mustPier("logs", "crashy"); strings.Count(logs, "listening on") < 2 {
			t.Errorf("logs do not show the restart:\n%s", logs)
		}
	})
}

// TestScaleToZero launches an app that stops when idle: its machines stop
// after the idle timeout, and the next request starts one and is served.
func TestScaleToZero(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)
		dir := copyApp(t, "go")
		setVersion(t, dir, "sleepy", "z", "[http_service]\nauto_stop_machines = \"stop\"\nidle_timeout = \"2s\"\n")
		s.mustPier("launch", dir, "--yes")
		s.mustGet("sleepy", "/", "version=z")
		before := s.status("sleepy").Machines
		// The idle machine is stopped and kept, as Fly's autostop does: the
		// next request starts the same machine again.
		eventually(t, 20*time.Second, "idle app stopped", func() error {
			if ms := s.status("sleepy").Machines; len(ms) != 1 || ms[0].State != pier.MachineStopped {
				return fmt.Errorf("machines: %+v", ms)
			}
			return nil
		})
		if n := s.running(); n != 0 {
			t.Fatalf("%d machines still running after autostop", n)
		}
		begin := time.Now()
		s.mustGet("sleepy", "/", "version=z") // held until a machine is up, then served
		t.Logf("cold start through the proxy: %s", time.Since(begin))
		if st := s.status("sleepy"); len(st.Machines) != 1 || st.Count != 1 || st.Machines[0].ID != before[0].ID || st.Machines[0].State != pier.MachineStarted {
			t.Errorf("after wake: count %d, machines %+v (before: %+v)", st.Count, st.Machines, before)
		}
		events := s.api("/v1/apps/sleepy/events")
		for _, want := range []string{`"type": "autostop"`, `"type": "autostart"`} {
			if !strings.Contains(events, want) {
				t.Errorf("events lack %s", want)
			}
		}
	})
}
