package dockerfile

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pier-dev/pier/internal/baseimage"
	"github.com/pier-dev/pier/internal/image"
	"github.com/pier-dev/pier/internal/pier"
)

// defaultPath is the PATH of images that set none (Docker's).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// fromKind classifies a FROM failure: an unreachable registry is a
// dependency not ready; anything else is the Dockerfile's to fix.
func fromKind(err error) pier.Kind {
	if errors.Is(err, image.ErrUnreachable) {
		return pier.Unavailable
	}
	return pier.Invalid
}

// from starts the image from ref: its layers become the stack's lower
// directories and the image's first layers, its config the starting one.
func (b *builder) from(ctx context.Context, ref string) error {
	switch {
	case ref == "scratch":
		b.cfg.Env = []string{defaultPath}
		return nil
	case strings.HasPrefix(ref, BasePrefix):
		return b.fromBase(ctx, strings.TrimPrefix(ref, BasePrefix))
	}
	if b.o.Images == nil {
		return fmt.Errorf("FROM %s: this server does not read images", ref)
	}
	transport, p, tag, err := image.ParseRef(ref)
	if err != nil {
		return err
	}
	if transport != image.TransportRegistry {
		abs, err := b.contextPath(p)
		if err != nil {
			return fmt.Errorf("%s: %w", ref, err)
		}
		ref = transport + ":" + abs
		if tag != "" {
			ref += ":" + tag
		}
	}
	img, release, err := b.o.Images.Open(ctx, ref)
	if err != nil {
		return err
	}
	defer release()
	return b.fromImage(ctx, img)
}

// contextPath turns the path of a local image reference into a host path
// inside the build context. Absolute paths, and paths (or symbolic links)
// that lead out of the context, are refused: the Dockerfile is the app's,
// and it reads no host file.
func (b *builder) contextPath(p string) (string, error) {
	if path.IsAbs(p) {
		return "", fmt.Errorf("image paths are relative to the app's directory (the build context), not absolute: write e.g. oci:./image")
	}
	rel := path.Clean(p)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%s is outside the app's directory", p)
	}
	if _, err := b.ctx.root.Lstat(rel); err != nil {
		return "", fmt.Errorf("%s: %w (os.Root refuses symbolic links out of the app's directory)", p, err)
	}
	ctxReal, err := filepath.EvalSymlinks(b.o.Context)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(filepath.Join(b.o.Context, filepath.FromSlash(rel)))
	if err != nil {
		return "", err
	}
	if r, err := filepath.Rel(ctxReal, real); err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", fmt.Errorf("%s leads outside the app's directory", p)
	}
	if strings.Contains(real, ":") {
		return "", fmt.Errorf("%s: image paths cannot contain ':'", p)
	}
	return real, nil
}

func (b *builder) fromBase(ctx context.Context, name string) error {
	if b.o.Bases == nil {
		return errors.New("pier's base images are not available on this server")
	}
	if !validBase(name) {
		return fmt.Errorf("pier has no base image %q: choose one of %s (FROM %s<name>)", name, strings.Join(baseimage.Names(), ", "), BasePrefix)
	}
	base, err := b.o.Bases.Get(ctx, name, b.o.Progress)
	if err != nil {
		return err
	}
	b.lowers = stack{base.Dir}
	b.layers = []v1.Layer{base.Layer}
	b.history = []v1.History{{CreatedBy: fmt.Sprintf("pier base image %s (%d Debian packages of the host)", base.Canonical, len(base.Packages)), Comment: "pier"}}
	b.cfg.Env = []string{defaultPath}
	return nil
}

func validBase(name string) bool {
	for _, n := range baseimage.Names() {
		if n == name {
			return true
		}
	}
	return false
}

// fromImage unpacks the image's layers, each into a directory of its own.
func (b *builder) fromImage(ctx context.Context, img v1.Image) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if (cf.OS != "" && cf.OS != "linux") || (cf.Architecture != "" && cf.Architecture != goruntime.GOARCH) {
		return fmt.Errorf("the image is for %s/%s, this machine runs linux/%s", cf.OS, cf.Architecture, goruntime.GOARCH)
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if len(layers) != len(cf.RootFS.DiffIDs) {
		return fmt.Errorf("the image has %d layers but its config lists %d", len(layers), len(cf.RootFS.DiffIDs))
	}
	for i, l := range layers {
		fmt.Fprintf(b.o.Progress, "  unpacking layer %d/%d\n", i+1, len(layers))
		dir, err := b.newLayerDir()
		if err != nil {
			return err
		}
		fl, err := importLayer(ctx, l, cf.RootFS.DiffIDs[i], filepath.Join(b.o.WorkDir, "blobs", strconv.Itoa(b.layerSeq)+".layer"), dir, b.lowers, &b.budget)
		if err != nil {
			return fmt.Errorf("layer %d/%d: %w", i+1, len(layers), err)
		}
		l, err := fl.layer()
		if err != nil {
			return err
		}
		b.layers = append(b.layers, l)
		b.lowers = append(stack{dir}, b.lowers...)
	}
	b.cfg = *cf.Config.DeepCopy()
	if _, ok := lookupEnv(b.cfg.Env, "PATH"); !ok {
		b.cfg.Env = append(b.cfg.Env, defaultPath)
	}
	// Keep the image's history when it matches its layers.
	nonEmpty := 0
	for _, h := range cf.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if nonEmpty == len(layers) {
		b.history = append(b.history, cf.History...)
	} else {
		for range layers {
			b.history = append(b.history, v1.History{CreatedBy: "FROM image layer", Comment: "pier"})
		}
	}
	return nil
}
