// Package control is pier's control plane: the operations behind every API
// call (apps, deploys, releases, rollback, scale, secrets), built on the
// state store, the builder, the supervisor and the edge proxy.
package control

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/identity"
	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
	"github.com/pier-dev/pier/internal/supervisor"
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

// Plane is the control plane.
type Plane struct {
	Store      *store.Store
	Builder    *build.Builder
	Keys       *secrets.Keyring
	Supervisor *supervisor.Supervisor
	Proxy      Proxy
	Logs       *logs.Hub
	Log        *slog.Logger
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
	// build and image (0: DefaultKeepReleases); the current one always
	// does. Older builds and images are collected after each deploy.
	KeepReleases int

	mu     sync.Mutex
	busy   map[string]string // app -> operation under way
	policy policy
}

// lock marks app busy with op; Conflict if another operation holds it.
func (p *Plane) lock(app, op string) (func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy == nil {
		p.busy = map[string]string{}
	}
	if cur, ok := p.busy[app]; ok {
		return nil, pier.Errorf(pier.Conflict, "%s of %s is in progress; wait for it to finish and try again", cur, app)
	}
	p.busy[app] = op
	return func() {
		p.mu.Lock()
		delete(p.busy, app)
		p.mu.Unlock()
	}, nil
}

func (p *Plane) event(ctx context.Context, app, typ, format string, args ...any) {
	if err := p.Store.AddEvent(ctx, app, typ, fmt.Sprintf(format, args...)); err != nil {
		p.Log.Error("record event", "app", app, "err", err)
	}
}

// Restore brings the platform back after a start: it kills whatever a
// previous run left behind, then starts every app's current release.
func (p *Plane) Restore(ctx context.Context, c Cleaner) error {
	ids, err := p.Store.MachineIDs(ctx)
	if err != nil {
		return err
	}
	if len(ids) > 0 && c != nil {
		n, err := c.Cleanup(ctx, ids)
		if err != nil {
			return fmt.Errorf("clean up machines of the previous run: %w", err)
		}
		if n > 0 {
			p.Log.Warn("killed processes left by the previous run", "count", n)
		}
	}
	for _, id := range ids {
		p.Store.RemoveMachine(ctx, id)
	}
	os.RemoveAll(p.TempDir)
	if n, err := p.Builder.Sweep(); err != nil {
		p.Log.Warn("remove unfinished builds", "err", err)
	} else if n > 0 {
		p.Log.Info("removed builds a previous run left unfinished", "count", n)
	}
	if err := p.startMesh(ctx); err != nil {
		return err
	}
	apps, err := p.Store.Apps(ctx)
	if err != nil {
		return err
	}
	for _, a := range apps {
		p.Proxy.AddApp(a.Name)
		if a.Release == 0 || a.Count == 0 {
			continue
		}
		rel, err := p.Store.Release(ctx, a.Name, a.Release)
		if err != nil {
			return err
		}
		env, err := p.env(ctx, rel)
		if err != nil {
			return err
		}
		if p.Mesh != nil {
			p.Mesh.SetRoutes(a.Name, rel.Config.Routes)
		}
		if err := p.Supervisor.Run(rel, env, a.Count); err != nil {
			return fmt.Errorf("start %s: %w", a.Name, err)
		}
		p.Log.Info("app restored", "app", a.Name, "release", rel.Version, "machines", a.Count)
	}
	return nil
}

// env is the environment of rel's machines, with the app's secrets opened.
func (p *Plane) env(ctx context.Context, rel pier.Release) ([]string, error) {
	sealed, _, err := p.Store.Secrets(ctx, rel.App)
	if err != nil {
		return nil, err
	}
	plain := make(map[string]string, len(sealed))
	for _, s := range sealed {
		v, err := p.Keys.Open(rel.App, s.Name, s.KeyID, s.Sealed)
		if err != nil {
			return nil, err
		}
		plain[s.Name] = v
	}
	bound, err := p.bound(ctx, rel.App)
	if err != nil {
		return nil, err
	}
	calls, err := p.callsEnv(ctx, rel.App)
	if err != nil {
		return nil, err
	}
	return dedupEnv(append(append(supervisor.Env(rel, plain), resources.Env(bound)...), calls...)), nil
}

// dedupEnv keeps the last value of each variable, in the order of first
// appearance: connections' variables override env and secrets of the same
// name.
func dedupEnv(env []string) []string {
	last := make(map[string]int, len(env))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = i
	}
	out := make([]string, 0, len(last))
	seen := make(map[string]bool, len(last))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, env[last[k]])
	}
	return out
}

// AppStatus is an app with its machines and latest release.
type AppStatus struct {
	pier.App
	URL      string         `json:"url"`
	Machines []pier.Machine `json:"machines"`
	Current  *pier.Release  `json:"current_release,omitempty"`
}

// CreateApp registers a new app with no release.
func (p *Plane) CreateApp(ctx context.Context, name string) (pier.App, error) {
	if err := pier.ValidateAppName(name); err != nil {
		return pier.App{}, err
	}
	if name == metrics.FromEdge {
		return pier.App{}, pier.Errorf(pier.Invalid, "the app name %q is reserved: it names pier's edge proxy in metrics and the graph", name)
	}
	a := pier.App{Name: name, Count: 1, CreatedAt: time.Now().UTC()}
	if err := p.Store.CreateApp(ctx, a); err != nil {
		return pier.App{}, err
	}
	p.Proxy.AddApp(name)
	if err := p.addService(ctx, name); err != nil {
		p.Store.DeleteApp(ctx, name)
		p.Proxy.RemoveApp(name)
		return pier.App{}, err
	}
	p.event(ctx, name, "app.create", "app %s created", name)
	return a, nil
}

// Status returns an app with its machines.
func (p *Plane) Status(ctx context.Context, name string) (AppStatus, error) {
	a, err := p.Store.App(ctx, name)
	if err != nil {
		return AppStatus{}, err
	}
	st := AppStatus{App: a, Machines: p.Supervisor.Machines(name)}
	if a.Release > 0 {
		rel, err := p.Store.Release(ctx, name, a.Release)
		if err != nil {
			return st, err
		}
		st.Current = &rel
	}
	return st, nil
}

// DestroyApp stops an app's machines and deletes it with its releases,
// builds, secrets and logs.
func (p *Plane) DestroyApp(ctx context.Context, name string) error {
	unlock, err := p.lock(name, "a destroy")
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := p.Store.App(ctx, name); err != nil {
		return err
	}
	p.Proxy.RemoveApp(name)
	p.Supervisor.StopApp(name, 5*time.Second)
	p.revokeAll(ctx, name)
	p.removeCallers(ctx, name)
	if p.Metrics != nil {
		p.Metrics.Forget(name)
	}
	if err := p.Store.DeleteApp(ctx, name); err != nil {
		return err
	}
	if p.AppDestroyed != nil {
		p.AppDestroyed(name)
	}
	p.Logs.Remove(name)
	if err := p.Builder.Remove(name); err != nil {
		p.Log.Warn("remove builds", "app", name, "err", err)
	}
	if p.Images != nil {
		if err := p.Images.RemoveRepo(ctx, name); err != nil {
			p.Log.Warn("remove images", "app", name, "err", err)
		} else if _, _, err := p.Images.GC(ctx); err != nil {
			p.Log.Warn("collect images", "err", err)
		}
	}
	p.Log.Info("app destroyed", "app", name)
	return nil
}

// Scale sets the number of machines of an app.
func (p *Plane) Scale(ctx context.Context, name string, n int) (pier.App, error) {
	if n < 0 || n > 100 {
		return pier.App{}, pier.Errorf(pier.Invalid, "count must be between 0 and 100, not %d", n)
	}
	unlock, err := p.lock(name, "a scale")
	if err != nil {
		return pier.App{}, err
	}
	defer unlock()
	a, err := p.Store.App(ctx, name)
	if err != nil {
		return a, err
	}
	if err := p.Store.SetCount(ctx, name, n); err != nil {
		return a, err
	}
	a.Count = n
	if a.Release > 0 {
		rel, err := p.Store.Release(ctx, name, a.Release)
		if err != nil {
			return a, err
		}
		env, err := p.env(ctx, rel)
		if err != nil {
			return a, err
		}
		if err := p.Supervisor.Scale(rel, env, n); err != nil {
			return a, err
		}
	}
	p.event(ctx, name, "scale", "scaled to %d machine(s)", n)
	return a, nil
}

// Events returns an app's latest events.
func (p *Plane) Events(ctx context.Context, name string, limit int) ([]pier.Event, error) {
	if _, err := p.Store.App(ctx, name); err != nil {
		return nil, err
	}
	return p.Store.Events(ctx, name, limit)
}

// uploadDir returns a fresh directory for an upload.
func (p *Plane) uploadDir() (string, error) {
	if err := os.MkdirAll(p.TempDir, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(p.TempDir, "upload-")
}

// ArtifactPath is the directory of a build.
func (p *Plane) ArtifactPath(app, buildID string) string {
	return filepath.Join(p.Builder.Dir, app, buildID)
}
