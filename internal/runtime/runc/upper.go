package runc

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// keptUpper is a writable layer the caller owns (runtime.Spec.Upper): the
// machine's changes, kept after it is gone. What the driver itself puts
// there is taken out again at the end, so that the layer is the diff of
// what ran in the machine, as a Dockerfile build needs it.
type keptUpper struct {
	upper string // the caller's directory
	// scratch is the overlay's upper directory while the machine runs: on
	// the machine's own disk, so that its size bounds the layer. The
	// caller's directory is copied in before the machine starts and the
	// machine's layer copied out after (collect). "" until copied in.
	scratch string
	// files are the driver's own files (relative to upper): /etc/hosts
	// and its like, which the machine may read and even change, but which
	// are never part of what it made (as with Docker, where they are bind
	// mounts).
	files []string
	// stubs are paths that were not in upper before the machine started
	// and may appear there because of the driver or runc: the parents of
	// files, and mount points runc makes when the image lacks them. They
	// are removed when found empty (and not opaque), deepest first.
	stubs []string
	// hostIDs is the host id of the machine's root: in scratch, the
	// layer's owners are shifted onto its range (userns.go).
	hostIDs uint32
}

// copyIn puts what the caller's layer holds into scratch, shifted onto
// the machine's host ids.
func (k *keptUpper) copyIn(scratch string, hostIDs uint32) error {
	if err := copyLayer(k.upper, scratch, 0, int64(hostIDs)); err != nil {
		return fmt.Errorf("upper layer: %w", err)
	}
	k.scratch, k.hostIDs = scratch, hostIDs
	return nil
}

// collect replaces the caller's layer with what the machine left in
// scratch, back on the ids the machine saw. It runs once the overlay is
// unmounted and before the machine's disk is.
func (k *keptUpper) collect() error {
	if k.scratch == "" {
		return nil
	}
	entries, err := os.ReadDir(k.upper)
	if err != nil {
		return fmt.Errorf("upper layer: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(k.upper, e.Name())); err != nil {
			return fmt.Errorf("upper layer: %w", err)
		}
	}
	if err := copyLayer(k.scratch, k.upper, k.hostIDs, -int64(k.hostIDs)); err != nil {
		return fmt.Errorf("upper layer: keep the machine's changes: %w", err)
	}
	k.scratch = ""
	return nil
}

// newKeptUpper checks the caller's upper directory.
func newKeptUpper(upper string) (*keptUpper, error) {
	if !filepath.IsAbs(upper) || strings.ContainsAny(upper, ":,") {
		return nil, fmt.Errorf("upper layer %q: want an absolute path without ':' or ','", upper)
	}
	upper = filepath.Clean(upper)
	fi, err := os.Lstat(upper)
	if err != nil {
		return nil, fmt.Errorf("upper layer: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("upper layer %s is not a directory", upper)
	}
	return &keptUpper{upper: upper}, nil
}

// note records, before anything is written to the upper layer, the
// driver's files and the paths that are stubs unless already there.
func (k *keptUpper) note(files []string, mounts []specs.Mount) {
	seen := map[string]bool{}
	add := func(p string) {
		rel := strings.TrimPrefix(path.Clean("/"+p), "/")
		for ; rel != "" && rel != "."; rel = path.Dir(rel) {
			if seen[rel] {
				return
			}
			seen[rel] = true
			if _, err := os.Lstat(filepath.Join(k.upper, rel)); errors.Is(err, os.ErrNotExist) {
				k.stubs = append(k.stubs, rel)
			}
		}
	}
	for _, f := range files {
		k.files = append(k.files, strings.TrimPrefix(path.Clean("/"+f), "/"))
		add(path.Dir(f))
	}
	for _, m := range mounts {
		add(m.Destination)
	}
	slices.SortFunc(k.stubs, func(a, b string) int {
		if d := strings.Count(b, "/") - strings.Count(a, "/"); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
}

// finish takes the driver's files and empty stubs out of the caller's
// layer. It runs after collect.
func (k *keptUpper) finish() error {
	var errs []error
	for _, f := range k.files {
		// Whatever the machine made of it (a changed file, a whiteout), the
		// path goes back to what the lower layers have.
		p := filepath.Join(k.upper, f)
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			continue // the machine replaced it with a directory: its own
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, s := range k.stubs {
		p := filepath.Join(k.upper, s)
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		switch {
		case fi.IsDir():
			if opaque(p) {
				continue // the machine emptied a directory of the image
			}
		case fi.Mode().IsRegular() && fi.Size() == 0:
		default:
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("upper layer %s: %w", k.upper, errors.Join(errs...))
	}
	return nil
}

// opaque says whether an upper directory hides the lower layers' entries.
func opaque(dir string) bool {
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(dir, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// copyLayer copies the overlay layer at src into dst (an empty or missing
// directory), keeping what overlayfs and a layer need: directories,
// regular files, symlinks, whiteouts (0/0 character devices) and other
// device nodes as entries, modes with their set-id bits, modification
// times, and the trusted.overlay.* and user.* attributes; file
// capabilities and ACLs are left behind (see internal/image). Owners in
// [from, from+idSize) move by delta; others are kept. Files are copied
// sparsely and hard links stay links, so the copy takes no more space than
// src does (src is a machine's disk: a layer written by untrusted code
// cannot grow past that disk's size when copied out).
func copyLayer(src, dst string, from uint32, delta int64) error {
	type inode struct{ dev, ino uint64 }
	linked := map[inode]string{}
	type dirTimes struct {
		path string
		ts   []unix.Timespec
	}
	var dirs []dirTimes // set once their entries are made, deepest first
	err := filepath.WalkDir(src, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(to, 0o700); err != nil && !(rel == "." && errors.Is(err, os.ErrExist)) {
				return err
			}
		case unix.S_IFREG:
			if st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if first, ok := linked[key]; ok {
					return os.Link(first, to)
				}
				linked[key] = to
			}
			if err := copySparse(p, to); err != nil {
				return err
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
			if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		default:
			return nil // sockets mean nothing in a layer
		}
		uid, gid := int64(st.Uid), int64(st.Gid)
		if st.Uid >= from && st.Uid-from < idSize {
			uid += delta
		}
		if st.Gid >= from && st.Gid-from < idSize {
			gid += delta
		}
		if err := os.Lchown(to, int(uid), int(gid)); err != nil {
			return err
		}
		if err := copyXattrs(p, to); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Chmod(to, st.Mode&0o7777); err != nil { // after the chown, which clears set-id bits
				return err
			}
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			dirs = append(dirs, dirTimes{to, ts})
			return nil
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, to, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i].path, dirs[i].ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// copyXattrs copies the attributes of a layer entry that overlayfs and
// images use (trusted.overlay.*, user.*).
func copyXattrs(src, dst string) error {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(src, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return fmt.Errorf("list attributes of %s: %w", src, err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "trusted.overlay.") && !strings.HasPrefix(name, "user.") {
			continue
		}
		val := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(src, name, val)
		if err != nil {
			return fmt.Errorf("read %s of %s: %w", name, src, err)
		}
		if err := unix.Lsetxattr(dst, name, val[:m], 0); err != nil {
			return fmt.Errorf("set %s on %s: %w", name, dst, err)
		}
	}
	return nil
}
