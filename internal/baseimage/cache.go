package baseimage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// layerFile is a base's layer file, with the digests written beside it,
// so that nothing rereads the file to learn them.
type layerFile struct {
	path           string
	digest, diffID v1.Hash
	size           int64
}

func (l *layerFile) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *layerFile) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *layerFile) Size() (int64, error)                { return l.size, nil }
func (l *layerFile) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *layerFile) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

// tmpDir makes a fresh work directory under dir/tmp for building id,
// marked active so that GC leaves it alone.
func (b *Bases) tmpDir(dir, id string) (string, error) {
	var r [6]byte
	_, _ = rand.Read(r[:])
	tmp := filepath.Join(dir, "tmp", id+"."+hex.EncodeToString(r[:]))
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", fmt.Errorf("base images: %w", err)
	}
	if b.active == nil {
		b.active = map[string]bool{}
	}
	b.active[filepath.Base(tmp)] = true
	return tmp, nil
}

// release removes what is left of a build's work directory.
func (b *Bases) release(tmp string) {
	if err := removeTree(tmp); err != nil {
		b.log().Warn("remove base image work directory", "dir", tmp, "err", err)
	}
	b.mu.Lock()
	delete(b.active, filepath.Base(tmp))
	b.mu.Unlock()
}

// publish renames the finished build tmp to final. When another process
// got there first with the same fingerprint, its copy is kept (the two are
// the same); a stale or broken entry in the way is replaced.
func publish(tmp, final, fp string) error {
	err := os.Rename(tmp, final)
	if err == nil || !(errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ENOTEMPTY)) {
		return err
	}
	if m, merr := readMeta(final); merr == nil && m.Fingerprint == fp {
		return nil
	}
	if err := removeTree(final); err != nil {
		return err
	}
	return os.Rename(tmp, final)
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// GC removes the cached bases whose IDs are not in keep, and work
// directories no build of this Bases is using. It returns how many bases
// it removed. Bases still in use by machines must be in keep.
func (b *Bases) GC(ctx context.Context, keep map[string]bool) (removed int, err error) {
	dir, err := b.dir()
	if err != nil {
		return 0, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("base images gc: %w", err)
	}
	for _, e := range ents {
		if ctx.Err() != nil {
			return removed, ctx.Err()
		}
		id := e.Name()
		if id == "tmp" || keep[id] || !e.IsDir() || !strings.Contains(id, "-") {
			continue
		}
		unlock, err := b.lock(ctx, id)
		if err != nil {
			return removed, err
		}
		err = removeTree(filepath.Join(dir, id))
		unlock()
		if err != nil {
			return removed, fmt.Errorf("base images gc: %w", err)
		}
		removed++
		b.log().Info("base image removed", "id", id)
	}
	tmps, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		return removed, fmt.Errorf("base images gc: %w", err)
	}
	for _, e := range tmps {
		b.mu.Lock()
		busy := b.active[e.Name()]
		b.mu.Unlock()
		if !busy {
			if err := removeTree(filepath.Join(dir, "tmp", e.Name())); err != nil {
				return removed, fmt.Errorf("base images gc: %w", err)
			}
		}
	}
	return removed, nil
}

// removeTree is os.RemoveAll that also gets through directories without
// write permission, which a base's rootfs has when not made by root.
func removeTree(p string) error {
	err := os.RemoveAll(p)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}
