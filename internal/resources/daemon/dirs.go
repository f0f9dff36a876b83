package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A managed server runs as its own unprivileged user (postgres, redis)
// while pier's data dir stays private to pier: 0700, with keys, tokens and
// state.db in it. Nothing under it can be reached by the server's user
// without opening the data dir to someone, so when pier runs as root the
// servers' directories live apart, under a servers root that only root
// may write:
//
//	<root>/                     root 0711: traversable, not listable
//	<root>/<id>/                root 0711: one pier's servers (id: ServersDir)
//	<root>/<id>/<resource>/     root:<server's group> 0710: pid file, log, config
//	<root>/<id>/<resource>/data the server's user's, 0700 (Prepare's private dirs)
//
// No directory above a server's is ever loosened: one that does not let
// the server's user through, or that others may write, is refused with the
// fix named.

// DefaultServersRoot is the servers root when pier runs as root. It is not
// under the default data dir (/var/lib/pier), which is 0700.
const DefaultServersRoot = "/var/lib/pier-servers"

// ServersDir is the directory under root that holds the servers of the
// pier whose data dir is dataDir: the first 16 hex digits of the SHA-256
// of the data dir's absolute path, so that two piers on one host (tests
// run many) never share one.
func ServersDir(root, dataDir string) (string, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	dataDir, err = filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(dataDir))
	return filepath.Join(root, hex.EncodeToString(sum[:8])), nil
}

// MakeServersDir creates root and ServersDir(root, dataDir), root's and
// 0711, and returns the latter. An existing one must be a directory owned
// by root (pier's user) that neither group nor others may write: it is
// checked, never changed.
func MakeServersDir(root, dataDir string) (string, error) {
	dir, err := ServersDir(root, dataDir)
	if err != nil {
		return "", err
	}
	root = filepath.Dir(dir)
	if abs, err := filepath.Abs(dataDir); err == nil && (root == abs || strings.HasPrefix(root, abs+string(filepath.Separator))) {
		return "", fmt.Errorf("servers dir %s lies in the data dir %s, which only pier may enter: choose a --servers-dir outside it (default %s)", root, abs, DefaultServersRoot)
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return "", fmt.Errorf("servers dir: %w", err)
	}
	for _, p := range []string{root, dir} {
		if err := makeShared(p); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// makeShared creates p root's and 0711, or checks the one there.
func makeShared(p string) error {
	err := os.Mkdir(p, 0o711)
	if err == nil {
		return os.Chmod(p, 0o711) // the umask may have taken bits away
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("servers dir: %w", err)
	}
	st, err := lstat(p)
	if err != nil {
		return fmt.Errorf("servers dir: %w", err)
	}
	if err := trusted(p, st, false); err != nil {
		return err
	}
	return nil
}

// Prepare makes d.Dir the directory of a server that runs as d.User, with
// the subdirectories private names (data/, run/) that the server writes.
//
// When the server runs as pier's own user, d.Dir and the subdirectories
// are simply pier's, 0700, created with their parents if need be.
//
// Otherwise d.Dir's parent must exist. d.Dir becomes root's, with the
// server's group and mode 0710: the server reaches its subdirectories and
// reads what pier gives its group, but can neither list d.Dir nor replace
// the pid file and the log that pier, as root, signals and writes. Each
// private subdirectory is the server user's, 0700. Before anything is
// made, every directory above d.Dir must be root's and writable by root
// alone (or sticky, like /tmp), and must let the server's user search it
// by its mode bits: the daemon runs the server with its primary group
// only, and POSIX ACLs are not consulted. Prepare changes none of them; it
// names the fix instead.
func (d Daemon) Prepare(private ...string) error {
	cred, err := Credential(d.User)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(d.Dir)
	if err != nil {
		return err
	}
	if cred == nil {
		for _, p := range append([]string{dir}, join(dir, private)...) {
			if err := os.MkdirAll(p, 0o700); err != nil {
				return err
			}
		}
		return nil
	}
	if err := checkAncestors(dir, d.User, int(cred.Uid), int(cred.Gid)); err != nil {
		return err
	}
	if err := makeOwned(dir, 0, int(cred.Gid), 0o710); err != nil {
		return err
	}
	// Earlier versions of pier let servers through with an ACL entry on
	// their directory; the mode says it all now.
	if err := DropACL(dir); err != nil {
		return err
	}
	for _, p := range join(dir, private) {
		if err := makeOwned(p, int(cred.Uid), int(cred.Gid), 0o700); err != nil {
			return err
		}
	}
	return nil
}

func join(dir string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(dir, n)
	}
	return out
}

// makeOwned creates directory p if missing, and gives it owner, group and
// mode. An existing p must be a directory, not a link to one.
func makeOwned(p string, uid, gid int, mode os.FileMode) error {
	if err := os.Mkdir(p, mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	st, err := lstat(p)
	if err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return fmt.Errorf("%s is not a directory: remove it and start again", p)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		return fmt.Errorf("give %s to the server's user: %w", p, err)
	}
	return os.Chmod(p, mode)
}

// checkAncestors checks each directory above dir (as its links resolve):
// trusted, and searchable by uid with primary group gid.
func checkAncestors(dir, user string, uid, gid int) error {
	parent, err := filepath.EvalSymlinks(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("the directory of %s: %w", dir, err)
	}
	for p := parent; ; p = filepath.Dir(p) {
		st, err := lstat(p)
		if err != nil {
			return err
		}
		if err := trusted(p, st, true); err != nil {
			return err
		}
		if !searchable(st, uid, gid) {
			return fmt.Errorf("user %s cannot reach %s: %s (mode %o, owner uid %d, group gid %d) does not let it search; pier changes no directory above a server's: let the user through yourself (e.g. chmod o+x %s), or choose a --servers-dir that it can reach (default %s)",
				user, dir, p, st.Mode&0o7777, st.Uid, st.Gid, p, DefaultServersRoot)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// trusted refuses a directory that someone other than root (pier's user)
// owns or may write: they could swap what lies under it for their own. A
// sticky directory (/tmp) lets no one rename another's entries, so it
// passes where allowSticky.
func trusted(p string, st syscall.Stat_t, allowSticky bool) error {
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return fmt.Errorf("%s is not a directory", p)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not root: its owner could swap the servers' directories under it; chown root %s, or choose another --servers-dir (default %s)", p, st.Uid, p, DefaultServersRoot)
	}
	if st.Mode&0o022 != 0 && !(allowSticky && st.Mode&syscall.S_ISVTX != 0) {
		return fmt.Errorf("%s is writable by its group or others (mode %o): they could swap the servers' directories under it; chmod go-w %s, or choose another --servers-dir (default %s)", p, st.Mode&0o7777, p, DefaultServersRoot)
	}
	return nil
}

// searchable reports whether mode bits let uid, with primary group gid and
// no other group, search a directory.
func searchable(st syscall.Stat_t, uid, gid int) bool {
	switch {
	case uid == 0:
		return true
	case int(st.Uid) == uid:
		return st.Mode&0o100 != 0
	case int(st.Gid) == gid:
		return st.Mode&0o010 != 0
	}
	return st.Mode&0o001 != 0
}

func lstat(p string) (syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return st, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	return st, nil
}

// aclXattr holds a file's POSIX access ACL.
const aclXattr = "system.posix_acl_access"

// DropACL removes p's access ACL, if it has one, leaving only its mode.
// Earlier versions of pier added ACL entries to let servers through its
// directories.
func DropACL(p string) error {
	err := syscall.Removexattr(p, aclXattr)
	if err == nil || errors.Is(err, syscall.ENODATA) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOTSUP) {
		return nil
	}
	return fmt.Errorf("remove the ACL of %s: %w", p, err)
}
