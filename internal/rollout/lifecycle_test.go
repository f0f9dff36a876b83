package rollout

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// runOne starts one machine of r and waits until it is routed.
func runOne(t *testing.T, h *harness, r pier.Release) string {
	t.Helper()
	if err := h.ro.Scale(context.Background(), r, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the machine is routed", func() bool { return len(h.router.routed(r.App)) == 1 })
	return h.ids(r.App)[0]
}

func TestCrashedMachineIsRestarted(t *testing.T) {
	h := newHarness(t)
	id := runOne(t, h, rel("web", 1, "serve", pier.StrategyRolling))

	for n := 1; n <= 2; n++ {
		crashed := h.driver.latest(id)
		crashed.crash(1)
		eventually(t, "the crashed machine is routed again", func() bool {
			p := h.driver.latest(id)
			return p != crashed && h.router.routed("web")[id] == p.addr
		})
		ms := h.mg.AppMachines("web")
		if len(ms) != 1 || ms[0].ID != id {
			t.Fatalf("machines after crash %d: %+v, want the same one machine", n, ms)
		}
		p := h.driver.latest(id)
		if m := ms[0]; m.Restarts != n || !m.Healthy || m.Addr != p.addr || m.PID != p.pid {
			t.Errorf("after crash %d: %+v, want %d restarts, healthy, at the new process %s (pid %d)", n, m, n, p.addr, p.pid)
		}
		answers(t, h.router.routed("web")[id], id)
	}
	// Taken out of traffic as soon as it died, put back once healthy.
	if ops := h.router.callsFor(id); !slices.Equal(ops, []string{"add", "remove", "add", "remove", "add"}) {
		t.Errorf("router operations on the machine: %v", ops)
	}
	exits := h.rec.eventsOf("machine.exit")
	if len(exits) != 2 || !strings.Contains(exits[0].Message, "exit code 1") {
		t.Errorf("machine.exit events = %+v, want two mentioning exit code 1", exits)
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	h := newHarness(t)
	if err := h.ro.Scale(context.Background(), rel("web", 1, "exit 1", pier.StrategyRolling), 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the machine started once", func() bool { return len(h.ids("web")) == 1 })
	id := h.ids("web")[0]
	eventually(t, "four starts", func() bool { return len(h.driver.all(id)) >= 4 })
	ps := h.driver.all(id)
	// Lower bounds only, which the backoff timers guarantee: 100ms, then
	// doubling.
	min := 100 * time.Millisecond
	for i := 1; i < 4; i++ {
		if gap := ps[i].at.Sub(ps[i-1].at); gap < min {
			t.Errorf("restart %d came %s after the previous start, want at least %s", i, gap, min)
		}
		min *= 2
	}
	if len(h.router.routed("web")) != 0 {
		t.Errorf("a machine that never listened was routed")
	}
}

func TestUnhealthyMachineLeavesTrafficAndReturns(t *testing.T) {
	h := newHarness(t)
	r := rel("web", 1, "serve", pier.StrategyRolling)
	r.Config.Checks = []pier.Check{{Type: "http", Path: "/healthz", Interval: pier.Duration{Duration: 20 * time.Millisecond}, Timeout: pier.Duration{Duration: time.Second}}}
	id := runOne(t, h, r)
	p := h.driver.latest(id)

	p.sick.Store(true)
	eventually(t, "the failing machine leaves traffic", func() bool { return len(h.router.routed("web")) == 0 })
	if ms := h.mg.AppMachines("web"); len(ms) != 1 || ms[0].Healthy {
		t.Errorf("machines while failing checks: %+v, want one unhealthy", ms)
	}
	if evs := h.rec.eventsOf("machine.unhealthy"); len(evs) == 0 || !strings.Contains(evs[0].Message, "/healthz") {
		t.Errorf("machine.unhealthy events = %+v", evs)
	}

	p.sick.Store(false)
	eventually(t, "the recovered machine is routed again", func() bool { return h.router.routed("web")[id] == p.addr })
	if got := h.driver.all(id); len(got) != 1 || got[0].exited() {
		t.Errorf("failing checks restarted the machine (%d runs); it should only leave traffic", len(got))
	}
	if ms := h.mg.AppMachines("web"); ms[0].Restarts != 0 || !ms[0].Healthy {
		t.Errorf("after recovery: %+v", ms[0])
	}
}

func TestScale(t *testing.T) {
	h := newHarness(t)
	r := rel("web", 1, "serve", pier.StrategyRolling)
	first := runOne(t, h, r)

	scale := func(n int) {
		t.Helper()
		var err error
		within(t, "Scale", func() { err = h.ro.Scale(context.Background(), r, n) })
		if err != nil {
			t.Fatalf("Scale(%d): %v", n, err)
		}
	}
	scale(3)
	eventually(t, "three machines are routed", func() bool { return len(h.router.routed("web")) == 3 })
	ids := h.ids("web")
	if len(ids) != 3 || ids[0] != first {
		t.Fatalf("machines after scaling to 3: %v, want %s and two new", ids, first)
	}
	for id, addr := range h.router.routed("web") {
		answers(t, addr, id)
	}

	scale(3)
	if got := h.ids("web"); !slices.Equal(got, ids) {
		t.Fatalf("scaling to the current count changed machines: %v → %v", ids, got)
	}

	// Scaling down keeps the oldest and drains the newest.
	scale(1)
	if got := h.ids("web"); !slices.Equal(got, []string{first}) {
		t.Fatalf("machines after scaling to 1: %v, want [%s]", got, first)
	}
	if routes := h.router.routed("web"); len(routes) != 1 || routes[first] == "" {
		t.Fatalf("routes after scaling to 1: %v", routes)
	}
	for _, id := range ids[1:] {
		if !h.driver.latest(id).exited() {
			t.Errorf("machine %s still running after scale down", id)
		}
		if ops := h.router.callsFor(id); !slices.Contains(ops, "drain") {
			t.Errorf("machine %s stopped without a drain: %v", id, ops)
		}
	}

	scale(0)
	if got := h.ids("web"); len(got) != 0 {
		t.Fatalf("machines after scaling to 0: %v", got)
	}
	if routes := h.router.routed("web"); len(routes) != 0 {
		t.Fatalf("routes after scaling to 0: %v", routes)
	}
	if got := h.rec.machineIDs(); len(got) != 0 {
		t.Fatalf("recorded machines after scaling to 0: %v", got)
	}
}

func TestStopAppAndShutdown(t *testing.T) {
	h := newHarness(t)
	if err := h.ro.Scale(context.Background(), rel("web", 1, "serve", pier.StrategyRolling), 2); err != nil {
		t.Fatal(err)
	}
	api := runOne(t, h, rel("api", 1, "serve", pier.StrategyRolling))
	eventually(t, "web is routed", func() bool { return len(h.router.routed("web")) == 2 })
	web := h.ids("web")

	within(t, "StopApp", func() { h.ro.StopApp("web") })
	if got := h.ids("web"); len(got) != 0 {
		t.Fatalf("web machines after StopApp: %v", got)
	}
	for _, id := range web {
		if !h.driver.latest(id).exited() {
			t.Errorf("web machine %s still running", id)
		}
	}
	if h.driver.latest(api).exited() || len(h.router.routed("api")) != 1 {
		t.Fatal("StopApp(web) touched api")
	}

	// The server's shutdown stops machines but keeps their documents, and
	// the next server's manager starts them again: same machine, same id.
	within(t, "Shutdown", func() { h.mg.Shutdown(time.Second) })
	if !h.driver.latest(api).exited() {
		t.Fatal("api still running after Shutdown")
	}
	if got := h.rec.machineIDs(); !slices.Equal(got, []string{api}) {
		t.Fatalf("stored machines after Shutdown = %v, want [%s]", got, api)
	}
	mg := h.newManager(h.driver)
	if err := mg.Restore(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	h.mg, h.ro.Fleet = mg, mg
	eventually(t, "api is routed again after restore", func() bool {
		p := h.driver.latest(api)
		return len(h.driver.all(api)) == 2 && h.router.routed("api")[api] == p.addr
	})
	if ms := mg.AppMachines("api"); len(ms) != 1 || ms[0].ID != api || ms[0].Release != 1 || !ms[0].Healthy {
		t.Fatalf("api after restore: %+v", ms)
	}
}

func TestMachineSpec(t *testing.T) {
	h := newHarness(t)
	r := rel("web", 4, "serve", pier.StrategyRolling)
	if _, err := h.deploy(t, r, 1); err != nil {
		t.Fatal(err)
	}
	id := h.ids("web")[0]
	specs := h.driver.started()
	if len(specs) != 1 {
		t.Fatalf("started %d machines", len(specs))
	}
	s := specs[0]
	if s.ID != id || s.App != "web" {
		t.Errorf("spec id/app = %s/%s, want %s/web", s.ID, s.App, id)
	}
	if want := filepath.Join(h.artifact, "web", "build4"); s.Dir != want {
		t.Errorf("Dir = %q, want the build's artifact %q", s.Dir, want)
	}
	// The release's env as given, then the machine's Fly variables: PORT
	// is the driver's to add.
	if want := []string{"FROM_TEST=1", "FLY_MACHINE_ID=" + id, "FLY_APP_NAME=web", "FLY_REGION=local", "FLY_PROCESS_GROUP=app", "FLY_RELEASE_VERSION=4"}; !slices.Equal(s.Env, want) {
		t.Errorf("Env = %q, want %q", s.Env, want)
	}
	if !slices.Equal(s.Command, []string{"/bin/sh", "-c", "exec serve"}) {
		t.Errorf("Command = %q", s.Command)
	}
	// What the machine prints lands in the app's logs, tagged with it.
	lines, err := h.hub.Tail("web", 10)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(lines, func(l pier.LogLine) bool {
		return l.Machine == id && l.Stream == "stdout" && strings.HasPrefix(l.Line, "listening on ")
	}) {
		t.Errorf("machine output not in the logs: %+v", lines)
	}
}
