package image

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRef(t *testing.T) {
	tests := []struct {
		ref                  string
		transport, path, tag string
		errIs                error
		errSays              string
	}{
		{ref: "oci:/srv/images/app", transport: "oci", path: "/srv/images/app"},
		{ref: "oci:./app:v1", transport: "oci", path: "./app", tag: "v1"},
		{ref: "oci:app:example.com/app:v1", transport: "oci", path: "app", tag: "example.com/app:v1"},
		{ref: "oci-archive:/tmp/app.tar:latest", transport: "oci-archive", path: "/tmp/app.tar", tag: "latest"},
		{ref: "docker-archive:app.tar", transport: "docker-archive", path: "app.tar"},
		{ref: "docker-archive:app.tar:alpine:3.20", transport: "docker-archive", path: "app.tar", tag: "alpine:3.20"},
		{ref: "docker-archive:app.tar:@1", transport: "docker-archive", path: "app.tar", tag: "@1"},
		{ref: "alpine", transport: "docker", path: "index.docker.io/library/alpine", tag: "latest"},
		{ref: "alpine:3.20", transport: "docker", path: "index.docker.io/library/alpine", tag: "3.20"},
		{ref: "docker://alpine:3.20", transport: "docker", path: "index.docker.io/library/alpine", tag: "3.20"},
		{ref: "docker:dind", transport: "docker", path: "index.docker.io/library/docker", tag: "dind"},
		{ref: "localhost:5000/team/app:v2", transport: "docker", path: "localhost:5000/team/app", tag: "v2"},
		{ref: "[::1]:5000/app:v2", transport: "docker", path: "[::1]:5000/app", tag: "v2"},
		{
			ref:       "registry.example.com/x/y@sha256:" + strings.Repeat("ab", 32),
			transport: "docker", path: "registry.example.com/x/y", tag: "sha256:" + strings.Repeat("ab", 32),
		},

		{ref: "", errIs: ErrBadRef, errSays: "empty image reference"},
		{ref: "  ", errIs: ErrBadRef, errSays: "empty image reference"},
		{ref: "oci:", errIs: ErrBadRef, errSays: "no path"},
		{ref: "oci::tag", errIs: ErrBadRef, errSays: "no path"},
		{ref: "oci-archive:x.tar:", errIs: ErrBadRef, errSays: "no TAG after it"},
		{ref: "docker-archive:x.tar:", errIs: ErrBadRef, errSays: "no REF after it"},
		{ref: "docker-archive:x.tar:@x", errIs: ErrBadRef, errSays: "not an image index"},
		{ref: "docker-archive:x.tar:Bad Tag", errIs: ErrBadRef, errSays: "not a valid repository:tag"},
		{ref: "docker-daemon:alpine:3.20", errIs: ErrBadRef, errSays: `transport "docker-daemon" is not supported`},
		{ref: "containers-storage:/var/lib/containers", errIs: ErrBadRef, errSays: "not supported"},
		{ref: "dir:/tmp/x", errIs: ErrBadRef, errSays: "not supported"},
		{ref: "foo:/bar", errIs: ErrBadRef, errSays: "no valid port"},
		{ref: "Alpine:3.20", errIs: ErrBadRef, errSays: "not a valid image reference"},
		{ref: "alpine@sha256:123", errIs: ErrBadRef, errSays: "not a valid image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			transport, path, tag, err := ParseRef(tt.ref)
			if tt.errIs != nil {
				if !errors.Is(err, tt.errIs) || !strings.Contains(err.Error(), tt.errSays) {
					t.Fatalf("err = %v, want %v saying %q", err, tt.errIs, tt.errSays)
				}
				if !strings.Contains(err.Error(), "write") && !strings.Contains(err.Error(), "use ") && !strings.Contains(err.Error(), "drop") {
					t.Errorf("error %q does not say what to write instead", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if transport != tt.transport || path != tt.path || tag != tt.tag {
				t.Errorf("ParseRef = %q, %q, %q; want %q, %q, %q", transport, path, tag, tt.transport, tt.path, tt.tag)
			}
		})
	}
}
