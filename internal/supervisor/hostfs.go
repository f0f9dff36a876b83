package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pier-dev/pier/internal/runtime"
)

// HostFS is the root filesystem of app machines under an isolating runtime:
// a skeleton directory (the read-only lower layer) with the host's system
// directories bound read-only into it, so Go, Node, Python and static apps
// built on the host run unchanged, plus the release at /app. Nothing else
// of the host is visible: not /root, /home, /var, /work, nor pier's data.
type HostFS struct {
	Base   string          // skeleton root directory
	Mounts []runtime.Mount // read-only binds of host system paths
	Self   string          // the pier binary, which serves static sites
}

// hostDirs are bound whole when they are directories on the host (on a
// merged-/usr system bin, lib and sbin are symlinks and are copied as such).
var hostDirs = []string{"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// hostEtc are the parts of /etc programs need to run: users, name service
// switch, TLS roots, time zone, MIME types, alternatives. Not shadow files,
// not the host's name or its network configuration.
var hostEtc = []string{"passwd", "group", "nsswitch.conf", "ssl", "ca-certificates", "ca-certificates.conf",
	"alternatives", "localtime", "timezone", "mime.types", "protocols", "services", "os-release"}

// NewHostFS prepares the skeleton under dir.
func NewHostFS(dir, self string) (*HostFS, error) {
	base := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	h := &HostFS{Base: base, Self: self}
	for _, d := range hostDirs {
		host := "/" + d
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		target := filepath.Join(base, d)
		if fi.Mode()&os.ModeSymlink != 0 {
			link, err := os.Readlink(host)
			if err != nil {
				return nil, err
			}
			os.Remove(target)
			if err := os.Symlink(link, target); err != nil {
				return nil, fmt.Errorf("host rootfs: %w", err)
			}
			continue
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return nil, err
		}
		h.Mounts = append(h.Mounts, runtime.Mount{Source: host, Target: host, ReadOnly: true})
	}
	for _, d := range []string{"etc", "app", "tmp", "var/tmp", "run", "home", ".pier"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		if err := os.Chmod(filepath.Join(base, d), 0o1777); err != nil {
			return nil, err
		}
	}
	for _, e := range hostEtc {
		p := filepath.Join("/etc", e)
		if _, err := os.Stat(p); err == nil {
			h.Mounts = append(h.Mounts, runtime.Mount{Source: p, Target: p, ReadOnly: true})
		}
	}
	return h, nil
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
