package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/graph"
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
func (p *Plane) creds(c store.ConnectionRow) (resources.Credentials, error) {
	var cr resources.Credentials
	plain, err := p.Keys.Open(connScope(c.App), c.Target, c.KeyID, c.Sealed)
	if err != nil {
		return nil, fmt.Errorf("open credentials of %s -> %s: %w", c.App, c.Target, err)
	}
	return cr, json.Unmarshal([]byte(plain), &cr)
}

// bound returns the active connections of app with their credentials.
func (p *Plane) bound(ctx context.Context, app string) ([]resources.Bound, error) {
	conns, err := p.Store.Connections(ctx, app, "")
	if err != nil {
		return nil, err
	}
	var out []resources.Bound
	for _, c := range conns {
		if c.Status != store.ConnActive || c.Kind != "resource" {
			continue
		}
		d, err := p.Resources.Driver(c.Type)
		if err != nil {
			// A connection whose resource is gone must not stop the app.
			p.Log.Error("connection to a missing resource; skipped", "app", app, "resource", c.Target)
			continue
		}
		cr, err := p.creds(c)
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
func (p *Plane) HostPorts(app string) []int {
	bound, err := p.bound(context.Background(), app)
	if err != nil {
		p.Log.Error("host ports of app", "app", app, "err", err)
		return nil
	}
	var ports []int
	for _, b := range bound {
		if b.Creds["host"] != p.ResourceNet.Host {
			continue
		}
		if n, err := strconv.Atoi(b.Creds["port"]); err == nil {
			ports = append(ports, n)
		}
	}
	return ports
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
func (p *Plane) planConnection(ctx context.Context, app, target string, access resources.Access, as string, existing []store.ConnectionRow) (connPlan, error) {
	r, err := p.Store.Resource(ctx, target)
	if err != nil {
		if _, aerr := p.Store.App(ctx, target); aerr == nil {
			return p.planCall(app, target, access, as, existing)
		}
		return connPlan{}, err
	}
	if r.Status != resources.StatusReady {
		return connPlan{}, pier.Errorf(pier.Conflict, "resource %s is %s; try again when it is ready", target, r.Status)
	}
	access, err = p.Resources.AccessOf(r.Type, access)
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
	d, err := p.Resources.Driver(r.Type)
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
func (p *Plane) grantConnection(ctx context.Context, app string, cp connPlan, out io.Writer) (resources.Connection, func(), error) {
	if cp.callee != "" {
		return p.grantCall(ctx, app, cp, out)
	}
	inst, err := p.instance(cp.r)
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
	keyID, sealed, err := p.sealJSON(connScope(app), target, cr)
	if err != nil {
		p.revoke(cp.d, inst, g, cr)
		return resources.Connection{}, nil, err
	}
	row := store.ConnectionRow{Connection: resources.Connection{App: app, Target: target, Kind: "resource", Type: cp.r.Type, Access: cp.access, As: cp.as,
		CreatedAt: time.Now().UTC()}, Status: store.ConnActive, KeyID: keyID, Sealed: sealed}
	if err := p.Store.PutConnection(ctx, row); err != nil {
		p.revoke(cp.d, inst, g, cr)
		return resources.Connection{}, nil, err
	}
	row.Env = resources.EnvNames([]resources.Bound{{As: cp.as, Type: cp.d.Info(), Creds: cr}})
	// Undo keeps the row, marked, until the revoke succeeds: a failed
	// revoke is retried by the maintenance loop, never forgotten.
	undo := func() {
		ctx := context.Background()
		p.Store.SetConnectionStatus(ctx, app, target, store.ConnRevoking)
		if err := p.revoke(cp.d, inst, g, cr); err == nil {
			p.Store.DeleteConnection(ctx, app, target)
		}
	}
	return row.Connection, undo, nil
}

// connected records the events of a new connection.
func (p *Plane) connected(ctx context.Context, c resources.Connection) {
	if c.Kind == "app" {
		p.event(ctx, c.App, "connect", "may call %s (as %s)", c.Target, c.As)
		p.event(ctx, c.Target, "connect", "%s may call it", c.App)
		return
	}
	p.event(ctx, c.App, "connect", "connected to %s %s with %s access as %s", c.Type, c.Target, c.Access, c.As)
	p.resourceEvent(ctx, c.Target, "connect", "%s connected with %s access", c.App, c.Access)
}

// Connect connects app to a resource with the given access ("" for the
// type's default) under the name as ("" for the resource's name): it
// creates credentials with exactly that access, stores them encrypted and
// rolls the app so its machines get them. If the roll fails, the
// credentials are revoked and nothing changes.
func (p *Plane) Connect(ctx context.Context, app, target string, access resources.Access, as string, out io.Writer) (resources.Connection, error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return resources.Connection{}, err
	}
	unlock, err := p.lock(app, "a connect")
	if err != nil {
		return resources.Connection{}, err
	}
	defer unlock()
	existing, err := p.Store.Connections(ctx, app, "")
	if err != nil {
		return resources.Connection{}, err
	}
	cp, err := p.planConnection(ctx, app, target, access, as, existing)
	if err != nil {
		return resources.Connection{}, err
	}
	conn, undo, err := p.grantConnection(ctx, app, cp, out)
	if err != nil {
		return resources.Connection{}, err
	}
	if _, err := p.reroll(ctx, app, fmt.Sprintf("connect %s (%s)", target, cp.access), out); err != nil {
		undo()
		return resources.Connection{}, err
	}
	p.connected(ctx, conn)
	return conn, nil
}

// declaredConnections plans the connections pier.toml declares that the
// app does not have yet. A declared connection that exists with another
// access level is an error: changing access is an explicit disconnect.
func (p *Plane) declaredConnections(ctx context.Context, app string, decls []appconfig.Connection) ([]connPlan, error) {
	existing, err := p.Store.Connections(ctx, app, "")
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
		cp, err := p.planConnection(ctx, app, d.Resource, resources.Access(d.Access), d.As, existing)
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
func (p *Plane) revoke(d resources.Driver, inst resources.Instance, g resources.Grant, cr resources.Credentials) error {
	ctx, cancel := context.WithTimeout(context.Background(), GrantTimeout)
	defer cancel()
	err := d.Revoke(ctx, inst, g, cr)
	if err != nil {
		p.Log.Error("revoke credentials", "app", g.App, "resource", inst.Name, "err", err)
	}
	return err
}

// reroll rolls app's current release again so its machines get a changed
// environment; nothing to do before its first deploy. The app's lock must
// be held.
func (p *Plane) reroll(ctx context.Context, app, desc string, out io.Writer) (*pier.Release, error) {
	a, err := p.Store.App(ctx, app)
	if err != nil {
		return nil, err
	}
	if a.Release == 0 {
		fmt.Fprintf(out, "==> %s has no release yet; this applies from its first deploy\n", app)
		return nil, nil
	}
	cur, err := p.Store.Release(ctx, app, a.Release)
	if err != nil {
		return nil, err
	}
	rel := cur
	rel.Status, rel.Description, rel.CreatedAt = pier.ReleasePending, desc, time.Now().UTC()
	r, err := p.rollout(ctx, rel, out)
	return &r, err
}

// Disconnect removes a connection: the app is rolled without the
// credentials, then they are revoked (sessions opened with them end). The
// connection is marked first, so a crash in between still revokes them at
// the next start.
func (p *Plane) Disconnect(ctx context.Context, app, target string, out io.Writer) error {
	unlock, err := p.lock(app, "a disconnect")
	if err != nil {
		return err
	}
	defer unlock()
	c, err := p.Store.Connection(ctx, app, target)
	if err != nil {
		return err
	}
	if err := p.Store.SetConnectionStatus(ctx, app, target, store.ConnRevoking); err != nil {
		return err
	}
	if c.Kind == "app" {
		// Calls are denied from now on and the open ones cut, before the
		// roll: it may take minutes, or fail and leave the machines that
		// opened them running.
		p.denyCalls(app, target)
	}
	_, rollErr := p.reroll(ctx, app, "disconnect "+target, out)
	if rollErr != nil {
		fmt.Fprintf(out, "    the roll failed (%v); revoking the credentials anyway\n", firstLine(rollErr))
	}
	if c.Kind == "app" {
		fmt.Fprintf(out, "==> %s may no longer call %s\n", app, target)
	} else {
		fmt.Fprintf(out, "==> Revoking %s's access to %s\n", app, target)
	}
	if err := p.finishRevoke(ctx, c); err != nil {
		return err
	}
	p.event(ctx, app, "disconnect", "disconnected from %s", target)
	if c.Kind == "app" {
		p.event(ctx, target, "disconnect", "%s may no longer call it", app)
		return nil
	}
	p.resourceEvent(ctx, target, "disconnect", "%s disconnected; its credentials were revoked", app)
	return nil
}

// finishRevoke revokes a connection's credentials and forgets it.
func (p *Plane) finishRevoke(ctx context.Context, c store.ConnectionRow) error {
	if c.Kind == "app" {
		return p.finishCallRevoke(ctx, c)
	}
	r, err := p.Store.Resource(ctx, c.Target)
	if err != nil {
		return err
	}
	d, err := p.Resources.Driver(r.Type)
	if err != nil {
		return err
	}
	inst, err := p.instance(r)
	if err != nil {
		return err
	}
	cr, err := p.creds(c)
	if err != nil {
		return err
	}
	if err := p.revoke(d, inst, resources.Grant{App: c.App, Access: c.Access}, cr); err != nil {
		return &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("could not revoke %s's access to %s; it will be retried", c.App, c.Target), Err: err}
	}
	return p.Store.DeleteRevoked(ctx, c.App, c.Target, c.KeyID, c.Sealed)
}

// Connections lists connections, filtered by app and/or target ("" = all),
// with the names of the variables each injects.
func (p *Plane) Connections(ctx context.Context, app, target string) ([]resources.Connection, error) {
	details, err := p.connectionDetails(ctx, app, target, false)
	if err != nil {
		return nil, err
	}
	out := make([]resources.Connection, len(details))
	for i, d := range details {
		out[i] = d.Connection
	}
	return out, nil
}

func (p *Plane) connectionDetails(ctx context.Context, app, target string, reveal bool) ([]ConnectionDetail, error) {
	if app != "" {
		if _, err := p.Store.App(ctx, app); err != nil {
			return nil, err
		}
	}
	rows, err := p.Store.Connections(ctx, app, target)
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
			b, err := p.bound(ctx, c.App)
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
			det.Env, det.Values = p.connectionEnv(perApp[c.App], c.As, reveal)
		}
		out = append(out, det)
	}
	return out, nil
}

// connectionEnv is what one connection (named as) contributes to its app's
// environment, among the app's others (conventional names depend on them).
func (p *Plane) connectionEnv(all []resources.Bound, as string, reveal bool) ([]string, map[string]string) {
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
func (p *Plane) ShowConnection(ctx context.Context, app, target string, reveal bool) (ConnectionDetail, error) {
	if _, err := p.Store.Connection(ctx, app, target); err != nil {
		return ConnectionDetail{}, err
	}
	ds, err := p.connectionDetails(ctx, app, target, reveal)
	if err != nil {
		return ConnectionDetail{}, err
	}
	if len(ds) == 0 {
		return ConnectionDetail{}, pier.Errorf(pier.NotFound, "the connection %s -> %s is being removed", app, target)
	}
	if reveal {
		p.event(ctx, app, "connection.reveal", "credentials of the connection to %s were revealed", target)
	}
	return ds[0], nil
}

// revokeAll revokes every connection of app, for an app being destroyed.
// A connection whose resource cannot be reached now stays marked and is
// revoked by the maintenance loop later.
func (p *Plane) revokeAll(ctx context.Context, app string) {
	conns, err := p.Store.Connections(ctx, app, "")
	if err != nil {
		p.Log.Error("revoke connections", "app", app, "err", err)
		return
	}
	for _, c := range conns {
		p.Store.SetConnectionStatus(ctx, c.App, c.Target, store.ConnRevoking)
		if err := p.finishRevoke(ctx, c); err != nil {
			p.Log.Warn("revoke connection; will retry", "app", app, "resource", c.Target, "err", err)
			continue
		}
		if c.Kind == "app" {
			p.event(ctx, c.Target, "disconnect", "%s was destroyed; it no longer calls", app)
			continue
		}
		p.resourceEvent(ctx, c.Target, "disconnect", "%s was destroyed; its credentials were revoked", app)
	}
}

// Graph returns every app, resource and connection, joined to the traffic
// the mesh observed: each edge is declared (no traffic), used, denied (no
// connection, every attempt refused) or undeclared (traffic without a
// connection, such as the edge proxy's, which gets a node of its own).
func (p *Plane) Graph(ctx context.Context) (graph.Graph, error) {
	var g graph.Graph
	apps, err := p.Store.Apps(ctx)
	if err != nil {
		return g, err
	}
	for _, a := range apps {
		status := "created"
		if a.Release > 0 {
			status = "deployed"
		}
		g.Nodes = append(g.Nodes, graph.Node{ID: a.Name, Kind: "app", Type: "app", Status: status, Release: a.Release, Machines: p.Supervisor.Serving(a.Name)})
	}
	rows, err := p.Store.Resources(ctx)
	if err != nil {
		return g, err
	}
	for _, r := range rows {
		g.Nodes = append(g.Nodes, graph.Node{ID: r.Name, Kind: "resource", Type: r.Type, Status: string(r.Status)})
	}
	conns, err := p.Store.Connections(ctx, "", "")
	if err != nil {
		return g, err
	}
	for _, c := range conns {
		if c.Status == store.ConnActive {
			g.Edges = append(g.Edges, graph.Edge{From: c.App, To: c.Target, Access: string(c.Access), As: c.As})
		}
	}
	p.observe(&g) // also sorts nodes and edges
	if g.Nodes == nil {
		g.Nodes = []graph.Node{}
	}
	if g.Edges == nil {
		g.Edges = []graph.Edge{}
	}
	return g, nil
}
