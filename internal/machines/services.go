package machines

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// Router is the part of the edge proxy that machines with services join:
// their app's traffic (<app>.<domain>) goes to them once they listen.
type Router interface {
	Add(app, id, addr string)
	Remove(app, id string)
}

// routeWhenUp adds the machine to the proxy once its service port accepts
// connections, unless the machine exits first.
func (mg *Manager) routeWhenUp(app, id, addr string, exited <-chan struct{}) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			mg.Router.Add(app, id, addr)
			select {
			case <-exited: // it exited while being added: undo
				mg.Router.Remove(app, id)
			default:
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	mg.log.Warn("machine's service never accepted connections; not routed", "app", app, "machine", id, "addr", addr)
}

// serviceAddr is where a started machine's first service listens.
func serviceAddr(m Machine) (string, bool) {
	if len(m.Config.Services) == 0 || m.PrivateIP == "" {
		return "", false
	}
	return net.JoinHostPort(m.PrivateIP, strconv.Itoa(m.Config.Services[0].InternalPort)), true
}

// autostops reports whether the machine's service stops it when idle.
func (m Machine) autostops() bool {
	if len(m.Config.Services) == 0 {
		return false
	}
	stop, _ := autostop(m.Config.Services[0].Autostop) // checked by normalize
	return stop
}

// autostarts reports whether a request may start the stopped machine
// (Fly's default is true).
func (m Machine) autostarts() bool {
	if len(m.Config.Services) == 0 {
		return false
	}
	a := m.Config.Services[0].Autostart
	return a == nil || *a
}

// Wake starts one stopped machine of app whose service autostarts, when
// none of its service machines is running; the edge proxy calls it when a
// request finds no machine.
func (mg *Manager) Wake(app string) {
	if mg.driver == nil {
		return
	}
	var candidate *Machine
	for _, m := range mg.List(app, nil) {
		if len(m.Config.Services) == 0 {
			continue
		}
		if m.State == StateStarted || m.State == StateStarting {
			return // one is up or coming
		}
		if m.State == StateStopped && m.autostarts() && candidate == nil {
			c := m
			candidate = &c
		}
	}
	if candidate == nil {
		return
	}
	if _, err := mg.Start(context.Background(), app, candidate.ID, mg.leaseOf(candidate.ID)); err != nil {
		mg.log.Warn("wake machine", "app", app, "machine", candidate.ID, "err", err)
		return
	}
	mg.log.Info("machine woken by a request", "app", app, "machine", candidate.ID)
}

// leaseOf returns the nonce of a machine's active lease, so pier's own
// actions (autostart, autostop) are not blocked by it.
func (mg *Manager) leaseOf(id string) string {
	mg.mu.Lock()
	e := mg.ms[id]
	mg.mu.Unlock()
	if e == nil {
		return ""
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if l := e.activeLease(); l != nil {
		return l.Nonce
	}
	return ""
}

// RunAutostop stops machines whose service autostops once their app has
// had no traffic for IdleTimeout, keeping min_machines_running, until ctx
// is done. idle reports an app's time without traffic (the edge proxy).
func (mg *Manager) RunAutostop(ctx context.Context, every time.Duration, idle func(app string) time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		byApp := map[string][]Machine{}
		mg.mu.Lock()
		for _, e := range mg.ms {
			e.mu.Lock()
			if e.m.State == StateStarted && e.m.autostops() {
				byApp[e.m.App] = append(byApp[e.m.App], e.m)
			}
			e.mu.Unlock()
		}
		mg.mu.Unlock()
		for app, ms := range byApp {
			if idle(app) < mg.IdleTimeout {
				continue
			}
			keep := ms[0].Config.Services[0].MinMachinesRunning
			for _, m := range ms[min(keep, len(ms)):] {
				mg.log.Info("idle machine stopped", "app", app, "machine", m.ID)
				if err := mg.Stop(ctx, app, m.ID, mg.leaseOf(m.ID), StopRequest{}); err != nil {
					mg.log.Warn("autostop", "app", app, "machine", m.ID, "err", err)
				}
			}
		}
	}
}

// watchChecks runs the machine's checks against its address until exited
// is closed, recording each result in the machine's Checks.
func (mg *Manager) watchChecks(e *entry, ip string, checks map[string]Check, exited <-chan struct{}) {
	if len(checks) == 0 {
		return
	}
	names := make([]string, 0, len(checks))
	interval := 15 * time.Second
	for name, c := range checks {
		names = append(names, name)
		if d, err := time.ParseDuration(c.Interval); err == nil && d < interval {
			interval = d
		}
	}
	sort.Strings(names)
	for {
		statuses := make([]CheckStatus, 0, len(names))
		for _, name := range names {
			st := CheckStatus{Name: name, Status: "passing"}
			if err := runCheck(ip, checks[name]); err != nil {
				st.Status, st.Output = "critical", err.Error()
			}
			statuses = append(statuses, st)
		}
		e.mu.Lock()
		e.m.Checks = statuses
		e.mu.Unlock()
		select {
		case <-exited:
			e.mu.Lock()
			e.m.Checks = nil
			e.mu.Unlock()
			return
		case <-time.After(interval):
		}
	}
}

// runCheck probes one check: a TCP connect, or an HTTP GET that must
// answer below 400.
func runCheck(ip string, c Check) error {
	timeout := 2 * time.Second
	if d, err := time.ParseDuration(c.Timeout); err == nil {
		timeout = d
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(c.Port))
	if c.Type == "tcp" {
		conn, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	client := &http.Client{Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	u, err := pier.CheckURL(addr, c.Path)
	if err != nil {
		return err
	}
	resp, err := client.Get(u.String())
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: status %d", c.Path, resp.StatusCode)
	}
	return nil
}

// DestroyAll destroys every machine of app, leased or not: the app itself
// is going away.
func (mg *Manager) DestroyAll(ctx context.Context, app string) error {
	for _, m := range mg.List(app, nil) {
		if err := mg.Destroy(ctx, app, m.ID, true, mg.leaseOf(m.ID)); err != nil && pier.KindOf(err) != pier.NotFound {
			return fmt.Errorf("destroy machine %s: %w", m.ID, err)
		}
	}
	return nil
}
