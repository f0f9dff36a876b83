package supervisor

import (
	"fmt"
	"strings"

	"github.com/pier-dev/pier/internal/build"
	"github.com/pier-dev/pier/internal/hostfs"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// HostFS is the root filesystem of app machines under an isolating runtime:
// the host's system directories (hostfs.FS) with the release at /app, so
// Go, Node, Python and static apps built on the host run unchanged.
type HostFS struct {
	*hostfs.FS
	Self string // the pier binary, which serves static sites
}

// NewHostFS prepares the skeleton under dir.
func NewHostFS(dir, self string) (*HostFS, error) {
	fs, err := hostfs.New(dir)
	if err != nil {
		return nil, err
	}
	return &HostFS{FS: fs, Self: self}, nil
}

// Lowers finds the host directory of a release image's layer by its id
// (build.Imager).
type Lowers interface {
	Lower(id string) (string, error)
}

// isolateImage turns the spec of a release machine into one that runs the
// release's image: its pier-kept layers (base, file server) as the root,
// the app layer (the build) read-only at /app, as the image's user.
func isolateImage(spec runtime.Spec, rel pier.Release, lowers Lowers) (runtime.Spec, error) {
	spec.Rootfs = nil
	for _, id := range rel.Image.Lowers {
		dir, err := lowers.Lower(id)
		if err != nil {
			return spec, err
		}
		spec.Rootfs = append(spec.Rootfs, dir)
	}
	if len(spec.Rootfs) == 0 {
		return spec, fmt.Errorf("release v%d: its image records no layers", rel.Version)
	}
	spec.Mounts = []runtime.Mount{{Source: spec.Dir, Target: build.AppDir, ReadOnly: true}}
	spec.Command = build.Command(rel.Builder, rel.Start)
	spec.WorkDir = build.AppDir
	spec.User = build.AppUser
	spec.DenyOutbound = rel.Config.DenyOutbound
	spec.Port = build.AppPort
	env := make([]string, 0, len(spec.Env)+2)
	for _, kv := range spec.Env {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "TMPDIR=") {
			continue
		}
		env = append(env, kv)
	}
	spec.Env = append(env, machinePath, "HOME=/tmp")
	return spec, nil
}

// machinePath is a PATH for app machines: the host's system directories,
// without whatever the server's own PATH holds (its user's home, tools).
const machinePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// appUser runs apps unprivileged inside their machine (nobody:nogroup).
const appUser = "65534:65534"

// isolate turns the spec of a release machine into one for an isolating
// runtime: the release read-only at /app, the host's system directories,
// an unprivileged user, and a HOME and PATH of the machine's own.
func (h *HostFS) isolate(spec runtime.Spec, static, deny bool) runtime.Spec {
	spec.Rootfs = []string{h.Base}
	spec.Mounts = append(append([]runtime.Mount{}, h.Mounts...), runtime.Mount{Source: spec.Dir, Target: "/app", ReadOnly: true})
	spec.WorkDir = "/app"
	spec.User = appUser
	spec.DenyOutbound = deny
	spec.Port = 8080
	if static {
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: h.Self, Target: "/.pier/pier", ReadOnly: true})
		spec.Command = []string{"/.pier/pier", "static-serve", "--dir", "/app"}
	}
	env := make([]string, 0, len(spec.Env)+2)
	for _, kv := range spec.Env {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "TMPDIR=") {
			continue
		}
		env = append(env, kv)
	}
	spec.Env = append(env, machinePath, "HOME=/tmp")
	return spec
}

// ReleaseImage describes a release as a machine image: the host's system
// directories with the release at /app, run as nobody.
func (h *HostFS) ReleaseImage(artifact, start string, static bool) (rootfs string, mounts []runtime.Mount, cmd []string, env []string, workdir, user string) {
	spec := h.isolate(runtime.Spec{Dir: artifact, Command: []string{"/bin/sh", "-c", start}}, static, false)
	return spec.Rootfs[0], spec.Mounts, spec.Command, spec.Env, spec.WorkDir, spec.User
}
