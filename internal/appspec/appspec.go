// Package appspec turns an app's release into the runtime spec of its
// machines: the command that runs it, its environment, and, under an
// isolating runtime, its root filesystem (the release's own image, or the
// host's system directories with the release at /app).
package appspec

import (
	"fmt"
	"slices"
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

// ImageSpec turns the spec of a release machine (its Dir the release's
// build, its Env the app's) into one that runs the release's image on the
// image's own layers: pier's builders' images with the build read-only at
// /app as nobody, a Dockerfile's as its config says ([build] start still
// overriding its command).
func ImageSpec(spec runtime.Spec, rel pier.Release, lowers Lowers) (runtime.Spec, error) {
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
	spec.DenyOutbound = rel.Config.DenyOutbound
	run := rel.Image.Run
	if run == nil {
		spec.Mounts = []runtime.Mount{{Source: spec.Dir, Target: build.AppDir, ReadOnly: true}}
		spec.Command = build.Command(rel.Builder, rel.Start)
		spec.WorkDir, spec.User, spec.Port = build.AppDir, build.AppUser, build.AppPort
		spec.Env = append(withoutVars(spec.Env, "PATH", "HOME", "TMPDIR"), machinePath, "HOME=/tmp")
		return spec, nil
	}
	spec.Mounts = nil
	spec.Command = run.Cmd
	if rel.Start != "" {
		spec.Command = build.Command("", rel.Start)
	}
	if len(spec.Command) == 0 {
		return spec, fmt.Errorf("release v%d: its image has no ENTRYPOINT or CMD: add one to the Dockerfile, or set [build] start in pier.toml", rel.Version)
	}
	spec.WorkDir, spec.User, spec.Port = run.WorkDir, run.User, run.Port
	if spec.Port == 0 {
		spec.Port = build.AppPort
	}
	// The image's environment, then the app's, which wins.
	own := map[string]bool{}
	for _, kv := range spec.Env {
		k, _, _ := strings.Cut(kv, "=")
		own[k] = true
	}
	env := make([]string, 0, len(run.Env)+len(spec.Env))
	for _, kv := range run.Env {
		if k, _, _ := strings.Cut(kv, "="); !own[k] && k != "PORT" {
			env = append(env, kv)
		}
	}
	spec.Env = append(env, spec.Env...)
	return spec, nil
}

func withoutVars(env []string, names ...string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, k) {
			out = append(out, kv)
		}
	}
	return out
}

// machinePath is a PATH for app machines: the host's system directories,
// without whatever the server's own PATH holds (its user's home, tools).
const machinePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// appUser runs apps unprivileged inside their machine (nobody:nogroup).
const appUser = "65534:65534"

// isolate turns the spec of a release machine into one for an isolating
// runtime: the release read-only at /app, the host's system directories,
// an unprivileged user, and a HOME and PATH of the machine's own.
func (h *HostFS) Isolate(spec runtime.Spec, static, deny bool) runtime.Spec {
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
	spec := h.Isolate(runtime.Spec{Dir: artifact, Command: []string{"/bin/sh", "-c", start}}, static, false)
	return spec.Rootfs[0], spec.Mounts, spec.Command, spec.Env, spec.WorkDir, spec.User
}
