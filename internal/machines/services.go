package machines

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// Router is the part of the edge proxy that machines with services join:
// their app's traffic (<app>.<domain>) goes to them once they pass their
// checks.
type Router interface {
	Add(app, id, addr string)
	Remove(app, id string)
	// Drain takes the machine out of traffic and returns once its
	// requests in flight are done, or ctx is.
	Drain(ctx context.Context, app, id string) error
}

// route brings the machine's place in traffic in line with its state: in
// when it runs, serves, is healthy, is not a deploy's standby and is not
// being stopped.
func (mg *Manager) route(e *entry) {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	e.mu.Lock()
	want := e.proc != nil && e.healthy && len(e.m.Config.Services) > 0 && !e.stopReq && !mg.closing.Load() &&
		(e.m.Role == nil || !e.m.Role.Standby)
	addr := ""
	if e.proc != nil {
		addr = e.proc.Addr()
	}
	change := want != e.routed
	e.routed = want
	app, id := e.m.App, e.m.ID
	e.mu.Unlock()
	if !change || mg.Router == nil {
		return
	}
	if want {
		mg.Router.Add(app, id, addr)
	} else {
		mg.Router.Remove(app, id)
	}
}

// drain takes the machine out of traffic before it is stopped: new
// requests go elsewhere, and those in flight get up to the app's drain
// timeout to finish. e.stopReq must already be set.
func (mg *Manager) drain(e *entry) {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	e.mu.Lock()
	routed := e.routed
	e.routed = false
	app, id := e.m.App, e.m.ID
	var timeout time.Duration
	if e.m.Role != nil {
		timeout = e.m.Role.Drain
	}
	e.mu.Unlock()
	if !routed || mg.Router == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := mg.Router.Drain(ctx, app, id); err != nil {
		mg.log.Warn("requests still in flight after the drain timeout; stopping anyway", "app", app, "machine", id)
	}
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
	if candidate.Role != nil {
		mg.event(app, "autostart", fmt.Sprintf("a request started machine %s", candidate.ID))
	}
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
// had no traffic for its idle timeout (an app release's, else
// IdleTimeout), keeping min_machines_running, until ctx is done. idle
// reports an app's time without traffic (the edge proxy).
func (mg *Manager) RunAutostop(ctx context.Context, every time.Duration, idle func(app string) time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// An app's release machines and its machines-API machines are
		// counted apart: each group keeps its own minimum.
		type group struct {
			app     string
			release bool
		}
		groups := map[group][]Machine{}
		mg.mu.Lock()
		for _, e := range mg.ms {
			e.mu.Lock()
			if e.m.State == StateStarted && e.m.autostops() {
				g := group{e.m.App, e.m.Role != nil}
				groups[g] = append(groups[g], e.m)
			}
			e.mu.Unlock()
		}
		mg.mu.Unlock()
		for g, ms := range groups {
			sort.Slice(ms, func(i, j int) bool { return ms[i].CreatedAt.Before(ms[j].CreatedAt) })
			timeout := mg.IdleTimeout
			if r := ms[0].Role; r != nil && r.Idle > 0 {
				timeout = r.Idle
			}
			idleFor := idle(g.app)
			if idleFor < timeout {
				continue
			}
			keep := ms[0].Config.Services[0].MinMachinesRunning
			stopped := 0
			for _, m := range ms[min(keep, len(ms)):] {
				mg.log.Info("idle machine stopped", "app", g.app, "machine", m.ID)
				if err := mg.Stop(ctx, g.app, m.ID, mg.leaseOf(m.ID), StopRequest{}); err != nil {
					mg.log.Warn("autostop", "app", g.app, "machine", m.ID, "err", err)
					continue
				}
				stopped++
			}
			if g.release && stopped > 0 {
				mg.event(g.app, "autostop", fmt.Sprintf("idle for %s: stopped %d machine(s), %d left", idleFor.Round(time.Second), stopped, min(keep, len(ms))))
			}
		}
	}
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
