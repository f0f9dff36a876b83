package rollout

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/appspec"
	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// wait bounds every wait for something that should happen; reaching it is
// the failure, it is not a performance target.
const wait = 5 * time.Second

// timeline is the order in which the fakes saw things happen, shared by the
// driver and the router so tests can check what came before what.
type timeline struct {
	mu     sync.Mutex
	events []string
}

func (tl *timeline) add(format string, args ...any) {
	tl.mu.Lock()
	tl.events = append(tl.events, fmt.Sprintf(format, args...))
	tl.mu.Unlock()
}

func (tl *timeline) all() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return slices.Clone(tl.events)
}

// fakeDriver starts in-process machines whose behaviour is chosen by the
// release's start command, as a real app's is by its code:
//
//	serve            listen on a real port and answer every request with the machine id
//	serve-unhealthy  listen, but answer /healthz with 500 (until sick is cleared)
//	ignore-term      serve, and exit only on SIGKILL
//	no-listen        run without ever listening
//	exit N           print a line to stderr and exit with code N at once
//
// Every machine but no-listen and exit is a real HTTP server, so the
// machine manager's health checks pass or fail for real.
type fakeDriver struct {
	t  *testing.T
	tl *timeline

	mu     sync.Mutex
	specs  []runtime.Spec
	procs  map[string][]*fakeProc // by machine id, in start order
	nextID int
}

var _ machines.Driver = (*fakeDriver)(nil)

func newFakeDriver(t *testing.T, tl *timeline) *fakeDriver {
	return &fakeDriver{t: t, tl: tl, procs: map[string][]*fakeProc{}}
}

// endAll makes every machine still running exit.
func (d *fakeDriver) endAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ps := range d.procs {
		for _, p := range ps {
			p.end(runtime.Exit{Code: -1, Signal: "test over"})
		}
	}
}

// mode is the fake app's behaviour: the start command without the "exec "
// appspec.Command puts in front of simple commands.
func mode(spec runtime.Spec) string {
	if len(spec.Command) == 0 {
		return ""
	}
	return strings.TrimPrefix(spec.Command[len(spec.Command)-1], "exec ")
}

func (d *fakeDriver) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	d.mu.Lock()
	d.nextID++
	p := &fakeProc{spec: spec, pid: 1000 + d.nextID, at: time.Now(), done: make(chan struct{})}
	d.mu.Unlock()

	m := mode(spec)
	switch {
	case m == "serve" || m == "serve-unhealthy" || m == "ignore-term":
		p.ignoreTerm = m == "ignore-term"
		p.sick.Store(m == "serve-unhealthy")
		p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if p.sick.Load() && r.URL.Path == "/healthz" {
				http.Error(w, "not ready", http.StatusInternalServerError)
				return
			}
			io.WriteString(w, spec.ID)
		}))
		p.addr = p.srv.Listener.Addr().String()
		fmt.Fprintf(spec.Stdout, "listening on %s\n", p.addr)
	case m == "no-listen":
		p.addr = refusedAddr(d.t)
		fmt.Fprintln(spec.Stdout, "starting up, slowly")
	case strings.HasPrefix(m, "exit "):
		code, err := strconv.Atoi(strings.TrimPrefix(m, "exit "))
		if err != nil {
			return nil, fmt.Errorf("fake driver: bad command %q", m)
		}
		p.addr = refusedAddr(d.t)
		fmt.Fprintf(spec.Stderr, "fake: missing DATABASE_URL, exiting with %d\n", code)
		p.end(runtime.Exit{Code: code})
	default:
		return nil, fmt.Errorf("fake driver: unknown command %q", spec.Command)
	}

	d.mu.Lock()
	d.specs = append(d.specs, spec)
	d.procs[spec.ID] = append(d.procs[spec.ID], p)
	d.mu.Unlock()
	d.tl.add("start %s", spec.ID)
	return p, nil
}

// refusedAddr is a loopback address on which nothing listens.
func refusedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Errorf("listen: %v", err)
		return "127.0.0.1:1"
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// latest returns the process last started for machine id.
func (d *fakeDriver) latest(id string) *fakeProc {
	d.mu.Lock()
	defer d.mu.Unlock()
	ps := d.procs[id]
	if len(ps) == 0 {
		return nil
	}
	return ps[len(ps)-1]
}

// all returns every process of machine id, in start order.
func (d *fakeDriver) all(id string) []*fakeProc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.procs[id])
}

func (d *fakeDriver) started() []runtime.Spec {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.specs)
}

// fakeProc is one run of a fake machine.
type fakeProc struct {
	spec       runtime.Spec
	pid        int
	at         time.Time // when it was started
	addr       string
	srv        *httptest.Server // nil when the machine does not listen
	ignoreTerm bool
	sick       atomic.Bool // /healthz answers 500

	mu      sync.Mutex
	signals []syscall.Signal

	once sync.Once
	done chan struct{}
	exit runtime.Exit // set before done is closed
}

var _ runtime.Process = (*fakeProc)(nil)

func (p *fakeProc) Addr() string       { return p.addr }
func (p *fakeProc) PID() int           { return p.pid }
func (p *fakeProc) Wait() runtime.Exit { <-p.done; return p.exit }

func (p *fakeProc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	p.mu.Unlock()
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM && !p.ignoreTerm {
		p.end(runtime.Exit{Code: -1, Signal: sig.String()})
	}
	return nil
}

// end makes the machine exit with e; only the first call counts.
func (p *fakeProc) end(e runtime.Exit) {
	p.once.Do(func() {
		if p.srv != nil {
			p.srv.CloseClientConnections()
			p.srv.Close()
		}
		p.exit = e
		close(p.done)
	})
}

// crash makes the machine exit on its own with code.
func (p *fakeProc) crash(code int) { p.end(runtime.Exit{Code: code}) }

func (p *fakeProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *fakeProc) signalsGot() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.signals)
}

// fakeRouter is an in-memory edge proxy that records what it was told. Like
// the real one, a second Add of a machine already routed is ignored.
type fakeRouter struct {
	tl *timeline

	mu     sync.Mutex
	calls  []routerCall
	routes map[string]map[string]string // app → machine id → addr
}

type routerCall struct{ op, app, id, addr string }

var _ machines.Router = (*fakeRouter)(nil)

func (r *fakeRouter) Add(app, id, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, routerCall{"add", app, id, addr})
	if r.routes[app] == nil {
		r.routes[app] = map[string]string{}
	}
	if _, ok := r.routes[app][id]; !ok {
		r.routes[app][id] = addr
	}
	r.tl.add("add %s", id)
}

func (r *fakeRouter) Remove(app, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, routerCall{"remove", app, id, ""})
	delete(r.routes[app], id)
	r.tl.add("remove %s", id)
}

func (r *fakeRouter) Drain(ctx context.Context, app, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, routerCall{"drain", app, id, ""})
	delete(r.routes[app], id)
	r.tl.add("drain %s", id)
	return nil
}

// routed returns the machines app's traffic goes to, by id.
func (r *fakeRouter) routed(app string) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.routes[app])
}

// callsFor returns the operations on machine id, in order.
func (r *fakeRouter) callsFor(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ops []string
	for _, c := range r.calls {
		if c.id == id {
			ops = append(ops, c.op)
		}
	}
	return ops
}

func (r *fakeRouter) allCalls() []routerCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// fakeRecorder keeps machine documents and app events in memory.
type fakeRecorder struct {
	mu     sync.Mutex
	docs   map[string][]byte
	events []pier.Event
}

var _ machines.Persister = (*fakeRecorder)(nil)

func (r *fakeRecorder) PutMachineDoc(ctx context.Context, id, app string, doc []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.docs[id] = slices.Clone(doc)
	return nil
}

func (r *fakeRecorder) DeleteMachineDoc(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.docs, id)
	return nil
}

func (r *fakeRecorder) MachineDocs(ctx context.Context) ([][]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for _, d := range r.docs {
		out = append(out, slices.Clone(d))
	}
	return out, nil
}

func (r *fakeRecorder) addEvent(app, typ, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, pier.Event{App: app, Type: typ, Message: msg})
}

// machineIDs are the machines whose documents are stored.
func (r *fakeRecorder) machineIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.docs))
}

func (r *fakeRecorder) eventsOf(typ string) []pier.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []pier.Event
	for _, e := range r.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// fakeReleases builds the machine specs of the releases rel made as the
// server does (appspec.Builder for host processes), with the environment
// the control plane would give.
type fakeReleases struct{ b appspec.Builder }

// released holds every release rel made, by app/vN: tests run one after
// another, and a later test's release of the same name replaces the
// earlier one.
var released sync.Map

func (f *fakeReleases) ReleaseSpec(ctx context.Context, app string, version int) (runtime.Spec, error) {
	r, ok := released.Load(fmt.Sprintf("%s/v%d", app, version))
	if !ok {
		return runtime.Spec{}, pier.Errorf(pier.NotFound, "release v%d of %s not found", version, app)
	}
	return f.b.Spec(r.(pier.Release), []string{"FROM_TEST=1"})
}

// hostDriver is the fake driver as the process driver is: not isolating.
func (d *fakeDriver) Isolates() bool { return false }

// harness is a machine manager and a Rollout wired to the fakes.
type harness struct {
	mg       *machines.Manager
	ro       *Rollout
	driver   *fakeDriver
	router   *fakeRouter
	rec      *fakeRecorder
	rels     *fakeReleases
	tl       *timeline
	hub      *logs.Hub
	artifact string
}

const selfBinary = "/opt/pier/bin/pier"

func newHarness(t *testing.T) *harness {
	t.Helper()
	tl := &timeline{}
	h := &harness{
		driver:   newFakeDriver(t, tl),
		router:   &fakeRouter{tl: tl, routes: map[string]map[string]string{}},
		rec:      &fakeRecorder{docs: map[string][]byte{}},
		tl:       tl,
		artifact: t.TempDir(),
	}
	h.rels = &fakeReleases{b: appspec.Builder{
		Artifact: func(app, buildID string) string { return filepath.Join(h.artifact, app, buildID) },
		Self:     selfBinary,
	}}
	hub, err := logs.NewHub(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h.hub = hub
	h.mg = h.newManager(h.driver)
	h.ro = &Rollout{Fleet: h.mg, Logs: hub, Log: slog.New(slog.DiscardHandler)}
	// Machines are stopped by the manager, then whatever it failed to
	// stop is ended, so a broken shutdown fails the test instead of hanging
	// it.
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { defer close(done); h.mg.Shutdown(200 * time.Millisecond) }()
		select {
		case <-done:
		case <-time.After(6 * wait):
			t.Error("Shutdown did not return")
		}
		h.driver.endAll()
		hub.Close()
	})
	return h
}

// newManager is a machine manager on drv and the harness's fakes.
func (h *harness) newManager(drv machines.Driver) *machines.Manager {
	mg := machines.New(drv, nil, h.rec, h.hub, slog.New(slog.DiscardHandler))
	mg.StopTimeout = 200 * time.Millisecond
	mg.Router, mg.Releases, mg.Events = h.router, h.rels, h.rec.addEvent
	return mg
}

// rel is a release of app whose machines behave as start says (see
// fakeDriver).
func rel(app string, version int, start, strategy string) pier.Release {
	r := pier.Release{
		App: app, Version: version, BuildID: fmt.Sprintf("build%d", version), Builder: "go", Start: start,
		Config: pier.RunConfig{
			Strategy:     strategy,
			WaitTimeout:  pier.Duration{Duration: wait},
			DrainTimeout: pier.Duration{Duration: time.Second},
		},
	}
	released.Store(fmt.Sprintf("%s/v%d", app, version), r)
	return r
}

// progressLog collects a deploy's progress lines; a deploy may call
// it from several goroutines at once.
type progressLog struct {
	mu    sync.Mutex
	lines []string
}

func (p *progressLog) add(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, fmt.Sprintf(format, args...))
}

func (h *harness) deploy(t *testing.T, r pier.Release, count int) (*progressLog, error) {
	t.Helper()
	var pl progressLog
	var err error
	within(t, "Deploy", func() { err = h.ro.Deploy(context.Background(), r, count, pl.add) })
	return &pl, err
}

// within runs fn and fails the test if it has not returned after a bound
// far above what it needs, so a hang shows as a failure naming what hung.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(6 * wait):
		t.Fatalf("%s did not return", what)
	}
}

// ids returns the ids of app's machines, oldest first.
func (h *harness) ids(app string) []string {
	var ids []string
	for _, m := range h.mg.AppMachines(app) {
		ids = append(ids, m.ID)
	}
	return ids
}

// eventually waits until cond holds, failing the test after wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// answers checks that addr is a live fake machine answering as id.
func answers(t *testing.T, addr, id string) {
	t.Helper()
	c := &http.Client{Timeout: wait}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Errorf("routed address %s of machine %s does not answer: %v", addr, id, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != id {
		t.Errorf("routed address %s answered as %q, want machine %s", addr, b, id)
	}
}
