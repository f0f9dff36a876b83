package machines

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// fakeProc is a machine process whose behaviour comes from its command:
// "run" runs until signalled, "exit N" exits with N at once, "stubborn"
// ignores SIGTERM, "oom" exits as OOM-killed.
type fakeProc struct {
	mu       sync.Mutex
	cmd      []string
	done     chan struct{}
	exit     runtime.Exit
	stubborn bool
	signals  []syscall.Signal
}

func (p *fakeProc) Addr() string { return "100.96.0.9:8080" }
func (p *fakeProc) PID() int     { return 4242 }
func (p *fakeProc) Wait() runtime.Exit {
	<-p.done
	return p.exit
}

func (p *fakeProc) finish(e runtime.Exit) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
	default:
		p.exit = e
		close(p.done)
	}
}

func (p *fakeProc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	stubborn := p.stubborn
	p.mu.Unlock()
	if sig == syscall.SIGKILL || !stubborn {
		p.finish(runtime.Exit{Code: -1, Signal: sig.String()})
	}
	return nil
}

func (p *fakeProc) Exec(ctx context.Context, cmd []string, stdin []byte) (runtime.ExecResult, error) {
	return runtime.ExecResult{ExitCode: 3, Stdout: strings.Join(cmd, " ") + "|" + string(stdin), Stderr: "err"}, nil
}

type fakeDriver struct {
	mu       sync.Mutex
	starts   []runtime.Spec
	procs    []*fakeProc
	fail     bool
	hostOnly bool // runs machines as host processes: not isolated
}

func (d *fakeDriver) Isolates() bool { return !d.hostOnly }

func (d *fakeDriver) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail {
		return nil, fmt.Errorf("driver broken")
	}
	d.starts = append(d.starts, spec)
	p := &fakeProc{cmd: spec.Command, done: make(chan struct{})}
	switch {
	case spec.Command[0] == "exit":
		var code int
		fmt.Sscan(spec.Command[1], &code)
		p.finish(runtime.Exit{Code: code})
	case spec.Command[0] == "oom":
		p.finish(runtime.Exit{Code: -1, Signal: "killed", OOMKilled: true})
	case spec.Command[0] == "stubborn":
		p.stubborn = true
	}
	d.procs = append(d.procs, p)
	return p, nil
}

func (d *fakeDriver) startCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.starts)
}

func (d *fakeDriver) last() *fakeProc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.procs[len(d.procs)-1]
}

type fakeImages struct{}

func (fakeImages) Resolve(ctx context.Context, ref string) (Image, error) {
	if ref == "missing" {
		return Image{}, pier.Errorf(pier.Invalid, "image %q not found", ref)
	}
	return Image{Ref: ref, Digest: "sha256:abc", Rootfs: []string{"/rootfs/abc"}, Cmd: []string{"run"}, Env: []string{"IMG=1"}, WorkDir: "/w"}, nil
}

type memStore struct {
	mu   sync.Mutex
	docs map[string][]byte
}

func (m *memStore) PutMachineDoc(ctx context.Context, id, app string, doc []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.docs[id] = append([]byte(nil), doc...)
	return nil
}
func (m *memStore) DeleteMachineDoc(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.docs, id)
	return nil
}
func (m *memStore) MachineDocs(ctx context.Context) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out [][]byte
	for _, d := range m.docs {
		out = append(out, d)
	}
	return out, nil
}

type harness struct {
	mg    *Manager
	drv   *fakeDriver
	store *memStore
	hub   *logs.Hub
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	hub, err := logs.NewHub(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{drv: &fakeDriver{}, store: &memStore{docs: map[string][]byte{}}, hub: hub}
	h.mg = New(h.drv, fakeImages{}, h.store, hub, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.mg.StopTimeout = 200 * time.Millisecond
	t.Cleanup(func() { h.mg.Shutdown(time.Second); hub.Close() })
	return h
}

func (h *harness) create(t *testing.T, cfg Config) Machine {
	t.Helper()
	m, err := h.mg.Create(context.Background(), "sbx", CreateRequest{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (h *harness) wait(t *testing.T, id, state string) Machine {
	t.Helper()
	m, err := h.mg.Wait(context.Background(), "sbx", id, state, "5")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreateValidatesAndCreatesNothingOnBadInput(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no image", Config{}, "config.image"},
		{"negative memory", Config{Image: "i", Guest: Guest{MemoryMB: -1}}, "config.guest.memory_mb: -1 is out of range"},
		{"tiny rootfs", Config{Image: "i", Guest: Guest{RootfsSizeMB: 8}}, "config.guest.rootfs_size_mb: 8 is out of range"},
		{"too many cpus", Config{Image: "i", Guest: Guest{CPUs: 99}}, "config.guest.cpus"},
		{"bad restart", Config{Image: "i", Restart: Restart{Policy: "sometimes"}}, "config.restart.policy"},
		{"bad port", Config{Image: "i", Services: []Service{{InternalPort: 70000}}}, "config.services[0].internal_port"},
		{"bad autostop", Config{Image: "i", Services: []Service{{InternalPort: 80, Autostop: "maybe"}}}, "config.services[0].autostop"},
		{"bad check", Config{Image: "i", Checks: map[string]Check{"h": {Type: "udp", Port: 80}}}, "config.checks.h.type"},
		{"relative file", Config{Image: "i", Files: []File{{GuestPath: "etc/x", RawValue: ""}}}, "config.files[0].guest_path"},
		{"bad base64", Config{Image: "i", Files: []File{{GuestPath: "/etc/x", RawValue: "!!"}}}, "config.files[0].raw_value"},
		{"reserved env", Config{Image: "i", Env: map[string]string{"PORT": "1"}}, "config.env"},
		{"missing image", Config{Image: "missing"}, `image "missing" not found`},
	}
	h := newHarness(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.mg.Create(context.Background(), "sbx", CreateRequest{Config: tt.cfg})
			if pier.KindOf(err) != pier.Invalid || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want Invalid mentioning %q", err, tt.want)
			}
		})
	}
	if len(h.mg.List("sbx", nil)) != 0 || len(h.store.docs) != 0 || h.drv.startCount() != 0 {
		t.Fatal("a rejected create left something behind")
	}
}

func TestLifecycleStartStopWaitDestroy(t *testing.T) {
	h := newHarness(t)
	m := h.create(t, Config{Image: "img", Env: map[string]string{"A": "b"}, Guest: Guest{CPUs: 2, MemoryMB: 512, RootfsSizeMB: 300},
		Files: []File{{GuestPath: "/etc/greeting", RawValue: "aGk="}}, Init: Init{Cmd: []string{"run", "--flag"}}})
	got := h.wait(t, m.ID, StateStarted)
	if got.PrivateIP != "100.96.0.9" || got.ImageRef.Digest != "sha256:abc" || got.Config.Guest.CPUKind != "shared" {
		t.Errorf("machine = %+v", got)
	}
	spec := h.drv.starts[0]
	if strings.Join(spec.Command, " ") != "run --flag" || spec.Resources.MemoryMB != 512 || spec.Resources.CPUs != 2 || spec.Resources.DiskMB != 300 ||
		spec.Rootfs[0] != "/rootfs/abc" || spec.WorkDir != "/w" || string(spec.Files[0].Data) != "hi" {
		t.Errorf("spec = %+v", spec)
	}
	if !contains(spec.Env, "IMG=1") || !contains(spec.Env, "A=b") || !contains(spec.Env, "FLY_MACHINE_ID="+m.ID) {
		t.Errorf("env = %v", spec.Env)
	}
	if err := h.mg.Destroy(context.Background(), "sbx", m.ID, false, ""); pier.KindOf(err) != pier.Precondition {
		t.Fatalf("destroy of a started machine without force: %v", err)
	}
	if err := h.mg.Stop(context.Background(), "sbx", m.ID, "", StopRequest{}); err != nil {
		t.Fatal(err)
	}
	stopped := h.wait(t, m.ID, StateStopped)
	if ev := stopped.Events[0]; ev.Type != "exit" || ev.Request == nil || !ev.Request.ExitEvent.RequestedStop {
		t.Errorf("latest event = %+v", ev)
	}
	if _, err := h.mg.Start(context.Background(), "sbx", m.ID, ""); err != nil {
		t.Fatal(err)
	}
	h.wait(t, m.ID, StateStarted)
	if h.drv.startCount() != 2 {
		t.Errorf("starts = %d", h.drv.startCount())
	}
	if err := h.mg.Destroy(context.Background(), "sbx", m.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.mg.Get("sbx", m.ID); pier.KindOf(err) != pier.NotFound {
		t.Errorf("destroyed machine still there: %v", err)
	}
	if len(h.store.docs) != 0 {
		t.Error("destroyed machine still stored")
	}
	if _, err := h.mg.Get("other-app", m.ID); pier.KindOf(err) != pier.NotFound {
		t.Error("machine visible from another app")
	}
}

func TestStopTimeoutEscalatesToKill(t *testing.T) {
	h := newHarness(t)
	m := h.create(t, Config{Image: "img", Init: Init{Cmd: []string{"stubborn"}}})
	h.wait(t, m.ID, StateStarted)
	if err := h.mg.Stop(context.Background(), "sbx", m.ID, "", StopRequest{Signal: "SIGINT", Timeout: "100ms"}); err != nil {
		t.Fatal(err)
	}
	h.wait(t, m.ID, StateStopped)
	p := h.drv.last()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.signals) != 2 || p.signals[0] != syscall.SIGINT || p.signals[1] != syscall.SIGKILL {
		t.Fatalf("signals = %v, want SIGINT then SIGKILL", p.signals)
	}
	if err := h.mg.Stop(context.Background(), "sbx", m.ID, "", StopRequest{Signal: "SIGNOPE"}); pier.KindOf(err) != pier.Invalid {
		t.Errorf("bad signal: %v", err)
	}
}

func TestRestartPoliciesOOMAndAutoDestroy(t *testing.T) {
	h := newHarness(t)
	failing := h.create(t, Config{Image: "img", Init: Init{Cmd: []string{"exit", "1"}}, Restart: Restart{Policy: "on-failure", MaxRetries: 2}})
	got := h.wait(t, failing.ID, StateStopped)
	exits := 0
	for _, ev := range got.Events {
		if ev.Type == "exit" {
			exits++
		}
	}
	if exits != 3 {
		t.Errorf("on-failure with max_retries 2: %d exits, want 3", exits)
	}

	clean := h.create(t, Config{Image: "img", Init: Init{Cmd: []string{"exit", "0"}}})
	h.wait(t, clean.ID, StateStopped)

	oom := h.create(t, Config{Image: "img", Init: Init{Cmd: []string{"oom"}}, Restart: Restart{Policy: "no"}})
	got = h.wait(t, oom.ID, StateStopped)
	if ev := got.Events[0]; ev.Request == nil || !ev.Request.ExitEvent.OOMKilled {
		t.Errorf("oom exit event = %+v", got.Events)
	}

	auto := h.create(t, Config{Image: "img", Init: Init{Cmd: []string{"exit", "0"}}, AutoDestroy: true})
	if _, err := h.mg.Wait(context.Background(), "sbx", auto.ID, StateDestroyed, "5"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.mg.Get("sbx", auto.ID); pier.KindOf(err) != pier.NotFound {
		t.Errorf("auto_destroy machine still exists: %v", err)
	}
}

func TestWaitTimesOut(t *testing.T) {
	h := newHarness(t)
	m := h.create(t, Config{Image: "img"})
	h.wait(t, m.ID, StateStarted)
	_, err := h.mg.Wait(context.Background(), "sbx", m.ID, StateStopped, "100ms")
	if pier.KindOf(err) != pier.Timeout {
		t.Fatalf("wait = %v, want Timeout", err)
	}
	if _, err := h.mg.Wait(context.Background(), "sbx", m.ID, "sleeping", ""); pier.KindOf(err) != pier.Invalid {
		t.Fatalf("wait for a bad state = %v", err)
	}
}

func TestExec(t *testing.T) {
	h := newHarness(t)
	m := h.create(t, Config{Image: "img", Restart: Restart{Policy: "no"}})
	h.wait(t, m.ID, StateStarted)
	res, err := h.mg.Exec(context.Background(), "sbx", m.ID, "", ExecRequest{Cmd: "echo hi", Stdin: "in"})
	if err != nil || res.ExitCode != 3 || res.Stdout != "/bin/sh -c echo hi|in" || res.Stderr != "err" {
		t.Fatalf("exec = %+v, %v", res, err)
	}
	if _, err := h.mg.Exec(context.Background(), "sbx", m.ID, "", ExecRequest{}); pier.KindOf(err) != pier.Invalid {
		t.Errorf("empty exec: %v", err)
	}
	h.mg.Stop(context.Background(), "sbx", m.ID, "", StopRequest{})
	h.wait(t, m.ID, StateStopped)
	if _, err := h.mg.Exec(context.Background(), "sbx", m.ID, "", ExecRequest{Cmd: "x"}); pier.KindOf(err) != pier.Precondition {
		t.Errorf("exec on a stopped machine: %v", err)
	}
}

func TestLeasesAndMetadata(t *testing.T) {
	h := newHarness(t)
	m := h.create(t, Config{Image: "img", Metadata: map[string]string{"team": "a"}})
	ctx := context.Background()
	l, err := h.mg.AcquireLease(ctx, "sbx", m.ID, "", LeaseRequest{TTL: 60, Description: "deploying"})
	if err != nil || l.Nonce == "" {
		t.Fatalf("lease = %+v, %v", l, err)
	}
	if _, err := h.mg.AcquireLease(ctx, "sbx", m.ID, "", LeaseRequest{}); pier.KindOf(err) != pier.Conflict {
		t.Errorf("second lease: %v", err)
	}
	v := "b"
	if err := h.mg.SetMetadata(ctx, "sbx", m.ID, "wrong", "team", &v); pier.KindOf(err) != pier.Conflict {
		t.Errorf("metadata with a wrong nonce: %v", err)
	}
	if err := h.mg.Stop(ctx, "sbx", m.ID, "", StopRequest{}); pier.KindOf(err) != pier.Conflict {
		t.Errorf("stop without the nonce: %v", err)
	}
	if err := h.mg.SetMetadata(ctx, "sbx", m.ID, l.Nonce, "team", &v); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.mg.GetLease("sbx", m.ID); got.Nonce != "" || got.Description != "deploying" {
		t.Errorf("get lease shows %+v", got)
	}
	if err := h.mg.ReleaseLease(ctx, "sbx", m.ID, "wrong"); pier.KindOf(err) != pier.Conflict {
		t.Errorf("release with a wrong nonce: %v", err)
	}
	if err := h.mg.ReleaseLease(ctx, "sbx", m.ID, l.Nonce); err != nil {
		t.Fatal(err)
	}
	md, _ := h.mg.Metadata("sbx", m.ID)
	if md["team"] != "b" {
		t.Errorf("metadata = %v", md)
	}
	if got := h.mg.List("sbx", map[string]string{"team": "b"}); len(got) != 1 {
		t.Errorf("filter by metadata: %d machines", len(got))
	}
	if got := h.mg.List("sbx", map[string]string{"team": "a"}); len(got) != 0 {
		t.Errorf("filter by old metadata: %d machines", len(got))
	}
	if err := h.mg.SetMetadata(ctx, "sbx", m.ID, "", "team", nil); err != nil {
		t.Fatal(err)
	}
	if err := h.mg.SetMetadata(ctx, "sbx", m.ID, "", "team", nil); pier.KindOf(err) != pier.NotFound {
		t.Errorf("delete of a missing key: %v", err)
	}
}

func TestUpdateRestartsWithNewConfig(t *testing.T) {
	h := newHarness(t)
	m := h.create(t, Config{Image: "img", Env: map[string]string{"V": "1"}})
	h.wait(t, m.ID, StateStarted)
	up, err := h.mg.Update(context.Background(), "sbx", m.ID, "", Config{Image: "img", Env: map[string]string{"V": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	if up.InstanceID == m.InstanceID {
		t.Error("update kept the instance id")
	}
	h.wait(t, m.ID, StateStarted)
	if h.drv.startCount() != 2 || !contains(h.drv.starts[1].Env, "V=2") {
		t.Errorf("restart after update: %d starts, env %v", h.drv.startCount(), h.drv.starts[len(h.drv.starts)-1].Env)
	}
}

func TestRestoreRestartsRunningMachinesOnce(t *testing.T) {
	h := newHarness(t)
	running := h.create(t, Config{Image: "img"})
	stopped := h.create(t, Config{Image: "img", Init: Init{Cmd: []string{"exit", "0"}}})
	h.wait(t, running.ID, StateStarted)
	h.wait(t, stopped.ID, StateStopped)
	h.mg.Shutdown(time.Second)

	drv := &fakeDriver{}
	mg2 := New(drv, fakeImages{}, h.store, h.hub, slog.New(slog.NewTextHandler(io.Discard, nil)))
	cleaner := &recordCleaner{}
	if err := mg2.Restore(context.Background(), cleaner); err != nil {
		t.Fatal(err)
	}
	defer mg2.Shutdown(time.Second)
	if len(cleaner.ids) != 2 {
		t.Errorf("cleanup got %v", cleaner.ids)
	}
	if _, err := mg2.Wait(context.Background(), "sbx", running.ID, StateStarted, "5"); err != nil {
		t.Fatal(err)
	}
	if got, _ := mg2.Get("sbx", stopped.ID); got.State != StateStopped {
		t.Errorf("stopped machine is %s after restore", got.State)
	}
	if drv.startCount() != 1 {
		t.Errorf("restore started %d machines, want 1", drv.startCount())
	}
}

type recordCleaner struct{ ids []string }

func (c *recordCleaner) Cleanup(ctx context.Context, ids []string) (int, error) {
	c.ids = append(c.ids, ids...)
	return 0, nil
}

func TestNoRuntime(t *testing.T) {
	for name, drv := range map[string]Driver{"no driver": nil, "host processes": &fakeDriver{hostOnly: true}} {
		mg := New(drv, fakeImages{}, &memStore{docs: map[string][]byte{}}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if _, err := mg.Create(context.Background(), "sbx", CreateRequest{Config: Config{Image: "img"}}); pier.KindOf(err) != pier.Unavailable {
			t.Fatalf("%s: create = %v, want Unavailable", name, err)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// gcImages records garbage collections.
type gcImages struct {
	fakeImages
	mu   sync.Mutex
	runs []map[string]bool
}

func (g *gcImages) GC(ctx context.Context, inUse map[string]bool) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.runs = append(g.runs, inUse)
	return 0, nil
}

// waitRuns waits (bounded) until n collections ran and returns them all.
func (g *gcImages) waitRuns(n int) []map[string]bool {
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		runs := append([]map[string]bool(nil), g.runs...)
		g.mu.Unlock()
		if len(runs) >= n || time.Now().After(deadline) {
			return runs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDestroyCollectsUnusedImages(t *testing.T) {
	h := newHarness(t)
	imgs := &gcImages{}
	h.mg.images = imgs
	h.mg.ImageGrace = 100 * time.Millisecond
	a := h.create(t, Config{Image: "img"})
	b := h.create(t, Config{Image: "img"})
	h.wait(t, a.ID, StateStarted)
	if err := h.mg.Destroy(context.Background(), "sbx", a.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	runs := imgs.waitRuns(1)
	if len(runs) != 1 || !runs[0]["sha256:abc"] {
		t.Fatalf("GC runs = %v; the image of %s is still in use", runs, b.ID)
	}
	// Once the last machine is gone, the image goes after the grace period.
	if err := h.mg.Destroy(context.Background(), "sbx", b.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	if runs = imgs.waitRuns(2); len(runs) != 2 || runs[1]["sha256:abc"] {
		t.Fatalf("GC runs = %v; want the unused image collected after the grace", runs)
	}
}

func TestServiceAutostopAndWake(t *testing.T) {
	h := newHarness(t)
	h.mg.IdleTimeout = 50 * time.Millisecond
	lazy := h.create(t, Config{Image: "img", Services: []Service{{InternalPort: 8080, Autostop: "stop"}}})
	busy := h.create(t, Config{Image: "img", Services: []Service{{InternalPort: 8080}}})
	h.wait(t, lazy.ID, StateStarted)
	h.wait(t, busy.ID, StateStarted)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	idle := time.Hour
	go func() {
		defer close(done)
		h.mg.RunAutostop(ctx, 10*time.Millisecond, func(string) time.Duration { return idle })
	}()
	h.wait(t, lazy.ID, StateStopped)
	cancel()
	<-done
	if got, _ := h.mg.Get("sbx", busy.ID); got.State != StateStarted {
		t.Errorf("a machine without autostop was stopped: %s", got.State)
	}
	// busy is up, so a request needs no wake.
	h.mg.Wake("sbx")
	if got, _ := h.mg.Get("sbx", lazy.ID); got.State != StateStopped {
		t.Errorf("wake started a machine although one serves: %s", got.State)
	}
	h.mg.Stop(context.Background(), "sbx", busy.ID, "", StopRequest{})
	h.wait(t, busy.ID, StateStopped)
	h.mg.Wake("sbx")
	if _, err := h.mg.Wait(context.Background(), "sbx", lazy.ID, StateStarted, "5"); err != nil {
		if _, err2 := h.mg.Wait(context.Background(), "sbx", busy.ID, StateStarted, "1"); err2 != nil {
			t.Fatalf("wake started no machine: %v", err)
		}
	}
}

// recoveringDriver can adopt what a previous server left running: the
// processes it knows by machine id.
type recoveringDriver struct {
	fakeDriver
	alive    map[string]*fakeProc
	detached bool
}

func (d *recoveringDriver) Recover(ctx context.Context, id string, stdout, stderr io.Writer) (runtime.Process, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.alive[id]
	if !ok {
		return nil, fmt.Errorf("no monitor for %s", id)
	}
	fmt.Fprintln(stdout, "output kept while no server was attached")
	return p, nil
}

func (d *recoveringDriver) Detach() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.detached = true
	for _, p := range d.procs {
		p.finish(runtime.Exit{Code: -1, Detached: true})
	}
}

// A server that exits detaches from its machines; the next one adopts the
// running ones (no new start, same process) and starts the ones it cannot.
func TestDetachAndAdopt(t *testing.T) {
	h := newHarness(t)
	drv := &recoveringDriver{alive: map[string]*fakeProc{}}
	h.mg.driver = drv
	kept := h.create(t, Config{Image: "img"})
	lost := h.create(t, Config{Image: "img"})
	h.wait(t, kept.ID, StateStarted)
	h.wait(t, lost.ID, StateStarted)
	if !h.mg.Detach() || !drv.detached {
		t.Fatal("Detach did not detach the driver")
	}
	for _, id := range []string{kept.ID, lost.ID} {
		if got, _ := h.mg.Get("sbx", id); got.State != StateStarted {
			t.Errorf("machine %s is %s after Detach; its document must still say started", id, got.State)
		}
	}
	// The monitor of one machine survived; the other's did not.
	still := &fakeProc{cmd: []string{"run"}, done: make(chan struct{})}
	drv2 := &recoveringDriver{alive: map[string]*fakeProc{kept.ID: still}}
	mg2 := New(drv2, fakeImages{}, h.store, h.hub, slog.New(slog.NewTextHandler(io.Discard, nil)))
	cleaner := &recordCleaner{}
	if err := mg2.Restore(context.Background(), cleaner); err != nil {
		t.Fatal(err)
	}
	defer mg2.Shutdown(time.Second)
	if _, err := mg2.Wait(context.Background(), "sbx", lost.ID, StateStarted, "5"); err != nil {
		t.Fatal(err)
	}
	if n := drv2.startCount(); n != 1 || drv2.starts[0].ID != lost.ID {
		t.Errorf("restore started %d machines (%v), want only %s, the one it could not adopt", n, drv2.starts, lost.ID)
	}
	got, _ := mg2.Get("sbx", kept.ID)
	if got.State != StateStarted {
		t.Errorf("adopted machine is %s", got.State)
	}
	lines, _ := h.hub.Tail("sbx", 10)
	if !slices.ContainsFunc(lines, func(l pier.LogLine) bool {
		return l.Machine == kept.ID && l.Line == "output kept while no server was attached"
	}) {
		t.Errorf("the adopted machine's output is not in the logs: %+v", lines)
	}
	// The adopted process is the machine's: stopping it stops that one.
	if err := mg2.Stop(context.Background(), "sbx", kept.ID, "", StopRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mg2.Wait(context.Background(), "sbx", kept.ID, StateStopped, "5"); err != nil {
		t.Fatal(err)
	}
	if s := still.signals; len(s) == 0 || s[0] != syscall.SIGTERM {
		t.Errorf("signals to the adopted process = %v", s)
	}
}
