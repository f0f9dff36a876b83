// Package apps runs pier's apps: creating and destroying them, building
// uploads into releases and rolling them out, rollbacks, scaling, secrets,
// the releases' images and their collection, and what an app's machines
// start with (their runtime spec and environment). After a restart of the
// server it brings every app back to what the store says.
package apps

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/appspec"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/rollout"
	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/store"
)

// Store is the state apps live in: apps, releases, secrets, events, and
// the machines a server older than the machine manager recorded.
type Store interface {
	App(ctx context.Context, name string) (pier.App, error)
	Apps(ctx context.Context) ([]pier.App, error)
	CreateApp(ctx context.Context, a pier.App) error
	DeleteApp(ctx context.Context, app string) error
	SetCount(ctx context.Context, app string, n int) error
	CreateRelease(ctx context.Context, r pier.Release) (pier.Release, error)
	Release(ctx context.Context, app string, v int) (pier.Release, error)
	Releases(ctx context.Context, app string) ([]pier.Release, error)
	SetReleaseStatus(ctx context.Context, app string, v int, status string) error
	Activate(ctx context.Context, app string, v int) error
	Secrets(ctx context.Context, app string) ([]store.SealedSecret, []pier.SecretInfo, error)
	PutSecrets(ctx context.Context, app string, secs []store.SealedSecret) error
	DeleteSecrets(ctx context.Context, app string, names []string) error
	AddEvent(ctx context.Context, app, typ, msg string) error
	Events(ctx context.Context, app string, limit int) ([]pier.Event, error)
	MachineIDs(ctx context.Context) ([]string, error)
	RemoveMachine(ctx context.Context, id string) error
}

// Builder turns uploads into builds (build.Builder).
type Builder interface {
	Build(ctx context.Context, app, src string, plan build.Plan, out io.Writer) (build.Result, error)
	// Path is the directory of a build.
	Path(app, id string) string
	// Isolated says whether builds run in build machines.
	Isolated() bool
	// Sweep removes builds a previous run left unfinished.
	Sweep() (int, error)
	// Remove removes every build of an app.
	Remove(app string) error
}

// Unpacked holds the images Dockerfile releases run on, unpacked.
type Unpacked interface {
	GC(ctx context.Context, inUse map[string]bool) (int, error)
}

// Images holds the releases' OCI images (imagestore.Store).
type Images interface {
	Image(ctx context.Context, repo, ref string) (v1.Image, error)
	Put(ctx context.Context, repo, tag string, img v1.Image) (v1.Hash, error)
	Untag(ctx context.Context, repo, tag string) error
	RemoveRepo(ctx context.Context, repo string) error
	GC(ctx context.Context) (removed int, freedBytes int64, err error)
}

// Keys seal secrets.
type Keys interface {
	Seal(app, name, value string) (keyID string, sealed []byte, err error)
	Open(app, name, keyID string, sealed []byte) (string, error)
	Digest(app, name, value string) string
}

// Rollout runs releases on machines (rollout.Rollout).
type Rollout interface {
	Deploy(ctx context.Context, rel pier.Release, count int, report rollout.Progress) error
	Scale(ctx context.Context, rel pier.Release, n int) error
	StopApp(app string)
	Reconcile(ctx context.Context, rel pier.Release, count int) (added, retired int, err error)
}

// Fleet lists an app's machines, oldest first.
type Fleet interface {
	Machines(app string) []pier.Machine
}

// Specs turns releases into their machines' runtime specs.
type Specs interface {
	Spec(rel pier.Release, env []string) (runtime.Spec, error)
	// Isolated says whether app machines run isolated.
	Isolated() bool
}

// Proxy is the part of the edge proxy that knows apps.
type Proxy interface {
	AddApp(app string)
	RemoveApp(app string)
}

// Logs keeps apps' logs.
type Logs interface {
	Writer(app, machine, stream string) *logs.LineWriter
	Remove(app string)
}

// Metrics forgets the metrics of an app that is gone.
type Metrics interface {
	Forget(app string)
}

// Routes tells the mesh an app's routes.
type Routes interface {
	SetRoutes(app string, routes []pier.Route)
}

// Mesh gives apps their service addresses.
type Mesh interface {
	AddService(ctx context.Context, app string) error
}

// Connections are an app's connections to resources and other apps. One
// interface of five methods, since one service keeps them all: what they
// add to its machines, the ones its pier.toml declares, and their end
// with the app.
type Connections interface {
	// Env is what app's connections add to its machines' environment.
	Env(ctx context.Context, app string) ([]string, error)
	// HostPorts are the ports on pier's host app's machines may reach.
	HostPorts(app string) []int
	// CheckDeclared checks the connections pier.toml declares.
	CheckDeclared(ctx context.Context, app string, decls []appconfig.Connection) error
	// GrantDeclared makes those app lacks: undo revokes them, done
	// records them once the release is live.
	GrantDeclared(ctx context.Context, app string, decls []appconfig.Connection, out io.Writer) (undo func(), done func(context.Context), err error)
	// Forget revokes every connection of app and to it.
	Forget(ctx context.Context, app string)
}

// Locks allow one operation at a time per app (busy.Table).
type Locks interface {
	Lock(ctx context.Context, name, op string) (unlock func(), err error)
	// Elsewhere says whether op is under way on a name other than name.
	Elsewhere(name, op string) bool
}

// Cleaner removes what a previous run of the server left running.
type Cleaner interface {
	Cleanup(ctx context.Context, machineIDs []string) (int, error)
}

// opDeploy is a deploy in the lock table: collecting unpacked images
// waits while another app's deploy has a new one in no release yet.
const opDeploy = "a deploy"

// Service runs apps.
type Service struct {
	Store   Store
	Builder Builder
	// Dockerfiles says whether the builder builds Dockerfiles (it has an
	// imager); Unpacked, nil without one, holds their unpacked images.
	Dockerfiles bool
	Unpacked    Unpacked
	Keys        Keys
	Rollout     Rollout
	Fleet       Fleet
	Specs       Specs
	Proxy       Proxy
	Logs        Logs
	Conns       Connections
	Mesh        Mesh
	Busy        Locks
	Log         *slog.Logger
	// Routes, Metrics and Images are nil on a server without them (no
	// mesh; no release images).
	Routes  Routes
	Metrics Metrics
	Images  Images
	// AppDestroyed, if set, is told that an app is gone, for state kept
	// outside the store (the edge's custom domains).
	AppDestroyed func(app string)
	// TempDir is where uploads are unpacked before they become builds.
	TempDir string
	// KeepReleases is how many of an app's newest releases keep their
	// build and image (0: DefaultKeepReleases).
	KeepReleases int
}

func (s *Service) event(ctx context.Context, app, typ, format string, args ...any) {
	if err := s.Store.AddEvent(ctx, app, typ, fmt.Sprintf(format, args...)); err != nil {
		s.Log.Error("record event", "app", app, "err", err)
	}
}

// Restore cleans up after a start, once the machine manager has restored
// its machines: it kills what a server older than the machine manager
// left running and removes unfinished uploads and builds.
func (s *Service) Restore(ctx context.Context, c Cleaner) error {
	ids, err := s.Store.MachineIDs(ctx)
	if err != nil {
		return err
	}
	if len(ids) > 0 && c != nil {
		n, err := c.Cleanup(ctx, ids)
		if err != nil {
			return fmt.Errorf("clean up machines of the previous run: %w", err)
		}
		if n > 0 {
			s.Log.Warn("killed processes left by the previous run", "count", n)
		}
	}
	for _, id := range ids {
		s.Store.RemoveMachine(ctx, id)
	}
	os.RemoveAll(s.TempDir)
	if n, err := s.Builder.Sweep(); err != nil {
		s.Log.Warn("remove unfinished builds", "err", err)
	} else if n > 0 {
		s.Log.Info("removed builds a previous run left unfinished", "count", n)
	}
	return nil
}

// Reconcile brings every app's machines in line with the store once the
// machine manager has restored them: the current release on the app's
// count of machines, and nothing of a deploy the restart cut short.
func (s *Service) Reconcile(ctx context.Context) error {
	apps, err := s.Store.Apps(ctx)
	if err != nil {
		return err
	}
	for _, a := range apps {
		s.Proxy.AddApp(a.Name)
		if err := s.failInterrupted(ctx, a); err != nil {
			return err
		}
		if a.Release == 0 {
			s.Rollout.StopApp(a.Name) // a first deploy cut short
			continue
		}
		rel, err := s.Store.Release(ctx, a.Name, a.Release)
		if err != nil {
			return err
		}
		if s.Routes != nil {
			s.Routes.SetRoutes(a.Name, rel.Config.Routes)
		}
		added, retired, err := s.Rollout.Reconcile(ctx, rel, a.Count)
		if err != nil {
			return fmt.Errorf("start %s: %w", a.Name, err)
		}
		if added > 0 || retired > 0 {
			s.Log.Info("app reconciled", "app", a.Name, "release", rel.Version, "machines", a.Count, "started", added, "retired", retired)
		}
	}
	return nil
}

// failInterrupted marks failed the releases of a that a restart cut short
// before they went live: they were never serving, and will not be.
func (s *Service) failInterrupted(ctx context.Context, a pier.App) error {
	rels, err := s.Store.Releases(ctx, a.Name)
	if err != nil {
		return err
	}
	for _, r := range rels {
		if r.Status != pier.ReleasePending || r.Version == a.Release {
			continue
		}
		if err := s.Store.SetReleaseStatus(ctx, a.Name, r.Version, pier.ReleaseFailed); err != nil {
			return err
		}
		s.event(ctx, a.Name, "deploy.failed", "v%d was cut short by a restart of pier server; v%d stays live", r.Version, a.Release)
	}
	return nil
}

// ReleaseSpec is the runtime spec of a machine of release version of app,
// with its environment (secrets opened, connections' variables) and the
// resources it may reach: the machine manager asks at every start of an
// app machine.
func (s *Service) ReleaseSpec(ctx context.Context, app string, version int) (runtime.Spec, error) {
	rel, err := s.Store.Release(ctx, app, version)
	if err != nil {
		return runtime.Spec{}, err
	}
	env, err := s.env(ctx, rel)
	if err != nil {
		return runtime.Spec{}, err
	}
	spec, err := s.Specs.Spec(rel, env)
	if err != nil {
		return spec, err
	}
	if s.Specs.Isolated() {
		spec.HostPorts = s.Conns.HostPorts(app)
	}
	return spec, nil
}

// env is the environment of rel's machines, with the app's secrets opened
// and its connections' variables.
func (s *Service) env(ctx context.Context, rel pier.Release) ([]string, error) {
	sealed, _, err := s.Store.Secrets(ctx, rel.App)
	if err != nil {
		return nil, err
	}
	plain := make(map[string]string, len(sealed))
	for _, sec := range sealed {
		v, err := s.Keys.Open(rel.App, sec.Name, sec.KeyID, sec.Sealed)
		if err != nil {
			return nil, err
		}
		plain[sec.Name] = v
	}
	conns, err := s.Conns.Env(ctx, rel.App)
	if err != nil {
		return nil, err
	}
	return dedupEnv(append(appspec.Env(rel, plain), conns...)), nil
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

// Status is an app with its machines and latest release.
type Status struct {
	pier.App
	URL      string         `json:"url"`
	Machines []pier.Machine `json:"machines"`
	Current  *pier.Release  `json:"current_release,omitempty"`
}

// CreateApp registers a new app with no release.
func (s *Service) CreateApp(ctx context.Context, name string) (pier.App, error) {
	if err := pier.ValidateAppName(name); err != nil {
		return pier.App{}, err
	}
	if name == metrics.FromEdge {
		return pier.App{}, pier.Errorf(pier.Invalid, "the app name %q is reserved: it names pier's edge proxy in metrics and the graph", name)
	}
	a := pier.App{Name: name, Count: 1, CreatedAt: time.Now().UTC()}
	if err := s.Store.CreateApp(ctx, a); err != nil {
		return pier.App{}, err
	}
	s.Proxy.AddApp(name)
	if err := s.Mesh.AddService(ctx, name); err != nil {
		s.Store.DeleteApp(ctx, name)
		s.Proxy.RemoveApp(name)
		return pier.App{}, err
	}
	s.event(ctx, name, "app.create", "app %s created", name)
	return a, nil
}

// Status returns an app with its machines.
func (s *Service) Status(ctx context.Context, name string) (Status, error) {
	a, err := s.Store.App(ctx, name)
	if err != nil {
		return Status{}, err
	}
	st := Status{App: a, Machines: s.Fleet.Machines(name)}
	if a.Release > 0 {
		rel, err := s.Store.Release(ctx, name, a.Release)
		if err != nil {
			return st, err
		}
		st.Current = &rel
	}
	return st, nil
}

// DestroyApp stops an app's machines and deletes it with its releases,
// builds, secrets and logs.
func (s *Service) DestroyApp(ctx context.Context, name string) error {
	unlock, err := s.Busy.Lock(ctx, name, "a destroy")
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.Store.App(ctx, name); err != nil {
		return err
	}
	s.Proxy.RemoveApp(name)
	s.Rollout.StopApp(name)
	s.Conns.Forget(ctx, name)
	if s.Metrics != nil {
		s.Metrics.Forget(name)
	}
	if err := s.Store.DeleteApp(ctx, name); err != nil {
		return err
	}
	if s.AppDestroyed != nil {
		s.AppDestroyed(name)
	}
	s.Logs.Remove(name)
	if err := s.Builder.Remove(name); err != nil {
		s.Log.Warn("remove builds", "app", name, "err", err)
	}
	if s.Images != nil {
		if err := s.Images.RemoveRepo(ctx, name); err != nil {
			s.Log.Warn("remove images", "app", name, "err", err)
		} else if _, _, err := s.Images.GC(ctx); err != nil {
			s.Log.Warn("collect images", "err", err)
		}
	}
	s.Log.Info("app destroyed", "app", name)
	return nil
}

// Scale sets the number of machines of an app.
func (s *Service) Scale(ctx context.Context, name string, n int) (pier.App, error) {
	if n < 0 || n > 100 {
		return pier.App{}, pier.Errorf(pier.Invalid, "count must be between 0 and 100, not %d", n)
	}
	unlock, err := s.Busy.Lock(ctx, name, "a scale")
	if err != nil {
		return pier.App{}, err
	}
	defer unlock()
	a, err := s.Store.App(ctx, name)
	if err != nil {
		return a, err
	}
	if err := s.Store.SetCount(ctx, name, n); err != nil {
		return a, err
	}
	a.Count = n
	if a.Release > 0 {
		rel, err := s.Store.Release(ctx, name, a.Release)
		if err != nil {
			return a, err
		}
		if err := s.Rollout.Scale(ctx, rel, n); err != nil {
			return a, err
		}
	}
	s.event(ctx, name, "scale", "scaled to %d machine(s)", n)
	return a, nil
}

// Events returns an app's latest events.
func (s *Service) Events(ctx context.Context, name string, limit int) ([]pier.Event, error) {
	if _, err := s.Store.App(ctx, name); err != nil {
		return nil, err
	}
	return s.Store.Events(ctx, name, limit)
}

// uploadDir returns a fresh directory for an upload.
func (s *Service) uploadDir() (string, error) {
	if err := os.MkdirAll(s.TempDir, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(s.TempDir, "upload-")
}
