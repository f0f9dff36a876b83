package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/internal/appspec"
	"github.com/pier-dev/pier/internal/image"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/runtime/runc"
	"github.com/pier-dev/pier/internal/store"
)

// isolatedRuntime sets up the runc driver for machines. With mode "auto" a
// host that cannot run it (not root, no runc) gets nil and a warning: the
// machines API then answers 503 with what to install.
func isolatedRuntime(c Config, log *slog.Logger) (*runc.Driver, error) {
	if c.Runtime == "process" {
		return nil, nil
	}
	d, err := runc.New(runc.Config{StateDir: filepath.Join(c.DataDir, "machines"), Subnet: c.Subnet, Bridge: c.Bridge, Log: log.With("component", "runc"),
		ServiceSubnet: c.ServiceSubnet, MeshPort: c.MeshPort, DiskMB: c.MachineDiskMB,
		// Machines resolve <app>.internal with the server's name server on
		// their gateway (started with the server, see machineDNS).
		DNS: true})
	if err != nil {
		if c.Runtime == "runc" {
			return nil, err
		}
		log.Warn("isolated machines are unavailable", "err", err)
		return nil, nil
	}
	return d, nil
}

// images adapts the image store to what the machines manager needs,
// classifying its errors for the API. It also resolves pier's own app
// releases, named release:APP[:vN].
type images struct {
	store    *image.Store
	releases *store.Store
	hostfs   *appspec.HostFS // nil without an isolating runtime
	lowers   appspec.Lowers  // nil without release images
	artifact func(app, buildID string) string
}

func (i images) Resolve(ctx context.Context, ref string) (machines.Image, error) {
	if rest, ok := strings.CutPrefix(ref, "release:"); ok {
		return i.release(ctx, ref, rest)
	}
	img, err := i.store.Get(ctx, ref, io.Discard)
	if err != nil {
		switch {
		case errors.Is(err, image.ErrUnreachable):
			return machines.Image{}, &pier.Error{Kind: pier.Unavailable, Msg: "image unavailable", Err: err}
		case errors.Is(err, image.ErrBadRef), errors.Is(err, image.ErrNotFound), errors.Is(err, image.ErrInvalid),
			errors.Is(err, image.ErrUnsafeLayer), errors.Is(err, image.ErrTooLarge):
			return machines.Image{}, &pier.Error{Kind: pier.Invalid, Msg: "invalid config.image", Err: err}
		}
		return machines.Image{}, err
	}
	c := img.Config
	return machines.Image{Ref: img.Ref, Digest: img.Digest, Rootfs: []string{img.Rootfs}, Entrypoint: c.Entrypoint, Cmd: c.Cmd,
		Env: c.Env, WorkDir: c.WorkingDir, User: c.User}, nil
}

// GC removes unpacked images whose digests are not in use.
func (i images) GC(ctx context.Context, inUse map[string]bool) (int, error) {
	return i.store.GC(ctx, inUse)
}

// release resolves release:APP[:vN] (default: the app's current release).
func (i images) release(ctx context.Context, ref, rest string) (machines.Image, error) {
	app, version, hasVersion := strings.Cut(rest, ":")
	if i.hostfs == nil {
		return machines.Image{}, pier.Errorf(pier.Unavailable, "release images need the runc runtime")
	}
	a, err := i.releases.App(ctx, app)
	if err != nil {
		return machines.Image{}, &pier.Error{Kind: pier.Invalid, Msg: "invalid config.image " + ref, Err: err}
	}
	v := a.Release
	if hasVersion {
		n, err := strconv.Atoi(strings.TrimPrefix(version, "v"))
		if err != nil || n < 1 {
			return machines.Image{}, pier.Errorf(pier.Invalid, "invalid config.image %q: write release:APP or release:APP:vN", ref)
		}
		v = n
	}
	if v == 0 {
		return machines.Image{}, pier.Errorf(pier.Invalid, "invalid config.image %q: %s has no release yet (pier deploy)", ref, app)
	}
	rel, err := i.releases.Release(ctx, app, v)
	if err != nil {
		return machines.Image{}, &pier.Error{Kind: pier.Invalid, Msg: "invalid config.image " + ref, Err: err}
	}
	var env []string
	for k, val := range rel.Config.Env {
		env = append(env, k+"="+val)
	}
	if rel.Image.Digest != "" && i.lowers != nil {
		// The release's own image.
		spec, err := appspec.ImageSpec(runtime.Spec{Dir: i.artifact(app, rel.BuildID), Env: env}, rel, i.lowers)
		if err != nil {
			return machines.Image{}, &pier.Error{Kind: pier.Invalid, Msg: "invalid config.image " + ref, Err: err}
		}
		return machines.Image{Ref: ref, Digest: rel.Image.Digest, Rootfs: spec.Rootfs, Mounts: spec.Mounts,
			Cmd: spec.Command, Env: spec.Env, WorkDir: spec.WorkDir, User: spec.User}, nil
	}
	static := rel.Builder == "static" && rel.Start == ""
	rootfs, mounts, cmd, baseEnv, workdir, user := i.hostfs.ReleaseImage(i.artifact(app, rel.BuildID), rel.Start, static)
	env = append(baseEnv, env...)
	return machines.Image{Ref: ref, Digest: fmt.Sprintf("release:%s:v%d:%s", app, v, rel.BuildID), Rootfs: []string{rootfs}, Mounts: mounts,
		Cmd: cmd, Env: env, WorkDir: workdir, User: user}, nil
}
