package build

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pier-dev/pier/internal/fspath"
	"github.com/pier-dev/pier/internal/pier"
)

// skipped names are never uploaded: VCS data and local dependency or build
// caches, which the build recreates.
var skipped = map[string]bool{".git": true, "node_modules": true, ".venv": true, "__pycache__": true, ".pier": true}

// Pack writes dir as a gzipped tar stream to w.
func Pack(dir string, w io.Writer) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		if skipped[d.Name()] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		if !info.Mode().IsRegular() && !info.IsDir() && link == "" {
			return nil // sockets, fifos, devices: nothing to build from
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// MaxSourceBytes bounds the unpacked size of an uploaded source tree, and
// MaxSourceEntries its number of files, directories and links (a small
// upload of empty files could otherwise fill the host's inodes).
const (
	MaxSourceBytes   = 1 << 30
	MaxSourceEntries = 50_000
)

// Extract unpacks a stream written by Pack into dir, which should be empty.
// Nothing is ever written outside dir, whatever the archive holds: every
// write goes through an os.Root opened on dir, entries under a link are
// refused (Pack never writes one), and once all entries are in, every link
// is resolved inside the tree, link by link, and the upload is refused if one
// would lead out of it. On an error dir may hold a partial tree; the caller
// removes it.
func Extract(r io.Reader, dir string) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return pier.Errorf(pier.Invalid, "source upload is not a gzipped tar stream: %v", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extract source: %w", err)
	}
	defer root.Close()
	tr := tar.NewReader(gz)
	var total int64
	links := map[string]bool{} // slash paths of the links made so far
	for entries := 1; ; entries++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return pier.Errorf(pier.Invalid, "read source upload: %v", err)
		}
		if entries > MaxSourceEntries {
			return pier.Errorf(pier.Invalid, "source has more than %d files and directories; leave generated files and data out of the deploy (node_modules, .git and .venv already are)", MaxSourceEntries)
		}
		name := path.Clean(strings.TrimSuffix(hdr.Name, "/"))
		if !filepath.IsLocal(filepath.FromSlash(name)) {
			return pier.Errorf(pier.Invalid, "source upload has an unsafe path %q", hdr.Name)
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if links[p] {
				return pier.Errorf(pier.Invalid, "source upload has %q under the link %q; a source tree never has entries inside a link", hdr.Name, p)
			}
		}
		local := filepath.FromSlash(name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(local, 0o755); err != nil {
				return extractErr(hdr.Name, err)
			}
		case tar.TypeReg:
			total += hdr.Size
			if total > MaxSourceBytes {
				return pier.Errorf(pier.Invalid, "source is larger than %d MiB; leave build outputs and data out of the deploy", MaxSourceBytes>>20)
			}
			if err := root.MkdirAll(filepath.Dir(local), 0o755); err != nil {
				return extractErr(hdr.Name, err)
			}
			// O_EXCL: a second entry of the same name (a link, say) is
			// never written through.
			f, err := root.OpenFile(local, os.O_CREATE|os.O_EXCL|os.O_WRONLY|noFollow, fs.FileMode(hdr.Mode)&0o777|0o600)
			if err != nil {
				return extractErr(hdr.Name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", hdr.Name, err)
			}
		case tar.TypeSymlink:
			target := filepath.FromSlash(hdr.Linkname)
			if hdr.Linkname == "" || filepath.IsAbs(target) || !filepath.IsLocal(filepath.Join(filepath.Dir(local), target)) {
				return pier.Errorf(pier.Invalid, "source upload has a link %q pointing outside the app (%q)", hdr.Name, hdr.Linkname)
			}
			if err := root.MkdirAll(filepath.Dir(local), 0o755); err != nil {
				return extractErr(hdr.Name, err)
			}
			if err := root.Symlink(hdr.Linkname, local); err != nil {
				return extractErr(hdr.Name, err)
			}
			links[name] = true
		default:
			// other entry types carry nothing a build needs
		}
	}
	// A link that looks local may still lead out through other links
	// (a/b -> .., x -> a/b/..): resolve each one inside the tree.
	for l := range links {
		if _, err := resolveInside(root, l); err != nil {
			return pier.Errorf(pier.Invalid, "source upload has a link %q that leads outside the app: %v", l, err)
		}
	}
	return nil
}

// extractErr reports a write the tree refused (an escape os.Root caught, a
// duplicate entry) as bad input.
func extractErr(name string, err error) error {
	return pier.Errorf(pier.Invalid, "source upload entry %q cannot be written: %v", name, err)
}

// resolveInside resolves the slash path p (relative to root) the way the
// kernel would, following links one component at a time, and fails if the
// walk would ever leave root or follows too many links.
func resolveInside(root *os.Root, p string) (string, error) {
	return fspath.Resolve(p, func(rel string) (string, bool, error) {
		fi, err := root.Lstat(filepath.FromSlash(rel))
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			return "", false, nil
		}
		target, err := root.Readlink(filepath.FromSlash(rel))
		return target, err == nil, err
	}, fspath.Options{})
}
