package build

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pier-dev/pier/internal/hostfs"
)

func TestBuildEnvKeepsToolSettingsOnly(t *testing.T) {
	for key, want := range map[string]bool{
		"GOPROXY": true, "GOFLAGS": true, "HTTPS_PROXY": true, "no_proxy": true,
		"PIP_INDEX_URL": true, "npm_config_registry": true, "NPM_CONFIG_REGISTRY": true,
		"PIP_CONFIG_FILE": false, "npm_config__auth": false, "NPM_CONFIG_TOKEN": false, "npm_config_userconfig": false,
		"PIER_TOKEN": false, "AWS_SECRET_ACCESS_KEY": false, "HOME": false, "PATH": false, "SSH_AUTH_SOCK": false,
	} {
		if got := buildEnvKeep(key); got != want {
			t.Errorf("buildEnvKeep(%s) = %v, want %v", key, got, want)
		}
	}
}

func TestSandboxEnv(t *testing.T) {
	s := &Sandbox{Root: &hostfs.FS{}, Env: []string{"GOPROXY=http://proxy.test", "PIER_TOKEN=pier_x", "AWS_SECRET_ACCESS_KEY=k", "HOME=/root", "GOCACHE=/root/.cache"}}
	env := strings.Join(s.env(), "\n")
	for _, want := range []string{"GOPROXY=http://proxy.test", "HOME=/cache/home", "GOCACHE=/cache/go-build", "CI=true"} {
		if !strings.Contains(env, want+"\n") && !strings.HasSuffix(env, want) {
			t.Errorf("env lacks %s:\n%s", want, env)
		}
	}
	for _, bad := range []string{"pier_x", "AWS_SECRET", "/root"} {
		if strings.Contains(env, bad) {
			t.Errorf("env holds %s:\n%s", bad, env)
		}
	}
}

// TestTakeBack: after a build, nothing in the tree keeps the build user's
// identity or a set-id bit, and symlinks are not followed.
func TestTakeBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(outside, []byte("x"), 0o644)
	os.Chown(outside, 1234, 1234)
	os.WriteFile(filepath.Join(dir, "suid"), []byte("x"), 0o4755)
	os.Mkdir(filepath.Join(dir, "sub"), 0o2755)
	os.Symlink(outside, filepath.Join(dir, "link"))
	if err := handOver(dir); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "suid"), 0o4755) // as the build user would
	if err := takeBack(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "suid", "sub", "link"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s owned by %d:%d", name, st.Uid, st.Gid)
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("%s keeps mode %v", name, fi.Mode())
		}
	}
	fi, _ := os.Stat(outside)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1234 {
		t.Errorf("takeBack followed a symlink out of the tree: owner now %d", st.Uid)
	}
}

func TestCacheBound(t *testing.T) {
	dir := t.TempDir()
	s := &Sandbox{CacheDir: dir, MaxCache: 1000}
	cache := filepath.Join(dir, "web")
	os.MkdirAll(filepath.Join(cache, "go-build"), 0o700)
	os.WriteFile(filepath.Join(cache, "go-build", "a"), make([]byte, 600), 0o600)
	var out strings.Builder
	s.bound("web", &out)
	if _, err := os.Stat(filepath.Join(cache, "go-build", "a")); err != nil || out.Len() > 0 {
		t.Fatalf("a cache under its limit was touched: %v %q", err, out.String())
	}
	os.WriteFile(filepath.Join(cache, "go-build", "b"), make([]byte, 600), 0o600)
	s.bound("web", &out)
	if entries, _ := os.ReadDir(cache); len(entries) != 0 || !strings.Contains(out.String(), "emptied") {
		t.Fatalf("a cache over its limit kept %d entries; output %q", len(entries), out.String())
	}
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("the cache directory itself went: %v", err)
	}
}

func TestSweepRemovesUnfinishedBuilds(t *testing.T) {
	b := &Builder{Dir: t.TempDir()}
	for _, d := range []string{"web/20260101T000000-aaaa.tmp/x", "web/20260101T000000-bbbb/x"} {
		os.MkdirAll(filepath.Join(b.Dir, d), 0o755)
	}
	if n, err := b.Sweep(); n != 1 || err != nil {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir, "web/20260101T000000-bbbb/x")); err != nil {
		t.Errorf("a finished build went: %v", err)
	}
}
