package control

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// Mesh is the part of the service mesh the control plane steers: apps'
// service addresses and cutting the open calls of a call connection that
// goes.
type Mesh interface {
	SetService(app string, vip netip.Addr)
	RemoveService(app string)
	Revoke(src, dst string)
	SetRoutes(app string, routes []pier.Route)
}

// AccessCall is the access level of an app-to-app connection.
const AccessCall resources.Access = "call"

// policy is the set of call connections, read on every mesh request.
type policy struct {
	mu    sync.RWMutex
	calls map[[2]string]bool
}

func (p *policy) set(src, dst string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.calls == nil {
		p.calls = map[[2]string]bool{}
	}
	if ok {
		p.calls[[2]string{src, dst}] = true
	} else {
		delete(p.calls, [2]string{src, dst})
	}
}

// denyCalls stops src calling dst: new calls are refused, and the open
// ones (WebSockets, tunnels, answers still streaming) are cut now, whatever
// then becomes of src's machines (a roll that fails leaves them running).
// The policy first: the mesh's cut relies on it (see mesh.Mesh.Revoke).
func (p *Plane) denyCalls(src, dst string) {
	p.policy.set(src, dst, false)
	if p.Mesh != nil {
		p.Mesh.Revoke(src, dst)
	}
}

// Allowed says whether src may call dst: a `call` connection src -> dst
// exists and is not being removed. The mesh asks it on every request.
func (p *Plane) Allowed(src, dst string) bool {
	p.policy.mu.RLock()
	defer p.policy.mu.RUnlock()
	return p.policy.calls[[2]string{src, dst}]
}

// startMesh gives every app its service address and loads the policy.
func (p *Plane) startMesh(ctx context.Context) error {
	if p.Mesh == nil {
		return nil
	}
	apps, err := p.Store.Apps(ctx)
	if err != nil {
		return err
	}
	for _, a := range apps {
		if err := p.addService(ctx, a.Name); err != nil {
			return err
		}
	}
	conns, err := p.Store.Connections(ctx, "", "")
	if err != nil {
		return err
	}
	for _, c := range conns {
		if c.Kind == "app" && c.Status == store.ConnActive {
			p.policy.set(c.App, c.Target, true)
		}
	}
	return nil
}

// addService gives app its service address (keeping the one it has).
func (p *Plane) addService(ctx context.Context, app string) error {
	if p.Mesh == nil {
		return nil
	}
	n, err := p.Store.EnsureServiceNumber(ctx, app)
	if err != nil {
		return err
	}
	vip, err := nthAddr(p.ServiceSubnet, n)
	if err != nil {
		return err
	}
	p.Mesh.SetService(app, vip)
	return nil
}

// nthAddr is the n-th address of prefix (n from 1).
func nthAddr(prefix netip.Prefix, n int) (netip.Addr, error) {
	size := uint64(1) << (32 - prefix.Bits())
	if n < 1 || uint64(n) >= size-1 {
		return netip.Addr{}, pier.Errorf(pier.Conflict, "the service subnet %s is full (%d apps): restart the server with a larger --service-subnet", prefix, n-1)
	}
	b := prefix.Masked().Addr().As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(n))
	return netip.AddrFrom4(b), nil
}

// planCall checks a call connection app -> target (an app).
func (p *Plane) planCall(app, target string, access resources.Access, as string, existing []store.ConnectionRow) (connPlan, error) {
	if p.Mesh == nil {
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
func (p *Plane) grantCall(ctx context.Context, app string, cp connPlan, out io.Writer) (resources.Connection, func(), error) {
	fmt.Fprintf(out, "==> Allowing %s to call %s (mutual TLS through the mesh)\n", app, cp.callee)
	row := store.ConnectionRow{Connection: resources.Connection{App: app, Target: cp.callee, Kind: "app", Type: "app", Access: AccessCall, As: cp.as,
		CreatedAt: time.Now().UTC()}, Status: store.ConnActive}
	if err := p.Store.PutConnection(ctx, row); err != nil {
		return resources.Connection{}, nil, err
	}
	p.policy.set(app, cp.callee, true)
	row.Env = callEnvNames(cp.as)
	undo := func() {
		p.denyCalls(app, cp.callee)
		p.Store.DeleteConnection(context.Background(), app, cp.callee)
	}
	return row.Connection, undo, nil
}

// callEnv is what a call connection named as to target injects.
func callEnv(as, target string) []string {
	return []string{resources.EnvPrefix(as) + "_URL=http://" + target + ".internal"}
}

func callEnvNames(as string) []string { return []string{resources.EnvPrefix(as) + "_URL"} }

// callsEnv is the environment of app's active call connections.
func (p *Plane) callsEnv(ctx context.Context, app string) ([]string, error) {
	conns, err := p.Store.Connections(ctx, app, "")
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
func (p *Plane) finishCallRevoke(ctx context.Context, c store.ConnectionRow) error {
	p.denyCalls(c.App, c.Target)
	return p.Store.DeleteRevoked(ctx, c.App, c.Target, c.KeyID, c.Sealed)
}

// removeCallers removes the call connections to app, which is being
// destroyed: its callers' requests are denied from now on.
func (p *Plane) removeCallers(ctx context.Context, app string) {
	conns, err := p.Store.Connections(ctx, "", app)
	if err != nil {
		p.Log.Error("remove callers", "app", app, "err", err)
		return
	}
	for _, c := range conns {
		if c.Kind != "app" {
			continue
		}
		if err := p.finishCallRevoke(ctx, c); err != nil {
			p.Log.Error("remove caller", "app", c.App, "callee", app, "err", err)
			continue
		}
		p.event(ctx, c.App, "disconnect", "%s was destroyed; the connection to it was removed", app)
	}
	if p.Mesh != nil {
		p.Mesh.RemoveService(app)
	}
}

// Identity is an app's mesh identity and the certificate its machines'
// calls carry (all machines of an app share it: the mesh proxy holds it
// for them, and no key enters a machine).
type Identity struct {
	App         string            `json:"app"`
	SPIFFEID    string            `json:"spiffe_id"`
	Certificate identity.CertInfo `json:"certificate"`
	TrustDomain string            `json:"trust_domain"`
	Machines    []IdentityMachine `json:"machines"`
	Mesh        bool              `json:"mesh"` // false: this server's runtime has no mesh data plane
	Authority   identity.Status   `json:"authority"`
}

// IdentityMachine is one machine that carries an identity.
type IdentityMachine struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

// MeshIdentity returns app's identity, issuing its certificate if none is
// current.
func (p *Plane) MeshIdentity(ctx context.Context, app string) (Identity, error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return Identity{}, err
	}
	id := p.CA.AppID(app)
	if _, err := p.CA.Certificate(id); err != nil {
		return Identity{}, fmt.Errorf("certificate of %s: %w", app, err)
	}
	info, _ := p.CA.Issued(id)
	out := Identity{App: app, SPIFFEID: id.String(), Certificate: info, TrustDomain: p.CA.TrustDomain().String(),
		Mesh: p.Mesh != nil, Authority: p.CA.Status(), Machines: []IdentityMachine{}}
	for _, m := range p.Supervisor.Machines(app) {
		out.Machines = append(out.Machines, IdentityMachine{ID: m.ID, State: m.State})
	}
	return out, nil
}

// MeshStatus describes the mesh's certificate authority.
func (p *Plane) MeshStatus() identity.Status { return p.CA.Status() }

// RotateMesh rotates the issuer, or the trust anchor (which also makes a
// new issuer) when anchor is set. Calls go on without a failure: new
// handshakes use new certificates, and the previous anchor stays trusted
// until every certificate under it has expired.
func (p *Plane) RotateMesh(ctx context.Context, anchor bool) (identity.Status, error) {
	var err error
	what := "issuer"
	if anchor {
		what = "trust anchor"
		err = p.CA.RotateAnchor(ctx)
	} else {
		err = p.CA.RotateIssuer(ctx)
	}
	if err != nil {
		return identity.Status{}, fmt.Errorf("rotate the mesh %s: %w", what, err)
	}
	st := p.CA.Status()
	p.event(ctx, "mesh", "mesh.rotate", "rotated the %s; issuer is now %s", what, st.Issuer.Serial)
	return st, nil
}

// MaxMetricsWindow bounds the windows of metrics queries.
const MaxMetricsWindow = 24 * time.Hour

func checkWindow(w time.Duration) error {
	if w < time.Second || w > MaxMetricsWindow {
		return pier.Errorf(pier.Invalid, "window %s: want between 1s and 24h", w)
	}
	return nil
}

// Stats are the golden metrics per app (by callee, every caller merged,
// the edge proxy included), or per edge (caller → callee) with edges.
func (p *Plane) Stats(window time.Duration, edges bool) ([]metrics.Stat, error) {
	if err := checkWindow(window); err != nil {
		return nil, err
	}
	if edges {
		return p.Metrics.Edges(window), nil
	}
	return p.Metrics.Apps(window), nil
}

// AppStats are app's metrics per machine, and its busiest paths.
func (p *Plane) AppStats(ctx context.Context, app string, window time.Duration, limit int) (machines, paths []metrics.Stat, err error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return nil, nil, err
	}
	if err := checkWindow(window); err != nil {
		return nil, nil, err
	}
	if limit <= 0 || limit > 100 {
		limit = 20
	}
	return p.Metrics.Machines(app, window), p.Metrics.Paths(app, window, limit), nil
}

// History is app's metrics over time (src "" = every caller).
func (p *Plane) History(ctx context.Context, app, src string, window, step time.Duration) ([]metrics.Point, error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return nil, err
	}
	if err := checkWindow(window); err != nil {
		return nil, err
	}
	if step < time.Second || step > window {
		return nil, pier.Errorf(pier.Invalid, "step %s: want between 1s and the window (%s)", step, window)
	}
	return p.Metrics.History(app, src, window, step), nil
}
