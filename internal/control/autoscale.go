package control

import (
	"context"
	"fmt"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// Wake starts the machines of a scaled-to-zero app whose release allows
// auto start; the edge proxy calls it when a request finds no machine.
// Concurrent wakes of one app start machines once.
func (p *Plane) Wake(app string) {
	ctx := context.Background()
	unlock, err := p.lock(app, "a wake")
	if err != nil {
		return // a deploy, scale or another wake is bringing machines already
	}
	defer unlock()
	a, err := p.Store.App(ctx, app)
	if err != nil || a.Release == 0 || a.Count == 0 {
		return
	}
	rel, err := p.Store.Release(ctx, app, a.Release)
	if err != nil || !rel.Config.AutoStart {
		return
	}
	if p.Supervisor.Serving(app) >= a.Count {
		return
	}
	env, err := p.env(ctx, rel)
	if err != nil {
		p.Log.Error("wake app", "app", app, "err", err)
		return
	}
	if err := p.Supervisor.Scale(rel, env, a.Count); err != nil {
		p.Log.Error("wake app", "app", app, "err", err)
		return
	}
	p.Log.Info("app woken by a request", "app", app, "machines", a.Count)
	p.event(ctx, app, "autostart", "a request started %d machine(s)", a.Count)
}

// RunAutostop stops the idle machines of apps whose release has auto stop,
// down to their minimum, until ctx is done. idle reports how long an app has
// had no traffic (the edge proxy knows).
func (p *Plane) RunAutostop(ctx context.Context, every time.Duration, idle func(app string) time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		apps, err := p.Store.Apps(ctx)
		if err != nil {
			if ctx.Err() == nil {
				p.Log.Error("autostop: list apps", "err", err)
			}
			continue
		}
		for _, a := range apps {
			if a.Release == 0 {
				continue
			}
			if err := p.autostop(ctx, a, idle(a.Name)); err != nil && pier.KindOf(err) != pier.Conflict {
				p.Log.Error("autostop", "app", a.Name, "err", err)
			}
		}
	}
}

func (p *Plane) autostop(ctx context.Context, a pier.App, idleFor time.Duration) error {
	rel, err := p.Store.Release(ctx, a.Name, a.Release)
	if err != nil {
		return err
	}
	cfg := rel.Config
	if !cfg.AutoStop || idleFor < cfg.IdleTimeout.Duration {
		return nil
	}
	keep := min(cfg.MinMachines, a.Count)
	if p.Supervisor.Serving(a.Name) <= keep {
		return nil
	}
	unlock, err := p.lock(a.Name, "an autostop")
	if err != nil {
		return err
	}
	defer unlock()
	// Counted again under the lock: only ever scale down here.
	running := p.Supervisor.Serving(a.Name)
	if running <= keep {
		return nil
	}
	if err := p.Supervisor.Scale(rel, nil, keep); err != nil {
		return fmt.Errorf("stop idle machines: %w", err)
	}
	p.Log.Info("idle app scaled down", "app", a.Name, "idle", idleFor.Round(time.Second), "machines", keep)
	p.event(ctx, a.Name, "autostop", "idle for %s: stopped %d machine(s), %d left", idleFor.Round(time.Second), running-keep, keep)
	return nil
}
