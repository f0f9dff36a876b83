package dockerfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"golang.org/x/sys/unix"
)

// buildContext is the directory COPY and ADD read from: the app's source.
// It is opened as an os.Root, so no path and no symbolic link in it leads
// outside; symbolic links are copied as links, never followed.
type buildContext struct {
	dir    string
	root   *os.Root
	ignore *patternmatcher.PatternMatcher // .dockerignore; nil when there is none
}

func openContext(dir string) (*buildContext, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	c := &buildContext{dir: dir, root: root}
	f, err := root.Open(".dockerignore")
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(io.LimitReader(f, 1<<20))
	if err == nil {
		c.ignore, err = patternmatcher.New(patterns)
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	return c, nil
}

func (c *buildContext) Close() error { return c.root.Close() }

// ignored says whether .dockerignore leaves rel out of the context.
func (c *buildContext) ignored(rel string) bool {
	if c.ignore == nil || rel == "" {
		return false
	}
	m, err := c.ignore.MatchesOrParentMatches(rel)
	return err == nil && m
}

// copyOp is one COPY or ADD, its words expanded.
type copyOp struct {
	add      bool
	sources  []string
	dest     string // as written, absolute or relative to workdir
	workdir  string
	uid, gid int
	chmod    fs.FileMode // 0: keep the sources' modes
	chown    bool        // --chown was given: new destination directories get the ids too
	exclude  *patternmatcher.PatternMatcher
}

// source is one file or directory of the context to copy.
type source struct {
	rel string // in the context, "" for the context itself
	fi  fs.FileInfo
}

// copyInto writes the files of op into layer, a new layer directory over
// the image's stack.
func (c *buildContext) copyInto(op copyOp, layer string, below stack) error {
	var srcs []source
	for _, s := range op.sources {
		if op.add && (strings.Contains(s, "://") || strings.HasPrefix(s, "git@")) {
			return fmt.Errorf("ADD of %s: remote sources are not supported: download it in a RUN step, or add the file to the app", s)
		}
		found, err := c.match(s)
		if err != nil {
			return err
		}
		srcs = append(srcs, found...)
	}
	dest := op.dest
	if !path.IsAbs(dest) {
		dest = path.Join(op.workdir, dest)
	}
	intoDir := strings.HasSuffix(op.dest, "/") || strings.HasSuffix(op.dest, "/.") || op.dest == "."
	if !intoDir && len(srcs) > 1 {
		return fmt.Errorf("with several sources the destination must be a directory ending in /, not %s", op.dest)
	}
	destRel, err := below.resolve(strings.TrimPrefix(path.Clean(dest), "/"), true)
	if err != nil {
		return err
	}
	if fi, _, ok := below.lstat(destRel); ok && fi.IsDir() {
		intoDir = true
	}
	w := &layerWriter{dir: layer, below: below, op: op, buf: make([]byte, 256<<10)}
	for _, s := range srcs {
		switch {
		case s.fi.IsDir():
			if err := w.mkdirs(destRel, true); err != nil {
				return err
			}
			if err := c.copyTree(w, s.rel, destRel); err != nil {
				return err
			}
		case intoDir:
			if err := w.mkdirs(destRel, true); err != nil {
				return err
			}
			if err := c.copyEntry(w, s.rel, s.fi, path.Join(destRel, path.Base(s.rel))); err != nil {
				return err
			}
		default:
			if err := w.mkdirs(parentOf(destRel), false); err != nil {
				return err
			}
			if err := c.copyEntry(w, s.rel, s.fi, destRel); err != nil {
				return err
			}
		}
	}
	return w.finish()
}

func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// match finds the context entries a source names: one path, or a pattern
// (path.Match syntax, one directory level per component).
func (c *buildContext) match(src string) ([]source, error) {
	rel := strings.TrimPrefix(path.Clean("/"+src), "/") // the context is the root: ".." stops there
	if !hasGlob(rel) {
		if c.ignored(rel) {
			return nil, fmt.Errorf("%s is excluded by .dockerignore", src)
		}
		fi, err := c.lstat(rel)
		if err != nil {
			return nil, fmt.Errorf("%s: not found in the build context", src)
		}
		return []source{{rel: rel, fi: fi}}, nil
	}
	found := []string{""}
	for _, part := range strings.Split(rel, "/") {
		var next []string
		for _, dir := range found {
			if !hasGlob(part) {
				next = append(next, path.Join(dir, part))
				continue
			}
			names, err := c.readDir(dir)
			if err != nil {
				continue
			}
			for _, n := range names {
				if ok, err := path.Match(part, n); err != nil {
					return nil, fmt.Errorf("%s: %w", src, err)
				} else if ok {
					next = append(next, path.Join(dir, n))
				}
			}
		}
		found = next
	}
	var out []source
	for _, r := range found {
		if c.ignored(r) {
			continue
		}
		if fi, err := c.lstat(r); err == nil {
			out = append(out, source{rel: r, fi: fi})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no files of the build context match", src)
	}
	return out, nil
}

func (c *buildContext) lstat(rel string) (fs.FileInfo, error) {
	if rel == "" {
		return c.root.Stat(".")
	}
	return c.root.Lstat(rel)
}

func (c *buildContext) readDir(rel string) ([]string, error) {
	if rel == "" {
		rel = "."
	}
	f, err := c.root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

// copyTree copies the entries of the context directory rel into the layer
// directory dest (which exists).
func (c *buildContext) copyTree(w *layerWriter, rel, dest string) error {
	names, err := c.readDir(rel)
	if err != nil {
		return err
	}
	for _, n := range names {
		r := path.Join(rel, n)
		if c.ignored(r) && !c.mayReinclude(r) {
			continue
		}
		fi, err := c.lstat(r)
		if err != nil {
			return err
		}
		if w.op.exclude != nil {
			if m, _ := w.op.exclude.MatchesOrParentMatches(r); m {
				continue
			}
		}
		if err := c.copyEntry(w, r, fi, path.Join(dest, n)); err != nil {
			return err
		}
		if fi.IsDir() {
			if err := c.copyTree(w, r, path.Join(dest, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// mayReinclude says whether an ignored directory may still hold entries
// that a "!" pattern of .dockerignore brings back: one that names a path
// below it, or starts with a wildcard.
func (c *buildContext) mayReinclude(dir string) bool {
	if !c.ignore.Exclusions() {
		return false
	}
	fi, err := c.lstat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	for _, p := range c.ignore.Patterns() {
		if p.Exclusion() && (strings.HasPrefix(p.String(), dir+"/") || strings.HasPrefix(p.String(), "*")) {
			return true
		}
	}
	return false
}

// copyEntry makes dest in the layer from the context entry rel: a
// directory (its entries are copied by the caller), a file or a symbolic
// link. Set-id bits of the app's files are dropped.
func (c *buildContext) copyEntry(w *layerWriter, rel string, fi fs.FileInfo, dest string) error {
	if dest == "" {
		return nil // the root directory keeps the image's attributes
	}
	abs := filepath.Join(w.dir, filepath.FromSlash(dest))
	if err := w.clear(abs); err != nil {
		return err
	}
	mode := fi.Mode() & fs.ModePerm
	if w.op.chmod != 0 {
		mode = w.op.chmod
	}
	switch {
	case fi.IsDir():
		if err := os.Mkdir(abs, 0o700); err != nil {
			return err
		}
		w.dirs = append(w.dirs, dirMeta{abs: abs, mode: mode, mtime: fi.ModTime().UnixNano()})
		return os.Lchown(abs, w.op.uid, w.op.gid)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := c.root.Readlink(rel)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, abs); err != nil {
			return err
		}
		return os.Lchown(abs, w.op.uid, w.op.gid)
	case fi.Mode().IsRegular():
		if w.op.add {
			if err := c.refuseArchive(rel); err != nil {
				return err
			}
		}
		src, err := c.root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer src.Close()
		dst, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		_, err = io.CopyBuffer(dst, src, w.buf)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if err := os.Lchown(abs, w.op.uid, w.op.gid); err != nil {
			return err
		}
		if err := os.Chmod(abs, mode); err != nil {
			return err
		}
		return setTimes(abs, fi.ModTime().UnixNano())
	}
	return nil // fifos, sockets, devices: not copied
}

// refuseArchive stops ADD of a local archive, which Docker would unpack:
// pier copies files as they are, and a silent difference would surprise.
func (c *buildContext) refuseArchive(rel string) error {
	f, err := c.root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}), bytes.HasPrefix(head, []byte("BZh")),
		bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}), bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}),
		n >= 262 && bytes.Equal(head[257:262], []byte("ustar")):
		return fmt.Errorf("ADD %s: Docker would extract this archive, pier does not: COPY it and extract it in a RUN step", rel)
	}
	return nil
}

// layerWriter writes files into a new layer directory.
type layerWriter struct {
	dir   string
	below stack
	op    copyOp
	buf   []byte
	dirs  []dirMeta // modes and times to apply last
}

type dirMeta struct {
	abs   string
	mode  fs.FileMode
	mtime int64 // ns
}

// mkdirs makes the directory rel (resolved in the image) and its parents
// in the layer: those the image has keep its attributes; new ones are
// 0755 root, except that with --chown a new rel itself (when last) gets
// the ids.
func (w *layerWriter) mkdirs(rel string, last bool) error {
	if rel == "" {
		return nil
	}
	cur := ""
	parts := strings.Split(rel, "/")
	for i, part := range parts {
		cur = path.Join(cur, part)
		p := filepath.Join(w.dir, filepath.FromSlash(cur))
		if fi, err := os.Lstat(p); err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("/%s is not a directory", cur)
			}
			continue
		}
		mode, uid, gid := w.below.dirAttrs(cur)
		if fi, _, ok := w.below.lstat(cur); ok && !fi.IsDir() {
			return fmt.Errorf("/%s is not a directory in the image", cur)
		} else if !ok && last && i == len(parts)-1 && w.op.chown {
			uid, gid = w.op.uid, w.op.gid
		}
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return nil
}

func (w *layerWriter) clear(abs string) error {
	fi, err := os.Lstat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s: a directory is there already", abs[len(w.dir):])
	}
	return os.Remove(abs)
}

func (w *layerWriter) finish() error {
	for i := len(w.dirs) - 1; i >= 0; i-- {
		d := w.dirs[i]
		if err := os.Chmod(d.abs, d.mode); err != nil {
			return err
		}
		if err := setTimes(d.abs, d.mtime); err != nil {
			return err
		}
	}
	return nil
}

func setTimes(abs string, ns int64) error {
	ts := []unix.Timespec{unix.NsecToTimespec(ns), unix.NsecToTimespec(ns)}
	return unix.UtimesNanoAt(unix.AT_FDCWD, abs, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// parseChmod reads --chmod: octal permission bits only.
func parseChmod(s string) (fs.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 || n == 0 && s != "0" {
		return 0, fmt.Errorf("--chmod=%s: want octal permission bits such as 755", s)
	}
	return fs.FileMode(n), nil
}
