// Package hostfs makes a root filesystem for machines out of the host's
// own system directories: a skeleton directory (the read-only lower layer)
// with /usr, /bin, /lib and the parts of /etc programs need bound read-only
// into it. Build machines run on it, so builds use the toolchains installed
// on the host; nothing else of the host is visible: not /root, /home, /var,
// /work, nor pier's data.
package hostfs

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pier-dev/pier/internal/runtime"
)

// FS is a skeleton root with the host's system directories to bind into it.
type FS struct {
	Base   string          // skeleton root directory
	Mounts []runtime.Mount // read-only binds of host system paths
}

// Dirs are bound whole when they are directories on the host (on a
// merged-/usr system bin, lib and sbin are symlinks and are copied as such).
var Dirs = []string{"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// etcFiles are the parts of /etc programs need to run: users, name service
// switch, TLS roots, time zone, MIME types, alternatives. Not shadow files,
// not the host's name or its network configuration.
var etcFiles = []string{"passwd", "group", "nsswitch.conf", "ssl", "ca-certificates", "ca-certificates.conf",
	"alternatives", "localtime", "timezone", "mime.types", "protocols", "services", "os-release"}

// New prepares the skeleton under dir.
func New(dir string) (*FS, error) {
	base := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	h := &FS{Base: base}
	for _, d := range Dirs {
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
	for _, d := range []string{"etc", "app", "cache", "tmp", "var/tmp", "run", "home", ".pier"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		if err := os.Chmod(filepath.Join(base, d), 0o1777); err != nil {
			return nil, err
		}
	}
	for _, e := range etcFiles {
		p := filepath.Join("/etc", e)
		if _, err := os.Stat(p); err == nil {
			h.Mounts = append(h.Mounts, runtime.Mount{Source: p, Target: p, ReadOnly: true})
		}
	}
	return h, nil
}

// Under reports whether path lies in one of the host directories bound
// into machines, so machines would see it.
func (h *FS) Under(path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	for _, m := range h.Mounts {
		if abs == m.Source || len(abs) > len(m.Source) && abs[:len(m.Source)] == m.Source && abs[len(m.Source)] == '/' {
			return true
		}
	}
	return false
}
