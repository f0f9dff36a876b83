package infra

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// What apps need of their connections: the environment and host ports
// they give an app's machines, those its pier.toml declares, and revoking
// them all when it goes.

// Env is what app's active connections add to its machines' environment:
// the resources' variables, then the call connections'.
func (s *Service) Env(ctx context.Context, app string) ([]string, error) {
	bound, err := s.bound(ctx, app)
	if err != nil {
		return nil, err
	}
	calls, err := s.callsEnv(ctx, app)
	if err != nil {
		return nil, err
	}
	return append(resources.Env(bound), calls...), nil
}

// bound returns the active connections of app with their credentials.
func (s *Service) bound(ctx context.Context, app string) ([]resources.Bound, error) {
	conns, err := s.Store.Connections(ctx, app, "")
	if err != nil {
		return nil, err
	}
	var out []resources.Bound
	for _, c := range conns {
		if c.Status != store.ConnActive || c.Kind != "resource" {
			continue
		}
		d, err := s.Types.Driver(c.Type)
		if err != nil {
			// A connection whose resource is gone must not stop the app.
			s.Log.Error("connection to a missing resource; skipped", "app", app, "resource", c.Target)
			continue
		}
		cr, err := s.creds(c)
		if err != nil {
			return nil, err
		}
		out = append(out, resources.Bound{As: c.As, Type: d.Info(), Creds: cr})
	}
	return out, nil
}

// HostPorts are the ports on pier's host that app's machines may reach:
// those of the managed resources it is connected to. Isolating runtimes
// open exactly these from the app's machines.
func (s *Service) HostPorts(app string) []int {
	bound, err := s.bound(context.Background(), app)
	if err != nil {
		s.Log.Error("host ports of app", "app", app, "err", err)
		return nil
	}
	var ports []int
	for _, b := range bound {
		if b.Creds["host"] != s.Net.Host {
			continue
		}
		if n, err := strconv.Atoi(b.Creds["port"]); err == nil {
			ports = append(ports, n)
		}
	}
	return ports
}

// CheckDeclared checks the connections pier.toml declares for app against
// the resources and app's connections, changing nothing.
func (s *Service) CheckDeclared(ctx context.Context, app string, decls []appconfig.Connection) error {
	_, err := s.declared(ctx, app, decls)
	return err
}

// GrantDeclared makes the connections pier.toml declares that app lacks,
// for a deploy holding app's lock. undo revokes them all, if the release
// fails; done records their events once it is live. On error nothing is
// left granted.
func (s *Service) GrantDeclared(ctx context.Context, app string, decls []appconfig.Connection, out io.Writer) (undo func(), done func(context.Context), err error) {
	plans, err := s.declared(ctx, app, decls)
	if err != nil {
		return nil, nil, err
	}
	var made []resources.Connection
	var undos []func()
	undo = func() {
		for _, f := range undos {
			f()
		}
	}
	for _, cp := range plans {
		conn, undoOne, err := s.grantConnection(ctx, app, cp, out)
		if err != nil {
			undo()
			return nil, nil, err
		}
		made, undos = append(made, conn), append(undos, undoOne)
	}
	done = func(ctx context.Context) {
		for _, c := range made {
			s.connected(ctx, c)
		}
	}
	return undo, done, nil
}

// declared plans the connections pier.toml declares that the
// app does not have yet. A declared connection that exists with another
// access level is an error: changing access is an explicit disconnect.
func (s *Service) declared(ctx context.Context, app string, decls []appconfig.Connection) ([]connPlan, error) {
	existing, err := s.Store.Connections(ctx, app, "")
	if err != nil {
		return nil, err
	}
	var plans []connPlan
	for _, d := range decls {
		if c, ok := findConn(existing, d.Resource); ok && c.Status != store.ConnRevoking {
			if d.Access != "" && resources.Access(d.Access) != c.Access {
				return nil, pier.Errorf(pier.Conflict, "pier.toml asks for %s access to %s, but %s is connected with %s; run `pier disconnect %s %s` first to change it",
					d.Access, d.Resource, app, c.Access, app, d.Resource)
			}
			continue
		}
		cp, err := s.planConnection(ctx, app, d.Resource, resources.Access(d.Access), d.As, existing)
		if err != nil {
			if pier.KindOf(err) == pier.NotFound {
				return nil, pier.Errorf(pier.Invalid, "pier.toml connects %s to %s, which does not exist: create it first (`pier resources create TYPE %s`)", app, d.Resource, d.Resource)
			}
			return nil, fmt.Errorf("pier.toml connection to %s: %w", d.Resource, err)
		}
		plans = append(plans, cp)
		// Later declarations must not reuse this one's name.
		existing = append(existing, store.ConnectionRow{Connection: resources.Connection{Target: d.Resource, As: cp.as, Access: cp.access}})
	}
	return plans, nil
}

// Forget revokes every connection of app and removes the call
// connections to it, for an app being destroyed.
func (s *Service) Forget(ctx context.Context, app string) {
	s.revokeAll(ctx, app)
	s.removeCallers(ctx, app)
}

// revokeAll revokes every connection of app, for an app being destroyed.
// A connection whose resource cannot be reached now stays marked and is
// revoked by the maintenance loop later.
func (s *Service) revokeAll(ctx context.Context, app string) {
	conns, err := s.Store.Connections(ctx, app, "")
	if err != nil {
		s.Log.Error("revoke connections", "app", app, "err", err)
		return
	}
	for _, c := range conns {
		s.Store.SetConnectionStatus(ctx, c.App, c.Target, store.ConnRevoking)
		if err := s.finishRevoke(ctx, c); err != nil {
			s.Log.Warn("revoke connection; will retry", "app", app, "resource", c.Target, "err", err)
			continue
		}
		if c.Kind == "app" {
			s.event(ctx, c.Target, "disconnect", "%s was destroyed; it no longer calls", app)
			continue
		}
		s.resourceEvent(ctx, c.Target, "disconnect", "%s was destroyed; its credentials were revoked", app)
	}
}
