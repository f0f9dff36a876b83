package apps

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/control/busy"
	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/logs"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/rollout"
	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/secrets"
	"github.com/pier-dev/pier/internal/store"
)

var errBoom = errors.New("boom")

// fakeStore keeps what store.Store keeps of apps, in memory, with its
// rules: NotFound for missing apps and releases, versions numbered from 1
// per app, releases newest first, Activate retiring the active one,
// secrets by name and DeleteSecrets all or nothing.
type fakeStore struct {
	mu       sync.Mutex
	apps     map[string]pier.App
	releases map[string][]pier.Release // oldest first
	secrets  map[string]map[string]store.SealedSecret
	events   []string // "subject type: message"
	machines []string
}

var _ Store = (*fakeStore)(nil)

func newFakeStore() *fakeStore {
	return &fakeStore{apps: map[string]pier.App{}, releases: map[string][]pier.Release{}, secrets: map[string]map[string]store.SealedSecret{}}
}

func notFound(app string) error { return pier.Errorf(pier.NotFound, "app %q not found", app) }

func (s *fakeStore) App(ctx context.Context, name string) (pier.App, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[name]
	if !ok {
		return a, notFound(name)
	}
	return a, nil
}

func (s *fakeStore) Apps(ctx context.Context) ([]pier.App, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []pier.App
	for _, a := range s.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *fakeStore) CreateApp(ctx context.Context, a pier.App) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.apps[a.Name]; ok {
		return pier.Errorf(pier.Conflict, "app %s exists", a.Name)
	}
	s.apps[a.Name] = a
	return nil
}

func (s *fakeStore) DeleteApp(ctx context.Context, app string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.apps[app]; !ok {
		return notFound(app)
	}
	delete(s.apps, app)
	delete(s.releases, app)
	delete(s.secrets, app)
	s.events = slices.DeleteFunc(s.events, func(e string) bool { return len(e) > len(app) && e[:len(app)+1] == app+" " })
	return nil
}

func (s *fakeStore) SetCount(ctx context.Context, app string, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[app]
	if !ok {
		return notFound(app)
	}
	a.Count = n
	s.apps[app] = a
	return nil
}

func (s *fakeStore) CreateRelease(ctx context.Context, r pier.Release) (pier.Release, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Version = len(s.releases[r.App]) + 1
	s.releases[r.App] = append(s.releases[r.App], r)
	return r, nil
}

func (s *fakeStore) Release(ctx context.Context, app string, v int) (pier.Release, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.releases[app]
	if v < 1 || v > len(rs) {
		return pier.Release{}, pier.Errorf(pier.NotFound, "release v%d of %s not found", v, app)
	}
	return rs[v-1], nil
}

func (s *fakeStore) Releases(ctx context.Context, app string) ([]pier.Release, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.releases[app])
	slices.Reverse(out)
	return out, nil
}

func (s *fakeStore) SetReleaseStatus(ctx context.Context, app string, v int, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rs := s.releases[app]; v >= 1 && v <= len(rs) {
		rs[v-1].Status = status
	}
	return nil
}

func (s *fakeStore) Activate(ctx context.Context, app string, v int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.releases[app]
	for i := range rs {
		switch {
		case rs[i].Version == v:
			rs[i].Status = pier.ReleaseActive
		case rs[i].Status == pier.ReleaseActive:
			rs[i].Status = pier.ReleaseRetired
		}
	}
	a := s.apps[app]
	a.Release = v
	s.apps[app] = a
	return nil
}

func (s *fakeStore) Secrets(ctx context.Context, app string) ([]store.SealedSecret, []pier.SecretInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sealed []store.SealedSecret
	for _, sec := range s.secrets[app] {
		sealed = append(sealed, sec)
	}
	sort.Slice(sealed, func(i, j int) bool { return sealed[i].Name < sealed[j].Name })
	var infos []pier.SecretInfo
	for _, sec := range sealed {
		infos = append(infos, pier.SecretInfo{Name: sec.Name, Digest: sec.Digest})
	}
	return sealed, infos, nil
}

func (s *fakeStore) PutSecrets(ctx context.Context, app string, secs []store.SealedSecret) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.secrets[app] == nil {
		s.secrets[app] = map[string]store.SealedSecret{}
	}
	for _, sec := range secs {
		s.secrets[app][sec.Name] = sec
	}
	return nil
}

func (s *fakeStore) DeleteSecrets(ctx context.Context, app string, names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range names {
		if _, ok := s.secrets[app][n]; !ok {
			return pier.Errorf(pier.NotFound, "secret %s is not set on %s", n, app)
		}
	}
	for _, n := range names {
		delete(s.secrets[app], n)
	}
	return nil
}

func (s *fakeStore) AddEvent(ctx context.Context, app, typ, msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, app+" "+typ+": "+msg)
	return nil
}

func (s *fakeStore) Events(ctx context.Context, app string, limit int) ([]pier.Event, error) {
	return nil, nil
}

func (s *fakeStore) MachineIDs(ctx context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.machines), nil
}

func (s *fakeStore) RemoveMachine(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.machines = slices.DeleteFunc(s.machines, func(m string) bool { return m == id })
	return nil
}

func (s *fakeStore) hasEvent(e string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.events, e)
}

func (s *fakeStore) hasEventPrefix(prefix string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.events, func(e string) bool { return strings.HasPrefix(e, prefix) })
}

// addRelease stores a release as if it had been deployed, with its build
// on disk; active makes it the app's current one.
func (e *env) addRelease(t *testing.T, app, status string) pier.Release {
	t.Helper()
	id := fmt.Sprintf("b%d", len(e.store.releases[app])+1)
	rel, _ := e.store.CreateRelease(context.Background(), pier.Release{App: app, BuildID: id, Status: status, Description: "deploy"})
	if err := os.MkdirAll(e.builder.Path(app, id), 0o755); err != nil {
		t.Fatal(err)
	}
	if status == pier.ReleaseActive {
		e.store.Activate(context.Background(), app, rel.Version)
	}
	return rel
}

// fakeBuilder builds into directories under dir.
type fakeBuilder struct {
	log  *controltest.Journal
	dir  string
	fail error
}

func (b *fakeBuilder) Build(ctx context.Context, app, src string, plan build.Plan, out io.Writer) (build.Result, error) {
	b.log.Add("build %s", app)
	if b.fail != nil {
		return build.Result{}, b.fail
	}
	id := fmt.Sprintf("build-%d", time.Now().UnixNano())
	return build.Result{ID: id}, os.MkdirAll(b.Path(app, id), 0o755)
}

func (b *fakeBuilder) Path(app, id string) string { return filepath.Join(b.dir, app, id) }
func (b *fakeBuilder) Isolated() bool             { return false }
func (b *fakeBuilder) Sweep() (int, error)        { b.log.Add("sweep"); return 0, nil }
func (b *fakeBuilder) Remove(app string) error {
	b.log.Add("remove builds %s", app)
	return os.RemoveAll(filepath.Join(b.dir, app))
}

// fakeRollout records what it runs; Deploy fails with fail.
type fakeRollout struct {
	log  *controltest.Journal
	fail error
}

func (r *fakeRollout) Deploy(ctx context.Context, rel pier.Release, count int, report rollout.Progress) error {
	r.log.Add("deploy %s v%d x%d (%s)", rel.App, rel.Version, count, rel.Description)
	return r.fail
}

func (r *fakeRollout) Scale(ctx context.Context, rel pier.Release, n int) error {
	r.log.Add("scale %s v%d to %d", rel.App, rel.Version, n)
	return nil
}

func (r *fakeRollout) StopApp(app string) { r.log.Add("stop %s", app) }

func (r *fakeRollout) Reconcile(ctx context.Context, rel pier.Release, count int) (int, int, error) {
	r.log.Add("reconcile %s v%d x%d", rel.App, rel.Version, count)
	return count, 0, nil
}

type fakeFleet map[string][]pier.Machine

func (f fakeFleet) Machines(app string) []pier.Machine { return f[app] }

// fakeSpecs gives a release's environment back as its spec.
type fakeSpecs struct{ isolated bool }

func (f fakeSpecs) Spec(rel pier.Release, env []string) (runtime.Spec, error) {
	return runtime.Spec{Env: env}, nil
}
func (f fakeSpecs) Isolated() bool { return f.isolated }

// fakeParts is the rest of what apps uses, each recording into the
// journal: proxy, mesh, routes, metrics and connections.
type fakeParts struct {
	log *controltest.Journal
	// connection environment and host ports; failures of AddService and
	// of the declared connections
	env        []string
	ports      []int
	serviceErr error
	declareErr error
}

func (f *fakeParts) AddApp(app string)    { f.log.Add("proxy add %s", app) }
func (f *fakeParts) RemoveApp(app string) { f.log.Add("proxy remove %s", app) }
func (f *fakeParts) AddService(ctx context.Context, app string) error {
	f.log.Add("service %s", app)
	return f.serviceErr
}
func (f *fakeParts) SetRoutes(app string, routes []pier.Route) { f.log.Add("routes %s", app) }
func (f *fakeParts) Forget(app string)                         { f.log.Add("forget metrics %s", app) }

// fakeConns is the connections service.
type fakeConns struct{ *fakeParts }

func (c fakeConns) Env(ctx context.Context, app string) ([]string, error) { return c.env, nil }
func (c fakeConns) HostPorts(app string) []int                            { return c.ports }
func (c fakeConns) CheckDeclared(ctx context.Context, app string, decls []appconfig.Connection) error {
	return c.declareErr
}
func (c fakeConns) GrantDeclared(ctx context.Context, app string, decls []appconfig.Connection, out io.Writer) (func(), func(context.Context), error) {
	c.log.Add("grant declared %s", app)
	if c.declareErr != nil {
		return nil, nil, c.declareErr
	}
	return func() { c.log.Add("undo declared %s", app) }, func(context.Context) { c.log.Add("declared live %s", app) }, nil
}
func (c fakeConns) Forget(ctx context.Context, app string) { c.log.Add("forget connections %s", app) }

// env is a Service on fakes, with a real keyring, log hub and lock table.
type env struct {
	svc     *Service
	store   *fakeStore
	builder *fakeBuilder
	rollout *fakeRollout
	parts   *fakeParts
	log     *controltest.Journal
	busy    *busy.Table
	keys    *secrets.Keyring
}

func newEnv(t *testing.T, apps ...string) *env {
	t.Helper()
	j := &controltest.Journal{}
	dir := t.TempDir()
	keys, err := secrets.Load(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	hub, err := logs.NewHub(filepath.Join(dir, "logs"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Close)
	e := &env{store: newFakeStore(), builder: &fakeBuilder{log: j, dir: filepath.Join(dir, "builds")}, rollout: &fakeRollout{log: j},
		parts: &fakeParts{log: j}, log: j, busy: &busy.Table{}, keys: keys}
	e.svc = &Service{Store: e.store, Builder: e.builder, Keys: keys, Rollout: e.rollout, Fleet: fakeFleet{}, Specs: fakeSpecs{},
		Proxy: e.parts, Logs: hub, Conns: fakeConns{e.parts}, Mesh: e.parts, Busy: e.busy, Log: slog.New(slog.DiscardHandler),
		Routes: e.parts, Metrics: e.parts, TempDir: filepath.Join(dir, "tmp")}
	for _, a := range apps {
		e.store.apps[a] = pier.App{Name: a, Count: 1}
	}
	return e
}

// upload is a checked upload of app, ready to deploy.
func (e *env) upload(t *testing.T, app string) *Upload {
	t.Helper()
	dir := t.TempDir()
	return &Upload{App: app, Dir: dir, Config: &appconfig.Config{}, Plan: build.Plan{Builder: "go", Start: "./app"}}
}
