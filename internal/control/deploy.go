package control

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
	"github.com/pier-dev/pier/internal/supervisor"
)

// BuildTimeout bounds a build, so a hung step cannot hold an app's deploy
// lock forever.
const BuildTimeout = 30 * time.Minute

// Upload is a source tree unpacked and checked, ready to build.
type Upload struct {
	App    string
	Dir    string
	Config *appconfig.Config
	Plan   build.Plan
}

// Close removes the upload if it was not built.
func (u *Upload) Close() { os.RemoveAll(u.Dir) }

// Prepare unpacks an uploaded source tree and checks its pier.toml and what
// can be built from it, before any output is streamed, so bad input gets a
// plain error and changes nothing.
func (p *Plane) Prepare(ctx context.Context, app string, src io.Reader) (*Upload, error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return nil, err
	}
	dir, err := p.uploadDir()
	if err != nil {
		return nil, err
	}
	u := &Upload{App: app, Dir: dir}
	if err := build.Extract(src, dir); err != nil {
		u.Close()
		return nil, err
	}
	cfg, err := appconfig.Load(dir)
	if err != nil {
		u.Close()
		return nil, &pier.Error{Kind: pier.Invalid, Msg: "bad pier.toml", Err: err}
	}
	if cfg == nil {
		cfg = &appconfig.Config{}
	}
	if cfg.App != "" && cfg.App != app {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "pier.toml says app = %q but the deploy is for %q; fix pier.toml or pass -a %s", cfg.App, app, cfg.App)
	}
	if cfg.Network.Outbound == "deny" && !p.Supervisor.Isolated() {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "pier.toml: [network] outbound = \"deny\" needs isolated machines, and this server runs apps as host processes: run `pier server` as root with runc installed (--runtime runc)")
	}
	plan, err := build.Detect(dir, cfg)
	if err != nil {
		u.Close()
		return nil, err
	}
	if plan.Builder == "dockerfile" && (!p.Builder.Isolated() || p.Builder.Images == nil) {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "%s has a Dockerfile, and Dockerfile builds need isolated build machines, which this server does not have: run `pier server` as root with runc installed (--runtime runc), or choose another builder in pier.toml ([build] builder)", app)
	}
	if plan.NoNetwork && !p.Builder.Isolated() {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "pier.toml: [build] network = \"none\" needs isolated builds, and this server builds on the host: run `pier server` as root with runc installed (--runtime runc)")
	}
	if _, err := p.declaredConnections(ctx, app, cfg.Connections); err != nil {
		u.Close()
		return nil, err
	}
	u.Config, u.Plan = cfg, plan
	return u, nil
}

// Deploy builds an upload into a new release and rolls it out. Build output
// and progress go to out as they happen. A failed build or rollout leaves
// the running release serving.
func (p *Plane) Deploy(ctx context.Context, u *Upload, out io.Writer) (pier.Release, error) {
	defer u.Close()
	unlock, err := p.lock(u.App, "a deploy")
	if err != nil {
		return pier.Release{}, err
	}
	defer unlock()
	fmt.Fprintf(out, "==> Building %s: %s\n", u.App, u.Plan.Describe())
	begin := time.Now()
	buildLog := p.Logs.Writer(u.App, "build", "stdout")
	bctx, cancel := context.WithTimeoutCause(ctx, BuildTimeout, pier.Errorf(pier.Failed, "build took longer than %s", BuildTimeout))
	res, err := p.Builder.Build(bctx, u.App, u.Dir, u.Plan, io.MultiWriter(out, buildLog))
	cancel()
	buildLog.Flush()
	if err != nil {
		p.event(ctx, u.App, "build.failed", "build failed: %v", err)
		return pier.Release{}, err
	}
	fmt.Fprintf(out, "==> Built in %s (build %s)\n", time.Since(begin).Round(10*time.Millisecond), res.ID)
	rel := pier.Release{App: u.App, BuildID: res.ID, Image: res.Image, Builder: u.Plan.Builder, Start: u.Plan.Start, Config: u.Config.RunConfig(),
		Status: pier.ReleasePending, Description: "deploy", CreatedAt: time.Now().UTC()}
	// The connections pier.toml declares and the app lacks are made now,
	// under the app's lock, and undone if the release fails.
	plans, err := p.declaredConnections(ctx, u.App, u.Config.Connections)
	if err != nil {
		return pier.Release{}, err
	}
	var made []resources.Connection
	var undos []func()
	undo := func() {
		for _, f := range undos {
			f()
		}
	}
	for _, cp := range plans {
		conn, undoOne, err := p.grantConnection(ctx, rel.App, cp, out)
		if err != nil {
			undo()
			return pier.Release{}, err
		}
		made, undos = append(made, conn), append(undos, undoOne)
	}
	rel, err = p.rollout(ctx, rel, out)
	if err != nil {
		undo()
		return rel, err
	}
	for _, c := range made {
		p.connected(ctx, c)
	}
	return rel, nil
}

// rollout stores rel as a new release and deploys it; the app's lock must be held.
func (p *Plane) rollout(ctx context.Context, rel pier.Release, out io.Writer) (pier.Release, error) {
	a, err := p.Store.App(ctx, rel.App)
	if err != nil {
		return rel, err
	}
	rel, err = p.Store.CreateRelease(ctx, rel)
	if err != nil {
		return rel, err
	}
	if err := p.tagRelease(ctx, rel, fmt.Sprintf("v%d", rel.Version)); err != nil {
		return rel, err
	}
	env, err := p.env(ctx, rel)
	if err != nil {
		return rel, err
	}
	count := max(a.Count, 1)
	fmt.Fprintf(out, "==> Releasing v%d (%s) to %d machine(s), strategy %s\n", rel.Version, rel.Description, count, rel.Config.Strategy)
	progress := func(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }
	begin := time.Now()
	if err := p.Supervisor.Deploy(ctx, rel, env, count, supervisor.Progress(progress)); err != nil {
		p.Store.SetReleaseStatus(context.Background(), rel.App, rel.Version, pier.ReleaseFailed)
		p.event(context.Background(), rel.App, "deploy.failed", "v%d failed: %v", rel.Version, firstLine(err))
		return rel, err
	}
	if a.Count == 0 {
		p.Store.SetCount(ctx, rel.App, 1)
	}
	if err := p.Store.Activate(ctx, rel.App, rel.Version); err != nil {
		return rel, err
	}
	rel.Status = pier.ReleaseActive
	if p.Mesh != nil {
		p.Mesh.SetRoutes(rel.App, rel.Config.Routes)
	}
	if err := p.tagRelease(ctx, rel, "latest"); err != nil {
		p.Log.Warn("tag the live release", "app", rel.App, "err", err)
	}
	p.collect(ctx, rel.App)
	p.event(ctx, rel.App, "deploy", "v%d deployed (%s) in %s", rel.Version, rel.Description, time.Since(begin).Round(time.Millisecond))
	fmt.Fprintf(out, "==> v%d is live (%s)\n", rel.Version, time.Since(begin).Round(time.Millisecond))
	return rel, nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// Releases lists an app's releases, newest first.
func (p *Plane) Releases(ctx context.Context, app string) ([]pier.Release, error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return nil, err
	}
	return p.Store.Releases(ctx, app)
}

// Rollback deploys the build and config of release version again as a new
// release. Version 0 means the release before the current one.
func (p *Plane) Rollback(ctx context.Context, app string, version int, out io.Writer) (pier.Release, error) {
	unlock, err := p.lock(app, "a rollback")
	if err != nil {
		return pier.Release{}, err
	}
	defer unlock()
	a, err := p.Store.App(ctx, app)
	if err != nil {
		return pier.Release{}, err
	}
	if version == 0 {
		rels, err := p.Store.Releases(ctx, app)
		if err != nil {
			return pier.Release{}, err
		}
		for _, r := range rels { // newest first
			if r.Version < a.Release && r.Status != pier.ReleaseFailed {
				version = r.Version
				break
			}
		}
		if version == 0 {
			return pier.Release{}, pier.Errorf(pier.Invalid, "%s has no earlier release to roll back to (see `pier releases -a %s`)", app, app)
		}
	}
	if version == a.Release {
		return pier.Release{}, pier.Errorf(pier.Invalid, "v%d is already the current release of %s", version, app)
	}
	old, err := p.Store.Release(ctx, app, version)
	if err != nil {
		return pier.Release{}, err
	}
	if _, err := os.Stat(p.ArtifactPath(app, old.BuildID)); err != nil {
		return pier.Release{}, pier.Errorf(pier.Invalid, "the build of v%d (%s) is no longer on disk", version, old.BuildID)
	}
	rel := old
	rel.Status, rel.Description, rel.CreatedAt = pier.ReleasePending, fmt.Sprintf("rollback to v%d", version), time.Now().UTC()
	return p.rollout(ctx, rel, out)
}

// Secrets lists an app's secrets by name and digest.
func (p *Plane) Secrets(ctx context.Context, app string) ([]pier.SecretInfo, error) {
	if _, err := p.Store.App(ctx, app); err != nil {
		return nil, err
	}
	_, infos, err := p.Store.Secrets(ctx, app)
	return infos, err
}

// SetSecrets seals and stores secrets, then rolls the app so its machines
// see them. Names are checked first: one bad name changes nothing.
func (p *Plane) SetSecrets(ctx context.Context, app string, values map[string]string, out io.Writer) (*pier.Release, error) {
	if len(values) == 0 {
		return nil, pier.Errorf(pier.Invalid, "no secrets given; use NAME=VALUE")
	}
	names := make([]string, 0, len(values))
	for n := range values {
		if err := pier.ValidateEnvName(n); err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	sort.Strings(names)
	sealed := make([]store.SealedSecret, 0, len(values))
	for _, n := range names {
		keyID, box, err := p.Keys.Seal(app, n, values[n])
		if err != nil {
			return nil, err
		}
		sealed = append(sealed, store.SealedSecret{Name: n, KeyID: keyID, Sealed: box, Digest: p.Keys.Digest(app, n, values[n])})
	}
	return p.changeSecrets(ctx, app, "secrets set "+strings.Join(names, ", "), out, func() error {
		return p.Store.PutSecrets(ctx, app, sealed)
	})
}

// UnsetSecrets removes secrets and rolls the app.
func (p *Plane) UnsetSecrets(ctx context.Context, app string, names []string, out io.Writer) (*pier.Release, error) {
	if len(names) == 0 {
		return nil, pier.Errorf(pier.Invalid, "no secret names given")
	}
	return p.changeSecrets(ctx, app, "secrets unset "+strings.Join(names, ", "), out, func() error {
		return p.Store.DeleteSecrets(ctx, app, names)
	})
}

func (p *Plane) changeSecrets(ctx context.Context, app, desc string, out io.Writer, change func() error) (*pier.Release, error) {
	unlock, err := p.lock(app, "a secrets change")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := p.Store.App(ctx, app); err != nil {
		return nil, err
	}
	if err := change(); err != nil {
		return nil, err
	}
	p.event(ctx, app, "secrets", "%s", desc)
	return p.reroll(ctx, app, desc, out)
}
