package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// GC removes the blobs no tag leads to (manifests, configs and layers of
// untagged images, and temporary files of interrupted writes), and returns
// how many files it removed and their size. It waits for Puts in progress
// and holds new ones back while it runs, so it never takes the blobs of an
// image being stored. If a tagged manifest cannot be read, it removes
// nothing: it could not tell which blobs that image needs.
func (s *Store) GC(ctx context.Context) (removed int, freedBytes int64, err error) {
	s.writers.Lock()
	defer s.writers.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()

	keep := map[string]bool{}
	for _, d := range s.index {
		keep[d.Digest.Hex] = true
		m, err := s.manifest(d.Digest)
		if err != nil {
			return 0, 0, fmt.Errorf("image gc: %s: %w", d.Annotations[RefNameAnnotation], err)
		}
		keep[m.Config.Digest.Hex] = true
		for _, l := range m.Layers {
			keep[l.Digest.Hex] = true
		}
	}
	entries, err := os.ReadDir(s.blobDir())
	if err != nil {
		return 0, 0, fmt.Errorf("image gc: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return removed, freedBytes, err
		}
		if keep[e.Name()] || e.IsDir() {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(filepath.Join(s.blobDir(), e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if h, err := v1.NewHash("sha256:" + e.Name()); err == nil {
			s.cacheMu.Lock()
			delete(s.manifests, h)
			s.cacheMu.Unlock()
		}
		removed++
		freedBytes += fi.Size()
	}
	errs = append(errs, s.removeStaleIndexTemps())
	if err := errors.Join(errs...); err != nil {
		return removed, freedBytes, fmt.Errorf("image gc: %w", err)
	}
	return removed, freedBytes, nil
}

// removeStaleIndexTemps removes temporary index.json files a crash left
// behind; callers hold mu, so no write of index.json is under way.
func (s *Store) removeStaleIndexTemps() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".index.json.tmp-") || strings.HasPrefix(e.Name(), ".oci-layout.tmp-") {
			if err := os.Remove(filepath.Join(s.dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
