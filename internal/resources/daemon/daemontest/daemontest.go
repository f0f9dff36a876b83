// Package daemontest lays out managed servers' directories for the tests of
// resource drivers, the way pier does as root.
package daemontest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pier-dev/pier/internal/resources/daemon"
)

// ResourceDir makes the directory of resource name in a servers dir of the
// test's own, apart from a 0700 data dir that no server may enter. The
// test's temp dirs above it are opened to be searched, as /var/lib is.
func ResourceDir(t testing.TB, name string) string {
	t.Helper()
	base := t.TempDir()
	for _, p := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(base, "pier")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	servers, err := daemon.MakeServersDir(filepath.Join(base, "servers"), data)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(servers, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}
