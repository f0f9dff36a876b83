package runc

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// runBase is the tmpfs under which drivers keep their bundles by default.
const runBase = "/run/pier"

// defaultRunDir is a directory of stateDir's own under runBase, so
// servers with different data dirs never share bundles.
func defaultRunDir(stateDir string) string {
	sum := sha256.Sum256([]byte(stateDir))
	return filepath.Join(runBase, hex.EncodeToString(sum[:8]))
}

// ensureTmpfs makes dir, private to root, on a tmpfs: when its parent is
// not on one already, a tmpfs is mounted on the parent (under an exclusive
// lock, so servers starting together mount it once).
func ensureTmpfs(dir string) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("bundle dir: %w", err)
	}
	if !onTmpfs(parent) {
		lock, err := os.OpenFile(filepath.Join(filepath.Dir(parent), "."+filepath.Base(parent)+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return fmt.Errorf("bundle dir: %w", err)
		}
		defer lock.Close()
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			return fmt.Errorf("bundle dir: %w", err)
		}
		if !onTmpfs(parent) {
			if err := unix.Mount("tmpfs", parent, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=64m"); err != nil {
				return fmt.Errorf("mount a tmpfs on %s for machine bundles (they hold machines' secrets, which must not reach a disk): %w", parent, err)
			}
		}
	}
	if err := os.Chmod(parent, 0o700); err != nil {
		return fmt.Errorf("bundle dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("bundle dir: %w", err)
	}
	if !onTmpfs(dir) {
		return fmt.Errorf("bundle dir %s is not on a tmpfs: machines' secrets would reach a disk (choose a RunDir on a tmpfs)", dir)
	}
	return nil
}

func onTmpfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

// hostLock takes an exclusive lock shared by every pier server on the host
// (flock on path, made if missing); the returned function releases it.
func hostLock(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
