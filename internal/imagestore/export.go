package imagestore

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Export formats.
const (
	// FormatDocker is a docker-archive: what `docker save` writes and
	// `docker load`, `podman load` and `skopeo ... docker-archive:FILE` read.
	FormatDocker = "docker"
	// FormatOCI is a tar of an OCI image layout (an oci-archive), read by
	// `skopeo ... oci-archive:FILE`, `podman load` and `ctr images import`.
	FormatOCI = "oci"
)

// ErrUnknownFormat: Export was asked for a format other than FormatDocker
// and FormatOCI.
var ErrUnknownFormat = errors.New("unknown export format")

// containerdNameAnnotation is the name `ctr images import` gives an image;
// without it, it would make one up from the ref name and the date.
const containerdNameAnnotation = "io.containerd.image.name"

// Export writes img to w as a tarball of format (FormatDocker or
// FormatOCI) naming it ref, e.g. "web:v3". Layers stream from where img
// keeps them; nothing is held in memory but the small JSON files.
func Export(ctx context.Context, w io.Writer, img v1.Image, ref, format string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	w = ctxWriter{ctx, w}
	switch format {
	case FormatDocker:
		err = tarball.Write(tag, img, w)
	case FormatOCI:
		err = writeOCIArchive(w, img, tag)
	default:
		return fmt.Errorf("%w %q (use %s or %s)", ErrUnknownFormat, format, FormatDocker, FormatOCI)
	}
	if err != nil {
		return fmt.Errorf("export %s as %s archive: %w", ref, format, err)
	}
	return nil
}

// writeOCIArchive writes an OCI image layout holding img alone (with OCI
// media types, see ociManifest): the
// oci-layout and index.json files first, so that a reader of the stream
// knows what follows, then the blobs.
func writeOCIArchive(w io.Writer, img v1.Image, tag name.Tag) error {
	mt, raw, err := ociManifest(img)
	if err != nil {
		return err
	}
	digest, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt, Size: int64(len(raw)), Digest: digest,
			Annotations: map[string]string{
				RefNameAnnotation:        tag.String(),
				containerdNameAnnotation: containerdName(tag),
			},
		}},
	})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
	}
	if err := writeTarFile(tw, "oci-layout", []byte(layoutFile)); err != nil {
		return err
	}
	if err := writeTarFile(tw, "index.json", index); err != nil {
		return err
	}
	seen := map[v1.Hash]bool{digest: true, cfgName: true}
	if err := writeTarFile(tw, blobName(cfgName), cfg); err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		if seen[d] {
			continue
		}
		seen[d] = true
		if err := writeTarLayer(tw, l, d); err != nil {
			return err
		}
	}
	if err := writeTarFile(tw, blobName(digest), raw); err != nil {
		return err
	}
	return tw.Close()
}

// ociManifest is img's manifest with OCI media types. A Docker v2 manifest
// is rewritten, as `skopeo copy` to an oci: destination does: tools look
// images up by name in an OCI layout among OCI manifests only. Layers and
// config keep their bytes, and so their digests; the manifest gets a new one.
func ociManifest(img v1.Image) (types.MediaType, []byte, error) {
	mt, err := img.MediaType()
	if err != nil {
		return "", nil, err
	}
	if mt != types.DockerManifestSchema2 {
		raw, err := img.RawManifest()
		return mt, raw, err
	}
	m, err := img.Manifest()
	if err != nil {
		return "", nil, err
	}
	m = m.DeepCopy()
	m.MediaType = types.OCIManifestSchema1
	if m.Config.MediaType == types.DockerConfigJSON {
		m.Config.MediaType = types.OCIConfigJSON
	}
	for i, l := range m.Layers {
		switch l.MediaType {
		case types.DockerLayer:
			m.Layers[i].MediaType = types.OCILayer
		case types.DockerUncompressedLayer:
			m.Layers[i].MediaType = types.OCIUncompressedLayer
		case types.DockerForeignLayer:
			m.Layers[i].MediaType = types.OCIRestrictedLayer
		}
	}
	raw, err := json.Marshal(m)
	return types.OCIManifestSchema1, raw, err
}

func blobName(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

func writeTarFile(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := io.Copy(tw, bytes.NewReader(b))
	return err
}

func writeTarLayer(tw *tar.Writer, l v1.Layer, d v1.Hash) error {
	size, err := l.Size()
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: blobName(d), Mode: 0o644, Size: size, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	// A layer shorter or longer than its size fails here or at the next
	// header, rather than making a broken archive.
	if _, err := io.Copy(tw, rc); err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	return nil
}

// containerdName is tag's full name as docker and containerd spell it:
// docker.io/library/web:v3 for web:v3.
func containerdName(tag name.Tag) string {
	reg := tag.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + tag.RepositoryStr() + ":" + tag.TagStr()
}

// ctxWriter stops a write when ctx is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}
