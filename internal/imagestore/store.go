// Package imagestore keeps pier's release images on disk, content-addressed,
// in one OCI image layout directory (the format of `skopeo copy oci:DIR`),
// and writes images out as docker-archive or OCI-archive tarballs.
//
// An image is stored under a repository and a tag: the release v3 of app
// web is web:v3. Each tag is one manifest descriptor in the layout's
// index.json, annotated org.opencontainers.image.ref.name=REPO:TAG, so the
// directory can be read as it is by skopeo, crane or umoci:
//
//	<dir>/oci-layout           {"imageLayoutVersion": "1.0.0"}
//	<dir>/index.json           the tags; replaced whole, by rename
//	<dir>/blobs/sha256/<hex>   manifests, configs and layers, shared by
//	                           every image that names them
//
// Blobs appear whole (written to a temporary file, checked against their
// digest, then renamed) and are never rewritten; GC removes those no tag
// leads to. The directory is private to the server's user (0700, files
// 0600), since images hold the apps' code.
package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Errors callers tell apart with errors.Is; the wrapping error names what
// was asked for.
var (
	// ErrNotFound: the repository, tag or digest is not in the store.
	ErrNotFound = errors.New("image not found")
	// ErrInvalidName: a repository or tag name breaks the registry rules.
	ErrInvalidName = errors.New("invalid image name")
)

// RefNameAnnotation is the index.json annotation naming a descriptor's
// REPO:TAG.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

var (
	// repoRE is one path component of a docker repository name; pier's
	// repositories are app names, which always fit.
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// maxRepoLen keeps REPO:TAG well inside the 255 characters registries allow.
const maxRepoLen = 128

// ValidRepo reports whether repo can name a repository: lowercase letters
// and digits, with single separators (. _ __ or dashes) between them.
func ValidRepo(repo string) error {
	if len(repo) > maxRepoLen || !repoRE.MatchString(repo) {
		return fmt.Errorf("%w: repository %q must be lowercase letters and digits with . _ or - between them, at most %d characters", ErrInvalidName, repo, maxRepoLen)
	}
	return nil
}

// ValidTag reports whether tag can name a tag.
func ValidTag(tag string) error {
	if !tagRE.MatchString(tag) {
		return fmt.Errorf("%w: tag %q must be letters, digits, _ . or -, not starting with . or -, at most 128 characters", ErrInvalidName, tag)
	}
	return nil
}

// Store is an OCI image layout directory holding tagged images. It is safe
// for concurrent use by one process; a directory must have one Store.
type Store struct {
	dir  string
	path layout.Path

	// writers is held shared by Put while it writes blobs and exclusively by
	// GC, so that GC never takes the blobs of an image not yet tagged.
	writers sync.RWMutex
	// mu guards index, which is always what index.json holds.
	mu    sync.RWMutex
	index []v1.Descriptor

	// manifests caches parsed manifests by digest; they never change.
	cacheMu   sync.Mutex
	manifests map[v1.Hash]*v1.Manifest
}

const layoutFile = `{"imageLayoutVersion": "1.0.0"}` + "\n"

// Open opens the store in dir, creating an empty layout if there is none.
func Open(dir string) (*Store, error) {
	s := &Store{dir: dir, path: layout.Path(dir), manifests: map[v1.Hash]*v1.Manifest{}}
	if err := os.MkdirAll(s.blobDir(), 0o700); err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	// MkdirAll leaves existing directories as they were: make sure other
	// users cannot look in, whoever created it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(dir, "oci-layout", []byte(layoutFile)); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := s.writeIndex(nil); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("open image store: %w", err)
	default:
		var im v1.IndexManifest
		if err := json.Unmarshal(b, &im); err != nil {
			return nil, fmt.Errorf("open image store: %s is damaged: %w", filepath.Join(dir, "index.json"), err)
		}
		s.index = im.Manifests
	}
	return s, nil
}

// Dir is the layout directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) blobDir() string { return filepath.Join(s.dir, "blobs", "sha256") }

func (s *Store) blobPath(h v1.Hash) string { return filepath.Join(s.blobDir(), h.Hex) }

// Put stores img as repo:tag, replacing the image the tag named before, and
// returns the image's manifest digest. Blobs already in the store are not
// written again. The tag moves only once every blob is in place.
//
// The manifest is stored as it is, Docker v2 or OCI. Prefer OCI media
// types: skopeo's oci:DIR:web:v3 finds only OCI manifests by name (the
// registry and Export serve both).
func (s *Store) Put(ctx context.Context, repo, tag string, img v1.Image) (v1.Hash, error) {
	if err := ValidRepo(repo); err != nil {
		return v1.Hash{}, err
	}
	if err := ValidTag(tag); err != nil {
		return v1.Hash{}, err
	}
	s.writers.RLock()
	defer s.writers.RUnlock()
	desc, err := s.writeImage(ctx, img)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("store image %s:%s: %w", repo, tag, err)
	}
	ref := repo + ":" + tag
	desc.Annotations = map[string]string{RefNameAnnotation: ref}

	s.mu.Lock()
	defer s.mu.Unlock()
	next := slices.DeleteFunc(slices.Clone(s.index), func(d v1.Descriptor) bool { return d.Annotations[RefNameAnnotation] == ref })
	next = append(next, desc)
	if err := s.writeIndex(next); err != nil {
		return v1.Hash{}, fmt.Errorf("store image %s: %w", ref, err)
	}
	return desc.Digest, nil
}

// writeImage writes img's layers, config and manifest, in that order (a
// streamed layer's digest, and so the manifest, is only known once it is
// read), and returns the manifest's descriptor.
func (s *Store) writeImage(ctx context.Context, img v1.Image) (v1.Descriptor, error) {
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return v1.Descriptor{}, fmt.Errorf("unsupported manifest type %s (want an OCI or Docker v2 image manifest)", mt)
	}
	layers, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, l := range layers {
		if err := s.writeLayer(ctx, l); err != nil {
			return v1.Descriptor{}, err
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := s.writeBytes(ctx, cfgName, cfg); err != nil {
		return v1.Descriptor{}, fmt.Errorf("config: %w", err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := s.writeBytes(ctx, digest, raw); err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	return v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: digest}, nil
}

func (s *Store) writeLayer(ctx context.Context, l v1.Layer) error {
	// A streamed layer knows neither its digest nor its size before it is
	// read: it is always written, and named by what was read.
	d, err := l.Digest()
	if errors.Is(err, stream.ErrNotComputed) {
		d = v1.Hash{}
	} else if err != nil {
		return err
	}
	size, err := l.Size()
	if errors.Is(err, stream.ErrNotComputed) {
		size = -1
	} else if err != nil {
		return err
	}
	if d.Hex != "" && size >= 0 && s.has(d, size) {
		return nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	_, err = s.writeBlob(ctx, d, size, rc)
	// Closing a streamed layer's reader is what completes its digest.
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	return nil
}

func (s *Store) writeBytes(ctx context.Context, h v1.Hash, b []byte) error {
	if s.has(h, int64(len(b))) {
		return nil
	}
	_, err := s.writeBlob(ctx, h, int64(len(b)), bytes.NewReader(b))
	return err
}

// has reports whether blob h is stored with the given size. Blobs are
// checked when written, so the size is enough to tell a complete one.
func (s *Store) has(h v1.Hash, size int64) bool {
	if h.Algorithm != "sha256" {
		return false
	}
	fi, err := os.Stat(s.blobPath(h))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == size
}

// writeBlob copies r into the store as blob want (zero: whatever r's
// digest is) of size bytes (negative: unknown) and returns its digest. The
// blob appears whole, by rename, only if r has that digest and size.
func (s *Store) writeBlob(ctx context.Context, want v1.Hash, size int64, r io.Reader) (v1.Hash, error) {
	if want.Hex != "" && want.Algorithm != "sha256" {
		return v1.Hash{}, fmt.Errorf("unsupported digest algorithm %s", want.Algorithm)
	}
	f, err := os.CreateTemp(s.blobDir(), ".tmp-")
	if err != nil {
		return v1.Hash{}, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, r})
	if err != nil {
		return v1.Hash{}, err
	}
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	if size >= 0 && n != size {
		return v1.Hash{}, fmt.Errorf("read %d bytes, want %d", n, size)
	}
	if want.Hex != "" && got != want {
		return v1.Hash{}, fmt.Errorf("content has digest %s, want %s", got, want)
	}
	if err := f.Sync(); err != nil {
		return v1.Hash{}, err
	}
	if err := f.Close(); err != nil {
		return v1.Hash{}, err
	}
	if err := os.Rename(f.Name(), s.blobPath(got)); err != nil {
		return v1.Hash{}, err
	}
	ok = true
	return got, nil
}

// writeIndex replaces index.json with descs and, on success, makes them
// the index. Callers hold mu.
func (s *Store) writeIndex(descs []v1.Descriptor) error {
	if descs == nil {
		descs = []v1.Descriptor{}
	}
	b, err := json.MarshalIndent(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: descs}, "", "  ")
	if err != nil {
		return err
	}
	// The renames of the blobs it names must be durable before it is.
	if err := syncDir(s.blobDir()); err != nil {
		return err
	}
	if err := writeFileAtomic(s.dir, "index.json", append(b, '\n')); err != nil {
		return err
	}
	s.index = descs
	return nil
}

// writeFileAtomic replaces dir/name with b (mode 0600) by rename.
func writeFileAtomic(dir, name string, b []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// splitRef splits a REPO:TAG annotation.
func splitRef(d v1.Descriptor) (repo, tag string, ok bool) {
	return strings.Cut(d.Annotations[RefNameAnnotation], ":")
}

// find returns the descriptor of repo's ref, a tag or a manifest digest
// (sha256:...) that one of repo's tags names. Callers hold mu.
func (s *Store) find(repo, ref string) (v1.Descriptor, error) {
	if err := ValidRepo(repo); err != nil {
		return v1.Descriptor{}, err
	}
	if strings.HasPrefix(ref, "sha256:") {
		h, err := v1.NewHash(ref)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("%w: digest %q", ErrInvalidName, ref)
		}
		for _, d := range s.index {
			if r, _, _ := splitRef(d); r == repo && d.Digest == h {
				return d, nil
			}
		}
		return v1.Descriptor{}, fmt.Errorf("%w: %s@%s", ErrNotFound, repo, ref)
	}
	if err := ValidTag(ref); err != nil {
		return v1.Descriptor{}, err
	}
	for _, d := range s.index {
		if r, t, _ := splitRef(d); r == repo && t == ref {
			return d, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("%w: %s:%s", ErrNotFound, repo, ref)
}

// Image returns repo's image ref, a tag or a manifest digest (sha256:...)
// that one of repo's tags names. Its blobs are read when asked for: they
// may be gone by then if the image was untagged and collected meanwhile.
func (s *Store) Image(ctx context.Context, repo, ref string) (v1.Image, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d, err := s.find(repo, ref)
	if err != nil {
		return nil, err
	}
	img, err := s.path.Image(d.Digest)
	if err != nil {
		return nil, fmt.Errorf("read image %s:%s: %w", repo, ref, err)
	}
	return img, nil
}

// Tags lists repo's tags, sorted; ErrNotFound if it has none.
func (s *Store) Tags(ctx context.Context, repo string) ([]string, error) {
	if err := ValidRepo(repo); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var tags []string
	for _, d := range s.index {
		if r, t, _ := splitRef(d); r == repo {
			tags = append(tags, t)
		}
	}
	if len(tags) == 0 {
		return nil, fmt.Errorf("%w: repository %s", ErrNotFound, repo)
	}
	slices.Sort(tags)
	return tags, nil
}

// Repos lists the repositories with at least one tag, sorted.
func (s *Store) Repos(ctx context.Context) ([]string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	repos := []string{}
	for _, d := range s.index {
		if r, _, ok := splitRef(d); ok {
			repos = append(repos, r)
		}
	}
	slices.Sort(repos)
	return slices.Compact(repos), nil
}

// Untag removes repo:tag. The image's blobs stay until GC.
func (s *Store) Untag(ctx context.Context, repo, tag string) error {
	if err := ValidRepo(repo); err != nil {
		return err
	}
	if err := ValidTag(tag); err != nil {
		return err
	}
	ref := repo + ":" + tag
	return s.remove(func(d v1.Descriptor) bool { return d.Annotations[RefNameAnnotation] == ref }, true, ref)
}

// RemoveRepo removes every tag of repo (an app destroyed); a repository
// with no tags is not an error. The blobs stay until GC.
func (s *Store) RemoveRepo(ctx context.Context, repo string) error {
	if err := ValidRepo(repo); err != nil {
		return err
	}
	return s.remove(func(d v1.Descriptor) bool { r, _, _ := splitRef(d); return r == repo }, false, repo)
}

func (s *Store) remove(match func(v1.Descriptor) bool, mustExist bool, what string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := slices.DeleteFunc(slices.Clone(s.index), match)
	if len(next) == len(s.index) {
		if mustExist {
			return fmt.Errorf("%w: %s", ErrNotFound, what)
		}
		return nil
	}
	if err := s.writeIndex(next); err != nil {
		return fmt.Errorf("remove %s: %w", what, err)
	}
	return nil
}

// Blob opens blob h if an image of repo names it (as its manifest, config
// or a layer): a registry serves a repository's blobs, not the store's.
func (s *Store) Blob(ctx context.Context, repo string, h v1.Hash) (io.ReadSeekCloser, error) {
	if err := ValidRepo(repo); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	found := false
	for _, d := range s.index {
		if r, _, _ := splitRef(d); r != repo {
			continue
		}
		if d.Digest == h {
			found = true
			break
		}
		m, err := s.manifest(d.Digest)
		if err != nil {
			return nil, err
		}
		if m.Config.Digest == h || slices.ContainsFunc(m.Layers, func(l v1.Descriptor) bool { return l.Digest == h }) {
			found = true
			break
		}
	}
	if !found || h.Algorithm != "sha256" {
		return nil, fmt.Errorf("%w: blob %s in %s", ErrNotFound, h, repo)
	}
	f, err := os.Open(s.blobPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: blob %s in %s (the store lost it)", ErrNotFound, h, repo)
	}
	return f, err
}

// manifest returns the parsed manifest blob h.
func (s *Store) manifest(h v1.Hash) (*v1.Manifest, error) {
	s.cacheMu.Lock()
	m, ok := s.manifests[h]
	s.cacheMu.Unlock()
	if ok {
		return m, nil
	}
	f, err := os.Open(s.blobPath(h))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", h, err)
	}
	defer f.Close()
	m, err = v1.ParseManifest(f)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", h, err)
	}
	s.cacheMu.Lock()
	s.manifests[h] = m
	s.cacheMu.Unlock()
	return m, nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
