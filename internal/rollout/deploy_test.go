package rollout

import (
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

var strategies = []string{pier.StrategyRolling, pier.StrategyImmediate}

// deployOld deploys v1 of app to n healthy machines and returns their ids
// and routes.
func deployOld(t *testing.T, h *harness, app string, n int) ([]string, map[string]string) {
	t.Helper()
	if _, err := h.deploy(t, rel(app, 1, "serve", pier.StrategyRolling), n); err != nil {
		t.Fatalf("deploy v1: %v", err)
	}
	ids := h.ids(app)
	routes := h.router.routed(app)
	if len(ids) != n || len(routes) != n {
		t.Fatalf("after deploying v1 to %d machines: machines %v, routes %v", n, ids, routes)
	}
	for id, addr := range routes {
		answers(t, addr, id)
	}
	return ids, routes
}

// checkOldUntouched verifies that a failed deploy left the old machines
// serving exactly as before and none of the new ones behind.
func checkOldUntouched(t *testing.T, h *harness, app string, oldIDs []string, oldRoutes map[string]string) {
	t.Helper()
	if got := h.router.routed(app); !maps.Equal(got, oldRoutes) {
		t.Errorf("routes after the failed deploy = %v, want the old ones %v", got, oldRoutes)
	}
	for _, id := range oldIDs {
		if ops := h.router.callsFor(id); !slices.Equal(ops, []string{"add"}) {
			t.Errorf("old machine %s: router operations %v, want only its first add", id, ops)
		}
		ps := h.driver.all(id)
		if len(ps) != 1 || ps[0].exited() || len(ps[0].signalsGot()) != 0 {
			t.Errorf("old machine %s was disturbed: %d runs, exited %v, signals %v", id, len(ps), ps[len(ps)-1].exited(), ps[len(ps)-1].signalsGot())
		}
	}
	if got := h.ids(app); !slices.Equal(got, oldIDs) {
		t.Errorf("machines after the failed deploy = %v, want the old ones %v", got, oldIDs)
	}
	if got, want := h.rec.machineIDs(), slices.Sorted(slices.Values(oldIDs)); !slices.Equal(got, want) {
		t.Errorf("recorded machines = %v, want the old ones %v", got, want)
	}
	for _, c := range h.router.allCalls() {
		if c.op == "add" && !slices.Contains(oldIDs, c.id) {
			t.Errorf("a machine of the failed release (%s) was routed", c.id)
		}
	}
	for _, spec := range h.driver.started() {
		if slices.Contains(oldIDs, spec.ID) {
			continue
		}
		for _, p := range h.driver.all(spec.ID) {
			if !p.exited() {
				t.Errorf("machine %s of the failed release is still running", spec.ID)
			}
		}
	}
}

// index returns the position of event in events, or -1.
func index(events []string, event string) int { return slices.Index(events, event) }

func TestDeployHealthyRelease(t *testing.T) {
	for _, strategy := range strategies {
		t.Run(strategy, func(t *testing.T) {
			h := newHarness(t)
			oldIDs, _ := deployOld(t, h, "web", 2)
			mark := len(h.tl.all())

			pl, err := h.deploy(t, rel("web", 2, "serve", strategy), 3)
			if err != nil {
				t.Fatalf("Deploy: %v", err)
			}

			ms := h.mg.AppMachines("web")
			if len(ms) != 3 {
				t.Fatalf("machines after deploy: %+v, want 3 of v2", ms)
			}
			var newIDs []string
			for _, m := range ms {
				if m.Release != 2 || !m.Healthy || m.State != pier.MachineStarted || m.Addr == "" {
					t.Errorf("new machine %+v, want a healthy started machine of v2", m)
				}
				newIDs = append(newIDs, m.ID)
			}
			routes := h.router.routed("web")
			if got := slices.Sorted(maps.Keys(routes)); !slices.Equal(got, slices.Sorted(slices.Values(newIDs))) {
				t.Fatalf("routed %v, want exactly the new machines %v", got, newIDs)
			}
			for _, m := range ms {
				if routes[m.ID] != m.Addr {
					t.Errorf("machine %s routed to %s, but listens on %s", m.ID, routes[m.ID], m.Addr)
				}
				answers(t, routes[m.ID], m.ID)
			}
			for _, id := range oldIDs {
				if ops := h.router.callsFor(id); !slices.Contains(ops, "drain") {
					t.Errorf("old machine %s: router operations %v, want a drain", id, ops)
				}
				p := h.driver.latest(id)
				if !p.exited() {
					t.Errorf("old machine %s still running", id)
				}
				if sigs := p.signalsGot(); len(sigs) == 0 || sigs[0] != syscall.SIGTERM {
					t.Errorf("old machine %s got signals %v, want SIGTERM first", id, sigs)
				}
			}
			if got, want := h.rec.machineIDs(), slices.Sorted(slices.Values(newIDs)); !slices.Equal(got, want) {
				t.Errorf("recorded machines = %v, want the new ones %v", got, want)
			}

			// Order: no old machine is drained before every new one is in.
			events := h.tl.all()[mark:]
			lastAdd, firstDrain := -1, len(events)
			var starts []string
			for i, e := range events {
				op, id, _ := strings.Cut(e, " ")
				switch {
				case op == "start":
					starts = append(starts, id)
				case op == "add" && slices.Contains(newIDs, id):
					lastAdd = i
				case op == "drain" && slices.Contains(oldIDs, id):
					firstDrain = min(firstDrain, i)
				}
			}
			if lastAdd < 0 || lastAdd > firstDrain {
				t.Errorf("an old machine was drained before every new one joined traffic: %v", events)
			}
			if len(starts) != 3 {
				t.Fatalf("started %v, want 3 machines", starts)
			}
			switch strategy {
			case pier.StrategyRolling:
				// One at a time: each starts after the previous one joined.
				for i := 1; i < len(starts); i++ {
					if index(events, "start "+starts[i]) < index(events, "add "+starts[i-1]) {
						t.Errorf("rolling: %s started before %s joined traffic: %v", starts[i], starts[i-1], events)
					}
				}
			case pier.StrategyImmediate:
				// All at once: every machine starts before any joins.
				firstAdd := len(events)
				for _, id := range starts {
					firstAdd = min(firstAdd, index(events, "add "+id))
				}
				for _, id := range starts {
					if index(events, "start "+id) > firstAdd {
						t.Errorf("immediate: %s started after traffic switched: %v", id, events)
					}
				}
			}
			checkNeverDark(t, h, "web")
			if !slices.ContainsFunc(pl.lines, func(l string) bool { return strings.Contains(l, "is healthy") }) {
				t.Errorf("progress never reported a healthy machine: %q", pl.lines)
			}
		})
	}
}

// checkNeverDark replays the router's operations: once app had a machine,
// it must never have had none.
func checkNeverDark(t *testing.T, h *harness, app string) {
	t.Helper()
	routed := map[string]bool{}
	seen := false
	for i, c := range h.router.allCalls() {
		if c.app != app {
			continue
		}
		if c.op == "add" {
			routed[c.id] = true
			seen = true
		} else {
			delete(routed, c.id)
		}
		if seen && len(routed) == 0 {
			t.Errorf("after router operation %d (%s %s) app %s had no machine", i, c.op, c.id, app)
		}
	}
}

func TestDeployFirstReleaseDefaultsToOneMachine(t *testing.T) {
	h := newHarness(t)
	if _, err := h.deploy(t, rel("web", 1, "serve", pier.StrategyRolling), 0); err != nil {
		t.Fatal(err)
	}
	if ids := h.ids("web"); len(ids) != 1 || len(h.router.routed("web")) != 1 {
		t.Fatalf("machines %v, routes %v; want one routed machine", ids, h.router.routed("web"))
	}
}

func TestDeployFailedReleaseLeavesOldServing(t *testing.T) {
	httpCheck := []pier.Check{{Type: "http", Path: "/healthz", Interval: pier.Duration{Duration: 50 * time.Millisecond}, Timeout: pier.Duration{Duration: time.Second}}}
	tests := []struct {
		name    string
		start   string
		checks  []pier.Check
		timeout time.Duration
		want    []string // in the error message
	}{
		// The exit must be reported as such, well before the wait is over.
		{"exits at start", "exit 3", nil, wait, []string{"of v2 exited with exit code 3 before passing its health checks", "missing DATABASE_URL"}},
		{"never listens", "no-listen", nil, 300 * time.Millisecond, []string{"did not pass its health checks", "TCP connect", "starting up, slowly"}},
		{"fails http check", "serve-unhealthy", httpCheck, 300 * time.Millisecond, []string{"did not pass its health checks", "GET /healthz"}},
		{"driver cannot start it", "no-such-command", nil, wait, []string{"machine did not start", "no-such-command"}},
	}
	for _, tt := range tests {
		for _, strategy := range strategies {
			t.Run(tt.name+"/"+strategy, func(t *testing.T) {
				h := newHarness(t)
				oldIDs, oldRoutes := deployOld(t, h, "web", 2)

				r := rel("web", 2, tt.start, strategy)
				r.Config.Checks = tt.checks
				r.Config.WaitTimeout.Duration = tt.timeout
				pl, err := h.deploy(t, r, 2)
				if err == nil {
					t.Fatal("Deploy of a failing release succeeded")
				}
				if k := pier.KindOf(err); k != pier.Failed {
					t.Errorf("error kind = %v, want Failed: %v", k, err)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not mention %q: %v", w, err)
					}
				}
				if !slices.ContainsFunc(pl.lines, func(l string) bool { return strings.Contains(l, "aborting") }) {
					t.Errorf("progress does not say the deploy was aborted: %q", pl.lines)
				}
				checkOldUntouched(t, h, "web", oldIDs, oldRoutes)
			})
		}
	}
}

func TestDeployKillsOldMachineThatIgnoresSIGTERM(t *testing.T) {
	h := newHarness(t)
	if _, err := h.deploy(t, rel("web", 1, "ignore-term", pier.StrategyRolling), 1); err != nil {
		t.Fatal(err)
	}
	old := h.ids("web")[0]
	if _, err := h.deploy(t, rel("web", 2, "serve", pier.StrategyRolling), 1); err != nil {
		t.Fatal(err)
	}
	p := h.driver.latest(old)
	if !p.exited() {
		t.Fatal("old machine still running after deploy returned")
	}
	if got := p.signalsGot(); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}) {
		t.Errorf("old machine got %v, want SIGTERM then SIGKILL after the grace", got)
	}
}
