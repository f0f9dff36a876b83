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
	upper, work string
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
}

// newKeptUpper checks the caller's upper directory and makes the overlay
// work directory beside it (overlayfs wants both on one filesystem).
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
	work := upper + ".work"
	// A leftover of a crash: overlayfs refuses a used work directory.
	if err := os.RemoveAll(work); err != nil {
		return nil, fmt.Errorf("upper layer: %w", err)
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		return nil, fmt.Errorf("upper layer: %w", err)
	}
	return &keptUpper{upper: upper, work: work}, nil
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

// finish takes the driver's files and empty stubs out of the upper layer
// and removes the work directory. It runs once the overlay is unmounted.
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
	if err := os.RemoveAll(k.work); err != nil {
		errs = append(errs, err)
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
