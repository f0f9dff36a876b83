package control

import (
	"context"
	"io"
	"time"

	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/runtime"
)

// The plane's operations are the services': each one's doc there says
// the rest.

// Apps, deploys, releases, secrets: internal/control/apps.

// Reconcile brings every app's machines in line with the store once the
// machine manager has restored them.
func (p *Plane) Reconcile(ctx context.Context) error { return p.wire().apps.Reconcile(ctx) }

// ReleaseSpec is the runtime spec of a machine of release version of app;
// the machine manager asks at every start of an app machine.
func (p *Plane) ReleaseSpec(ctx context.Context, app string, version int) (runtime.Spec, error) {
	return p.wire().apps.ReleaseSpec(ctx, app, version)
}

// CreateApp registers a new app with no release.
func (p *Plane) CreateApp(ctx context.Context, name string) (pier.App, error) {
	return p.wire().apps.CreateApp(ctx, name)
}

// Status returns an app with its machines and current release.
func (p *Plane) Status(ctx context.Context, name string) (AppStatus, error) {
	return p.wire().apps.Status(ctx, name)
}

// DestroyApp stops an app's machines and deletes it with its releases,
// builds, secrets, connections and logs.
func (p *Plane) DestroyApp(ctx context.Context, name string) error {
	return p.wire().apps.DestroyApp(ctx, name)
}

// Scale sets the number of machines of an app.
func (p *Plane) Scale(ctx context.Context, name string, n int) (pier.App, error) {
	return p.wire().apps.Scale(ctx, name, n)
}

// Events returns an app's latest events.
func (p *Plane) Events(ctx context.Context, name string, limit int) ([]pier.Event, error) {
	return p.wire().apps.Events(ctx, name, limit)
}

// Prepare unpacks and checks an uploaded source tree, changing nothing,
// before Deploy builds it.
func (p *Plane) Prepare(ctx context.Context, app string, src io.Reader) (*Upload, error) {
	return p.wire().apps.Prepare(ctx, app, src)
}

// Deploy builds an upload into a new release and rolls it out, with output
// to out.
func (p *Plane) Deploy(ctx context.Context, u *Upload, out io.Writer) (pier.Release, error) {
	return p.wire().apps.Deploy(ctx, u, out)
}

// Releases lists an app's releases, newest first.
func (p *Plane) Releases(ctx context.Context, app string) ([]pier.Release, error) {
	return p.wire().apps.Releases(ctx, app)
}

// Rollback deploys release version again (0: the one before the current).
func (p *Plane) Rollback(ctx context.Context, app string, version int, out io.Writer) (pier.Release, error) {
	return p.wire().apps.Rollback(ctx, app, version, out)
}

// Secrets lists an app's secrets by name and digest.
func (p *Plane) Secrets(ctx context.Context, app string) ([]pier.SecretInfo, error) {
	return p.wire().apps.Secrets(ctx, app)
}

// SetSecrets seals and stores secrets, then rolls the app; one bad name
// changes nothing.
func (p *Plane) SetSecrets(ctx context.Context, app string, values map[string]string, out io.Writer) (*pier.Release, error) {
	return p.wire().apps.SetSecrets(ctx, app, values, out)
}

// UnsetSecrets removes secrets and rolls the app.
func (p *Plane) UnsetSecrets(ctx context.Context, app string, names []string, out io.Writer) (*pier.Release, error) {
	return p.wire().apps.UnsetSecrets(ctx, app, names, out)
}

// Resources, backups, connections: internal/control/infra.

// MoveResourceDirs moves resources' directories that earlier versions kept
// under from to ResourceDir.
func (p *Plane) MoveResourceDirs(ctx context.Context, from string) error {
	return p.wire().infra.MoveResourceDirs(ctx, from)
}

// StartResources finishes what a crash interrupted (resources left creating
// or deleting, connections left revoking) and starts the managed servers,
// once, before apps.
func (p *Plane) StartResources(ctx context.Context) error {
	return p.wire().infra.StartResources(ctx)
}

// RunResources keeps resources serving, retries revocations and takes
// scheduled backups until ctx is done.
func (p *Plane) RunResources(ctx context.Context, every time.Duration) {
	p.wire().infra.RunResources(ctx, every)
}

// CreateResource provisions a resource; a failed provisioning leaves
// nothing behind.
func (p *Plane) CreateResource(ctx context.Context, name, typ string, params map[string]any, out io.Writer) (resources.Resource, error) {
	return p.wire().infra.CreateResource(ctx, name, typ, params, out)
}

// ListResources lists every resource.
func (p *Plane) ListResources(ctx context.Context) ([]resources.Resource, error) {
	return p.wire().infra.ListResources(ctx)
}

// GetResource returns a resource with its connections.
func (p *Plane) GetResource(ctx context.Context, name string) (ResourceStatus, error) {
	return p.wire().infra.GetResource(ctx, name)
}

// DeleteResource destroys a resource and its data; with connections only if
// force.
func (p *Plane) DeleteResource(ctx context.Context, name string, force bool, out io.Writer) error {
	return p.wire().infra.DeleteResource(ctx, name, force, out)
}

// ResourceTypes lists the resource types.
func (p *Plane) ResourceTypes() []resources.TypeInfo { return p.wire().infra.ResourceTypes() }

// Backup takes a backup of a resource now; trigger is "manual" or
// "schedule".
func (p *Plane) Backup(ctx context.Context, name, trigger string) (resources.Backup, error) {
	return p.wire().infra.Backup(ctx, name, trigger)
}

// Backups lists a resource's backups, newest first.
func (p *Plane) Backups(ctx context.Context, name string) ([]resources.Backup, error) {
	return p.wire().infra.Backups(ctx, name)
}

// RestoreBackup replaces a resource's data with a backup.
func (p *Plane) RestoreBackup(ctx context.Context, name, id string, out io.Writer) error {
	return p.wire().infra.RestoreBackup(ctx, name, id, out)
}

// HostPorts are the ports on pier's host app's machines may reach: those of
// the managed resources it is connected to.
func (p *Plane) HostPorts(app string) []int { return p.wire().infra.HostPorts(app) }

// Connect connects app to a resource or (through the mesh) to another app,
// and rolls it.
func (p *Plane) Connect(ctx context.Context, app, target string, access resources.Access, as string, out io.Writer) (resources.Connection, error) {
	return p.wire().infra.Connect(ctx, app, target, access, as, out)
}

// Disconnect removes a connection: the app is rolled without it, then its
// credentials are revoked.
func (p *Plane) Disconnect(ctx context.Context, app, target string, out io.Writer) error {
	return p.wire().infra.Disconnect(ctx, app, target, out)
}

// Connections lists connections, filtered by app and/or target ("" = all).
func (p *Plane) Connections(ctx context.Context, app, target string) ([]resources.Connection, error) {
	return p.wire().infra.Connections(ctx, app, target)
}

// ShowConnection returns one connection; with reveal, its credentials too.
func (p *Plane) ShowConnection(ctx context.Context, app, target string, reveal bool) (ConnectionDetail, error) {
	return p.wire().infra.ShowConnection(ctx, app, target, reveal)
}

// Identities, metrics, the graph: internal/control/mesh.

// MeshIdentity returns app's mesh identity, issuing its certificate if none
// is current.
func (p *Plane) MeshIdentity(ctx context.Context, app string) (Identity, error) {
	return p.wire().mesh.Identity(ctx, app)
}

// MeshStatus describes the mesh's certificate authority.
func (p *Plane) MeshStatus() identity.Status { return p.wire().mesh.Authority() }

// RotateMesh rotates the mesh's issuer, or its trust anchor when anchor is
// set.
func (p *Plane) RotateMesh(ctx context.Context, anchor bool) (identity.Status, error) {
	return p.wire().mesh.Rotate(ctx, anchor)
}

// Stats are the golden metrics per app, or per edge with edges.
func (p *Plane) Stats(window time.Duration, edges bool) ([]metrics.Stat, error) {
	return p.wire().mesh.Stats(window, edges)
}

// AppStats are app's metrics per machine, and its busiest paths.
func (p *Plane) AppStats(ctx context.Context, app string, window time.Duration, limit int) (machines, paths []metrics.Stat, err error) {
	return p.wire().mesh.AppStats(ctx, app, window, limit)
}

// History is app's metrics over time (src "" = every caller).
func (p *Plane) History(ctx context.Context, app, src string, window, step time.Duration) ([]metrics.Point, error) {
	return p.wire().mesh.History(ctx, app, src, window, step)
}

// Graph returns every app, resource and connection, joined to the traffic
// the mesh observed.
func (p *Plane) Graph(ctx context.Context) (graph.Graph, error) { return p.wire().mesh.Graph(ctx) }
