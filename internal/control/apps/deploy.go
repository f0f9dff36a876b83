package apps

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/appconfig"
	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/pier"
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
func (s *Service) Prepare(ctx context.Context, app string, src io.Reader) (*Upload, error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return nil, err
	}
	dir, err := s.uploadDir()
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
	if cfg.Network.Outbound == "deny" && !s.Specs.Isolated() {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "pier.toml: [network] outbound = \"deny\" needs isolated machines, and this server runs apps as host processes: run `pier server` as root with runc installed (--runtime runc)")
	}
	plan, err := build.Detect(dir, cfg)
	if err != nil {
		u.Close()
		return nil, err
	}
	if plan.Builder == "dockerfile" && (!s.Builder.Isolated() || !s.Dockerfiles) {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "%s has a Dockerfile, and Dockerfile builds need isolated build machines, which this server does not have: run `pier server` as root with runc installed (--runtime runc), or choose another builder in pier.toml ([build] builder)", app)
	}
	if plan.NoNetwork && !s.Builder.Isolated() {
		u.Close()
		return nil, pier.Errorf(pier.Invalid, "pier.toml: [build] network = \"none\" needs isolated builds, and this server builds on the host: run `pier server` as root with runc installed (--runtime runc)")
	}
	if err := s.Conns.CheckDeclared(ctx, app, cfg.Connections); err != nil {
		u.Close()
		return nil, err
	}
	u.Config, u.Plan = cfg, plan
	return u, nil
}

// Deploy builds an upload into a new release and rolls it out. Build output
// and progress go to out as they happen. A failed build or rollout leaves
// the running release serving.
func (s *Service) Deploy(ctx context.Context, u *Upload, out io.Writer) (pier.Release, error) {
	defer u.Close()
	unlock, err := s.Busy.Lock(ctx, u.App, opDeploy)
	if err != nil {
		return pier.Release{}, err
	}
	defer unlock()
	fmt.Fprintf(out, "==> Building %s: %s\n", u.App, u.Plan.Describe())
	begin := time.Now()
	buildLog := s.Logs.Writer(u.App, "build", "stdout")
	bctx, cancel := context.WithTimeoutCause(ctx, BuildTimeout, pier.Errorf(pier.Failed, "build took longer than %s", BuildTimeout))
	res, err := s.Builder.Build(bctx, u.App, u.Dir, u.Plan, io.MultiWriter(out, buildLog))
	cancel()
	buildLog.Flush()
	if err != nil {
		s.event(ctx, u.App, "build.failed", "build failed: %v", err)
		return pier.Release{}, err
	}
	fmt.Fprintf(out, "==> Built in %s (build %s)\n", time.Since(begin).Round(10*time.Millisecond), res.ID)
	rel := pier.Release{App: u.App, BuildID: res.ID, Image: res.Image, Builder: u.Plan.Builder, Start: u.Plan.Start, Config: u.Config.RunConfig(),
		Status: pier.ReleasePending, Description: "deploy", CreatedAt: time.Now().UTC()}
	// The connections pier.toml declares and the app lacks are made now,
	// under the app's lock, and undone if the release fails.
	undo, granted, err := s.Conns.GrantDeclared(ctx, u.App, u.Config.Connections, out)
	if err != nil {
		return pier.Release{}, err
	}
	rel, err = s.rollout(ctx, rel, out)
	if err != nil {
		undo()
		return rel, err
	}
	granted(ctx)
	return rel, nil
}

// rollout stores rel as a new release and deploys it; the app's lock must be held.
func (s *Service) rollout(ctx context.Context, rel pier.Release, out io.Writer) (pier.Release, error) {
	a, err := s.Store.App(ctx, rel.App)
	if err != nil {
		return rel, err
	}
	rel, err = s.Store.CreateRelease(ctx, rel)
	if err != nil {
		return rel, err
	}
	if err := s.tagRelease(ctx, rel, fmt.Sprintf("v%d", rel.Version)); err != nil {
		return rel, err
	}
	count := max(a.Count, 1)
	fmt.Fprintf(out, "==> Releasing v%d (%s) to %d machine(s), strategy %s\n", rel.Version, rel.Description, count, rel.Config.Strategy)
	progress := func(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }
	begin := time.Now()
	if err := s.Rollout.Deploy(ctx, rel, count, progress); err != nil {
		s.Store.SetReleaseStatus(context.Background(), rel.App, rel.Version, pier.ReleaseFailed)
		s.event(context.Background(), rel.App, "deploy.failed", "v%d failed: %v", rel.Version, firstLine(err))
		return rel, err
	}
	if a.Count == 0 {
		s.Store.SetCount(ctx, rel.App, 1)
	}
	if err := s.Store.Activate(ctx, rel.App, rel.Version); err != nil {
		return rel, err
	}
	rel.Status = pier.ReleaseActive
	if s.Routes != nil {
		s.Routes.SetRoutes(rel.App, rel.Config.Routes)
	}
	if err := s.tagRelease(ctx, rel, "latest"); err != nil {
		s.Log.Warn("tag the live release", "app", rel.App, "err", err)
	}
	s.collect(ctx, rel.App)
	s.event(ctx, rel.App, "deploy", "v%d deployed (%s) in %s", rel.Version, rel.Description, time.Since(begin).Round(time.Millisecond))
	fmt.Fprintf(out, "==> v%d is live (%s)\n", rel.Version, time.Since(begin).Round(time.Millisecond))
	return rel, nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// Releases lists an app's releases, newest first.
func (s *Service) Releases(ctx context.Context, app string) ([]pier.Release, error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return nil, err
	}
	return s.Store.Releases(ctx, app)
}

// Rollback deploys the build and config of release version again as a new
// release. Version 0 means the release before the current one.
func (s *Service) Rollback(ctx context.Context, app string, version int, out io.Writer) (pier.Release, error) {
	unlock, err := s.Busy.Lock(ctx, app, "a rollback")
	if err != nil {
		return pier.Release{}, err
	}
	defer unlock()
	a, err := s.Store.App(ctx, app)
	if err != nil {
		return pier.Release{}, err
	}
	if version == 0 {
		rels, err := s.Store.Releases(ctx, app)
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
	old, err := s.Store.Release(ctx, app, version)
	if err != nil {
		return pier.Release{}, err
	}
	if _, err := os.Stat(s.Builder.Path(app, old.BuildID)); err != nil {
		return pier.Release{}, pier.Errorf(pier.Invalid, "the build of v%d (%s) is no longer on disk", version, old.BuildID)
	}
	rel := old
	rel.Status, rel.Description, rel.CreatedAt = pier.ReleasePending, fmt.Sprintf("rollback to v%d", version), time.Now().UTC()
	return s.rollout(ctx, rel, out)
}

// Reroll rolls app's current release again so its machines get a changed
// environment; nothing to do before its first deploy. The app's lock must
// be held.
func (s *Service) Reroll(ctx context.Context, app, desc string, out io.Writer) (*pier.Release, error) {
	a, err := s.Store.App(ctx, app)
	if err != nil {
		return nil, err
	}
	if a.Release == 0 {
		fmt.Fprintf(out, "==> %s has no release yet; this applies from its first deploy\n", app)
		return nil, nil
	}
	cur, err := s.Store.Release(ctx, app, a.Release)
	if err != nil {
		return nil, err
	}
	rel := cur
	rel.Status, rel.Description, rel.CreatedAt = pier.ReleasePending, desc, time.Now().UTC()
	r, err := s.rollout(ctx, rel, out)
	return &r, err
}
