package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/pier-dev/pier/internal/pier"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Limits on the JSON blobs read into memory; real ones are a few KiB.
const (
	maxManifestSize = 4 << 20
	maxConfigSize   = 16 << 20
)

// refNameAnnotation tags images in an OCI layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// resolved is an image located in its source: what to unpack and under
// which key.
type resolved struct {
	digest v1.Hash // the cache key: the manifest digest, or the config digest of a docker-archive image
	config *v1.ConfigFile
	layers []layerSource
	// blobs are the JSON blobs met on the way (indexes, manifest, config),
	// kept in the store's blobs/ so that digest references resolve offline.
	blobs map[v1.Hash][]byte
}

// layerSource is one layer as its source stores it.
type layerSource struct {
	digest v1.Hash // of the stored bytes; zero when the source does not say (docker-archive)
	diffID v1.Hash // of the uncompressed tar, from the config
	size   int64   // stored size, for progress; -1 when unknown
	open   func() (io.ReadCloser, error)
}

func (l layerSource) name() string {
	if l.digest.Hex != "" {
		return l.digest.String()
	}
	return l.diffID.String()
}

// source is an opened reference: the image, and what to close when done.
type source struct {
	img   *resolved
	close func()
}

func (s *Store) open(ctx context.Context, transport, p, tag string) (source, error) {
	noop := func() {}
	switch transport {
	case TransportOCI:
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return source{}, fmt.Errorf("OCI layout directory %s does not exist: check the path, or make one with `skopeo copy docker://IMAGE oci:%s:TAG`: %w", p, p, ErrNotFound)
		}
		if err != nil {
			return source{}, err
		}
		if !fi.IsDir() {
			return source{}, fmt.Errorf("%s is a file, not an OCI layout directory: for a tar of a layout write oci-archive:%s, for a `docker save` tarball docker-archive:%s: %w", p, p, p, ErrBadRef)
		}
		r, err := resolveLayout(ctx, os.DirFS(p), "oci:"+p, tag)
		return source{img: r, close: noop}, err
	case TransportOCIArchive, TransportDockerArchive:
		t, err := openTarFS(p, transport)
		if err != nil {
			return source{}, err
		}
		var r *resolved
		if transport == TransportOCIArchive {
			r, err = resolveLayout(ctx, t, "oci-archive:"+p, tag)
		} else {
			r, err = resolveDockerArchive(ctx, t, p, tag)
		}
		if err != nil {
			t.Close()
			return source{}, err
		}
		return source{img: r, close: func() { t.Close() }}, nil
	case TransportRegistry:
		r, err := s.resolveRemote(ctx, p, tag)
		return source{img: r, close: noop}, err
	}
	return source{}, fmt.Errorf("transport %q: %s: %w", transport, refHelp, ErrBadRef)
}

// blobFetcher reads the blobs of one image source.
type blobFetcher interface {
	// manifest returns the verified bytes of a manifest or index.
	manifest(ctx context.Context, d v1.Hash) ([]byte, error)
	// config returns the verified bytes of a config blob.
	config(ctx context.Context, d v1.Hash) ([]byte, error)
	// layer returns a function opening a layer blob's stored bytes.
	layer(d v1.Hash) func() (io.ReadCloser, error)
}

// resolve follows the manifest or index d (whose bytes are raw, or nil to
// fetch them) to the image for this machine's platform.
func resolve(ctx context.Context, f blobFetcher, d v1.Hash, raw []byte) (*resolved, error) {
	r := &resolved{blobs: map[v1.Hash][]byte{}}
	for depth := 0; ; depth++ {
		if depth > 4 {
			return nil, fmt.Errorf("image indexes nested more than 4 deep at %s: %w", d, ErrInvalid)
		}
		if raw == nil {
			var err error
			if raw, err = f.manifest(ctx, d); err != nil {
				return nil, err
			}
		}
		r.blobs[d] = raw
		kind, err := manifestKind(raw)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", d, err)
		}
		if kind == kindIndex {
			idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
			if err != nil {
				return nil, fmt.Errorf("image index %s: %v: %w", d, err, ErrInvalid)
			}
			child, err := choosePlatform(idx)
			if err != nil {
				return nil, fmt.Errorf("image index %s: %w", d, err)
			}
			d, raw = child.Digest, nil
			continue
		}
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %v: %w", d, err, ErrInvalid)
		}
		cfgRaw, err := f.config(ctx, m.Config.Digest)
		if err != nil {
			return nil, fmt.Errorf("config of %s: %w", d, err)
		}
		cfg, err := v1.ParseConfigFile(bytes.NewReader(cfgRaw))
		if err != nil {
			return nil, fmt.Errorf("config %s: %v: %w", m.Config.Digest, err, ErrInvalid)
		}
		r.blobs[m.Config.Digest] = cfgRaw
		if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
			return nil, fmt.Errorf("manifest %s lists %d layers but its config %d diff_ids: %w", d, len(m.Layers), len(cfg.RootFS.DiffIDs), ErrInvalid)
		}
		for i, l := range m.Layers {
			if strings.Contains(string(l.MediaType), "encrypted") {
				return nil, fmt.Errorf("layer %s is encrypted (%s); decrypt the image first: %w", l.Digest, l.MediaType, ErrInvalid)
			}
			r.layers = append(r.layers, layerSource{digest: l.Digest, diffID: cfg.RootFS.DiffIDs[i], size: l.Size, open: f.layer(l.Digest)})
		}
		r.digest, r.config = d, cfg
		return r, nil
	}
}

type blobKind int

const (
	kindManifest blobKind = iota
	kindIndex
)

// manifestKind tells an image index from an image manifest, by media type
// or, where that is absent (it is optional in OCI), by shape.
func manifestKind(raw []byte) (blobKind, error) {
	var probe struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     types.MediaType `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Config        json.RawMessage `json:"config"`
		Layers        json.RawMessage `json:"layers"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return 0, fmt.Errorf("not JSON: %v: %w", err, ErrInvalid)
	}
	switch {
	case probe.SchemaVersion == 1:
		return 0, fmt.Errorf("Docker schema 1 manifests are not supported: convert the image, e.g. `skopeo copy --format v2s2`: %w", ErrInvalid)
	case probe.MediaType.IsIndex():
		return kindIndex, nil
	case probe.MediaType.IsImage():
		return kindManifest, nil
	case probe.MediaType != "":
		return 0, fmt.Errorf("media type %s is not an image: %w", probe.MediaType, ErrInvalid)
	case probe.Manifests != nil:
		return kindIndex, nil
	case probe.Config != nil && probe.Layers != nil:
		return kindManifest, nil
	}
	return 0, fmt.Errorf("neither an image manifest nor an index: %w", ErrInvalid)
}

// wantPlatform is the platform of the machines pier runs here.
func wantPlatform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// choosePlatform picks this machine's image from a multi-platform index.
func choosePlatform(idx *v1.IndexManifest) (v1.Descriptor, error) {
	want := wantPlatform()
	var seen []string
	var candidates []v1.Descriptor
	for _, m := range idx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			continue
		}
		if m.Platform == nil {
			candidates = append(candidates, m)
			continue
		}
		if m.Platform.OS == want.OS && m.Platform.Architecture == want.Architecture {
			return m, nil
		}
		seen = append(seen, m.Platform.OS+"/"+m.Platform.Architecture)
	}
	// An index without platforms (a layout wrapping one image) is not a
	// choice between platforms.
	if len(candidates) == 1 && len(seen) == 0 {
		return candidates[0], nil
	}
	slices.Sort(seen)
	return v1.Descriptor{}, fmt.Errorf("no %s image among %s: pull or build the image for %s: %w",
		want.OS+"/"+want.Architecture, strings.Join(slices.Compact(seen), ", "), want.OS+"/"+want.Architecture, ErrNotFound)
}

// layoutFetcher reads blobs from an OCI image layout: a directory, a tar of
// one, or the store's own blobs/.
type layoutFetcher struct {
	fsys fs.FS
}

func (l layoutFetcher) manifest(_ context.Context, d v1.Hash) ([]byte, error) {
	return readBlob(l.fsys, d, maxManifestSize)
}

func (l layoutFetcher) config(_ context.Context, d v1.Hash) ([]byte, error) {
	return readBlob(l.fsys, d, maxConfigSize)
}

func (l layoutFetcher) layer(d v1.Hash) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		f, err := l.fsys.Open(blobPath(d))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("blob %s is missing from the layout: %w", d, ErrNotFound)
		}
		return f, err
	}
}

func blobPath(d v1.Hash) string {
	return "blobs/" + d.Algorithm + "/" + d.Hex
}

// readBlob reads a small blob whole and checks it against its digest.
func readBlob(fsys fs.FS, d v1.Hash, limit int64) ([]byte, error) {
	if d.Algorithm != "sha256" {
		return nil, fmt.Errorf("blob %s: only sha256 digests are supported: %w", d, ErrInvalid)
	}
	f, err := fsys.Open(blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s is missing from the layout: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readVerified(f, d, limit)
}

func readVerified(r io.Reader, d v1.Hash, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("blob %s is larger than %s: %w", d, pier.Bytes(limit), ErrInvalid)
	}
	got, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if got != d {
		return nil, fmt.Errorf("blob %s has digest %s: the image is corrupt: %w", d, got, ErrInvalid)
	}
	return b, nil
}

// resolveLayout finds the image tag names in the OCI layout fsys; where
// names the layout in messages.
func resolveLayout(ctx context.Context, fsys fs.FS, where, tag string) (*resolved, error) {
	raw, err := fs.ReadFile(fsys, "index.json")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not an OCI image layout: it has no index.json: %w", where, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: index.json: %v: %w", where, err, ErrInvalid)
	}
	desc, err := chooseTag(idx, where, tag)
	if err != nil {
		return nil, err
	}
	r, err := resolve(ctx, layoutFetcher{fsys: fsys}, desc.Digest, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return r, nil
}

// chooseTag picks the image of an OCI layout's index.json that tag names,
// or its only image when tag is empty.
func chooseTag(idx *v1.IndexManifest, where, tag string) (v1.Descriptor, error) {
	var tags []string
	var match []v1.Descriptor
	for _, m := range idx.Manifests {
		t, ok := m.Annotations[refNameAnnotation]
		if ok {
			tags = append(tags, t)
		} else {
			tags = append(tags, "(untagged "+m.Digest.String()+")")
		}
		if ok && t == tag {
			match = append(match, m)
		}
	}
	list := strings.Join(tags, ", ")
	switch {
	case len(idx.Manifests) == 0:
		return v1.Descriptor{}, fmt.Errorf("%s holds no images: %w", where, ErrNotFound)
	case tag == "" && len(idx.Manifests) == 1:
		return idx.Manifests[0], nil
	case tag == "":
		return v1.Descriptor{}, fmt.Errorf("%s holds %d images (%s): name one with %s:TAG: %w", where, len(idx.Manifests), list, where, ErrNotFound)
	case len(match) == 0:
		return v1.Descriptor{}, fmt.Errorf("%s has no image tagged %q (it has %s): %w", where, tag, list, ErrNotFound)
	}
	for _, m := range match[1:] {
		if m.Digest != match[0].Digest {
			return v1.Descriptor{}, fmt.Errorf("%s tags two different images %q (%s and %s): %w", where, tag, match[0].Digest, m.Digest, ErrInvalid)
		}
	}
	return match[0], nil
}

// resolveDockerArchive finds the image sel names ("" for the only one,
// "@N" for the Nth, or a repository:tag) in the `docker save` tarball t.
func resolveDockerArchive(ctx context.Context, t *tarFS, p, sel string) (*resolved, error) {
	where := "docker-archive:" + p
	raw, err := readLimited(t, "manifest.json", maxManifestSize)
	if errors.Is(err, fs.ErrNotExist) {
		hint := ""
		if _, err := t.Open("index.json"); err == nil {
			hint = ": it is an OCI archive, use oci-archive:" + p
		}
		return nil, fmt.Errorf("%s is not a `docker save` tarball: it has no manifest.json%s: %w", p, hint, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var entries []dockerArchiveEntry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("%s: manifest.json: %v: %w", where, err, ErrInvalid)
	}
	e, err := chooseArchiveEntry(entries, where, sel)
	if err != nil {
		return nil, err
	}
	cfgRaw, err := readLimited(t, e.Config, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("%s: config %s: %w", where, e.Config, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(cfgRaw))
	if err != nil {
		return nil, fmt.Errorf("%s: config %s: %v: %w", where, e.Config, err, ErrInvalid)
	}
	if len(cfg.RootFS.DiffIDs) != len(e.Layers) {
		return nil, fmt.Errorf("%s: manifest.json lists %d layers but the config %d diff_ids: %w", where, len(e.Layers), len(cfg.RootFS.DiffIDs), ErrInvalid)
	}
	d, _, err := v1.SHA256(bytes.NewReader(cfgRaw))
	if err != nil {
		return nil, err
	}
	if r := layoutManifestFor(ctx, t, d); r != nil {
		return r, nil
	}
	r := &resolved{digest: d, config: cfg, blobs: map[v1.Hash][]byte{d: cfgRaw}}
	for i, name := range e.Layers {
		size := int64(-1)
		if fi, err := fs.Stat(t, name); err == nil {
			size = fi.Size()
		} else {
			return nil, fmt.Errorf("%s: layer %s: %w", where, name, err)
		}
		r.layers = append(r.layers, layerSource{diffID: cfg.RootFS.DiffIDs[i], size: size, open: func() (io.ReadCloser, error) {
			return t.Open(name)
		}})
	}
	return r, nil
}

// layoutManifestFor finds, in a `docker save` tarball that is also an OCI
// image layout (Docker writes both since version 25), the manifest of the
// image whose config is cfg, so that the image is known by its manifest
// digest as it is elsewhere. It returns nil when there is none.
func layoutManifestFor(ctx context.Context, t *tarFS, cfg v1.Hash) *resolved {
	raw, err := readLimited(t, "index.json", maxManifestSize)
	if err != nil {
		return nil
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil
	}
	for _, m := range idx.Manifests {
		r, err := resolve(ctx, layoutFetcher{fsys: t}, m.Digest, nil)
		if err != nil {
			continue
		}
		if _, ok := r.blobs[cfg]; ok {
			return r
		}
	}
	return nil
}

// dockerArchiveEntry is one image of a `docker save` manifest.json.
type dockerArchiveEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func readLimited(fsys fs.FS, name string, limit int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s is larger than %s: %w", name, pier.Bytes(limit), ErrInvalid)
	}
	return b, err
}
