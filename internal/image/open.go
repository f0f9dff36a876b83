package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Open resolves ref as Get does, with the same checks and messages, but
// returns the image as it is in its source instead of unpacking it: for
// builders that stack its layers themselves and reuse them as they are
// (internal/dockerfile). Blobs are read from the source when asked for;
// small ones (manifest, config) are checked against their digests, layers
// are not: whoever reads a layer checks it against its diff ID (and
// imagestore.Put against its digest). release closes the source (an
// archive's file) once nothing reads the image any more.
func (s *Store) Open(ctx context.Context, ref string) (img v1.Image, release func(), err error) {
	transport, p, tag, err := ParseRef(ref)
	if err != nil {
		return nil, nil, err
	}
	src, err := s.open(ctx, transport, p, tag)
	if err != nil {
		return nil, nil, fmt.Errorf("open image %s: %w", ref, err)
	}
	defer func() {
		if err != nil {
			src.close()
		}
	}()
	r := src.img
	raw := r.blobs[r.digest]
	if kind, kerr := manifestKind(raw); raw == nil || kerr != nil || kind != kindManifest {
		// A `docker save` tarball without a manifest: its layers are
		// known by diff ID only.
		img, err = partial.UncompressedToImage(&diffIDImage{r: r})
	} else {
		img, err = manifestImage(r, raw)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open image %s: %v: %w", ref, err, ErrInvalid)
	}
	return img, src.close, nil
}

func manifestImage(r *resolved, raw []byte) (v1.Image, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	cfg, ok := r.blobs[m.Config.Digest]
	if !ok {
		return nil, fmt.Errorf("config %s not read", m.Config.Digest)
	}
	c := &manifestCore{manifest: raw, config: cfg, mediaType: m.MediaType, layers: map[v1.Hash]*compressedLayer{}}
	if c.mediaType == "" {
		c.mediaType = types.OCIManifestSchema1
	}
	for i, l := range m.Layers {
		c.layers[l.Digest] = &compressedLayer{desc: l, open: r.layers[i].open}
	}
	return partial.CompressedToImage(c)
}

// manifestCore is an image read through its manifest.
type manifestCore struct {
	manifest, config []byte
	mediaType        types.MediaType
	layers           map[v1.Hash]*compressedLayer
}

func (c *manifestCore) RawConfigFile() ([]byte, error)      { return c.config, nil }
func (c *manifestCore) MediaType() (types.MediaType, error) { return c.mediaType, nil }
func (c *manifestCore) RawManifest() ([]byte, error)        { return c.manifest, nil }

func (c *manifestCore) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	l, ok := c.layers[h]
	if !ok {
		return nil, fmt.Errorf("image has no layer %s: %w", h, ErrNotFound)
	}
	return l, nil
}

type compressedLayer struct {
	desc v1.Descriptor
	open func() (io.ReadCloser, error)
}

func (l *compressedLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *compressedLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *compressedLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *compressedLayer) Compressed() (io.ReadCloser, error)  { return l.open() }

// diffIDImage is an image of a `docker save` tarball without a manifest:
// its layer files may be plain tars or compressed.
type diffIDImage struct{ r *resolved }

func (d *diffIDImage) RawConfigFile() ([]byte, error) {
	for _, b := range d.r.blobs { // the config is its only blob
		return b, nil
	}
	return nil, fmt.Errorf("config not read")
}

func (d *diffIDImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func (d *diffIDImage) LayerByDiffID(h v1.Hash) (partial.UncompressedLayer, error) {
	for _, l := range d.r.layers {
		if l.diffID == h {
			return &plainLayer{src: l}, nil
		}
	}
	return nil, fmt.Errorf("image has no layer %s: %w", h, ErrNotFound)
}

type plainLayer struct{ src layerSource }

func (l *plainLayer) DiffID() (v1.Hash, error)            { return l.src.diffID, nil }
func (l *plainLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// Uncompressed opens the layer file, decompressing it when it is gzip or
// zstd (Docker writes plain tars, other tools compressed ones).
func (l *plainLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.src.open()
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(rc)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("layer is not valid gzip: %v: %w", err, ErrInvalid)
		}
		return readCloser{zr, func() error { zr.Close(); return rc.Close() }}, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			rc.Close()
			return nil, fmt.Errorf("layer is not valid zstd: %v: %w", err, ErrInvalid)
		}
		return readCloser{zr, func() error { zr.Close(); return rc.Close() }}, nil
	}
	return readCloser{br, rc.Close}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }
