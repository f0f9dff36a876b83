package infra

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// GrantTimeout bounds creating or revoking one connection's credentials.
const GrantTimeout = time.Minute

// ConnectionDetail is a connection with its variables, and their values
// when revealed.
type ConnectionDetail struct {
	resources.Connection
	Values map[string]string `json:"values,omitempty"`
}

func connScope(app string) string { return "connection/" + app }

// creds opens a stored connection's credentials.
func (s *Service) creds(c store.ConnectionRow) (resources.Credentials, error) {
	var cr resources.Credentials
	plain, err := s.Keys.Open(connScope(c.App), c.Target, c.KeyID, c.Sealed)
	if err != nil {
		return nil, fmt.Errorf("open credentials of %s -> %s: %w", c.App, c.Target, err)
	}
	return cr, json.Unmarshal([]byte(plain), &cr)
}

// connPlan is a checked request for a connection, ready to grant.
type connPlan struct {
	r      store.ResourceRow
	d      resources.Driver
	callee string // for a call connection to an app, instead of r and d
	access resources.Access
	as     string
}

// planConnection checks a connection of app to target against the
// resource and the app's existing connections, changing nothing.
func (s *Service) planConnection(ctx context.Context, app, target string, access resources.Access, as string, existing []store.ConnectionRow) (connPlan, error) {
	r, err := s.Store.Resource(ctx, target)
	if err != nil {
		if _, aerr := s.Store.App(ctx, target); aerr == nil {
			return s.planCall(app, target, access, as, existing)
		}
		return connPlan{}, err
	}
	if r.Status != resources.StatusReady {
		return connPlan{}, pier.Errorf(pier.Conflict, "resource %s is %s; try again when it is ready", target, r.Status)
	}
	access, err = s.Types.AccessOf(r.Type, access)
	if err != nil {
		return connPlan{}, err
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
	d, err := s.Types.Driver(r.Type)
	if err != nil {
		return connPlan{}, err
	}
	return connPlan{r: r, d: d, access: access, as: as}, nil
}

// checkExisting refuses a second connection to target, or one whose name
// (and so its variables) another connection of app already has.
func checkExisting(app, target, as string, existing []store.ConnectionRow) error {
	for _, c := range existing {
		if c.Target == target {
			return pier.Errorf(pier.Conflict, "%s is already connected to %s (access %s); disconnect first to change it", app, target, c.Access)
		}
		if resources.EnvPrefix(c.As) == resources.EnvPrefix(as) {
			return pier.Errorf(pier.Conflict, "%s already has a connection named %s (to %s); pick another name with --as", app, as, c.Target)
		}
	}
	return nil
}

// grantConnection creates the credentials of a planned connection and
// stores them encrypted. undo revokes and forgets them.
func (s *Service) grantConnection(ctx context.Context, app string, cp connPlan, out io.Writer) (resources.Connection, func(), error) {
	if cp.callee != "" {
		return s.grantCall(ctx, app, cp, out)
	}
	inst, err := s.instance(cp.r)
	if err != nil {
		return resources.Connection{}, nil, err
	}
	target := cp.r.Name
	fmt.Fprintf(out, "==> Granting %s %s access to %s\n", app, cp.access, target)
	g := resources.Grant{App: app, Access: cp.access}
	gctx, cancel := context.WithTimeout(ctx, GrantTimeout)
	cr, err := cp.d.Grant(gctx, inst, g)
	cancel()
	if err != nil {
		return resources.Connection{}, nil, &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("could not grant %s access to %s", app, target), Err: err}
	}
	keyID, sealed, err := s.sealJSON(connScope(app), target, cr)
	if err != nil {
		s.revoke(cp.d, inst, g, cr)
		return resources.Connection{}, nil, err
	}
	row := store.ConnectionRow{Connection: resources.Connection{App: app, Target: target, Kind: "resource", Type: cp.r.Type, Access: cp.access, As: cp.as,
		CreatedAt: time.Now().UTC()}, Status: store.ConnActive, KeyID: keyID, Sealed: sealed}
	if err := s.Store.PutConnection(ctx, row); err != nil {
		s.revoke(cp.d, inst, g, cr)
		return resources.Connection{}, nil, err
	}
	row.Env = resources.EnvNames([]resources.Bound{{As: cp.as, Type: cp.d.Info(), Creds: cr}})
	// Undo keeps the row, marked, until the revoke succeeds: a failed
	// revoke is retried by the maintenance loop, never forgotten.
	undo := func() {
		ctx := context.Background()
		s.Store.SetConnectionStatus(ctx, app, target, store.ConnRevoking)
		if err := s.revoke(cp.d, inst, g, cr); err == nil {
			s.Store.DeleteConnection(ctx, app, target)
		}
	}
	return row.Connection, undo, nil
}

// connected records the events of a new connection.
func (s *Service) connected(ctx context.Context, c resources.Connection) {
	if c.Kind == "app" {
		s.event(ctx, c.App, "connect", "may call %s (as %s)", c.Target, c.As)
		s.event(ctx, c.Target, "connect", "%s may call it", c.App)
		return
	}
	s.event(ctx, c.App, "connect", "connected to %s %s with %s access as %s", c.Type, c.Target, c.Access, c.As)
	s.resourceEvent(ctx, c.Target, "connect", "%s connected with %s access", c.App, c.Access)
}

// Connect connects app to a resource with the given access ("" for the
// type's default) under the name as ("" for the resource's name): it
// creates credentials with exactly that access, stores them encrypted and
// rolls the app so its machines get them. If the roll fails, the
// credentials are revoked and nothing changes.
func (s *Service) Connect(ctx context.Context, app, target string, access resources.Access, as string, out io.Writer) (resources.Connection, error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return resources.Connection{}, err
	}
	unlock, err := s.Busy.Lock(ctx, app, "a connect")
	if err != nil {
		return resources.Connection{}, err
	}
	defer unlock()
	existing, err := s.Store.Connections(ctx, app, "")
	if err != nil {
		return resources.Connection{}, err
	}
	cp, err := s.planConnection(ctx, app, target, access, as, existing)
	if err != nil {
		return resources.Connection{}, err
	}
	conn, undo, err := s.grantConnection(ctx, app, cp, out)
	if err != nil {
		return resources.Connection{}, err
	}
	if _, err := s.Apps.Reroll(ctx, app, fmt.Sprintf("connect %s (%s)", target, cp.access), out); err != nil {
		undo()
		return resources.Connection{}, err
	}
	s.connected(ctx, conn)
	return conn, nil
}

func findConn(cs []store.ConnectionRow, target string) (store.ConnectionRow, bool) {
	for _, c := range cs {
		if c.Target == target {
			return c, true
		}
	}
	return store.ConnectionRow{}, false
}

// revoke revokes credentials, logging a failure (the caller is already
// handling another error).
func (s *Service) revoke(d resources.Driver, inst resources.Instance, g resources.Grant, cr resources.Credentials) error {
	ctx, cancel := context.WithTimeout(context.Background(), GrantTimeout)
	defer cancel()
	err := d.Revoke(ctx, inst, g, cr)
	if err != nil {
		s.Log.Error("revoke credentials", "app", g.App, "resource", inst.Name, "err", err)
	}
	return err
}

// Disconnect removes a connection: the app is rolled without the
// credentials, then they are revoked (sessions opened with them end). The
// connection is marked first, so a crash in between still revokes them at
// the next start.
func (s *Service) Disconnect(ctx context.Context, app, target string, out io.Writer) error {
	unlock, err := s.Busy.Lock(ctx, app, "a disconnect")
	if err != nil {
		return err
	}
	defer unlock()
	c, err := s.Store.Connection(ctx, app, target)
	if err != nil {
		return err
	}
	if err := s.Store.SetConnectionStatus(ctx, app, target, store.ConnRevoking); err != nil {
		return err
	}
	if c.Kind == "app" {
		// Calls are denied from now on and the open ones cut, before the
		// roll: it may take minutes, or fail and leave the machines that
		// opened them running.
		s.Calls.Deny(app, target)
	}
	_, rollErr := s.Apps.Reroll(ctx, app, "disconnect "+target, out)
	if rollErr != nil {
		fmt.Fprintf(out, "    the roll failed (%v); revoking the credentials anyway\n", firstLine(rollErr))
	}
	if c.Kind == "app" {
		fmt.Fprintf(out, "==> %s may no longer call %s\n", app, target)
	} else {
		fmt.Fprintf(out, "==> Revoking %s's access to %s\n", app, target)
	}
	if err := s.finishRevoke(ctx, c); err != nil {
		return err
	}
	s.event(ctx, app, "disconnect", "disconnected from %s", target)
	if c.Kind == "app" {
		s.event(ctx, target, "disconnect", "%s may no longer call it", app)
		return nil
	}
	s.resourceEvent(ctx, target, "disconnect", "%s disconnected; its credentials were revoked", app)
	return nil
}

// finishRevoke revokes a connection's credentials and forgets it.
func (s *Service) finishRevoke(ctx context.Context, c store.ConnectionRow) error {
	if c.Kind == "app" {
		return s.finishCallRevoke(ctx, c)
	}
	r, err := s.Store.Resource(ctx, c.Target)
	if err != nil {
		return err
	}
	d, err := s.Types.Driver(r.Type)
	if err != nil {
		return err
	}
	inst, err := s.instance(r)
	if err != nil {
		return err
	}
	cr, err := s.creds(c)
	if err != nil {
		return err
	}
	if err := s.revoke(d, inst, resources.Grant{App: c.App, Access: c.Access}, cr); err != nil {
		return &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("could not revoke %s's access to %s; it will be retried", c.App, c.Target), Err: err}
	}
	return s.Store.DeleteRevoked(ctx, c.App, c.Target, c.KeyID, c.Sealed)
}

// Connections lists connections, filtered by app and/or target ("" = all),
// with the names of the variables each injects.
func (s *Service) Connections(ctx context.Context, app, target string) ([]resources.Connection, error) {
	details, err := s.connectionDetails(ctx, app, target, false)
	if err != nil {
		return nil, err
	}
	out := make([]resources.Connection, len(details))
	for i, d := range details {
		out[i] = d.Connection
	}
	return out, nil
}

func (s *Service) connectionDetails(ctx context.Context, app, target string, reveal bool) ([]ConnectionDetail, error) {
	if app != "" {
		if _, err := s.Store.App(ctx, app); err != nil {
			return nil, err
		}
	}
	rows, err := s.Store.Connections(ctx, app, target)
	if err != nil {
		return nil, err
	}
	perApp := map[string][]resources.Bound{}
	out := make([]ConnectionDetail, 0, len(rows))
	for _, c := range rows {
		if c.Status != store.ConnActive {
			continue
		}
		if _, ok := perApp[c.App]; !ok {
			b, err := s.bound(ctx, c.App)
			if err != nil {
				return nil, err
			}
			perApp[c.App] = b
		}
		det := ConnectionDetail{Connection: c.Connection}
		if c.Kind == "app" {
			det.Env = callEnvNames(c.As)
			if reveal {
				k, v, _ := strings.Cut(callEnv(c.As, c.Target)[0], "=")
				det.Values = map[string]string{k: v}
			}
		} else {
			det.Env, det.Values = s.connectionEnv(perApp[c.App], c.As, reveal)
		}
		out = append(out, det)
	}
	return out, nil
}

// connectionEnv is what one connection (named as) contributes to its app's
// environment, among the app's others (conventional names depend on them).
func (s *Service) connectionEnv(all []resources.Bound, as string, reveal bool) ([]string, map[string]string) {
	var mine resources.Bound
	for _, b := range all {
		if b.As == as {
			mine = b
		}
	}
	withAll := map[string]bool{}
	for _, kv := range resources.Env(all) {
		withAll[kv] = true
	}
	var names []string
	values := map[string]string{}
	for _, kv := range resources.Env([]resources.Bound{mine}) {
		if !withAll[kv] {
			continue // a conventional name the app's other connections take away
		}
		k, v, _ := strings.Cut(kv, "=")
		names = append(names, k)
		values[k] = v
	}
	if !reveal {
		values = nil
	}
	return names, values
}

// ShowConnection returns one connection; with reveal, the values of its
// variables (the credentials) too.
func (s *Service) ShowConnection(ctx context.Context, app, target string, reveal bool) (ConnectionDetail, error) {
	if _, err := s.Store.Connection(ctx, app, target); err != nil {
		return ConnectionDetail{}, err
	}
	ds, err := s.connectionDetails(ctx, app, target, reveal)
	if err != nil {
		return ConnectionDetail{}, err
	}
	if len(ds) == 0 {
		return ConnectionDetail{}, pier.Errorf(pier.NotFound, "the connection %s -> %s is being removed", app, target)
	}
	if reveal {
		s.event(ctx, app, "connection.reveal", "credentials of the connection to %s were revealed", target)
	}
	return ds[0], nil
}
