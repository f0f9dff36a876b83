// Package control is pier's control plane: the operations behind every API
// call and the server's start. They live in three domain services, each on
// interfaces of what it uses: apps (internal/control/apps: apps, deploys,
// releases, rollback, scale, secrets, images), infra
// (internal/control/infra: resources, backups, connections, and finishing
// what a crash left half done) and mesh (internal/control/mesh: call
// policy, service addresses, identities, metrics, the graph). Plane wires
// them to the server's parts and to each other, and is their one face.
package control

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/pier-dev/pier/internal/appspec"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/control/apps"
	"github.com/pier-dev/pier/internal/control/busy"
	"github.com/pier-dev/pier/internal/control/infra"
	"github.com/pier-dev/pier/internal/control/mesh"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/rollout"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
)

// The services' types the API and the server name through this package.
type (
	AppStatus        = apps.Status
	Upload           = apps.Upload
	ResourceNet      = infra.ResourceNet
	ResourceStatus   = infra.ResourceDetail
	ConnectionDetail = infra.ConnectionDetail
	Identity         = mesh.Identity
	IdentityMachine  = mesh.IdentityMachine
)

// Proxy is the part of the edge proxy the control plane manages directly.
type Proxy interface {
	AddApp(app string)
	RemoveApp(app string)
}

// Cleaner removes what a previous run of the server left running.
type Cleaner interface {
	Cleanup(ctx context.Context, machineIDs []string) (int, error)
}

// Mesh is the part of the service mesh the control plane steers: apps'
// service addresses and routes, and cutting the open calls of a call
// connection that goes.
type Mesh interface {
	SetService(app string, vip netip.Addr)
	RemoveService(app string)
	Revoke(src, dst string)
	SetRoutes(app string, routes []pier.Route)
}

// Plane is the control plane. Each call wires the services from its
// fields as they are then, so they may be set after its first use (the
// server sets Mesh, Images and AppDestroyed once MoveResourceDirs ran),
// though not while calls run.
type Plane struct {
	Store   *store.Store
	Builder *build.Builder
	Keys    *secrets.Keyring
	// Rollout deploys and scales apps on the machine manager; Specs turns
	// releases into their machines' runtime specs (ReleaseSpec).
	Rollout *rollout.Rollout
	Specs   *appspec.Builder
	Proxy   Proxy
	Logs    *logs.Hub
	Log     *slog.Logger
	// TempDir is where uploads are unpacked before they become builds.
	TempDir string
	// Resources are the resource types; ResourceDir holds their data and
	// BackupDir their backups; ResourceNet is where their servers listen.
	Resources   *resources.Registry
	ResourceDir string
	BackupDir   string
	ResourceNet ResourceNet
	// AppDestroyed, if set, is told that an app is gone, for state kept
	// outside the store (the edge's custom domains).
	AppDestroyed func(app string)

	// Mesh, when set, carries app-to-app calls; apps get service
	// addresses from ServiceSubnet. Without it, app-to-app connections
	// are refused.
	Mesh          Mesh
	ServiceSubnet netip.Prefix
	// CA issues the mesh identities; Metrics holds the golden metrics.
	CA      *identity.Authority
	Metrics *metrics.Registry
	// Images holds the releases' OCI images: release vN of app web is
	// web:vN, the current one also web:latest. Nil in tests that build
	// no images.
	Images *imagestore.Store
	// KeepReleases is how many of an app's newest releases keep their
	// build and image (0: apps.DefaultKeepReleases); the current one
	// always does. Older builds and images are collected after each deploy.
	KeepReleases int

	// What outlives a call is the plane's: the operations under way and
	// the call policy.
	busy   busy.Table
	policy mesh.Policy
}

// services are the domain services, wired to each other.
type services struct {
	apps  *apps.Service
	infra *infra.Service
	mesh  *mesh.Service
}

// wire makes the services from the plane's fields as they are now. An
// optional part the plane lacks stays a nil interface: a nil pointer in
// one would not compare nil.
func (p *Plane) wire() services {
	m := &mesh.Service{Store: p.Store, Subnet: p.ServiceSubnet, Policy: &p.policy, Log: p.Log}
	r := &infra.Service{Store: p.Store, Types: p.Resources, Keys: p.Keys, Busy: &p.busy, Calls: m, Log: p.Log,
		ResourceDir: p.ResourceDir, BackupDir: p.BackupDir, Net: p.ResourceNet}
	a := &apps.Service{Store: p.Store, Keys: p.Keys, Specs: p.Specs, Proxy: p.Proxy, Logs: p.Logs,
		Conns: r, Mesh: m, Busy: &p.busy, Log: p.Log,
		AppDestroyed: p.AppDestroyed, TempDir: p.TempDir, KeepReleases: p.KeepReleases}
	r.Apps = a
	if p.Builder != nil {
		a.Builder = p.Builder
		if im := p.Builder.Images; im != nil {
			a.Dockerfiles = true
			if im.Unpack != nil {
				a.Unpacked = im.Unpack
			}
		}
	}
	if p.Rollout != nil {
		a.Rollout = p.Rollout
		a.Fleet, m.Fleet = fleet{p.Rollout}, fleet{p.Rollout}
	}
	if p.Mesh != nil {
		m.Data, a.Routes = p.Mesh, p.Mesh
	}
	if p.CA != nil {
		m.CA = p.CA
	}
	if p.Metrics != nil {
		m.Metrics, a.Metrics = p.Metrics, p.Metrics
	}
	if p.Images != nil {
		a.Images = p.Images
	}
	return services{apps: a, infra: r, mesh: m}
}

// fleet is the machine manager as the services see it, through rollout.
type fleet struct{ r *rollout.Rollout }

// Machines lists an app's machines, oldest first.
func (f fleet) Machines(app string) []pier.Machine {
	ms := f.r.Fleet.AppMachines(app)
	out := make([]pier.Machine, len(ms))
	for i, m := range ms {
		out[i] = m.Machine
	}
	return out
}

// Serving counts an app's machines in (or coming into) traffic.
func (f fleet) Serving(app string) int { return f.r.Serving(app) }

// Restore brings the platform back after a start, once the machine
// manager has restored its machines: it kills what a server older than
// the machine manager left running, removes unfinished uploads and
// builds, and gives apps their mesh addresses again.
func (p *Plane) Restore(ctx context.Context, c Cleaner) error {
	s := p.wire()
	if err := s.apps.Restore(ctx, c); err != nil {
		return err
	}
	return s.mesh.Start(ctx)
}

// Allowed says whether src may call dst: a `call` connection src -> dst
// exists and is not being removed. The mesh asks it on every request.
func (p *Plane) Allowed(src, dst string) bool { return p.policy.Allowed(src, dst) }
