package infra

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// Call connections are connections of an app to another app: no
// credentials, a rule of the mesh's call policy instead.

// AccessCall is the access level of an app-to-app connection.
const AccessCall resources.Access = "call"

// planCall checks a call connection app -> target (an app).
func (s *Service) planCall(app, target string, access resources.Access, as string, existing []store.ConnectionRow) (connPlan, error) {
	if !s.Calls.Enabled() {
		return connPlan{}, pier.Errorf(pier.Invalid, "%s is an app: app-to-app connections go through the mesh, which needs the runc runtime (this server runs apps as host processes; see `pier server --help`)", target)
	}
	if target == app {
		return connPlan{}, pier.Errorf(pier.Invalid, "an app does not need a connection to call itself")
	}
	if access != "" && access != AccessCall {
		return connPlan{}, pier.Errorf(pier.Invalid, "access %q: a connection to an app has access %q (it may call the app)", access, AccessCall)
	}
	if as == "" {
		as = target
	}
	if err := resources.ValidateAs(as); err != nil {
		return connPlan{}, err
	}
	if err := checkExisting(app, target, as, existing); err != nil {
		return connPlan{}, err
	}
	return connPlan{callee: target, access: AccessCall, as: as}, nil
}

// grantCall records a call connection and allows the calls at once.
func (s *Service) grantCall(ctx context.Context, app string, cp connPlan, out io.Writer) (resources.Connection, func(), error) {
	fmt.Fprintf(out, "==> Allowing %s to call %s (mutual TLS through the mesh)\n", app, cp.callee)
	row := store.ConnectionRow{Connection: resources.Connection{App: app, Target: cp.callee, Kind: "app", Type: "app", Access: AccessCall, As: cp.as,
		CreatedAt: time.Now().UTC()}, Status: store.ConnActive}
	if err := s.Store.PutConnection(ctx, row); err != nil {
		return resources.Connection{}, nil, err
	}
	s.Calls.Allow(app, cp.callee)
	row.Env = callEnvNames(cp.as)
	undo := func() {
		s.Calls.Deny(app, cp.callee)
		s.Store.DeleteConnection(context.Background(), app, cp.callee)
	}
	return row.Connection, undo, nil
}

// callEnv is what a call connection named as to target injects.
func callEnv(as, target string) []string {
	return []string{resources.EnvPrefix(as) + "_URL=http://" + target + ".internal"}
}

func callEnvNames(as string) []string { return []string{resources.EnvPrefix(as) + "_URL"} }

// callsEnv is the environment of app's active call connections.
func (s *Service) callsEnv(ctx context.Context, app string) ([]string, error) {
	conns, err := s.Store.Connections(ctx, app, "")
	if err != nil {
		return nil, err
	}
	var env []string
	for _, c := range conns {
		if c.Kind == "app" && c.Status == store.ConnActive {
			env = append(env, callEnv(c.As, c.Target)...)
		}
	}
	return env, nil
}

// finishCallRevoke forgets a call connection being removed.
func (s *Service) finishCallRevoke(ctx context.Context, c store.ConnectionRow) error {
	s.Calls.Deny(c.App, c.Target)
	return s.Store.DeleteRevoked(ctx, c.App, c.Target, c.KeyID, c.Sealed)
}

// removeCallers removes the call connections to app, which is being
// destroyed: its callers' requests are denied from now on.
func (s *Service) removeCallers(ctx context.Context, app string) {
	conns, err := s.Store.Connections(ctx, "", app)
	if err != nil {
		s.Log.Error("remove callers", "app", app, "err", err)
		return
	}
	for _, c := range conns {
		if c.Kind != "app" {
			continue
		}
		// Marked first: DeleteRevoked removes only rows being revoked, and
		// a row left behind would let a later app of the same name be
		// called by these callers (a crash here is finished at start).
		if err := s.Store.SetConnectionStatus(ctx, c.App, c.Target, store.ConnRevoking); err != nil {
			s.Log.Error("remove caller", "app", c.App, "callee", app, "err", err)
			continue
		}
		if err := s.finishCallRevoke(ctx, c); err != nil {
			s.Log.Error("remove caller", "app", c.App, "callee", app, "err", err)
			continue
		}
		s.event(ctx, c.App, "disconnect", "%s was destroyed; the connection to it was removed", app)
	}
	s.Calls.RemoveService(app)
}
