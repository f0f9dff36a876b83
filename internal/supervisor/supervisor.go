// Package supervisor runs apps' machines through a runtime driver: it starts
// the machines of a release, watches their health, routes healthy ones into
// the edge proxy, restarts crashed ones with backoff, and rolls releases out
// with zero downtime.
package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// Driver starts machines; internal/runtime/process is one.
type Driver interface {
	Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error)
}

// Router is the part of the edge proxy the supervisor steers.
type Router interface {
	Add(app, id, addr string)
	Remove(app, id string)
	Drain(ctx context.Context, app, id string) error
}

// Recorder keeps the machines that may be running and the event history.
type Recorder interface {
	AddMachine(ctx context.Context, m pier.Machine) error
	RemoveMachine(ctx context.Context, id string) error
	AddEvent(ctx context.Context, app, typ, msg string) error
}

// Config holds what a Supervisor needs.
type Config struct {
	Driver   Driver
	Router   Router
	Recorder Recorder
	Logs     *logs.Hub
	Log      *slog.Logger
	// Artifact returns the directory of a build.
	Artifact func(app, buildID string) string
	// Self is the pier binary, which serves static sites.
	Self string
	// StopGrace is how long a machine has between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// HostFS, when set, runs releases in isolated machines (the driver is
	// then an isolating one) with this root filesystem.
	HostFS *HostFS
	// Lowers, when set, finds the layer directories of release images:
	// releases that have an image run on its layers alone, nothing of the
	// host's filesystem (HostFS is for releases made before images).
	Lowers Lowers
	// HostPorts, when set, names the ports on pier's host that an app's
	// isolated machines may reach (its connected resources), asked as each
	// machine starts.
	HostPorts func(app string) []int
	// Mesh, when set, learns which app each machine's address belongs to
	// (so the machine's calls carry its app's identity) and gives isolated
	// machines the /etc/hosts lines of the apps' service names.
	Mesh Mesh
}

// Mesh is the part of the service mesh that tracks machines.
type Mesh interface {
	Join(app, id string, addr netip.Addr)
	Leave(id string)
	Hosts() []string
}

// Supervisor owns every running machine.
type Supervisor struct {
	driver   Driver
	router   Router
	rec      Recorder
	logs     *logs.Hub
	log      *slog.Logger
	artifact func(app, buildID string) string
	self     string
	grace    time.Duration
	hostfs   *HostFS
	lowers   Lowers
	ports    func(app string) []int
	mesh     Mesh

	mu       sync.Mutex
	machines map[string]*machine
}

// New returns a Supervisor with no machines.
func New(c Config) *Supervisor {
	if c.StopGrace == 0 {
		c.StopGrace = 10 * time.Second
	}
	return &Supervisor{driver: c.Driver, router: c.Router, rec: c.Recorder, logs: c.Logs, log: c.Log,
		artifact: c.Artifact, self: c.Self, grace: c.StopGrace, hostfs: c.HostFS, lowers: c.Lowers, ports: c.HostPorts, mesh: c.Mesh, machines: map[string]*machine{}}
}

func (s *Supervisor) event(app, typ, msg string) {
	if err := s.rec.AddEvent(context.Background(), app, typ, msg); err != nil {
		s.log.Error("record event", "app", app, "err", err)
	}
}

// baseEnv is what every machine sees besides its release's env and secrets:
// a usable PATH, HOME and locale, never the server's own settings.
func baseEnv() []string {
	env := []string{"LANG=C.UTF-8"}
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// Env assembles a machine's environment: base, release env, then secrets
// (secrets win), then pier's own variables.
func Env(rel pier.Release, secrets map[string]string) []string {
	env := baseEnv()
	keys := make([]string, 0, len(rel.Config.Env))
	for k := range rel.Config.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, secret := secrets[k]; !secret {
			env = append(env, k+"="+rel.Config.Env[k])
		}
	}
	keys = keys[:0]
	for k := range secrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+secrets[k])
	}
	return append(env, "PIER_APP_NAME="+rel.App, fmt.Sprintf("PIER_RELEASE_VERSION=%d", rel.Version))
}

// start launches a machine of rel. It does not wait for it to be healthy.
func (s *Supervisor) start(rel pier.Release, env []string, routable bool) (*machine, error) {
	m := &machine{s: s, id: newMachineID(), app: rel.App, rel: rel, routable: routable, created: time.Now(),
		stop: make(chan struct{}), done: make(chan struct{}), healthy: make(chan struct{}), exits: make(chan runtime.Exit, 1),
		state: pier.MachineStarting, startedAt: time.Now()}
	// Recorded before the process exists, so a crash of the server right
	// after the start still leaves a trail for cleanup.
	if err := s.rec.AddMachine(context.Background(), m.snapshot()); err != nil {
		return nil, fmt.Errorf("record machine: %w", err)
	}
	s.mu.Lock()
	s.machines[m.id] = m
	s.mu.Unlock()
	go m.run(env)
	return m, nil
}

func (s *Supervisor) forget(m *machine) {
	s.mu.Lock()
	delete(s.machines, m.id)
	s.mu.Unlock()
	if err := s.rec.RemoveMachine(context.Background(), m.id); err != nil {
		s.log.Error("forget machine", "machine", m.id, "err", err)
	}
}

// serving returns the app's machines that are not being retired.
func (s *Supervisor) serving(app string) []*machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*machine
	for _, m := range s.machines {
		if m.app != app {
			continue
		}
		select {
		case <-m.stop:
			continue
		default:
		}
		m.mu.Lock()
		ok := m.routable
		m.mu.Unlock()
		if ok {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].created.Before(out[j].created) })
	return out
}

// Isolated reports whether releases run in isolated machines.
func (s *Supervisor) Isolated() bool { return s.hostfs != nil }

// Serving counts an app's machines that are (or will be, once healthy) in
// traffic: not being retired.
func (s *Supervisor) Serving(app string) int { return len(s.serving(app)) }

// Machines lists an app's machines, oldest first.
func (s *Supervisor) Machines(app string) []pier.Machine {
	s.mu.Lock()
	var ms []*machine
	for _, m := range s.machines {
		if m.app == app {
			ms = append(ms, m)
		}
	}
	s.mu.Unlock()
	out := make([]pier.Machine, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartedAt.Before(out[j].StartedAt) })
	return out
}

// Run starts count machines of rel that join traffic as soon as they are
// healthy. The server uses it to bring apps back after a restart.
func (s *Supervisor) Run(rel pier.Release, env []string, count int) error {
	for range count {
		if _, err := s.start(rel, env, true); err != nil {
			return err
		}
	}
	return nil
}

// Scale brings the app's machine count to n: new machines run rel (the
// current release), extra ones are drained and stopped, newest first.
func (s *Supervisor) Scale(rel pier.Release, env []string, n int) error {
	cur := s.serving(rel.App)
	if n > len(cur) {
		return s.Run(rel, env, n-len(cur))
	}
	extra := cur[n:]
	s.retire(extra, rel.Config.DrainTimeout.Duration)
	return nil
}

// retire drains and stops machines, all at once.
func (s *Supervisor) retire(ms []*machine, drain time.Duration) {
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() { defer wg.Done(); m.shutdown(drain, s.grace) }()
	}
	wg.Wait()
}

// StopApp stops all of an app's machines, draining them first.
func (s *Supervisor) StopApp(app string, drain time.Duration) {
	s.mu.Lock()
	var ms []*machine
	for _, m := range s.machines {
		if m.app == app {
			ms = append(ms, m)
		}
	}
	s.mu.Unlock()
	s.retire(ms, drain)
}

// Shutdown stops every machine; the server calls it on exit.
func (s *Supervisor) Shutdown(drain time.Duration) {
	s.mu.Lock()
	ms := make([]*machine, 0, len(s.machines))
	for _, m := range s.machines {
		ms = append(ms, m)
	}
	s.mu.Unlock()
	s.retire(ms, drain)
}
