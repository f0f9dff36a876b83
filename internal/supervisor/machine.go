package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// machine is one supervised instance: a goroutine that starts the process,
// checks its health, restarts it with backoff when it dies, and stops it when
// asked.
type machine struct {
	s       *Supervisor
	id      string
	app     string
	rel     pier.Release
	created time.Time // when the supervisor made it; never changes

	stop    chan struct{} // closed to ask the machine to stop for good
	done    chan struct{} // closed when the machine has stopped for good
	healthy chan struct{} // closed the first time it passes its checks
	exits   chan runtime.Exit

	mu        sync.Mutex
	proc      runtime.Process
	state     string
	isHealthy bool
	routable  bool // may take traffic once healthy
	routed    bool // is in the proxy now
	restarts  int
	startedAt time.Time
	stopOnce  sync.Once
	firstOK   sync.Once
}

func newMachineID() string {
	b := make([]byte, 7)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (m *machine) snapshot() pier.Machine {
	m.mu.Lock()
	defer m.mu.Unlock()
	pm := pier.Machine{ID: m.id, App: m.app, Release: m.rel.Version, State: m.state, Healthy: m.isHealthy, Restarts: m.restarts, StartedAt: m.startedAt}
	if m.proc != nil {
		pm.Addr, pm.PID = m.proc.Addr(), m.proc.PID()
	}
	return pm
}

// command is the argv that runs a release.
func (m *machine) command() []string {
	if m.rel.Builder == "static" && m.rel.Start == "" {
		return []string{m.s.self, "static-serve", "--dir", "."}
	}
	start := m.rel.Start
	// A simple command replaces the shell, so the machine's main process is
	// the app itself and signals reach it directly.
	if !strings.ContainsAny(start, ";&|\n()`$<>") {
		start = "exec " + start
	}
	return []string{"/bin/sh", "-c", start}
}

// run is the machine's goroutine.
func (m *machine) run(env []string) {
	defer close(m.done)
	defer m.s.forget(m)
	log := m.s.log.With("app", m.app, "machine", m.id, "release", m.rel.Version)
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-m.stop:
			m.setState(pier.MachineStopped)
			return
		default:
		}
		m.setState(pier.MachineStarting)
		out := m.s.logs.Writer(m.app, m.id, "stdout")
		errw := m.s.logs.Writer(m.app, m.id, "stderr")
		spec := runtime.Spec{ID: m.id, App: m.app, Dir: m.s.artifact(m.app, m.rel.BuildID), Command: m.command(), Env: env, Stdout: out, Stderr: errw}
		var specErr error
		if m.s.hostfs != nil {
			if m.rel.Image.Digest != "" && m.s.lowers != nil {
				spec, specErr = ImageSpec(spec, m.rel, m.s.lowers)
			} else {
				spec = m.s.hostfs.isolate(spec, m.rel.Builder == "static" && m.rel.Start == "", m.rel.Config.DenyOutbound)
			}
			if m.s.ports != nil {
				spec.HostPorts = m.s.ports(m.app)
			}
			if m.s.mesh != nil {
				spec.Hosts = m.s.mesh.Hosts()
			}
		}
		var proc runtime.Process
		err := specErr
		if err == nil {
			proc, err = m.s.driver.Start(context.Background(), spec)
		}
		var exit runtime.Exit
		var up time.Duration
		if err != nil {
			log.Error("machine did not start", "err", err)
			fmt.Fprintf(errw, "pier: machine did not start: %v\n", err)
			exit = runtime.Exit{Code: -1, Signal: ""}
		} else {
			began := time.Now()
			m.mu.Lock()
			m.proc, m.state, m.startedAt = proc, pier.MachineStarted, began
			m.mu.Unlock()
			// shutdown may have run while Start was under way and found no
			// process to signal: it is waiting for this one to end.
			select {
			case <-m.stop:
				proc.Signal(syscall.SIGKILL)
			default:
			}
			if m.s.mesh != nil {
				if ap, err := netip.ParseAddrPort(proc.Addr()); err == nil && m.s.hostfs != nil {
					m.s.mesh.Join(m.app, m.id, ap.Addr())
				}
			}
			checking := make(chan struct{})
			checked := make(chan struct{})
			go func() { defer close(checked); m.watchHealth(proc.Addr(), checking) }()
			exit = proc.Wait()
			close(checking)
			<-checked
			out.Flush()
			errw.Flush()
			up = time.Since(began)
			m.setHealthy(false)
			if m.s.mesh != nil {
				m.s.mesh.Leave(m.id)
			}
		}
		select {
		case <-m.stop:
			m.setState(pier.MachineStopped)
			log.Info("machine stopped", "exit", exit.String())
			return
		default:
		}
		select {
		case m.exits <- exit:
		default:
		}
		log.Warn("machine exited; restarting", "exit", exit.String(), "backoff", backoff)
		m.s.event(m.app, "machine.exit", fmt.Sprintf("machine %s (v%d) exited with %s; restarting", m.id, m.rel.Version, exit))
		m.setState(pier.MachineStopped)
		if up > 30*time.Second {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-m.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
		m.mu.Lock()
		m.restarts++
		m.mu.Unlock()
	}
}

// watchHealth probes the machine until checking is closed: quickly until it
// first passes, then at the checks' interval. Three failures in a row take
// it out of traffic; one pass puts it back.
func (m *machine) watchHealth(addr string, checking chan struct{}) {
	checks := m.rel.Config.Checks
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-checking:
			cancel()
		case <-ctx.Done():
		}
	}()
	fails := 0
	// Probe often at first: a cold start (scale to zero, deploys) waits on it.
	interval := 10 * time.Millisecond
	for {
		err := probeAll(ctx, addr, checks)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			fails = 0
			m.setHealthy(true)
			interval = checkInterval(checks)
		} else if fails++; fails >= 3 && m.healthyNow() {
			m.s.log.Warn("machine failed its health checks", "app", m.app, "machine", m.id, "err", err)
			m.s.event(m.app, "machine.unhealthy", fmt.Sprintf("machine %s failed its checks: %v", m.id, err))
			m.setHealthy(false)
		} else if !m.healthyNow() {
			interval = min(interval*2, time.Second)
		}
		select {
		case <-checking:
			return
		case <-time.After(interval):
		}
	}
}

func (m *machine) healthyNow() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.isHealthy
}

func (m *machine) setState(st string) {
	m.mu.Lock()
	m.state = st
	m.mu.Unlock()
}

// setHealthy records health and brings routing in line with it.
func (m *machine) setHealthy(ok bool) {
	m.mu.Lock()
	m.isHealthy = ok
	m.mu.Unlock()
	if ok {
		m.firstOK.Do(func() { close(m.healthy) })
	}
	m.route()
}

// setRoutable allows or forbids traffic to the machine.
func (m *machine) setRoutable(ok bool) {
	m.mu.Lock()
	m.routable = ok
	m.mu.Unlock()
	m.route()
}

func (m *machine) route() {
	m.mu.Lock()
	want := m.routable && m.isHealthy && m.proc != nil
	addr := ""
	if m.proc != nil {
		addr = m.proc.Addr()
	}
	change := want != m.routed
	m.routed = want
	m.mu.Unlock()
	if !change {
		return
	}
	if want {
		m.s.router.Add(m.app, m.id, addr)
	} else {
		m.s.router.Remove(m.app, m.id)
	}
}

// shutdown drains the machine from traffic (bounded by drain), then sends
// SIGTERM, and SIGKILL after grace; it returns when the machine is gone.
func (m *machine) shutdown(drain, grace time.Duration) {
	m.mu.Lock()
	m.routable = false
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	if err := m.s.router.Drain(ctx, m.app, m.id); err != nil {
		m.s.log.Warn("requests still in flight after drain timeout; stopping anyway", "app", m.app, "machine", m.id)
	}
	cancel()
	m.mu.Lock()
	m.routed = false
	m.mu.Unlock()
	m.stopOnce.Do(func() { close(m.stop) })
	m.setState(pier.MachineStopping)
	m.signal(syscall.SIGTERM)
	select {
	case <-m.done:
		return
	case <-time.After(grace):
	}
	m.signal(syscall.SIGKILL)
	<-m.done
}

func (m *machine) signal(sig syscall.Signal) {
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p != nil {
		p.Signal(sig)
	}
}
