package dockerfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/internal/fspath"
)

// A stack is an image's layer directories in overlayfs' format, topmost
// first: what a build machine's root is made of. Its methods answer what
// the merged view (the machine's root) has at a path, without mounting it,
// for COPY destinations and --chown names. Paths are slash-separated and
// relative to the root ("" is the root).
type stack []string

// opaqueXattr marks a directory that hides the lower layers' entries.
const opaqueXattr = "trusted.overlay.opaque"

func isWhiteout(fi fs.FileInfo) bool {
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

func isOpaque(dir string) bool {
	buf := make([]byte, 4)
	n, err := unix.Lgetxattr(dir, opaqueXattr, buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// lstat returns what the merged view has at rel (not following a final
// symbolic link) and the host path of the layer entry it comes from.
// Symbolic links on the way are not followed: rel must be resolved (see
// resolve) for the answer to be the machine's.
func (s stack) lstat(rel string) (fs.FileInfo, string, bool) {
	if rel == "" {
		if len(s) == 0 {
			return nil, "", false
		}
		fi, err := os.Lstat(s[0])
		return fi, s[0], err == nil
	}
	parts := strings.Split(rel, "/")
	for _, layer := range s {
		cur := layer
		hidden := false // an opaque directory of this layer hides the layers below
		for i, part := range parts {
			cur = filepath.Join(cur, part)
			fi, err := os.Lstat(cur)
			if err != nil {
				break
			}
			if isWhiteout(fi) {
				return nil, "", false
			}
			if i == len(parts)-1 {
				return fi, cur, true
			}
			if !fi.IsDir() {
				return nil, "", false
			}
			if isOpaque(cur) {
				hidden = true
			}
		}
		if hidden {
			return nil, "", false
		}
	}
	return nil, "", false
}

// resolve follows the symbolic links along rel the way the kernel does in
// the machine: an absolute target starts again at the root and ".." stops
// at it. The last component is followed too when followLast is set.
// Components that do not exist are kept as they are.
func (s stack) resolve(rel string, followLast bool) (string, error) {
	cur, err := fspath.Resolve(rel, func(rel string) (string, bool, error) {
		fi, host, ok := s.lstat(rel)
		if !ok || fi.Mode()&fs.ModeSymlink == 0 {
			return "", false, nil
		}
		target, err := os.Readlink(host)
		return target, err == nil, err
	}, fspath.Options{Clamp: true, NoFollowLast: !followLast})
	if errors.Is(err, fspath.ErrLoop) {
		return "", fmt.Errorf("/%s: too many levels of symbolic links", rel)
	}
	return cur, err
}

func parentOf(rel string) string { return fspath.Parent(rel) }

// dirAttrs are the mode and owner the merged view's directory rel has, or
// 0755 root when it has none: new directories made for rel in a layer
// above take them, so that they do not change the image's.
func (s stack) dirAttrs(rel string) (fs.FileMode, int, int) {
	fi, _, ok := s.lstat(rel)
	if !ok || !fi.IsDir() {
		return 0o755, 0, 0
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid), int(st.Uid), int(st.Gid)
}

// readFile reads a small file of the merged view, such as /etc/passwd.
func (s stack) readFile(rel string) ([]byte, error) {
	r, err := s.resolve(rel, true)
	if err != nil {
		return nil, err
	}
	fi, host, ok := s.lstat(r)
	if !ok || !fi.Mode().IsRegular() {
		return nil, fs.ErrNotExist
	}
	if fi.Size() > 16<<20 {
		return nil, fmt.Errorf("/%s is too large", rel)
	}
	f, err := os.OpenFile(host, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// chownIDs turns a --chown value ("user[:group]", names or numbers) into
// numeric ids, looking names up in the image's /etc/passwd and /etc/group
// as Docker does. A user without a group gets the user's primary group
// (or the same number, for a numeric user the image does not know).
func (s stack) chownIDs(spec string) (uid, gid int, err error) {
	u, g, hasGroup := strings.Cut(spec, ":")
	uid, pgid, err := s.lookupID(u, "etc/passwd")
	if err != nil {
		return 0, 0, err
	}
	gid = pgid
	if hasGroup {
		if gid, _, err = s.lookupID(g, "etc/group"); err != nil {
			return 0, 0, err
		}
	}
	return uid, gid, nil
}

func (s stack) lookupID(name, file string) (id, gid int, err error) {
	if name == "" {
		return 0, 0, errors.New("empty user or group")
	}
	n, numErr := strconv.Atoi(name)
	if numErr == nil && n < 0 {
		return 0, 0, fmt.Errorf("%q is not a valid id", name)
	}
	data, rerr := s.readFile(file)
	if rerr == nil {
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) < 3 || (f[0] != name && (numErr != nil || f[2] != name)) {
				continue
			}
			id, err := strconv.Atoi(f[2])
			if err != nil {
				continue
			}
			gid := id
			if len(f) >= 4 && file == "etc/passwd" {
				if g, err := strconv.Atoi(f[3]); err == nil {
					gid = g
				}
			}
			return id, gid, nil
		}
	}
	if numErr == nil {
		return n, n, nil
	}
	return 0, 0, fmt.Errorf("%s is not in the image's /%s", name, file)
}
