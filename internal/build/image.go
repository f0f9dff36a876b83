package build

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pier-dev/pier/internal/baseimage"
	"github.com/pier-dev/pier/internal/dockerfile"
	"github.com/pier-dev/pier/internal/fspath"
	"github.com/pier-dev/pier/internal/image"
	"github.com/pier-dev/pier/internal/pier"
)

// ImageStore keeps images by repository and tag in an OCI image layout
// (internal/imagestore).
type ImageStore interface {
	Put(ctx context.Context, repo, tag string, img v1.Image) (v1.Hash, error)
	Dir() string
}

// Imager turns finished builds into release images: a base image made
// from the host's Debian packages for the builder (internal/baseimage),
// for static sites a layer holding pier's file server, and a layer holding
// the built tree at /app. The image is self-contained: machines run it on
// its own layers, with nothing of the host's filesystem, and it leaves
// pier through export and the registry unchanged.
type Imager struct {
	// Bases assembles and caches the base images; required.
	Bases *baseimage.Bases
	// Store keeps the images, repository = app, tag = build id; required.
	Store ImageStore
	// Self is pier's own binary, which serves static sites.
	Self string
	// Dir holds pier's own layers (the static file server) and layers
	// being written; required.
	Dir string
	// Unpack opens the FROM images of Dockerfile builds and unpacks the
	// images they make, for machines to run; required for Dockerfiles.
	Unpack *image.Store
}

// Image paths and settings every release image has.
const (
	AppDir  = "/app"
	AppUser = "65534:65534" // nobody:nogroup
	AppPort = 8080
	// serverPath is where static sites' file server (pier) sits.
	serverPath = "/.pier/pier"
	imagePath  = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Command is the argv that starts a release: a static site's file
// server, or the start command in a shell (which it replaces when the
// command is simple, so signals reach the app itself).
func Command(builder, start string) []string {
	if builder == "static" && start == "" {
		return []string{serverPath, "static-serve", "--dir", AppDir}
	}
	if !strings.ContainsAny(start, ";&|\n()`$<>") {
		start = "exec " + start
	}
	return []string{"/bin/sh", "-c", start}
}

// Make builds the image of the build id of app, whose tree is dir, and
// stores it under app:<id>. It returns what a release records of it.
func (im *Imager) Make(ctx context.Context, app, id, dir string, plan Plan, out io.Writer) (pier.ReleaseImage, error) {
	begin := time.Now()
	base, err := im.Bases.Get(ctx, plan.Builder, out)
	if err != nil {
		return pier.ReleaseImage{}, fmt.Errorf("base image %s: %w", plan.Builder, err)
	}
	tmp := filepath.Join(im.Dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return pier.ReleaseImage{}, err
	}
	layers := []v1.Layer{base.Layer}
	lowers := []string{base.ID}
	if plan.Builder == "static" && plan.Start == "" {
		srv, srvID, err := im.serverLayer()
		if err != nil {
			return pier.ReleaseImage{}, err
		}
		layers = append(layers, srv)
		lowers = append([]string{srvID}, lowers...)
	}
	appLayerPath := filepath.Join(tmp, id+".tar.gz")
	defer os.Remove(appLayerPath)
	if err := writeTreeLayer(appLayerPath, dir, strings.TrimPrefix(AppDir, "/")); err != nil {
		return pier.ReleaseImage{}, fmt.Errorf("app layer: %w", err)
	}
	appLayer, err := tarball.LayerFromFile(appLayerPath, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return pier.ReleaseImage{}, fmt.Errorf("app layer: %w", err)
	}
	layers = append(layers, appLayer)

	cfg, err := empty.Image.ConfigFile()
	if err != nil {
		return pier.ReleaseImage{}, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", goruntime.GOARCH
	cfg.Created = v1.Time{Time: begin.UTC().Truncate(time.Second)}
	cfg.Config = v1.Config{
		Cmd:          Command(plan.Builder, plan.Start),
		Env:          []string{imagePath, "HOME=/tmp", fmt.Sprintf("PORT=%d", AppPort)},
		WorkingDir:   AppDir,
		User:         AppUser,
		ExposedPorts: map[string]struct{}{fmt.Sprintf("%d/tcp", AppPort): {}},
		Labels: map[string]string{
			"org.opencontainers.image.title": app,
			"dev.pier.build":                 id,
			"dev.pier.builder":               plan.Builder,
			"dev.pier.base":                  base.ID,
		},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return pier.ReleaseImage{}, err
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		return pier.ReleaseImage{}, err
	}
	digest, err := im.Store.Put(ctx, app, id, img)
	if err != nil {
		return pier.ReleaseImage{}, fmt.Errorf("store image: %w", err)
	}
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return pier.ReleaseImage{}, err
		}
		size += n
	}
	fmt.Fprintf(out, "==> Image %s (%s, base %s) in %s\n", digest, pier.Bytes(size), base.Name, time.Since(begin).Round(10*time.Millisecond))
	return pier.ReleaseImage{Digest: digest.String(), Size: size, Lowers: lowers}, nil
}

// MakeDockerfile builds the image of a Dockerfile app, whose source is
// dir, running its RUN steps in build machines of sb, stores it under
// app:<id> and unpacks it for machines to run.
func (im *Imager) MakeDockerfile(ctx context.Context, sb *Sandbox, app, id, dir string, plan Plan, out io.Writer) (pier.ReleaseImage, error) {
	if im.Unpack == nil || sb == nil {
		return pier.ReleaseImage{}, pier.Errorf(pier.Invalid, "Dockerfile builds need isolated build machines: run `pier server` as root with runc installed")
	}
	begin := time.Now()
	work := filepath.Join(im.Dir, "tmp", "dockerfile-"+id)
	defer os.RemoveAll(work)
	res, err := dockerfile.Build(ctx, dockerfile.Options{Context: dir, WorkDir: work, ID: "build-" + id, App: app,
		Runner: sb, Bases: im.Bases, Images: im.Unpack, NoNetwork: plan.NoNetwork, Progress: out})
	if err != nil {
		return pier.ReleaseImage{}, err
	}
	digest, err := im.Store.Put(ctx, app, id, res.Image)
	if err != nil {
		return pier.ReleaseImage{}, fmt.Errorf("store image: %w", err)
	}
	got, err := im.Unpack.Get(ctx, fmt.Sprintf("oci:%s:%s:%s", im.Store.Dir(), app, id), io.Discard)
	if err != nil {
		return pier.ReleaseImage{}, fmt.Errorf("unpack image: %w", err)
	}
	layers, err := res.Image.Layers()
	if err != nil {
		return pier.ReleaseImage{}, err
	}
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return pier.ReleaseImage{}, err
		}
		size += n
	}
	c := res.Config
	run := &pier.ImageRun{Cmd: dockerfile.StartCommand(c), Env: c.Env, WorkDir: c.WorkingDir, User: c.User, Port: dockerfile.Port(c)}
	fmt.Fprintf(out, "==> Image %s (%s) in %s\n", digest, pier.Bytes(size), time.Since(begin).Round(10*time.Millisecond))
	return pier.ReleaseImage{Digest: digest.String(), Size: size, Lowers: []string{"image-" + filepath.Base(got.Rootfs)}, Run: run}, nil
}

// Lower returns the host directory of a lower layer a release image
// records (its base, pier's file server, a Dockerfile image unpacked), to
// run the image's machines on.
func (im *Imager) Lower(id string) (string, error) {
	var dir string
	switch {
	case strings.HasPrefix(id, "image-") && im.Unpack != nil:
		dir = filepath.Join(im.Unpack.Dir, "rootfs", strings.TrimPrefix(id, "image-"))
	case strings.HasPrefix(id, "pier-"):
		dir = filepath.Join(im.Dir, id, "rootfs")
	default:
		dir = filepath.Join(im.Bases.Dir, id, "rootfs")
	}
	if !isDir(dir) {
		return "", pier.Errorf(pier.Failed, "layer %s of the release image is no longer on disk (deploy again to rebuild it)", id)
	}
	return dir, nil
}

// serverLayer is a layer with pier's binary at /.pier/pier, for static
// sites, kept under Dir by the binary's digest: both the layer and its
// unpacked directory.
func (im *Imager) serverLayer() (v1.Layer, string, error) {
	f, err := os.Open(im.Self)
	if err != nil {
		return nil, "", fmt.Errorf("static file server: %w", err)
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return nil, "", err
	}
	id := "pier-" + hex.EncodeToString(h.Sum(nil))[:20]
	dir := filepath.Join(im.Dir, id)
	layerPath := filepath.Join(dir, "layer.tar.gz")
	if !isDir(filepath.Join(dir, "rootfs")) {
		tmp, err := os.MkdirTemp(filepath.Join(im.Dir, "tmp"), id+"-")
		if err != nil {
			return nil, "", err
		}
		defer os.RemoveAll(tmp)
		bin := filepath.Join(tmp, "rootfs", strings.TrimPrefix(serverPath, "/"))
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			return nil, "", err
		}
		if err := fspath.CopyFile(im.Self, bin, 0o755); err != nil {
			return nil, "", err
		}
		if err := writeTreeLayer(filepath.Join(tmp, "layer.tar.gz"), filepath.Join(tmp, "rootfs", ".pier"), ".pier"); err != nil {
			return nil, "", err
		}
		if err := os.Rename(tmp, dir); err != nil && !isDir(filepath.Join(dir, "rootfs")) {
			return nil, "", err
		}
	}
	l, err := tarball.LayerFromFile(layerPath, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, "", err
	}
	return l, id, nil
}

// writeTreeLayer writes the tree at dir as a gzipped tar layer whose
// entries sit under prefix: sorted, root-owned, without set-id bits,
// symlinks kept as links (never followed), and nothing but directories,
// regular files and symlinks.
func writeTreeLayer(path, dir, prefix string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := prefix
		if rel != "." {
			name = prefix + "/" + filepath.ToSlash(rel)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: name, Mode: int64(fi.Mode().Perm() | fi.Mode()&fs.ModeSticky), ModTime: fi.ModTime().UTC().Truncate(time.Second), Format: tar.FormatPAX}
		switch {
		case d.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case d.Type().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		default:
			return nil // sockets, fifos, devices: never part of a release
		}
		hdr.Mode &^= int64(fs.ModeSticky) // tar's c_ISVTX is set below
		if fi.Mode()&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			// O_NOFOLLOW: the tree is settled, but never read through a link.
			src, err := os.OpenFile(p, os.O_RDONLY|noFollow, 0)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, src, hdr.Size)
			src.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		}
		return nil
	})
	err = errors.Join(err, tw.Close(), zw.Close(), f.Sync(), f.Close())
	if err != nil {
		os.Remove(path)
	}
	return err
}
