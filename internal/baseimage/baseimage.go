// Package baseimage assembles the base layers apps run on (one per
// builder: minimal, go, static, node, python, procfile) from the Debian
// packages installed on the host, the files dpkg says belong to them, and
// caches them. Nothing is pulled from a registry: the host is the source.
//
// A base is one deterministic gzipped tar layer (sorted entries, mtime 0,
// everything root-owned, no setuid/setgid bits, xattrs or device nodes)
// and the same entries unpacked into a read-only directory that machines
// use as an overlay lower dir, so at run time nothing of the host's
// filesystem is needed.
//
// Bases keeps, under its Dir:
//
//	<base>-<fingerprint>/layer.tar.gz   the layer
//	<base>-<fingerprint>/rootfs/        the layer unpacked; never write to it
//	<base>-<fingerprint>/base.json      digests, size, packages
//	tmp/                                builds in progress
//
// The fingerprint hashes the base's name, FormatVersion, the name=version
// of every package in its closure and the content of the host files taken
// outside dpkg's lists (CA bundle, /etc/os-release), so upgrading a host
// package makes a new base while an unchanged host reuses the cached one.
// Edits to packages' conffiles that leave versions alone are not noticed.
package baseimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/internal/pier"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
)

// FormatVersion is part of every fingerprint: change it whenever what a
// base holds changes for the same host packages (exclusions, generated
// files, tar details), so that cached bases are rebuilt.
const FormatVersion = 1

// Errors of the kinds callers may want to tell apart, with errors.Is.
var (
	// ErrUnknownBase: no base of that name.
	ErrUnknownBase = errors.New("unknown base image")
	// ErrMissingPackage: a package the base needs is not installed; the
	// error is a *MissingPackageError saying what to apt-get install.
	ErrMissingPackage = errors.New("package not installed")
)

// MissingPackageError says which package a base needs that the host lacks.
type MissingPackageError struct {
	Base, Package string
	// For is the installed package that depends on Package, if any.
	For string
}

func (e *MissingPackageError) Error() string {
	if e.For != "" {
		return fmt.Sprintf("base image %s needs %s (a dependency of %s): apt-get install %s",
			e.Base, e.Package, e.For, e.Package)
	}
	return fmt.Sprintf("base image %s needs %s: apt-get install %s", e.Base, e.Package, e.Package)
}

func (e *MissingPackageError) Unwrap() error { return ErrMissingPackage }

// Bases assembles and caches base images. Use one Bases per Dir in a
// process: Gets of one base through it build the base once, while separate
// processes sharing a Dir may each build it, harmlessly, the first rename
// into place winning. A Bases must not be copied after first use.
type Bases struct {
	// Dir holds the cached bases; it is created, mode 0700, when missing.
	// Required.
	Dir string
	// Log receives one line per base built; New sets a discarding logger
	// when nil.
	Log *slog.Logger

	root  string          // the host's root; "" is "/" (tests point it elsewhere)
	specs map[string]spec // nil is defaultSpecs (tests add bases)

	locks  sync.Map // ID -> chan struct{} of capacity 1 (a handful of bases: never pruned)
	builds atomic.Int64

	mu     sync.Mutex
	active map[string]bool // tmp/ entries being filled by this Bases
}

// New returns Bases keeping its bases in dir, logging to log (nil discards).
func New(dir string, log *slog.Logger) *Bases {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bases{Dir: dir, Log: log}
}

// Base is an assembled base image.
type Base struct {
	// Name is the name asked for ("go"); Canonical the base actually built
	// ("minimal"), which bases under other names share.
	Name, Canonical string
	// ID names the cache entry, "<canonical>-<fingerprint prefix>"; GC keeps
	// the bases whose IDs it is given.
	ID string
	// Fingerprint is the hex sha256 the cache is keyed by.
	Fingerprint string
	// Layer is the compressed layer, read from its file under Dir.
	Layer v1.Layer
	// DiffID is the sha256 of the uncompressed tar, Digest of the gzip.
	DiffID, Digest v1.Hash
	// Size is the compressed layer's size in bytes; Unpacked is the total
	// size of its regular files.
	Size, Unpacked int64
	// Dir is the layer unpacked (absolute), root-owned, with the tar's
	// modes. It is shared: mount it read-only or as an overlay lower dir.
	Dir string
	// Packages are the Debian packages it was made from, "name=version",
	// sorted.
	Packages []string
}

// meta is base.json.
type meta struct {
	Canonical   string   `json:"canonical"`
	Fingerprint string   `json:"fingerprint"`
	DiffID      v1.Hash  `json:"diff_id"`
	Digest      v1.Hash  `json:"digest"`
	Size        int64    `json:"size"`
	Unpacked    int64    `json:"unpacked"`
	Files       int      `json:"files"`
	Packages    []string `json:"packages"`
}

// Get returns the base called name, assembling it first unless it is
// cached for the host's current packages. Progress lines for a person go
// to progress, which may be nil.
func (b *Bases) Get(ctx context.Context, name string, progress io.Writer) (Base, error) {
	if progress == nil {
		progress = io.Discard
	}
	if b.Dir == "" {
		return Base{}, errors.New("base images: Dir is not set")
	}
	specs := b.specs
	if specs == nil {
		specs = defaultSpecs()
	}
	sp, ok := specs[name]
	if !ok {
		return Base{}, fmt.Errorf("%w %q: want one of %s", ErrUnknownBase, name, strings.Join(Names(), ", "))
	}
	canonical := name
	if sp.Canonical != "" {
		canonical, sp = sp.Canonical, specs[sp.Canonical]
	}
	root := b.root
	if root == "" {
		root = "/"
	}
	db, err := loadDB(root)
	if err != nil {
		return Base{}, fmt.Errorf("base image %s: %w", name, err)
	}
	pkgs, err := db.closure(name, slices.Concat(minimalRequired, sp.Required), slices.Concat(minimalOptional, sp.Optional))
	if err != nil {
		return Base{}, err
	}
	extras, err := hostExtras(root)
	if err != nil {
		return Base{}, fmt.Errorf("base image %s: %w", name, err)
	}
	fp, err := fingerprint(root, canonical, pkgs, extras)
	if err != nil {
		return Base{}, fmt.Errorf("base image %s: %w", name, err)
	}
	id := canonical + "-" + fp[:20]

	dir, err := b.dir()
	if err != nil {
		return Base{}, err
	}
	unlock, err := b.lock(ctx, id)
	if err != nil {
		return Base{}, fmt.Errorf("base image %s: %w", name, err)
	}
	defer unlock()
	if m, err := readMeta(filepath.Join(dir, id)); err == nil && m.Fingerprint == fp && complete(filepath.Join(dir, id)) {
		fmt.Fprintf(progress, "using cached base image %s (%d Debian packages)\n", name, len(m.Packages))
		return b.base(name, id, dir, m), nil
	}
	m, err := b.build(ctx, root, db, canonical, fp, pkgs, extras, dir, id, progress)
	if err != nil {
		return Base{}, fmt.Errorf("base image %s: %w", name, err)
	}
	return b.base(name, id, dir, m), nil
}

func (b *Bases) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

// dir returns the absolute Dir, made with tmp/ in it.
func (b *Bases) dir() (string, error) {
	dir, err := filepath.Abs(b.Dir)
	if err != nil {
		return "", fmt.Errorf("base images %s: %w", b.Dir, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return "", fmt.Errorf("base images: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("base images: %w", err)
	}
	return dir, nil
}

func fingerprint(root, canonical string, pkgs []*pkg, extras []*entry) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "pier base image\nformat %d\nbase %s\n", FormatVersion, canonical)
	for _, p := range pkgs {
		fmt.Fprintf(h, "package %s:%s=%s\n", p.Name, p.Arch, p.Version)
		for _, tree := range hostTrees[p.Name] {
			if err := treeStamp(h, root, tree); err != nil {
				return "", fmt.Errorf("%s's %s: %w", p.Name, tree, err)
			}
		}
	}
	hashEntries(h, extras)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// lock takes the mutex of the base id, or gives up when ctx is done.
func (b *Bases) lock(ctx context.Context, id string) (unlock func(), err error) {
	v, _ := b.locks.LoadOrStore(id, make(chan struct{}, 1))
	ch := v.(chan struct{})
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// complete says whether a cached base still has its layer and rootfs
// (base.json is written last, but either may have been removed by hand).
func complete(dir string) bool {
	_, err1 := os.Stat(filepath.Join(dir, "layer.tar.gz"))
	fi, err2 := os.Stat(filepath.Join(dir, "rootfs"))
	return err1 == nil && err2 == nil && fi.IsDir()
}

func readMeta(dir string) (meta, error) {
	var m meta
	raw, err := os.ReadFile(filepath.Join(dir, "base.json"))
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(raw, &m)
}

func (b *Bases) base(name, id, dir string, m meta) Base {
	d := filepath.Join(dir, id)
	cl := &layerFile{path: filepath.Join(d, "layer.tar.gz"), digest: m.Digest, diffID: m.DiffID, size: m.Size}
	layer, _ := partial.CompressedToLayer(cl) // never fails
	return Base{
		Name: name, Canonical: m.Canonical, ID: id, Fingerprint: m.Fingerprint,
		Layer: layer, DiffID: m.DiffID, Digest: m.Digest,
		Size: m.Size, Unpacked: m.Unpacked,
		Dir:      filepath.Join(d, "rootfs"),
		Packages: m.Packages,
	}
}

// build assembles a base in tmp/ and renames it into place as dir/id.
func (b *Bases) build(ctx context.Context, root string, db *dpkgDB, canonical, fp string, pkgs []*pkg, extras []*entry, dir, id string, progress io.Writer) (meta, error) {
	start := time.Now()
	b.builds.Add(1)
	fmt.Fprintf(progress, "assembling base image %s from %d Debian packages ...\n", canonical, len(pkgs))
	c := newCollector(root)
	m := meta{Canonical: canonical, Fingerprint: fp}
	for _, p := range pkgs {
		m.Packages = append(m.Packages, p.ID())
		files, err := db.files(p)
		if err != nil {
			return meta{}, err
		}
		for _, f := range files {
			if err := c.addHost(f); err != nil {
				return meta{}, fmt.Errorf("package %s: %s: %w", p.Name, f, err)
			}
		}
		for _, tree := range hostTrees[p.Name] {
			if err := c.addTree(tree); err != nil {
				return meta{}, fmt.Errorf("package %s: %s: %w", p.Name, tree, err)
			}
		}
	}
	for _, e := range extras {
		c.put(e)
	}
	for _, e := range generated() {
		c.put(e)
	}
	entries := c.sorted()

	tmp, err := b.tmpDir(dir, id)
	if err != nil {
		return meta{}, err
	}
	defer b.release(tmp)
	w, err := write(ctx, entries, filepath.Join(tmp, "layer.tar.gz"), filepath.Join(tmp, "rootfs"))
	if err != nil {
		return meta{}, err
	}
	m.DiffID, m.Digest, m.Size, m.Unpacked, m.Files = w.DiffID, w.Digest, w.Size, w.Unpacked, w.Files
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return meta{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "base.json"), raw, 0o600); err != nil {
		return meta{}, err
	}
	_ = syncFS(tmp) // the files of the rootfs, before the rename that publishes them
	if err := publish(tmp, filepath.Join(dir, id), fp); err != nil {
		return meta{}, err
	}
	el := time.Since(start)
	fmt.Fprintf(progress, "done: %s (%d files, layer %s) in %.1fs\n",
		pier.Bytes(w.Unpacked), w.Files, pier.Bytes(w.Size), el.Seconds())
	b.log().Info("base image assembled", "base", canonical, "id", id, "packages", len(pkgs),
		"files", w.Files, "unpacked", w.Unpacked, "layer", w.Size, "took", el.Round(time.Millisecond), "left out", c.skipped)
	return m, nil
}
