package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// staleTmp is how old a tmp/ entry that no Get of this Store owns must be
// before GC takes it for the leftover of a crash (another process sharing
// Dir may still be filling a younger one).
const staleTmp = time.Hour

// GC removes the unpacked images whose digests are not in inUse, the blobs
// that only they used, and leftovers of interrupted unpacks. It returns how
// many images it removed. An image being unpacked by a concurrent Get is
// waited for, then removed if not in use: callers put what they are about
// to start in inUse.
func (s *Store) GC(ctx context.Context, inUse map[string]bool) (removed int, err error) {
	root, err := s.dirs()
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(filepath.Join(root, "rootfs"))
	if err != nil {
		return 0, fmt.Errorf("image gc: %w", err)
	}
	kept := map[string]bool{}
	var errs []error
	for _, e := range entries {
		hex := e.Name()
		if _, err := v1.NewHash("sha256:" + hex); err != nil {
			continue // not ours
		}
		if inUse["sha256:"+hex] {
			kept[hex] = true
			continue
		}
		if err := s.removeImage(ctx, root, hex); err != nil {
			if ctx.Err() != nil {
				return removed, ctx.Err()
			}
			errs = append(errs, err)
			kept[hex] = true
			continue
		}
		s.log().Info("image removed", "digest", "sha256:"+hex)
		removed++
	}
	errs = append(errs, s.gcBlobs(root, kept), s.gcTmp(root))
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("image gc: %w", err)
	}
	return removed, nil
}

func (s *Store) removeImage(ctx context.Context, root, hex string) error {
	unlock, err := s.locks.lock(ctx, hex)
	if err != nil {
		return err
	}
	defer unlock()
	return removeAll(filepath.Join(root, "rootfs", hex))
}

// gcBlobs keeps the blobs of kept images: each image's own blob (its
// manifest, or a docker-archive image's config), the config a manifest
// names, and any index that leads to a kept manifest.
func (s *Store) gcBlobs(root string, kept map[string]bool) error {
	dir := filepath.Join(root, "blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	var indexes []*v1.IndexManifest
	var indexHex []string
	for _, e := range entries {
		hex := e.Name()
		raw, err := os.ReadFile(filepath.Join(dir, hex))
		if err != nil {
			return err
		}
		kind, err := manifestKind(raw)
		if err != nil {
			continue // a config
		}
		switch kind {
		case kindIndex:
			if idx, err := v1.ParseIndexManifest(bytes.NewReader(raw)); err == nil {
				indexes = append(indexes, idx)
				indexHex = append(indexHex, hex)
			}
		case kindManifest:
			if !kept[hex] {
				continue
			}
			if m, err := v1.ParseManifest(bytes.NewReader(raw)); err == nil {
				keep[m.Config.Digest.Hex] = true
			}
		}
	}
	for h := range kept {
		keep[h] = true
	}
	// Indexes may lead to indexes: repeat until nothing changes.
	for changed := true; changed; {
		changed = false
		for i, idx := range indexes {
			if keep[indexHex[i]] {
				continue
			}
			for _, m := range idx.Manifests {
				if keep[m.Digest.Hex] {
					keep[indexHex[i]] = true
					changed = true
					break
				}
			}
		}
	}
	var errs []error
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (s *Store) gcTmp(root string) error {
	dir := filepath.Join(root, "tmp")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || s.isActive(e.Name()) || time.Since(fi.ModTime()) < staleTmp {
			continue
		}
		if err := removeAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keyedLocks is a mutex per key, taken with a context.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch      chan struct{}
	waiters int
}

func (k *keyedLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.waiters++
	k.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
		return func() {
			<-l.ch
			k.release(key, l)
		}, nil
	case <-ctx.Done():
		k.release(key, l)
		return nil, ctx.Err()
	}
}

func (k *keyedLocks) release(key string, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l.waiters--; l.waiters == 0 {
		delete(k.m, key)
	}
}
