package infra

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// StartResources runs once as the server starts, before apps: it finishes
// what a crash interrupted (a half-created resource is removed, a
// half-deleted one deleted, a half-removed connection revoked) and starts
// every managed resource's server that is not running.
func (s *Service) StartResources(ctx context.Context) error {
	rows, err := s.Store.Resources(ctx)
	if err != nil {
		return err
	}
	for _, r := range rows {
		d, err := s.Types.Driver(r.Type)
		if err != nil {
			s.Log.Error("resource of an unknown type", "resource", r.Name, "type", r.Type)
			continue
		}
		inst, err := s.instance(r)
		if err != nil {
			s.Log.Error("resource credentials", "resource", r.Name, "err", err)
			continue
		}
		switch r.Status {
		case resources.StatusCreating, resources.StatusDeleting:
			s.Log.Warn("removing a resource whose create or delete was interrupted", "resource", r.Name, "status", r.Status)
			s.discard(inst, d)
			s.resourceEvent(ctx, r.Name, "resource.delete", "%s %s removed: its %s was interrupted", r.Type, r.Name, map[resources.Status]string{resources.StatusCreating: "creation", resources.StatusDeleting: "deletion"}[r.Status])
		default:
			sctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
			err := d.Start(sctx, inst)
			cancel()
			if err != nil {
				s.Log.Error("start resource", "resource", r.Name, "err", err)
				continue
			}
			s.Log.Info("resource started", "resource", r.Name, "type", r.Type)
		}
	}
	s.finishRevokes(ctx)
	return nil
}

// finishRevokes revokes the connections left marked for removal.
func (s *Service) finishRevokes(ctx context.Context) {
	conns, err := s.Store.Connections(ctx, "", "")
	if err != nil {
		return
	}
	for _, c := range conns {
		if c.Status != store.ConnRevoking {
			continue
		}
		// A disconnect under way holds the app's lock and revokes itself
		// once its roll is done; only abandoned rows are ours.
		unlock, err := s.Busy.TryLock(c.App, "a revoke")
		if err != nil {
			continue
		}
		c, err := s.Store.Connection(ctx, c.App, c.Target)
		if err != nil || c.Status != store.ConnRevoking {
			unlock()
			continue
		}
		err = s.finishRevoke(ctx, c)
		unlock()
		if err != nil {
			s.Log.Warn("revoke connection; will retry", "app", c.App, "resource", c.Target, "err", err)
			continue
		}
		s.resourceEvent(ctx, c.Target, "disconnect", "the credentials of %s were revoked", c.App)
	}
}

// RunResources keeps resources serving until ctx is done: every interval
// it starts a managed server that stopped (crashed, killed) and retries
// pending revocations; once a minute it takes the scheduled backups due.
func (s *Service) RunResources(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	lastBackups := time.Time{}
	var backingUp atomic.Bool
	failing := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := s.Store.Resources(ctx)
		if err != nil {
			continue
		}
		for _, r := range rows {
			if r.Status != resources.StatusReady {
				continue
			}
			d, err := s.Types.Driver(r.Type)
			if err != nil {
				continue
			}
			// Never under a delete, backup or restore of the resource.
			unlock, err := s.Busy.TryLock(r.Name, "a health check")
			if err != nil {
				continue
			}
			if cur, err := s.Store.Resource(ctx, r.Name); err != nil || cur.Status != resources.StatusReady {
				unlock()
				continue
			}
			inst, err := s.instance(r)
			if err != nil {
				unlock()
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, ProvisionTimeout)
			err = d.Start(sctx, inst)
			cancel()
			unlock()
			switch {
			case err != nil && !failing[r.Name]:
				failing[r.Name] = true
				s.Log.Error("resource is down and could not be started", "resource", r.Name, "err", err)
				s.resourceEvent(ctx, r.Name, "resource.down", "%s is down: %v", r.Name, firstLine(err))
			case err == nil && failing[r.Name]:
				delete(failing, r.Name)
				s.Log.Info("resource is back", "resource", r.Name)
				s.resourceEvent(ctx, r.Name, "resource.up", "%s is serving again", r.Name)
			}
		}
		s.finishRevokes(ctx)
		// Backups take minutes: in their own goroutine, one round at a time.
		if time.Since(lastBackups) >= time.Minute && backingUp.CompareAndSwap(false, true) {
			lastBackups = time.Now()
			go func() {
				defer backingUp.Store(false)
				s.scheduledBackups(ctx, time.Now())
			}()
		}
	}
}
