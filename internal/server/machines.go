package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/pier-dev/pier/internal/image"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime/runc"
)

// isolatedRuntime sets up the runc driver for machines. With mode "auto" a
// host that cannot run it (not root, no runc) gets nil and a warning: the
// machines API then answers 503 with what to install.
func isolatedRuntime(c Config, log *slog.Logger) (*runc.Driver, error) {
	if c.Runtime == "process" {
		return nil, nil
	}
	d, err := runc.New(runc.Config{StateDir: filepath.Join(c.DataDir, "machines"), Subnet: c.Subnet, Bridge: c.Bridge, Log: log.With("component", "runc")})
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
// classifying its errors for the API.
type images struct{ store *image.Store }

func (i images) Resolve(ctx context.Context, ref string) (machines.Image, error) {
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
	return machines.Image{Ref: img.Ref, Digest: img.Digest, Rootfs: img.Rootfs, Entrypoint: c.Entrypoint, Cmd: c.Cmd,
		Env: c.Env, WorkDir: c.WorkingDir, User: c.User}, nil
}

// GC removes unpacked images whose digests are not in use.
func (i images) GC(ctx context.Context, inUse map[string]bool) (int, error) {
	return i.store.GC(ctx, inUse)
}
