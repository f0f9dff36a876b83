package apps

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/pier"
)

// DefaultKeepReleases is Service.KeepReleases when unset.
const DefaultKeepReleases = 10

// tagRelease names rel's image web:vN (and, once it is live, web:latest),
// so registry clients and export find it by version.
func (s *Service) tagRelease(ctx context.Context, rel pier.Release, tags ...string) error {
	if s.Images == nil || rel.Image.Digest == "" {
		return nil
	}
	img, err := s.Images.Image(ctx, rel.App, rel.Image.Digest)
	if err != nil {
		return fmt.Errorf("image of %s v%d: %w", rel.App, rel.Version, err)
	}
	for _, tag := range tags {
		if _, err := s.Images.Put(ctx, rel.App, tag, img); err != nil {
			return fmt.Errorf("tag %s:%s: %w", rel.App, tag, err)
		}
	}
	return nil
}

// collect removes the builds and images of an app's releases beyond the
// newest KeepReleases (never the current one's, nor a build a kept release
// shares), then the image blobs nothing names any more. Release records
// stay: they are the app's history. Failures are logged, not returned: a
// deploy that went live is not undone by housekeeping.
func (s *Service) collect(ctx context.Context, app string) {
	keep := s.KeepReleases
	if keep <= 0 {
		keep = DefaultKeepReleases
	}
	a, err := s.Store.App(ctx, app)
	if err != nil {
		return
	}
	rels, err := s.Store.Releases(ctx, app) // newest first
	if err != nil {
		s.Log.Warn("collect releases", "app", app, "err", err)
		return
	}
	keptBuilds := map[string]bool{}
	var old []pier.Release
	for i, r := range rels {
		if i < keep || r.Version == a.Release {
			keptBuilds[r.BuildID] = true
		} else {
			old = append(old, r)
		}
	}
	removed := 0
	for _, r := range old {
		if s.Images != nil {
			if err := s.Images.Untag(ctx, app, fmt.Sprintf("v%d", r.Version)); err != nil && !errors.Is(err, imagestore.ErrNotFound) {
				s.Log.Warn("untag old release", "app", app, "version", r.Version, "err", err)
			}
		}
		if keptBuilds[r.BuildID] {
			continue
		}
		dir := s.Builder.Path(app, r.BuildID)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			s.Log.Warn("remove old build", "app", app, "build", r.BuildID, "err", err)
			continue
		}
		if s.Images != nil {
			if err := s.Images.Untag(ctx, app, r.BuildID); err != nil && !errors.Is(err, imagestore.ErrNotFound) {
				s.Log.Warn("untag old build", "app", app, "build", r.BuildID, "err", err)
			}
		}
		removed++
	}
	if removed == 0 {
		return
	}
	if s.Unpacked != nil && !s.Busy.Elsewhere(app, opDeploy) {
		// Dockerfile images unpacked for machines: keep those of every
		// app's kept releases.
		inUse, err := s.keptUnpacked(ctx, keep)
		if err == nil {
			_, err = s.Unpacked.GC(ctx, inUse)
		}
		if err != nil {
			s.Log.Warn("collect unpacked images", "err", err)
		}
	}
	if s.Images != nil {
		if n, freed, err := s.Images.GC(ctx); err != nil {
			s.Log.Warn("collect images", "err", err)
		} else if n > 0 {
			s.Log.Info("collected old release images", "app", app, "blobs", n, "bytes", freed)
		}
	}
	s.event(ctx, app, "collect", "removed the builds of %d release(s) older than the newest %d", removed, keep)
}

// keptUnpacked are the digests of the unpacked images (Dockerfile
// releases') that the kept releases of all apps run on.
func (s *Service) keptUnpacked(ctx context.Context, keep int) (map[string]bool, error) {
	apps, err := s.Store.Apps(ctx)
	if err != nil {
		return nil, err
	}
	inUse := map[string]bool{}
	for _, a := range apps {
		rels, err := s.Store.Releases(ctx, a.Name)
		if err != nil {
			return nil, err
		}
		for i, r := range rels {
			if i >= keep && r.Version != a.Release {
				continue
			}
			for _, l := range r.Image.Lowers {
				if hex, ok := strings.CutPrefix(l, "image-"); ok {
					inUse["sha256:"+hex] = true
				}
			}
		}
	}
	return inUse, nil
}
