package machines

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// An app's releases run on machines like any other: same states, events,
// restarts, checks, autostop and API. What sets them apart is their Role:
// the release they run, and how deploys bring them into traffic and out.

// Role is set on the machines of an app's releases.
type Role struct {
	Release int `json:"release"`
	// Standby machines stay out of traffic until the deploy that made
	// them admits them (Admit).
	Standby bool `json:"standby,omitempty"`
	// Drain is how long requests in flight have to finish when the
	// machine is stopped; Idle, with autostop, how long the app goes
	// without traffic before it is stopped (0: the manager's IdleTimeout).
	Drain time.Duration `json:"drain,omitempty"`
	Idle  time.Duration `json:"idle,omitempty"`
}

// Releases turns an app's release into what its machines run: command,
// root filesystem, mounts, port, network and the complete environment
// (the release's, the app's secrets, its connections'). It is asked at
// every start of an app machine, so secrets are current and never stored.
type Releases interface {
	ReleaseSpec(ctx context.Context, app string, version int) (runtime.Spec, error)
}

// AppMachine asks for a machine of an app's release.
type AppMachine struct {
	Release int
	Checks  []pier.Check // none: TCP connect on PORT
	Standby bool
	Drain   time.Duration
	// AutoStop stops the machine when the app is idle for Idle, keeping
	// MinRunning; AutoStart lets a request start it again.
	AutoStop   bool
	AutoStart  bool
	MinRunning int
	Idle       time.Duration
}

// CreateAppMachine creates and starts a machine of an app's release. It
// runs on any driver, isolating or not.
func (mg *Manager) CreateAppMachine(ctx context.Context, app string, req AppMachine) (Machine, error) {
	if mg.driver == nil || mg.Releases == nil {
		return Machine{}, pier.Errorf(pier.Unavailable, "this server cannot run app releases")
	}
	spec, err := mg.Releases.ReleaseSpec(ctx, app, req.Release)
	if err != nil {
		return Machine{}, err
	}
	autostop := "off"
	if req.AutoStop {
		autostop = "stop"
	}
	autostart := req.AutoStart
	cfg := Config{
		Image: fmt.Sprintf("release:%s:v%d", app, req.Release),
		// Port 0: the driver chooses (host processes); checks of port 0
		// probe the machine's PORT.
		Services: []Service{{Protocol: "tcp", InternalPort: spec.Port, Autostop: autostop, Autostart: &autostart, MinMachinesRunning: req.MinRunning}},
		Restart:  Restart{Policy: "always"},
		Metadata: map[string]string{"fly_process_group": "app", "fly_release_version": strconv.Itoa(req.Release)},
	}
	for _, c := range req.Checks {
		ch := Check{Type: c.Type, Path: c.Path}
		if ch.Type == "" {
			ch.Type = "tcp"
		}
		if c.Interval.Duration > 0 {
			ch.Interval = c.Interval.String()
		}
		if c.Timeout.Duration > 0 {
			ch.Timeout = c.Timeout.String()
		}
		cfg.Services[0].Checks = append(cfg.Services[0].Checks, ch)
	}
	now := time.Now().UTC()
	m := Machine{ID: newID(), App: app, State: StateCreated, Region: "local", InstanceID: newInstanceID(),
		Config: cfg, ImageRef: ImageRef{Ref: cfg.Image}, CreatedAt: now, UpdatedAt: now,
		Role: &Role{Release: req.Release, Standby: req.Standby, Drain: req.Drain, Idle: req.Idle}}
	m.Name = fmt.Sprintf("%s-v%d-%s", app, req.Release, m.ID[:6])
	e := &entry{m: m, changed: make(chan struct{})}
	e.event("launch", StateCreated, "pier", nil)
	if err := mg.persist(ctx, e); err != nil {
		return Machine{}, err
	}
	mg.mu.Lock()
	mg.ms[m.ID] = e
	mg.mu.Unlock()
	mg.start(e, Image{})
	return e.snapshot(), nil
}

// ExitedError says a machine exited before it passed its checks.
type ExitedError struct {
	ID   string
	Exit ExitEvent
}

func (e *ExitedError) Error() string { return fmt.Sprintf("machine %s exited with %s", e.ID, e.How()) }

// How says how it exited: "exit code 3", "killed by SIGKILL", "oom_killed".
func (e *ExitedError) How() string {
	return runtime.Exit{Code: e.Exit.ExitCode, Signal: e.Exit.Signal, OOMKilled: e.Exit.OOMKilled}.String()
}

// WaitReady blocks until the machine passes its checks. It fails with an
// *ExitedError as soon as the machine exits (or fails to start) before
// that, and with ctx's error when ctx ends first.
func (mg *Manager) WaitReady(ctx context.Context, app, id string) error {
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	for {
		e.mu.Lock()
		healthy, exits, st, changed := e.healthy, e.exits, e.m.State, e.changed
		var last ExitEvent
		for i := len(e.m.Events) - 1; i >= 0; i-- {
			if ev := e.m.Events[i]; ev.Type == "exit" {
				if ev.Request != nil && ev.Request.ExitEvent != nil {
					last = *ev.Request.ExitEvent
				}
				break
			}
		}
		e.mu.Unlock()
		switch {
		case healthy:
			return nil
		case exits > 0:
			return &ExitedError{ID: id, Exit: last}
		case st == StateDestroying || st == StateDestroyed || st == StateStopped:
			return pier.Errorf(pier.Failed, "machine %s is %s", id, st)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// Admit brings a deploy's standby machine into traffic (once it is
// healthy, which it is when WaitReady has returned).
func (mg *Manager) Admit(ctx context.Context, app, id string) error {
	e, err := mg.get(app, id)
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.m.Role == nil {
		e.mu.Unlock()
		return pier.Errorf(pier.Invalid, "machine %s is not an app machine", id)
	}
	e.m.Role.Standby = false
	e.mu.Unlock()
	if err := mg.persist(ctx, e); err != nil {
		return err
	}
	mg.route(e)
	return nil
}

// AppMachines lists the machines of an app's releases, oldest first, in
// the form `pier status` shows.
func (mg *Manager) AppMachines(app string) []AppMachineStatus {
	mg.mu.Lock()
	var es []*entry
	for _, e := range mg.ms {
		es = append(es, e)
	}
	mg.mu.Unlock()
	out := []AppMachineStatus{}
	for _, e := range es {
		e.mu.Lock()
		if e.m.App == app && e.m.Role != nil {
			st := AppMachineStatus{Machine: pier.Machine{ID: e.m.ID, App: app, Release: e.m.Role.Release, State: e.m.State, Healthy: e.healthy,
				Restarts: e.retries, StartedAt: e.m.CreatedAt}, Standby: e.m.Role.Standby, CreatedAt: e.m.CreatedAt}
			if e.proc != nil {
				st.Addr, st.PID = e.proc.Addr(), e.proc.PID()
			}
			for _, ev := range e.m.Events {
				if ev.Type == "start" || (ev.Type == "exit" && ev.Status == StateStarting) {
					st.StartedAt = time.UnixMilli(ev.Timestamp).UTC()
				}
			}
			out = append(out, st)
		}
		e.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// AppMachineStatus is an app machine as deploys and `pier status` see it.
type AppMachineStatus struct {
	pier.Machine
	Standby   bool      `json:"standby,omitempty"`
	CreatedAt time.Time `json:"-"`
}
