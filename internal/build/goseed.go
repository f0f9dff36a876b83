package build

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/fspath"
)

// seedGoCache starts an app's empty Go build cache as a copy of the
// standard library's, so its first build compiles only the app. Any
// failure just means a cold first build.
func (s *Sandbox) seedGoCache(ctx context.Context, app string, out io.Writer) {
	if s.SeedDir == "" {
		return
	}
	cache := filepath.Join(s.CacheDir, app)
	if isDir(filepath.Join(cache, "go-build")) {
		return
	}
	seed, err := s.goSeed(ctx, out)
	if err != nil {
		fmt.Fprintf(out, "    (no seed for the Go build cache: %v)\n", err)
		return
	}
	if err := s.prepareCache(cache); err != nil {
		return
	}
	tmp := filepath.Join(cache, ".go-build-seed")
	os.RemoveAll(tmp)
	if err := copyTreeAs(filepath.Join(seed, "go-build"), tmp, BuildUID, BuildGID); err != nil {
		os.RemoveAll(tmp)
		fmt.Fprintf(out, "    (could not seed the Go build cache: %v)\n", err)
		return
	}
	os.Rename(tmp, filepath.Join(cache, "go-build"))
}

// goSeed returns the seed of the host's Go version, compiling it first
// when there is none.
func (s *Sandbox) goSeed(ctx context.Context, out io.Writer) (string, error) {
	s.seedMu.Lock()
	defer s.seedMu.Unlock()
	gobin, err := lookPath("go")
	if err != nil {
		return "", errors.New("go is not installed on the host")
	}
	v, err := exec.CommandContext(ctx, gobin, "env", "GOVERSION", "GOARCH").Output()
	if err != nil {
		return "", fmt.Errorf("go env: %w", err)
	}
	key := strings.Join(strings.Fields(string(v)), "-")
	dir := filepath.Join(s.SeedDir, "gocache-"+key)
	if isDir(filepath.Join(dir, "go-build")) {
		return dir, nil
	}
	if err := os.MkdirAll(s.SeedDir, 0o700); err != nil {
		return "", err
	}
	b := make([]byte, 4)
	rand.Read(b)
	tmp := filepath.Join(s.SeedDir, "tmp-gocache-"+hex.EncodeToString(b))
	defer os.RemoveAll(tmp)
	work := filepath.Join(tmp, "work")
	for _, d := range []string{tmp, work} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return "", err
		}
		if err := os.Lchown(d, BuildUID, BuildGID); err != nil {
			return "", err
		}
	}
	fmt.Fprintf(out, "==> Compiling Go's standard library (%s) once, to start every Go app's build cache warm\n", key)
	begin := time.Now()
	err = s.Run(ctx, Step{ID: "seed-go-" + hex.EncodeToString(b), App: "go-seed", Dir: work, Command: "go build std", NoNetwork: true, Out: io.Discard, cache: tmp})
	if err != nil {
		return "", fmt.Errorf("go build std: %w", err)
	}
	if err := chownTree(filepath.Join(tmp, "go-build"), 0, 0); err != nil {
		return "", err
	}
	os.RemoveAll(work)
	os.RemoveAll(filepath.Join(tmp, "home"))
	if err := os.Lchown(tmp, 0, 0); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil && !isDir(filepath.Join(dir, "go-build")) {
		return "", err
	}
	fmt.Fprintf(out, "    done in %s\n", time.Since(begin).Round(100*time.Millisecond))
	return dir, nil
}

// copyTreeAs copies the directories and regular files of src to dst,
// owned by uid:gid; it never follows symlinks (a seed holds none).
func copyTreeAs(src, dst string, uid, gid int) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if err := fspath.CopyFile(p, target, fi.Mode().Perm()); err != nil {
				return err
			}
			// Go's cache trims by modification time: keep it.
			os.Chtimes(target, fi.ModTime(), fi.ModTime())
		default:
			return nil
		}
		return os.Lchown(target, uid, gid)
	})
}
