package baseimage

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// entry is one file of a base, at its path in the image: relative,
// slash-separated, clean, never "" or climbing out. Every entry is owned
// by root and carries no setuid, setgid or xattr (so no file capability).
type entry struct {
	Path string
	Type byte        // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	Mode fs.FileMode // permission bits (and sticky, on directories)
	Link string      // a symlink's target, verbatim
	// A regular file's content is Data, or else the host file at Src
	// (absolute), read when the layer is written.
	Src  string
	Data []byte
}

// excluded are trees of the host's packages no app reads at run time.
var excluded = []string{
	"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
	"usr/share/locale", "usr/include",
}

func isExcluded(rel string) bool {
	for _, x := range excluded {
		if rel == x || strings.HasPrefix(rel, x+"/") {
			return true
		}
	}
	return false
}

// maxLinks bounds the symlinks followed resolving one path, as the kernel does.
const maxLinks = 40

// collector gathers the entries of a base from the host under root,
// resolving every path the way the kernel would inside the image: through
// the host's symlinks (merged /usr: /bin -> usr/bin), with absolute
// targets and ".." anchored at root. So each file appears once, at its
// real path, and nothing outside root is read.
type collector struct {
	root    string
	entries map[string]*entry
	dirs    map[string]string // absolute path as named -> real directory, relative
	skipped map[string]int    // why entries were left out -> how many
}

func newCollector(root string) *collector {
	return &collector{
		root:    root,
		entries: map[string]*entry{},
		dirs:    map[string]string{"/": ""},
		skipped: map[string]int{},
	}
}

func (c *collector) host(rel string) string { return filepath.Join(c.root, filepath.FromSlash(rel)) }

// realDir returns where directory p (absolute, clean) really is, relative
// to root. Errors are the lstat's when a component is missing.
func (c *collector) realDir(p string, links int) (string, error) {
	if r, ok := c.dirs[p]; ok {
		return r, nil
	}
	parent, name := path.Split(p)
	rp, err := c.realDir(path.Clean(parent), links)
	if err != nil {
		return "", err
	}
	rel := path.Join(rp, name)
	fi, err := os.Lstat(c.host(rel))
	if err != nil {
		return "", err
	}
	var r string
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		if links++; links > maxLinks {
			return "", &fs.PathError{Op: "resolve", Path: p, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(c.host(rel))
		if err != nil {
			return "", err
		}
		if !path.IsAbs(target) {
			target = path.Join("/", rp, target)
		}
		// A rooted Clean drops ".." at the top: the path stays under root.
		if r, err = c.realDir(path.Clean("/"+target), links); err != nil {
			return "", err
		}
	case fi.IsDir():
		r = rel
	default:
		return "", &fs.PathError{Op: "resolve", Path: p, Err: syscall.ENOTDIR}
	}
	c.dirs[p] = r
	return r, nil
}

// real returns where p (absolute, clean) is, relative to root: its
// directory resolved, its last component not followed.
func (c *collector) real(p string) (string, error) {
	dir, name := path.Split(p)
	rd, err := c.realDir(path.Clean(dir), 0)
	if err != nil {
		return "", err
	}
	return path.Join(rd, name), nil
}

func (c *collector) skip(why string) { c.skipped[why]++ }

// addHost adds the host's file p (absolute, clean), unless it is excluded,
// missing or already there. Directories are added alone, not their content.
func (c *collector) addHost(p string) error {
	rel, err := c.real(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP) {
		c.skip("not on disk")
		return nil
	}
	if err != nil {
		return err
	}
	if rel == "" || isExcluded(rel) || c.entries[rel] != nil {
		return nil
	}
	fi, err := os.Lstat(c.host(rel))
	if errors.Is(err, fs.ErrNotExist) {
		c.skip("not on disk")
		return nil
	}
	if err != nil {
		return err
	}
	e := &entry{Path: rel}
	switch m := fi.Mode(); {
	case m.IsDir():
		e.Type, e.Mode = tar.TypeDir, m.Perm()|m&fs.ModeSticky
	case m.IsRegular():
		e.Type, e.Mode, e.Src = tar.TypeReg, m.Perm(), c.host(rel)
		if m&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			c.skip("setuid/setgid bits stripped")
		}
	case m&fs.ModeSymlink != 0:
		if e.Link, err = os.Readlink(c.host(rel)); err != nil {
			return err
		}
		e.Type, e.Mode = tar.TypeSymlink, 0o777
	default:
		c.skip("device, socket or fifo left out")
		return nil
	}
	c.entries[rel] = e
	return nil
}

// put adds e, replacing whatever the packages had at its path.
func (c *collector) put(e *entry) { c.entries[e.Path] = e }

// sorted returns the entries by path, each directory before what it
// holds, after adding the directories that hold entries but were not
// named (with the host's mode when it has them).
func (c *collector) sorted() []*entry {
	for _, e := range slices.Collect(maps.Values(c.entries)) {
		for d := path.Dir(e.Path); d != "."; d = path.Dir(d) {
			if c.entries[d] != nil {
				break
			}
			mode := fs.FileMode(0o755)
			if fi, err := os.Lstat(c.host(d)); err == nil && fi.IsDir() {
				mode = fi.Mode().Perm() | fi.Mode()&fs.ModeSticky
			}
			c.entries[d] = &entry{Path: d, Type: tar.TypeDir, Mode: mode}
		}
	}
	out := slices.Collect(maps.Values(c.entries))
	// A prefix sorts first: a directory comes before what it holds.
	slices.SortFunc(out, func(a, b *entry) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// hostTrees are trees of a package's files taken whole from disk rather
// than from its .list, because its own tools replace them after install:
// "npm install -g npm" swaps nodesource's npm for another version, whose
// files dpkg knows nothing of (and some listed ones are gone). Apps start
// with the host's npm at build time, so they get the same one at run time.
var hostTrees = map[string][]string{
	"nodejs": {"/usr/lib/node_modules/npm"},
}

// addTree adds everything under the host's directory p (absolute, clean).
func (c *collector) addTree(p string) error {
	rel, err := c.realDir(p, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return filepath.WalkDir(c.host(rel), func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, err := filepath.Rel(c.root, q)
		if err != nil {
			return err
		}
		return c.addHost("/" + filepath.ToSlash(r))
	})
}

// treeStamp hashes what the host's tree p holds, from metadata only (a
// walk of lstats, no file read): an upgrade changes sizes and mtimes.
func treeStamp(h io.Writer, root, p string) error {
	c := newCollector(root)
	rel, err := c.realDir(p, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(h, "tree %s\n", p)
	return filepath.WalkDir(c.host(rel), func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		var ino uint64
		if st != nil {
			ino = st.Ino
		}
		fmt.Fprintf(h, "%s %v %d %d %d\n", q, fi.Mode(), fi.Size(), fi.ModTime().UnixNano(), ino)
		return nil
	})
}

// hostExtras are the files of every base that no package lists: the ones
// update-ca-certificates generates (the bundle and the hashed symlink farm
// in /etc/ssl/certs, with local CAs under /usr/local/share/ca-certificates),
// the host's /etc/os-release (a symlink into base-files, which is not in
// any closure, so its content), and the merged-/usr top-level symlinks.
// Their content is read now, once: it is what the fingerprint hashes and
// exactly what the base holds.
func hostExtras(root string) ([]*entry, error) {
	c := newCollector(root)
	var out []*entry
	for _, top := range []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"} {
		fi, err := os.Lstat(c.host(top))
		if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			link, err := os.Readlink(c.host(top))
			if err != nil {
				return nil, err
			}
			out = append(out, &entry{Path: top, Type: tar.TypeSymlink, Mode: 0o777, Link: link})
		}
	}
	for _, dir := range []string{"/etc/ssl/certs", "/usr/local/share/ca-certificates"} {
		rel, err := c.realDir(dir, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = filepath.WalkDir(c.host(rel), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			r, _ := filepath.Rel(root, p)
			r = filepath.ToSlash(r)
			switch {
			case d.IsDir() && r != rel && dir == "/etc/ssl/certs":
				return fs.SkipDir // java/ and the like belong to packages not in bases
			case d.IsDir():
				fi, err := d.Info()
				if err != nil {
					return err
				}
				out = append(out, &entry{Path: r, Type: tar.TypeDir, Mode: fi.Mode().Perm()})
			case d.Type()&fs.ModeSymlink != 0:
				link, err := os.Readlink(p)
				if err != nil {
					return err
				}
				out = append(out, &entry{Path: r, Type: tar.TypeSymlink, Mode: 0o777, Link: link})
			case d.Type().IsRegular():
				fi, err := d.Info()
				if err != nil {
					return err
				}
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				out = append(out, &entry{Path: r, Type: tar.TypeReg, Mode: fi.Mode().Perm(), Data: data})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", dir, err)
		}
	}
	osRelease, err := c.readFile("/etc/os-release")
	if err != nil {
		return nil, fmt.Errorf("read /etc/os-release: %w", err)
	}
	out = append(out, &entry{Path: "etc/os-release", Type: tar.TypeReg, Mode: 0o644, Data: osRelease})
	return out, nil
}

// readFile reads p (absolute) following symlinks inside root.
func (c *collector) readFile(p string) ([]byte, error) {
	for range maxLinks {
		rel, err := c.real(path.Clean(p))
		if err != nil {
			return nil, err
		}
		fi, err := os.Lstat(c.host(rel))
		if err != nil {
			return nil, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return os.ReadFile(c.host(rel))
		}
		target, err := os.Readlink(c.host(rel))
		if err != nil {
			return nil, err
		}
		if !path.IsAbs(target) {
			target = path.Join("/", path.Dir(rel), target)
		}
		p = target
	}
	return nil, &fs.PathError{Op: "read", Path: p, Err: syscall.ELOOP}
}

// generated are the files pier writes into every base rather than take
// the host's: users and groups are root and nobody only. /etc/hosts,
// /etc/resolv.conf and /etc/hostname come from the runtime. The runtime's
// mount points are there too, so that nothing has to make them in a
// read-only rootfs.
func generated() []*entry {
	file := func(p, data string) *entry {
		return &entry{Path: p, Type: tar.TypeReg, Mode: 0o644, Data: []byte(data)}
	}
	dir := func(p string, mode fs.FileMode) *entry {
		return &entry{Path: p, Type: tar.TypeDir, Mode: mode}
	}
	return []*entry{
		file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
		file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
		file("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\n"+
			"hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"),
		dir("tmp", 0o777|fs.ModeSticky),
		dir("var/tmp", 0o777|fs.ModeSticky),
		dir("app", 0o755),
		dir("home", 0o755),
		dir("root", 0o700),
		dir("dev", 0o755),
		dir("proc", 0o555),
		dir("sys", 0o555),
		dir("run", 0o755),
	}
}

// hashEntries hashes what entries hold, for the fingerprint.
func hashEntries(h io.Writer, es []*entry) {
	for _, e := range es {
		sum := sha256.Sum256(e.Data)
		fmt.Fprintf(h, "%c %s %o %q %x\n", e.Type, e.Path, e.Mode, e.Link, sum)
	}
}
