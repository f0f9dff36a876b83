package image

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Transports, named as skopeo and podman name them.
const (
	// TransportOCI is an OCI image layout directory: oci:PATH[:TAG].
	TransportOCI = "oci"
	// TransportOCIArchive is a tar of an OCI image layout: oci-archive:PATH[:TAG].
	TransportOCIArchive = "oci-archive"
	// TransportDockerArchive is a `docker save` tarball: docker-archive:PATH[:REF].
	TransportDockerArchive = "docker-archive"
	// TransportRegistry is a registry reference such as alpine:3.20; it may
	// also be written docker://alpine:3.20.
	TransportRegistry = "docker"
)

// refHelp ends error messages about references.
const refHelp = "use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF] or a registry reference such as alpine:3.20"

// unsupported are transports of skopeo and podman that pier does not read.
var unsupported = map[string]bool{
	"docker-daemon": true, "containers-storage": true, "dir": true,
	"ostree": true, "sif": true, "tarball": true,
}

// ParseRef splits an image reference into its transport, path and tag.
//
// For oci:, oci-archive: and docker-archive: the path is everything up to
// the second colon (so the path itself cannot hold one, as with skopeo) and
// the tag is the rest, possibly empty: for oci: and oci-archive: it selects
// the image whose org.opencontainers.image.ref.name annotation equals it;
// for docker-archive: it is a reference among the tarball's RepoTags, or
// @N for the Nth image. For a registry reference the transport is "docker",
// path is the repository (index.docker.io/library/alpine) and tag is its tag
// or its digest ("sha256:...").
func ParseRef(ref string) (transport, path, tag string, err error) {
	if strings.TrimSpace(ref) == "" {
		return "", "", "", fmt.Errorf("empty image reference: %s: %w", refHelp, ErrBadRef)
	}
	if rest, ok := strings.CutPrefix(ref, "docker://"); ok {
		return parseRegistryRef(ref, rest)
	}
	t, rest, ok := strings.Cut(ref, ":")
	if ok {
		switch t {
		case TransportOCI, TransportOCIArchive, TransportDockerArchive:
			return parseLocalRef(ref, t, rest)
		}
		if unsupported[t] {
			return "", "", "", fmt.Errorf("image reference %q: transport %q is not supported: %s (for a Docker Hub image of that name write docker://%s): %w", ref, t, refHelp, ref, ErrBadRef)
		}
	}
	return parseRegistryRef(ref, ref)
}

func parseLocalRef(ref, transport, rest string) (string, string, string, error) {
	p, tag, hasTag := strings.Cut(rest, ":")
	what := "TAG"
	if transport == TransportDockerArchive {
		what = "REF"
	}
	if p == "" {
		return "", "", "", fmt.Errorf("image reference %q has no path: write %s:PATH[:%s]: %w", ref, transport, what, ErrBadRef)
	}
	if hasTag && tag == "" {
		return "", "", "", fmt.Errorf("image reference %q ends in ':' with no %s after it: drop the ':' or name the %s: %w", ref, what, what, ErrBadRef)
	}
	if transport == TransportDockerArchive && tag != "" {
		if n, ok := strings.CutPrefix(tag, "@"); ok {
			if i, err := strconv.Atoi(n); err != nil || i < 0 {
				return "", "", "", fmt.Errorf("image reference %q: %q is not an image index: write @0, @1, ...: %w", ref, tag, ErrBadRef)
			}
		} else if _, err := name.NewTag(tag); err != nil {
			return "", "", "", fmt.Errorf("image reference %q: %q is not a valid repository:tag (%v): write one of the tarball's RepoTags, such as alpine:3.20, or @N for its Nth image: %w", ref, tag, err, ErrBadRef)
		}
	}
	return transport, p, tag, nil
}

func parseRegistryRef(ref, s string) (string, string, string, error) {
	r, err := name.ParseReference(s)
	if err != nil {
		return "", "", "", fmt.Errorf("%q is not a valid image reference (%v): %s: %w", ref, err, refHelp, ErrBadRef)
	}
	// name accepts "host:" with an empty or odd port ("foo:/bar" is
	// registry "foo:"): refuse those rather than look such hosts up.
	reg := r.Context().RegistryStr()
	if i := strings.LastIndex(reg, ":"); i >= 0 && !strings.HasSuffix(reg, "]") {
		if _, err := strconv.ParseUint(reg[i+1:], 10, 16); err != nil || i == 0 {
			return "", "", "", fmt.Errorf("%q is not a valid image reference (registry %q has no valid port): %s: %w", ref, r.Context().RegistryStr(), refHelp, ErrBadRef)
		}
	}
	return TransportRegistry, r.Context().Name(), r.Identifier(), nil
}
