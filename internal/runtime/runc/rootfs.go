package runc

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/runtime"
)

// mountRootfs mounts an overlay at target: the read-only lowers (shared by
// every machine started from them, never written: overlayfs only ever
// writes its upper layer) under this machine's own upper layer. Nothing is
// copied. "volatile" skips syncs of the upper layer: it is thrown away when
// the machine stops, so there is nothing to make durable (a kept upper
// layer is read in the same boot, from the page cache). A kept upper layer
// must be a plain diff: no directory renames recorded as redirects and no
// metadata-only copies, whatever the kernel's defaults.
func mountRootfs(lowers []string, upper, work, target string, kept bool) error {
	if err := checkLayers(lowers); err != nil {
		return err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lowers, ":"), upper, work)
	if kept {
		opts += ",redirect_dir=off,metacopy=off"
	}
	if len(opts)+len(",volatile") >= os.Getpagesize() {
		return fmt.Errorf("rootfs: %d layers make the overlay options longer than the kernel takes", len(lowers))
	}
	// nosuid, nodev: the host sees this tree at target, and a set-id
	// binary or a device node from an image must mean nothing there.
	// Inside the machine they change nothing: it runs with no_new_privs
	// and its /dev is runc's.
	const flags = unix.MS_NOSUID | unix.MS_NODEV
	err := unix.Mount("overlay", target, "overlay", flags, opts+",volatile")
	if errors.Is(err, unix.EINVAL) { // kernels before 5.10 have no volatile
		err = unix.Mount("overlay", target, "overlay", flags, opts)
	}
	if err != nil {
		return fmt.Errorf("mount overlay rootfs: %w", err)
	}
	return nil
}

// checkLayers checks that every layer is an absolute directory path the
// overlay options can carry.
func checkLayers(lowers []string) error {
	for _, l := range lowers {
		if !filepath.IsAbs(l) || strings.ContainsAny(l, ":,") {
			return fmt.Errorf("rootfs layer %q: want an absolute path without ':' or ','", l)
		}
		fi, err := os.Stat(l)
		if err != nil {
			return fmt.Errorf("rootfs layer: %w", err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("rootfs layer %s is not a directory", l)
		}
	}
	return nil
}

// writeFiles places files in the upper layer before the overlay is mounted,
// rather than writing through the merged view: the image is untrusted, and
// a symlinked directory in it (say /etc -> /host/etc) would send a write
// through the merged view to the host. The upper layer is a fresh directory
// we made, so it has no symlinks. The cost: a file under a path whose
// directory is a symlink in the image lands in a real directory shadowing
// that symlink. Files and directories get the owners they would have in
// the machine, shifted onto its host ids (hostIDs is the host id of its
// root).
func writeFiles(upper string, lowers []string, files []runtime.File, hostIDs uint32) error {
	for _, f := range files {
		rel, err := cleanInside(f.Path)
		if err != nil {
			return err
		}
		if err := mkdirLike(upper, lowers, path.Dir(rel), hostIDs); err != nil {
			return err
		}
		mode := unixMode(f.Mode)
		if f.Mode == 0 {
			mode = 0o644
		}
		p := filepath.Join(upper, rel)
		os.Remove(p) // an earlier file of the same path: replace it
		if err := os.WriteFile(p, f.Data, mode); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
		if err := os.Chown(p, int(hostIDs), int(hostIDs)); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask, and after the chown, which clears set-id bits
			return err
		}
	}
	return nil
}

// unixMode converts st_mode permission bits (0o4755) to an fs.FileMode,
// whose setuid, setgid and sticky bits live elsewhere.
func unixMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// cleanInside turns an absolute path inside the machine into a relative
// one that cannot climb out of the root.
func cleanInside(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("file path %q: want an absolute path inside the machine", p)
	}
	rel := strings.TrimPrefix(path.Clean(p), "/")
	if rel == "" {
		return "", fmt.Errorf("file path %q names the root", p)
	}
	return rel, nil
}

// mkdirLike creates dir (relative) and its parents in upper, copying mode
// and owner from the first lower layer that has that directory. An upper
// directory's attributes win in the merged view, so a plain MkdirAll would
// turn the image's /tmp (1777) into a 0755 root-only directory.
func mkdirLike(upper string, lowers []string, dir string, hostIDs uint32) error {
	if dir == "." || dir == "" {
		return nil
	}
	cur := ""
	// merging are the layers whose directory at cur shows in the merged
	// view: as overlayfs does, a directory merges with the same directory
	// below it until a layer has a non-directory there. Only they are
	// looked into one level deeper, so a symlink in the image is never
	// followed (it could point anywhere on the host).
	merging := lowers
	for _, part := range strings.Split(dir, "/") {
		cur = path.Join(cur, part)
		var next []string
		for _, l := range merging {
			fi, err := os.Lstat(filepath.Join(l, cur))
			if err != nil {
				continue
			}
			if !fi.IsDir() {
				break
			}
			next = append(next, l)
		}
		merging = next
		p := filepath.Join(upper, cur)
		if fi, err := os.Lstat(p); err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("/%s is a file, not a directory", cur)
			}
			continue
		}
		like := "" // the topmost layer that has the directory decides
		if len(merging) > 0 {
			like = filepath.Join(merging[0], cur)
		}
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		if err := copyDirAttrs(p, like, hostIDs); err != nil {
			return err
		}
	}
	return nil
}

// copyDirAttrs gives dir the mode and owner of like (0755 root when like
// is "" or cannot be read; mountRootfs reports a missing layer), the owner
// shifted by hostIDs.
func copyDirAttrs(dir, like string, hostIDs uint32) error {
	mode, uid, gid := fs.FileMode(0o755), 0, 0
	if fi, err := os.Stat(like); like != "" && err == nil {
		st := fi.Sys().(*syscall.Stat_t)
		mode, uid, gid = fi.Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetgid), int(st.Uid), int(st.Gid)
	}
	// An id the machine has no mapping for shows as nobody there: give it
	// nobody, not a host id of another machine's range.
	if uid < 0 || uid >= idSize {
		uid = overflowID
	}
	if gid < 0 || gid >= idSize {
		gid = overflowID
	}
	if err := os.Chown(dir, uid+int(hostIDs), gid+int(hostIDs)); err != nil {
		return err
	}
	return os.Chmod(dir, mode)
}

// identity resolves spec.User ("uid[:gid]", or names looked up in the
// image's /etc/passwd and /etc/group) to numeric ids.
func identity(user string, lowers []string) (uid, gid uint32, err error) {
	if user == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	uid, pwGid, err := lookupID(u, "etc/passwd", lowers)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: %w", user, err)
	}
	gid = pwGid
	if hasGroup {
		if gid, _, err = lookupID(g, "etc/group", lowers); err != nil {
			return 0, 0, fmt.Errorf("group in %q: %w", user, err)
		}
	}
	return uid, gid, nil
}

// lookupID returns the id of name (which may be numeric) from a passwd or
// group file of the image, and for passwd the primary gid (0 when name is
// numeric and has no entry).
func lookupID(name, file string, lowers []string) (id, gid uint32, err error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		id = uint32(n)
	}
	numeric := strconv.FormatUint(uint64(id), 10) == name
	for _, l := range lowers {
		// In the layer's root: a symlink in the image must not lead to the
		// host's passwd (one that would leave the layer reads as missing).
		f, err := os.OpenInRoot(l, file)
		if err != nil {
			continue
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) < 3 {
				continue
			}
			match := fields[0] == name || (numeric && fields[2] == name)
			if !match {
				continue
			}
			n, err := strconv.ParseUint(fields[2], 10, 32)
			if err != nil {
				continue
			}
			if len(fields) >= 4 && file == "etc/passwd" {
				if g, err := strconv.ParseUint(fields[3], 10, 32); err == nil {
					gid = uint32(g)
				}
			}
			return uint32(n), gid, nil
		}
		break // only the topmost layer's file counts
	}
	if numeric {
		return id, 0, nil
	}
	return 0, 0, fmt.Errorf("%s not found in the image's /%s", name, file)
}

// hostResolvConf returns the host's resolv.conf without loopback name
// servers, which would point into the machine's own loopback.
func hostResolvConf() []byte {
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return []byte("# no name servers: the host has no /etc/resolv.conf\n")
	}
	var b strings.Builder
	b.WriteString("# from the host's /etc/resolv.conf, without loopback name servers\n")
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[0] == "nameserver" && len(f) > 1 && (strings.HasPrefix(f[1], "127.") || f[1] == "::1") {
			continue
		}
		b.WriteString(line + "\n")
	}
	return []byte(b.String())
}

// gatewayResolvConf points machines at the name server on the gateway
// (Config.DNS). No search list: <app>.internal is asked as it is written.
func gatewayResolvConf(gw netip.Addr) []byte {
	return fmt.Appendf(nil, "# pier's name server, on the gateway\nnameserver %s\n", gw)
}

func hostsFile(ip, hostname string) []byte {
	return fmt.Appendf(nil, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", ip, hostname)
}
