// Package image turns image references into unpacked, content-addressed,
// read-only root filesystems for machines, without a daemon.
//
// A Store keeps, under its Dir:
//
//	rootfs/<hex>/       one unpacked root filesystem per image, named by the hex
//	                    of its digest; it appears whole (by rename) or not at all
//	blobs/sha256/<hex>  the small JSON blobs (indexes, manifests, configs) of
//	                    the unpacked images, laid out like an OCI image layout,
//	                    so that digest references resolve without their source
//	tmp/                work directories of unpacks in progress
//
// Layers themselves are not kept: a rootfs is only ever made from its source.
package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/pier"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultMaxSize bounds what one image may unpack to when Store.MaxSize is 0.
const DefaultMaxSize int64 = 8 << 30

// Errors of the kinds callers may want to tell apart; check them with
// errors.Is. The wrapping error's message says what to do next.
var (
	// ErrBadRef: the reference is malformed or uses an unsupported transport.
	ErrBadRef = errors.New("bad image reference")
	// ErrNotFound: the file, directory, tag or platform named is not there.
	ErrNotFound = errors.New("image not found")
	// ErrUnreachable: the registry could not be contacted.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrTooLarge: the image unpacks to more than Store.MaxSize.
	ErrTooLarge = errors.New("image too large")
	// ErrUnsafeLayer: a layer tried to write outside its root filesystem.
	ErrUnsafeLayer = errors.New("unsafe layer")
	// ErrInvalid: the image's data is corrupt or of a kind not supported.
	ErrInvalid = errors.New("invalid image")
)

// Store unpacks images into root filesystems kept under Dir. The zero value
// with Dir set is ready to use; a Store must not be copied after first use.
// Use one Store per Dir in a process: Gets of one image through one Store
// unpack it once, while separate Stores (or processes) sharing a Dir may
// each unpack it, harmlessly, the first rename into place winning.
type Store struct {
	// Dir holds blobs/, rootfs/<hex>/ and tmp/; it is created when missing.
	Dir string
	// Log receives one line per unpack and notes on skipped entries; nil
	// discards them.
	Log *slog.Logger
	// MaxSize bounds the uncompressed size of an image's layers, added up,
	// in bytes; 0 means DefaultMaxSize.
	MaxSize int64
	// Keychain supplies registry credentials; nil pulls anonymously.
	Keychain authn.Keychain

	locks keyedLocks

	mu     sync.Mutex
	active map[string]bool // tmp/ entries being filled by this Store
}

// Image is an unpacked image.
type Image struct {
	// Ref is the reference as given to Get.
	Ref string
	// Digest is the manifest digest, "sha256:<hex>", and the cache key. For
	// docker-archive tarballs that carry no manifest (those of Docker before
	// version 25, of skopeo and of go-containerregistry) it is the config
	// digest, Docker's image ID.
	Digest string
	// Rootfs is the absolute path of the unpacked root filesystem. It is
	// shared by every machine of the image: never write to it (mount it
	// read-only, or use it as the lower layer of an overlay).
	Rootfs string
	// Config is the runtime part of the image's configuration.
	Config ImageConfig
}

// ImageConfig is what the image's config says about running it.
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
	// ExposedPorts are "port/proto" strings such as "8080/tcp", sorted.
	ExposedPorts []string
	Labels       map[string]string
	StopSignal   string
}

func configOf(cf *v1.ConfigFile) ImageConfig {
	c := cf.Config
	ic := ImageConfig{
		Entrypoint: c.Entrypoint,
		Cmd:        c.Cmd,
		Env:        c.Env,
		WorkingDir: c.WorkingDir,
		User:       c.User,
		Labels:     c.Labels,
		StopSignal: c.StopSignal,
	}
	for p := range c.ExposedPorts {
		ic.ExposedPorts = append(ic.ExposedPorts, p)
	}
	sort.Strings(ic.ExposedPorts)
	return ic
}

// Get returns the unpacked image ref names, unpacking it first unless an
// earlier Get already did. Progress lines for a person go to progress,
// which may be nil. Concurrent Gets of one image unpack it once.
func (s *Store) Get(ctx context.Context, ref string, progress io.Writer) (Image, error) {
	if progress == nil {
		progress = io.Discard
	}
	if s.Dir == "" {
		return Image{}, errors.New("image store: Dir is not set")
	}
	transport, p, tag, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	if transport == TransportRegistry {
		if img, ok := s.cachedByDigest(ctx, ref, tag); ok {
			fmt.Fprintf(progress, "using cached %s\n", img.Digest)
			return img, nil
		}
	}
	src, err := s.open(ctx, transport, p, tag)
	if err != nil {
		return Image{}, fmt.Errorf("get image %s: %w", ref, err)
	}
	defer src.close()
	img, err := s.materialize(ctx, ref, src.img, progress)
	if err != nil {
		return Image{}, fmt.Errorf("get image %s: %w", ref, err)
	}
	return img, nil
}

func (s *Store) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Store) maxSize() int64 {
	if s.MaxSize > 0 {
		return s.MaxSize
	}
	return DefaultMaxSize
}

func (s *Store) dirs() (root string, err error) {
	root, err = filepath.Abs(s.Dir)
	if err != nil {
		return "", fmt.Errorf("image store %s: %w", s.Dir, err)
	}
	for _, d := range []string{"rootfs", "blobs/sha256"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", fmt.Errorf("image store: %w", err)
		}
	}
	// Unpacks in progress are nobody else's business.
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o700); err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	return root, nil
}

// materialize returns r unpacked, unpacking it unless it already is.
func (s *Store) materialize(ctx context.Context, ref string, r *resolved, progress io.Writer) (Image, error) {
	root, err := s.dirs()
	if err != nil {
		return Image{}, err
	}
	hex := r.digest.Hex
	img := Image{
		Ref:    ref,
		Digest: r.digest.String(),
		Rootfs: filepath.Join(root, "rootfs", hex),
		Config: configOf(r.config),
	}
	unlock, err := s.locks.lock(ctx, hex)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if isDir(img.Rootfs) {
		s.log().Debug("image cached", "ref", ref, "digest", img.Digest)
		fmt.Fprintf(progress, "using cached %s\n", img.Digest)
		return img, nil
	}

	start := time.Now()
	var total int64
	for _, l := range r.layers {
		total += max(l.size, 0)
	}
	fmt.Fprintf(progress, "image %s: %d layers, %s\n", img.Digest, len(r.layers), pier.Bytes(total))
	if err := s.writeBlobs(root, r.blobs); err != nil {
		return Image{}, err
	}
	tmp, err := os.MkdirTemp(filepath.Join(root, "tmp"), "unpack-"+hex[:12]+"-")
	if err != nil {
		return Image{}, fmt.Errorf("image store: %w", err)
	}
	s.setActive(filepath.Base(tmp), true)
	defer s.setActive(filepath.Base(tmp), false)
	committed := false
	defer func() {
		if !committed {
			removeAll(tmp)
		}
	}()
	// A crash before finish must still leave a traversable root.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Image{}, err
	}

	u := newUnpacker(tmp, s.maxSize())
	for i, l := range r.layers {
		fmt.Fprintf(progress, "unpacking layer %d/%d (%s)\n", i+1, len(r.layers), pier.Bytes(l.size))
		if err := u.applyLayer(ctx, l); err != nil {
			return Image{}, fmt.Errorf("layer %d/%d %s: %w", i+1, len(r.layers), l.name(), err)
		}
	}
	if err := u.finish(); err != nil {
		return Image{}, fmt.Errorf("unpack: %w", err)
	}
	for _, n := range u.noteLines() {
		fmt.Fprintf(progress, "note: %s\n", n)
		s.log().Info("image unpack note", "ref", ref, "digest", img.Digest, "note", n)
	}
	if err := os.Rename(tmp, img.Rootfs); err != nil {
		// Another process sharing Dir may have won the race: its tree is as
		// good as ours, since both are made from the same digests.
		if !isDir(img.Rootfs) {
			return Image{}, fmt.Errorf("image store: %w", err)
		}
	} else {
		committed = true
		if err := u.finishRoot(img.Rootfs); err != nil {
			return Image{}, fmt.Errorf("unpack: %w", err)
		}
	}
	d := time.Since(start).Round(time.Millisecond)
	fmt.Fprintf(progress, "unpacked %s in %s (%s)\n", img.Digest, d, pier.Bytes(u.size))
	s.log().Info("image unpacked", "ref", ref, "digest", img.Digest, "bytes", u.size, "duration", d)
	return img, nil
}

// cachedByDigest answers a registry reference pinned by digest from the
// store alone, so that machines of an unpacked image start with the
// registry out of reach.
func (s *Store) cachedByDigest(ctx context.Context, ref, id string) (Image, bool) {
	d, err := v1.NewHash(id)
	if err != nil {
		return Image{}, false // a tag: only the registry knows what it names now
	}
	root, err := filepath.Abs(s.Dir)
	if err != nil {
		return Image{}, false
	}
	r, err := resolve(ctx, layoutFetcher{fsys: os.DirFS(root)}, d, nil)
	if err != nil {
		return Image{}, false
	}
	img := Image{Ref: ref, Digest: r.digest.String(), Rootfs: filepath.Join(root, "rootfs", r.digest.Hex), Config: configOf(r.config)}
	return img, isDir(img.Rootfs)
}

func (s *Store) writeBlobs(root string, blobs map[v1.Hash][]byte) error {
	for d, b := range blobs {
		p := filepath.Join(root, "blobs", "sha256", d.Hex)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		f, err := os.CreateTemp(filepath.Join(root, "tmp"), "blob-")
		if err != nil {
			return fmt.Errorf("image store: %w", err)
		}
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(f.Name(), 0o644)
		}
		if err == nil {
			err = os.Rename(f.Name(), p)
		}
		if err != nil {
			os.Remove(f.Name())
			return fmt.Errorf("image store: write blob %s: %w", d, err)
		}
	}
	return nil
}

func (s *Store) setActive(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active == nil {
		s.active = map[string]bool{}
	}
	if on {
		s.active[name] = true
	} else {
		delete(s.active, name)
	}
}

func (s *Store) isActive(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[name]
}

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}
