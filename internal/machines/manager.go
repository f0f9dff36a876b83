package machines

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// Image is an image resolved to a root filesystem.
type Image struct {
	Ref, Digest string
	// Rootfs are the image's read-only layer directories, topmost first.
	Rootfs          []string
	Entrypoint, Cmd []string
	Env             []string
	WorkDir, User   string
	// Mounts are host paths the image needs bound in (an app release's
	// image is the host's system directories plus the release).
	Mounts []runtime.Mount
}

// Images resolves image references (internal/image implements it).
type Images interface {
	Resolve(ctx context.Context, ref string) (Image, error)
}

// collector is implemented by Images that can remove unpacked images no
// machine uses any more.
type collector interface {
	GC(ctx context.Context, inUse map[string]bool) (int, error)
}

// Driver starts machines (internal/runtime/runc, internal/runtime/process).
// Machines of the machines API run only on a driver that isolates them.
type Driver interface {
	Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error)
	// Isolates reports whether machines are isolated from the host and
	// from each other.
	Isolates() bool
}

// Mesh is the part of the service mesh that tracks app machines.
type Mesh interface {
	Join(app, id string, addr netip.Addr)
	Leave(id string)
}

// Persister keeps machine documents across restarts (the state store).
type Persister interface {
	PutMachineDoc(ctx context.Context, id, app string, doc []byte) error
	DeleteMachineDoc(ctx context.Context, id string) error
	MachineDocs(ctx context.Context) ([][]byte, error)
}

// Manager runs the machines of the machines API.
type Manager struct {
	driver Driver
	images Images
	store  Persister
	logs   *logs.Hub
	log    *slog.Logger
	// StopTimeout is how long a stop waits after the signal before SIGKILL
	// when the request names no timeout.
	StopTimeout time.Duration
	// Router, when set, routes the app's traffic to machines with services.
	Router Router
	// IdleTimeout is how long an app goes without traffic before its
	// machines whose service autostops are stopped.
	IdleTimeout time.Duration
	// ImageGrace is how long an unpacked image no machine uses is kept, so
	// destroying and creating machines of one image does not unpack it
	// again every time.
	ImageGrace time.Duration

	// Releases, when set, turns app releases into what their machines run
	// (CreateAppMachine needs it).
	Releases Releases
	// Mesh, when set, learns which app each isolated app machine's address
	// belongs to, so its calls carry the app's identity.
	Mesh Mesh
	// Events, when set, records app events about app machines (exits,
	// failed checks, autostop and autostart) in the app's history.
	Events func(app, typ, msg string)

	closing atomic.Bool // the server is shutting down: exits are not the machines' doing
	mu      sync.Mutex
	ms      map[string]*entry
	// images is held for reading from resolving an image until the machine
	// using it is in ms, and for writing by garbage collection, so a fresh
	// image is never collected before its machine is known.
	imagesMu sync.RWMutex
	released map[string]time.Time // image digest -> when a machine last stopped using it; under imagesMu
}

// entry is one machine and its lifecycle state.
type entry struct {
	mu      sync.Mutex
	m       Machine
	proc    runtime.Process
	stopReq bool          // the current process is being stopped on purpose
	retries int           // restarts since the last user start
	exits   int           // exits since the last user start
	healthy bool          // the current process passes its checks
	routed  bool          // is in the edge's traffic now
	changed chan struct{} // closed and replaced at every change of state or health
	running chan struct{} // closed when the current process's goroutine ends; nil when none
	routeMu sync.Mutex    // orders the entry's routing changes
}

// notify wakes those waiting on the machine; e.mu must be held.
func (e *entry) notify() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// New returns a Manager. driver may be nil when no isolating runtime is
// available: every call that would run something then says so.
func New(driver Driver, images Images, store Persister, hub *logs.Hub, log *slog.Logger) *Manager {
	return &Manager{driver: driver, images: images, store: store, logs: hub, log: log, StopTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute,
		ImageGrace: 10 * time.Minute, ms: map[string]*entry{}, released: map[string]time.Time{}}
}

var errNoRuntime = pier.Errorf(pier.Unavailable, "machines need an isolating runtime: run `pier server` as root with runc installed (apt-get install runc)")

// isolating reports whether the machines API may run machines.
func (mg *Manager) isolating() bool { return mg.driver != nil && mg.driver.Isolates() }

// event records an app event, when the manager has somewhere to put them.
func (mg *Manager) event(app, typ, msg string) {
	if mg.Events != nil {
		mg.Events(app, typ, msg)
	}
}

// appEvent records an app event about an app machine.
func (mg *Manager) appEvent(e *entry, typ, msg string) {
	e.mu.Lock()
	app, isApp := e.m.App, e.m.Role != nil
	e.mu.Unlock()
	if isApp {
		mg.event(app, typ, msg)
	}
}

// NewID returns a fresh machine id: 14 lowercase hex digits.
func NewID() string { return newID() }

func newID() string {
	b := make([]byte, 7)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newInstanceID() string {
	b := make([]byte, 10)
	rand.Read(b)
	return "01" + hex.EncodeToString(b)
}

// CreateRequest is the body of a create call.
type CreateRequest struct {
	Name       string `json:"name,omitempty"`
	Region     string `json:"region,omitempty"`
	Config     Config `json:"config"`
	SkipLaunch bool   `json:"skip_launch,omitempty"`
	LeaseTTL   int    `json:"lease_ttl,omitempty"`
}

// Create validates and stores a machine and, unless asked not to, starts it.
// Bad input is rejected before anything is created.
func (mg *Manager) Create(ctx context.Context, app string, req CreateRequest) (Machine, error) {
	if !mg.isolating() {
		return Machine{}, errNoRuntime
	}
	if err := req.Config.normalize(); err != nil {
		return Machine{}, err
	}
	if req.LeaseTTL < 0 {
		return Machine{}, pier.Errorf(pier.Invalid, "invalid lease_ttl: must not be negative")
	}
	mg.imagesMu.RLock()
	defer mg.imagesMu.RUnlock()
	img, err := mg.images.Resolve(ctx, req.Config.Image)
	if err != nil {
		return Machine{}, err
	}
	now := time.Now().UTC()
	m := Machine{ID: newID(), Name: req.Name, App: app, State: StateCreated, Region: "local", InstanceID: newInstanceID(),
		Config: req.Config, ImageRef: ImageRef{Ref: img.Ref, Digest: img.Digest}, CreatedAt: now, UpdatedAt: now}
	if m.Name == "" {
		m.Name = "machine-" + m.ID[:6]
	}
	e := &entry{m: m, changed: make(chan struct{})}
	if req.LeaseTTL > 0 {
		l := newLease(req.LeaseTTL, "created with the machine")
		e.m.Lease, e.m.Nonce = &l, l.Nonce
	}
	e.event("launch", StateCreated, "user", nil)
	if err := mg.persist(ctx, e); err != nil {
		return Machine{}, err
	}
	mg.mu.Lock()
	mg.ms[m.ID] = e
	mg.mu.Unlock()
	if !req.SkipLaunch {
		mg.start(e, img)
	}
	out := e.snapshot()
	out.Nonce = e.m.Nonce
	return out, nil
}

// persist writes the machine document.
func (mg *Manager) persist(ctx context.Context, e *entry) error {
	e.mu.Lock()
	doc, err := json.Marshal(document{App: e.m.App, Lease: e.m.Lease, Role: e.m.Role, Machine: e.m})
	id, app := e.m.ID, e.m.App
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return mg.store.PutMachineDoc(ctx, id, app, doc)
}

// document is the persisted form of a machine: the API form plus the
// fields the API does not show.
type document struct {
	App     string  `json:"app"`
	Lease   *Lease  `json:"lease,omitempty"`
	Role    *Role   `json:"role,omitempty"`
	Machine Machine `json:"machine"`
}

func (e *entry) snapshot() Machine {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := e.m
	m.Nonce = ""
	if e.m.Role != nil {
		r := *e.m.Role
		m.Role = &r
	}
	// Newest first, as Fly lists them; events are appended in order.
	m.Events = make([]Event, len(e.m.Events))
	for i, ev := range e.m.Events {
		m.Events[len(e.m.Events)-1-i] = ev
	}
	return m
}

// event records a history entry; e.mu is held by the caller or unneeded.
func (e *entry) event(typ, status, source string, exit *ExitEvent) {
	ev := Event{Type: typ, Status: status, Source: source, Timestamp: time.Now().UnixMilli()}
	if exit != nil {
		ev.Request = &struct {
			ExitEvent *ExitEvent `json:"exit_event,omitempty"`
		}{exit}
	}
	e.m.Events = append(e.m.Events, ev)
	if len(e.m.Events) > 50 {
		e.m.Events = e.m.Events[len(e.m.Events)-50:]
	}
}

// setState changes the state and wakes waiters; e.mu must be held.
func (e *entry) setState(st string) {
	e.m.State = st
	e.m.UpdatedAt = time.Now().UTC()
	e.notify()
}

func (mg *Manager) get(app, id string) (*entry, error) {
	mg.mu.Lock()
	e := mg.ms[id]
	mg.mu.Unlock()
	if e == nil || e.m.App != app {
		return nil, pier.Errorf(pier.NotFound, "machine %s not found in app %s", id, app)
	}
	return e, nil
}

// Get returns one machine.
func (mg *Manager) Get(app, id string) (Machine, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return Machine{}, err
	}
	return e.snapshot(), nil
}

// List returns an app's machines, oldest first; metadata filters them.
func (mg *Manager) List(app string, metadata map[string]string) []Machine {
	mg.mu.Lock()
	var es []*entry
	for _, e := range mg.ms {
		es = append(es, e)
	}
	mg.mu.Unlock()
	out := []Machine{}
	for _, e := range es {
		m := e.snapshot()
		if m.App != app || !matches(m.Config.Metadata, metadata) {
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// spec builds the runtime spec of a machine from its config and image.
func (mg *Manager) spec(m Machine, img Image) (runtime.Spec, error) {
	cmd := append(append([]string{}, img.Entrypoint...), img.Cmd...)
	if len(m.Config.Init.Entrypoint) > 0 {
		cmd = append(append([]string{}, m.Config.Init.Entrypoint...), m.Config.Init.Cmd...)
	} else if len(m.Config.Init.Cmd) > 0 {
		cmd = append(append([]string{}, img.Entrypoint...), m.Config.Init.Cmd...)
	}
	if len(m.Config.Init.Exec) > 0 {
		cmd = m.Config.Init.Exec
	}
	if len(cmd) == 0 {
		return runtime.Spec{}, pier.Errorf(pier.Invalid, "image %s has no command and config.init.cmd is empty: set config.init.cmd", m.Config.Image)
	}
	env := append([]string{}, img.Env...)
	keys := make([]string, 0, len(m.Config.Env))
	for k := range m.Config.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+m.Config.Env[k])
	}
	env = append(env, "PIER_APP_NAME="+m.App, "FLY_MACHINE_ID="+m.ID, "FLY_APP_NAME="+m.App, "FLY_REGION=local")
	var files []runtime.File
	for _, f := range m.Config.Files {
		data, _ := base64.StdEncoding.DecodeString(f.RawValue) // checked by normalize
		files = append(files, runtime.File{Path: f.GuestPath, Data: data, Mode: 0o644})
	}
	port := 8080
	if len(m.Config.Services) > 0 {
		port = m.Config.Services[0].InternalPort
	}
	return runtime.Spec{ID: m.ID, App: m.App, Command: cmd, Env: env, Rootfs: img.Rootfs, Mounts: img.Mounts, Files: files,
		WorkDir: img.WorkDir, User: img.User, Port: port,
		Resources: runtime.Resources{CPUs: float64(m.Config.Guest.CPUs), MemoryMB: m.Config.Guest.MemoryMB, Pids: 1024,
			DiskMB: m.Config.Guest.RootfsSizeMB}}, nil
}

// start launches the machine's process in the background.
func (mg *Manager) start(e *entry, img Image) {
	e.mu.Lock()
	e.stopReq = false
	e.exits = 0
	e.setState(StateStarting)
	e.event("start", StateStarting, "user", nil)
	running := make(chan struct{})
	e.running = running
	e.mu.Unlock()
	go mg.run(e, img, running, nil)
}

// specFor builds the runtime spec of the machine's next start.
func (mg *Manager) specFor(ctx context.Context, m Machine, img Image) (runtime.Spec, error) {
	if m.Role == nil {
		return mg.spec(m, img)
	}
	if mg.Releases == nil {
		return runtime.Spec{}, fmt.Errorf("this server cannot run app releases")
	}
	spec, err := mg.Releases.ReleaseSpec(ctx, m.App, m.Role.Release)
	if err != nil {
		return spec, err
	}
	spec.ID, spec.App = m.ID, m.App
	spec.Env = append(spec.Env, "FLY_MACHINE_ID="+m.ID, "FLY_APP_NAME="+m.App, "FLY_REGION=local", "FLY_PROCESS_GROUP=app",
		fmt.Sprintf("FLY_RELEASE_VERSION=%d", m.Role.Release))
	return spec, nil
}

// adopted is a machine's process recovered from a previous server, with
// the writers its output goes to.
type adopted struct {
	proc      runtime.Process
	out, errw *logs.LineWriter
}

// run starts the process (or takes over the adopted one), waits for it,
// and applies the restart policy.
func (mg *Manager) run(e *entry, img Image, running chan struct{}, adopt *adopted) {
	defer close(running)
	backoff := 100 * time.Millisecond
	for {
		e.mu.Lock()
		m := e.m
		if e.stopReq && adopt == nil { // stopped while waiting to restart
			e.event("exit", StateStopped, "user", nil)
			e.setState(StateStopped)
			e.mu.Unlock()
			mg.persist(context.Background(), e)
			return
		}
		e.mu.Unlock()
		var out, errw *logs.LineWriter
		var proc runtime.Process
		var err error
		if adopt != nil {
			proc, out, errw = adopt.proc, adopt.out, adopt.errw
			adopt = nil
		} else {
			out, errw = mg.logs.Writer(m.App, m.ID, "stdout"), mg.logs.Writer(m.App, m.ID, "stderr")
			var spec runtime.Spec
			spec, err = mg.specFor(context.Background(), m, img)
			if err == nil {
				spec.Stdout, spec.Stderr = out, errw
				proc, err = mg.driver.Start(context.Background(), spec)
			}
		}
		var exit runtime.Exit
		var up time.Duration
		if err != nil && mg.closing.Load() {
			return // the server is going: the document keeps its state
		}
		if err != nil {
			mg.log.Error("machine did not start", "app", m.App, "machine", m.ID, "err", err)
			fmt.Fprintf(errw, "pier: machine did not start: %v\n", err)
			errw.Flush()
			if m.Config.Restart.Policy != "always" {
				e.mu.Lock()
				e.setState(StateFailed)
				e.event("exit", StateFailed, "pier", &ExitEvent{ExitCode: -1, ExitedAt: time.Now().UTC().Format(time.RFC3339)})
				e.exits++
				e.mu.Unlock()
				mg.persist(context.Background(), e)
				return
			}
			exit = runtime.Exit{Code: -1}
		} else {
			began := time.Now()
			exit = mg.watch(e, proc)
			up = time.Since(began)
			if exit.Detached {
				return // it runs on; the next server adopts it (Restore)
			}
			out.Flush()
			errw.Flush()
			if mg.closing.Load() {
				return // the document keeps its state; Restore starts it again
			}
		}

		e.mu.Lock()
		requested := e.stopReq
		e.exits++
		ev := &ExitEvent{ExitCode: exit.Code, Signal: exit.Signal, OOMKilled: exit.OOMKilled, RequestedStop: requested, ExitedAt: time.Now().UTC().Format(time.RFC3339Nano)}
		restart := !requested && mg.shouldRestart(e, exit)
		if restart {
			e.retries++
			e.event("exit", StateStarting, "pier", ev)
			e.setState(StateStarting)
		} else {
			e.event("exit", StateStopped, map[bool]string{true: "user", false: "pier"}[requested], ev)
			e.setState(StateStopped)
		}
		autoDestroy := e.m.Config.AutoDestroy && !restart
		changed := e.changed
		e.mu.Unlock()
		mg.log.Info("machine exited", "app", m.App, "machine", m.ID, "exit", exit.String(), "restart", restart)
		if !requested {
			what := "stopped"
			if restart {
				what = "restarting"
			}
			mg.appEvent(e, "machine.exit", fmt.Sprintf("machine %s (v%d) exited with %s; %s", m.ID, m.releaseVersion(), exit, what))
		}
		mg.persist(context.Background(), e)
		if autoDestroy {
			go mg.Destroy(context.Background(), m.App, m.ID, true, "")
			return
		}
		if !restart {
			return
		}
		// Back off between restarts, less after a good run; a stop cuts
		// the wait short.
		if up > 30*time.Second {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-time.After(backoff):
		case <-changed:
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// watch runs one process of the machine to its end: it records it as
// started, routes it while it is healthy, and returns how it exited.
func (mg *Manager) watch(e *entry, proc runtime.Process) runtime.Exit {
	e.mu.Lock()
	e.proc = proc
	if host, _, err := splitHost(proc.Addr()); err == nil {
		e.m.PrivateIP = host
	}
	stopping := e.stopReq
	e.setState(StateStarted)
	m := e.m
	e.mu.Unlock()
	// A stop (or the server's shutdown) that arrived while the driver
	// was starting it found no process to signal.
	if stopping || mg.closing.Load() {
		proc.Signal(syscall.SIGKILL)
	}
	mg.persist(context.Background(), e)
	joined := false
	if m.Role != nil && mg.Mesh != nil && mg.driver.Isolates() {
		if ap, err := netip.ParseAddrPort(proc.Addr()); err == nil {
			mg.Mesh.Join(m.App, m.ID, ap.Addr())
			joined = true
		}
	}
	exited := make(chan struct{})
	checked := make(chan struct{})
	go func() { defer close(checked); mg.watchHealth(e, m, proc.Addr(), exited) }()
	exit := proc.Wait()
	close(exited)
	<-checked
	e.mu.Lock()
	e.healthy = false
	e.mu.Unlock()
	mg.route(e) // out of traffic
	e.mu.Lock()
	e.proc = nil
	e.mu.Unlock()
	if joined {
		mg.Mesh.Leave(m.ID)
	}
	return exit
}

// releaseVersion is the release an app machine runs (0 for others).
func (m Machine) releaseVersion() int {
	if m.Role == nil {
		return 0
	}
	return m.Role.Release
}

func (mg *Manager) shouldRestart(e *entry, exit runtime.Exit) bool {
	r := e.m.Config.Restart
	switch r.Policy {
	case "always":
		return r.MaxRetries == 0 || e.retries < r.MaxRetries
	case "on-failure":
		max := r.MaxRetries
		if max == 0 {
			max = 10
		}
		return (exit.Code != 0 || exit.Signal != "") && e.retries < max
	}
	return false
}

// Start starts a created or stopped machine.
func (mg *Manager) Start(ctx context.Context, app, id, nonce string) (Machine, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return Machine{}, err
	}
	if err := e.checkLease(nonce); err != nil {
		return Machine{}, err
	}
	e.mu.Lock()
	st, running := e.m.State, e.running
	image, isApp := e.m.Config.Image, e.m.Role != nil
	e.mu.Unlock()
	if mg.driver == nil || (!isApp && !mg.isolating()) {
		return Machine{}, errNoRuntime
	}
	switch st {
	case StateCreated, StateStopped, StateFailed:
	default:
		return Machine{}, pier.Errorf(pier.Precondition, "machine %s is %s; only a created, stopped or failed machine can be started", id, st)
	}
	if running != nil {
		<-running // the previous process's goroutine has finished its bookkeeping
	}
	var img Image
	if !isApp {
		if img, err = mg.images.Resolve(ctx, image); err != nil {
			return Machine{}, err
		}
	}
	e.mu.Lock()
	e.retries = 0
	e.mu.Unlock()
	mg.start(e, img)
	mg.persist(ctx, e)
	return e.snapshot(), nil
}

// StopRequest is the body of a stop call.
type StopRequest struct {
	Signal  string `json:"signal,omitempty"`  // default SIGTERM
	Timeout string `json:"timeout,omitempty"` // then SIGKILL; default 10s
}

var signals = map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGKILL": syscall.SIGKILL, "SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2}

// Stop signals the machine and, if it has not exited after the timeout,
// kills it. It returns once the signal is sent; wait for state=stopped.
func (mg *Manager) Stop(ctx context.Context, app, id, nonce string, req StopRequest) error {
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	if err := e.checkLease(nonce); err != nil {
		return err
	}
	sig := syscall.SIGTERM
	if req.Signal != "" {
		s, ok := signals[req.Signal]
		if !ok {
			return pier.Errorf(pier.Invalid, "invalid signal %q (use SIGTERM, SIGINT, SIGQUIT, SIGKILL, SIGHUP, SIGUSR1 or SIGUSR2)", req.Signal)
		}
		sig = s
	}
	timeout := mg.StopTimeout
	if req.Timeout != "" {
		d, err := parseTimeout(req.Timeout)
		if err != nil {
			return err
		}
		timeout = d
	}
	e.mu.Lock()
	st, proc, running := e.m.State, e.proc, e.running
	if st != StateStarted && st != StateStarting {
		e.mu.Unlock()
		return pier.Errorf(pier.Precondition, "machine %s is %s, not started", id, st)
	}
	e.stopReq = true
	e.setState(StateStopping)
	e.event("stop", StateStopping, "user", nil)
	e.mu.Unlock()
	mg.drain(e)
	e.mu.Lock()
	proc = e.proc // it may have started while draining
	e.mu.Unlock()
	if proc != nil {
		proc.Signal(sig)
	}
	go func() {
		select {
		case <-running:
		case <-time.After(timeout):
			e.mu.Lock()
			p := e.proc
			e.mu.Unlock()
			if p != nil {
				p.Signal(syscall.SIGKILL)
			}
		}
	}()
	return nil
}

// parseTimeout reads "10s" or a bare number of seconds, as Fly accepts.
func parseTimeout(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, pier.Errorf(pier.Invalid, "invalid timeout %q (use seconds, like 10, or a duration, like 10s)", s)
	}
	return d, nil
}

// Wait blocks until the machine is in state or timeout passes (Timeout error).
func (mg *Manager) Wait(ctx context.Context, app, id, state, timeout string) (Machine, error) {
	if state == "" {
		state = StateStarted
	}
	switch state {
	case StateStarted, StateStopped, StateDestroyed, StateFailed, StateCreated:
	default:
		return Machine{}, pier.Errorf(pier.Invalid, "invalid state %q to wait for (started, stopped, destroyed, failed)", state)
	}
	d := 60 * time.Second
	if timeout != "" {
		var err error
		if d, err = parseTimeout(timeout); err != nil {
			return Machine{}, err
		}
		d = min(d, 5*time.Minute)
	}
	e, err := mg.get(app, id)
	if err != nil {
		if state == StateDestroyed && pier.KindOf(err) == pier.NotFound {
			return Machine{ID: id, State: StateDestroyed}, nil
		}
		return Machine{}, err
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		e.mu.Lock()
		cur, changed := e.m.State, e.changed
		e.mu.Unlock()
		if cur == state {
			return e.snapshot(), nil
		}
		select {
		case <-changed:
		case <-timer.C:
			return Machine{}, pier.Errorf(pier.Timeout, "machine %s did not reach state %s within %s (it is %s)", id, state, d, cur)
		case <-ctx.Done():
			return Machine{}, ctx.Err()
		}
	}
}

// ExecRequest is the body of an exec call; Cmd is Fly's single-string form.
type ExecRequest struct {
	Command []string `json:"command,omitempty"`
	Cmd     string   `json:"cmd,omitempty"`
	Stdin   string   `json:"stdin,omitempty"`
	Timeout int      `json:"timeout,omitempty"` // seconds, default 30
}

// Exec runs a command inside a started machine.
func (mg *Manager) Exec(ctx context.Context, app, id, nonce string, req ExecRequest) (runtime.ExecResult, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return runtime.ExecResult{}, err
	}
	if err := e.checkLease(nonce); err != nil {
		return runtime.ExecResult{}, err
	}
	cmd := req.Command
	if len(cmd) == 0 && req.Cmd != "" {
		cmd = []string{"/bin/sh", "-c", req.Cmd}
	}
	if len(cmd) == 0 {
		return runtime.ExecResult{}, pier.Errorf(pier.Invalid, "exec needs a command (\"command\": [...] or \"cmd\": \"...\")")
	}
	if req.Timeout < 0 || req.Timeout > 3600 {
		return runtime.ExecResult{}, pier.Errorf(pier.Invalid, "invalid timeout %d (0 to 3600 seconds)", req.Timeout)
	}
	e.mu.Lock()
	proc, st := e.proc, e.m.State
	e.mu.Unlock()
	if st != StateStarted || proc == nil {
		return runtime.ExecResult{}, pier.Errorf(pier.Precondition, "machine %s is %s; exec needs a started machine", id, st)
	}
	ex, ok := proc.(runtime.Execer)
	if !ok {
		return runtime.ExecResult{}, pier.Errorf(pier.Unavailable, "this runtime cannot exec into machines")
	}
	t := time.Duration(req.Timeout) * time.Second
	if t == 0 {
		t = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	res, err := ex.Exec(ctx, cmd, []byte(req.Stdin))
	if err != nil && ctx.Err() != nil {
		return res, pier.Errorf(pier.Timeout, "exec did not finish within %s", t)
	}
	return res, err
}

// Update replaces a machine's config; a started machine restarts with it.
func (mg *Manager) Update(ctx context.Context, app, id, nonce string, cfg Config) (Machine, error) {
	e, err := mg.get(app, id)
	if err != nil {
		return Machine{}, err
	}
	if err := e.checkLease(nonce); err != nil {
		return Machine{}, err
	}
	if e.snapshot().Role != nil {
		return Machine{}, pier.Errorf(pier.Precondition, "machine %s runs a release of app %s, and deploys own its config: change pier.toml and deploy (pier deploy), or stop, start or exec it", id, app)
	}
	if err := cfg.normalize(); err != nil {
		return Machine{}, err
	}
	mg.imagesMu.RLock()
	img, err := mg.images.Resolve(ctx, cfg.Image)
	if err != nil {
		mg.imagesMu.RUnlock()
		return Machine{}, err
	}
	e.mu.Lock()
	wasRunning := e.m.State == StateStarted || e.m.State == StateStarting
	e.m.Config, e.m.ImageRef, e.m.InstanceID = cfg, ImageRef{Ref: img.Ref, Digest: img.Digest}, newInstanceID()
	e.event("update", e.m.State, "user", nil)
	e.mu.Unlock()
	mg.imagesMu.RUnlock()
	mg.persist(ctx, e)
	if wasRunning {
		if err := mg.stopAndWait(ctx, e, mg.StopTimeout); err != nil {
			return Machine{}, err
		}
		mg.start(e, img)
	}
	return e.snapshot(), nil
}

// stopAndWait stops the machine's process (if any) and waits for its goroutine.
func (mg *Manager) stopAndWait(ctx context.Context, e *entry, grace time.Duration) error {
	e.mu.Lock()
	proc, running := e.proc, e.running
	if running == nil {
		e.mu.Unlock()
		return nil
	}
	e.stopReq = true
	if e.m.State == StateStarted || e.m.State == StateStarting {
		e.setState(StateStopping)
	}
	e.mu.Unlock()
	mg.drain(e)
	e.mu.Lock()
	proc = e.proc
	e.mu.Unlock()
	if grace == 0 { // forced: no polite signal first
		if proc != nil {
			proc.Signal(syscall.SIGKILL)
		}
	} else {
		if proc != nil {
			proc.Signal(syscall.SIGTERM)
		}
		select {
		case <-running:
			return nil
		case <-time.After(grace):
		}
	}
	e.mu.Lock()
	proc = e.proc
	e.mu.Unlock()
	if proc != nil {
		proc.Signal(syscall.SIGKILL)
	}
	select {
	case <-running:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Destroy removes a machine. A started machine needs force, which kills it.
func (mg *Manager) Destroy(ctx context.Context, app, id string, force bool, nonce string) error {
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	if err := e.checkLease(nonce); err != nil {
		return err
	}
	e.mu.Lock()
	st := e.m.State
	if (st == StateStarted || st == StateStarting || st == StateStopping) && !force {
		e.mu.Unlock()
		return pier.Errorf(pier.Precondition, "machine %s is %s: stop it first, or destroy with force=true", id, st)
	}
	if st == StateDestroying {
		e.mu.Unlock()
		return nil
	}
	e.setState(StateDestroying)
	e.mu.Unlock()
	return mg.destroy(ctx, e, 0)
}

// Retire takes a machine out of traffic, lets its requests in flight
// finish (up to its app's drain timeout), stops it (SIGTERM, then SIGKILL
// after StopTimeout) and destroys it: how deploys and scaling remove an
// app's machines.
func (mg *Manager) Retire(ctx context.Context, app, id string) error {
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.m.State == StateDestroying {
		e.mu.Unlock()
		return nil
	}
	e.setState(StateDestroying)
	e.mu.Unlock()
	return mg.destroy(ctx, e, mg.StopTimeout)
}

// destroy stops the machine (grace 0: at once with SIGKILL) and removes
// it; its state is destroying.
func (mg *Manager) destroy(ctx context.Context, e *entry, grace time.Duration) error {
	id := e.snapshot().ID
	if err := mg.stopAndWait(ctx, e, grace); err != nil {
		return err
	}
	mg.mu.Lock()
	delete(mg.ms, id)
	mg.mu.Unlock()
	if err := mg.store.DeleteMachineDoc(ctx, id); err != nil {
		return err
	}
	e.mu.Lock()
	e.event("destroy", StateDestroyed, "user", nil)
	e.setState(StateDestroyed)
	digest := e.m.ImageRef.Digest
	e.mu.Unlock()
	mg.imagesMu.Lock()
	mg.released[digest] = time.Now()
	mg.imagesMu.Unlock()
	time.AfterFunc(mg.ImageGrace+time.Second, mg.collect) // past the grace, so this image can go
	return nil
}

// collect removes unpacked images that no machine uses any more.
func (mg *Manager) collect() {
	c, ok := mg.images.(collector)
	if !ok {
		return
	}
	mg.imagesMu.Lock()
	defer mg.imagesMu.Unlock()
	inUse := map[string]bool{}
	for d, at := range mg.released {
		if time.Since(at) < mg.ImageGrace {
			inUse[d] = true
		} else {
			delete(mg.released, d)
		}
	}
	mg.mu.Lock()
	for _, e := range mg.ms {
		e.mu.Lock()
		inUse[e.m.ImageRef.Digest] = true
		e.mu.Unlock()
	}
	mg.mu.Unlock()
	if n, err := c.GC(context.Background(), inUse); err != nil {
		mg.log.Error("collect unused images", "err", err)
	} else if n > 0 {
		mg.log.Info("removed unused images", "count", n)
	}
}

// Shutdown stops every machine's process (the server is exiting); their
// documents keep saying they were started, so Restore starts them again.
func (mg *Manager) Shutdown(grace time.Duration) {
	mg.closing.Store(true)
	mg.mu.Lock()
	var es []*entry
	for _, e := range mg.ms {
		es = append(es, e)
	}
	mg.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range es {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.mu.Lock()
			proc, running := e.proc, e.running
			e.mu.Unlock()
			if running == nil {
				return
			}
			// Not stopReq: this is not the user's stop, and the document
			// must not change.
			if proc != nil {
				proc.Signal(syscall.SIGTERM)
			}
			select {
			case <-running:
			case <-time.After(grace):
				e.mu.Lock()
				proc = e.proc // it may have been starting when the signal went out
				e.mu.Unlock()
				if proc != nil {
					proc.Signal(syscall.SIGKILL)
				}
				<-running
			}
		}()
	}
	wg.Wait()
}
