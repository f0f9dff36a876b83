package server

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pier-dev/pier/internal/resources/daemon"
)

// DefaultServersDir is the servers root of `pier server --servers-dir`.
const DefaultServersDir = daemon.DefaultServersRoot

// privateDataDir makes the data dir, and the resources dir earlier
// versions kept managed servers in, pier's alone again: 0700 and without
// the ACL entries those versions added to let the servers' users through
// (they made state.db, keys and builds reachable by every local user).
func privateDataDir(dataDir string) error {
	for _, p := range []string{dataDir, filepath.Join(dataDir, "resources")} {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			continue
		}
		if err := daemon.DropACL(p); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		if err := os.Chmod(p, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	return nil
}

// resourceDir is where resources' directories live. As root, managed
// servers run as their own users, who must reach their files without the
// data dir being opened to anyone: they live in a servers dir of this
// pier's under the servers root. Otherwise servers run as pier's user,
// under the data dir.
func resourceDir(c Config) (string, error) {
	if os.Geteuid() != 0 {
		return filepath.Join(c.DataDir, "resources"), nil
	}
	root := c.ServersDir
	if root == "" {
		root = DefaultServersDir
	}
	return daemon.MakeServersDir(root, c.DataDir)
}
