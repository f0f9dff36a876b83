package build

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/pier-dev/pier/internal/hostfs"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// Build machines run as this user: no host account has it (below the
// subordinate id ranges Debian hands out, above its ordinary users), so
// nothing on the host shares an identity with build code.
const (
	BuildUID = 99999
	BuildGID = 99999
)

// Defaults for a build machine's limits.
const (
	DefaultBuildMemoryMB = 4096
	DefaultBuildPids     = 4096
	// DefaultBuildDiskMB bounds what a build machine writes to its own
	// root filesystem (a Dockerfile RUN's layer, a tool's /tmp). The build
	// tree (/app) and cache (/cache) are host directories it does not
	// bound.
	DefaultBuildDiskMB = 8192
	DefaultMaxCache    = 4 << 30
)

// Machines starts isolated machines (internal/runtime/runc).
type Machines interface {
	Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error)
}

// Sandbox runs build steps in isolated build machines: each step is a
// machine whose root is the host's system directories (read-only, so the
// host's toolchains are there), with the build tree at /app and the app's
// own build cache at /cache, both writable, running as BuildUID. A step sees
// nothing else of the host: not pier's data dir, not other apps' builds or
// caches, not the host's processes, and it cannot reach pier's API or any
// host service; it may reach the internet (package registries) unless the
// app asks for no network. cgroup limits bound its CPU, memory and
// processes; the build's context bounds its time.
type Sandbox struct {
	// Machines starts the build machines; required.
	Machines Machines
	// Root is the host's system directories; required.
	Root *hostfs.FS
	// CacheDir holds one build cache per app, CacheDir/<app>; required.
	CacheDir string
	// Resources are each step's limits (zero fields: all CPUs,
	// DefaultBuildMemoryMB, DefaultBuildPids).
	Resources runtime.Resources
	// MaxCache bounds an app's build cache, in bytes (0:
	// DefaultMaxCache): a cache that outgrows it after a build is emptied,
	// and the next build starts cold.
	MaxCache int64
	// SeedDir, when set, holds a build cache of Go's standard library,
	// compiled once per Go version in a build machine from nothing but the
	// toolchain, that every Go app's cache starts as a copy of (a copy:
	// one app's build must never write into another's cache).
	SeedDir string
	// Env is the host environment to pass on (default os.Environ()); only
	// tool settings such as GOPROXY, npm_config_* and PIP_* and the proxy
	// variables go through (see buildEnvKeep).
	Env []string

	seedMu sync.Mutex
}

// buildEnvKeep says which host variables reach build steps: settings of
// package managers and proxies. Everything else (credentials of the host's
// user, pier's own settings) stays out.
func buildEnvKeep(key string) bool {
	switch key {
	case "GOPROXY", "GOSUMDB", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOINSECURE", "GOFLAGS", "GOTOOLCHAIN",
		"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
		"LANG", "LC_ALL", "TZ", "SOURCE_DATE_EPOCH":
		return true
	}
	if strings.HasPrefix(key, "PIP_") {
		return key != "PIP_CONFIG_FILE"
	}
	lower := strings.ToLower(key)
	return strings.HasPrefix(lower, "npm_config_") && !strings.Contains(lower, "auth") && !strings.Contains(lower, "token") &&
		lower != "npm_config_userconfig" && lower != "npm_config_globalconfig"
}

// Step is one build step to run in a build machine.
type Step struct {
	ID      string // machine id, unique
	App     string
	Dir     string // the build tree, /app in the machine
	Command string // run with /bin/sh -c
	// NoNetwork cuts the step off from everything beyond its machine.
	NoNetwork bool
	Out       io.Writer
	// cache replaces the app's build cache at /cache (the Go seed's).
	cache string
}

// Run runs one step and waits for it. The error says how the step failed:
// its exit code, the memory limit, or the context's cause.
func (s *Sandbox) Run(ctx context.Context, st Step) error {
	cache := st.cache
	if cache == "" {
		cache = filepath.Join(s.CacheDir, st.App)
		if err := s.prepareCache(cache); err != nil {
			return err
		}
	}
	res := s.limits()
	out := &lockedWriter{w: st.Out}
	spec := runtime.Spec{
		ID: st.ID, App: st.App,
		Command:      []string{"/bin/sh", "-c", st.Command},
		Env:          s.env(),
		Stdout:       out,
		Stderr:       out,
		Rootfs:       []string{s.Root.Base},
		Mounts:       s.mounts(st.Dir, cache),
		Files:        accountFiles(),
		WorkDir:      "/app",
		User:         fmt.Sprintf("%d:%d", BuildUID, BuildGID),
		Resources:    res,
		DenyOutbound: st.NoNetwork,
	}
	return s.runMachine(ctx, spec)
}

// runMachine starts a build machine and waits for it; the context's end
// kills it. The error says how it failed: its exit, or its memory limit.
func (s *Sandbox) runMachine(ctx context.Context, spec runtime.Spec) error {
	proc, err := s.Machines.Start(ctx, spec)
	if err != nil {
		return fmt.Errorf("start build machine: %w", err)
	}
	done := make(chan runtime.Exit, 1)
	go func() { done <- proc.Wait() }()
	var exit runtime.Exit
	select {
	case exit = <-done:
	case <-ctx.Done():
		proc.Signal(syscall.SIGKILL)
		<-done
		return context.Cause(ctx)
	}
	switch {
	case exit.OOMKilled:
		return pier.Errorf(pier.Failed, "ran out of memory (build machines have %d MB)", spec.Resources.MemoryMB)
	case exit.Code != 0 || exit.Signal != "":
		return fmt.Errorf("%s", exit)
	}
	return nil
}

// mounts are the host's system directories without its account files
// (build machines get their own), the build tree and the app's cache.
func (s *Sandbox) mounts(dir, cache string) []runtime.Mount {
	var ms []runtime.Mount
	for _, m := range s.Root.Mounts {
		if m.Target == "/etc/passwd" || m.Target == "/etc/group" {
			continue
		}
		ms = append(ms, m)
	}
	ms = append(ms, runtime.Mount{Source: dir, Target: "/app"}, runtime.Mount{Source: cache, Target: "/cache"})
	// pip's local wheel directories, when the host points pip at some.
	for _, d := range strings.Fields(s.lookup("PIP_FIND_LINKS")) {
		if filepath.IsAbs(d) && isDir(d) && !s.Root.Under(d) {
			ms = append(ms, runtime.Mount{Source: d, Target: d, ReadOnly: true})
		}
	}
	return ms
}

// accountFiles are the machine's /etc/passwd and /etc/group: root, nobody
// and the build user, nothing of the host's accounts.
func accountFiles() []runtime.File {
	return []runtime.File{
		{Path: "/etc/passwd", Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\npier-build:x:%d:%d:pier build:/cache/home:/bin/sh\n", BuildUID, BuildGID)},
		{Path: "/etc/group", Data: fmt.Appendf(nil, "root:x:0:\nnogroup:x:65534:\npier-build:x:%d:\n", BuildGID)},
	}
}

func (s *Sandbox) hostEnv() []string {
	if s.Env != nil {
		return s.Env
	}
	return os.Environ()
}

func (s *Sandbox) lookup(key string) string {
	for _, kv := range s.hostEnv() {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// env is a build step's environment: the kept host settings, a PATH that
// finds the host's toolchains, and caches, HOME and temp under the app's
// cache, so builds stay warm from one deploy to the next.
func (s *Sandbox) env() []string {
	env := []string{
		"PATH=" + s.toolPath(),
		"HOME=/cache/home",
		"TMPDIR=/tmp",
		"CI=true",
		"GOCACHE=/cache/go-build",
		"GOPATH=/cache/go",
		"GOMODCACHE=/cache/go/pkg/mod",
		"npm_config_cache=/cache/npm",
		"NPM_CONFIG_UPDATE_NOTIFIER=false",
		"PIP_CACHE_DIR=/cache/pip",
		"XDG_CACHE_HOME=/cache/xdg",
	}
	have := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		have[strings.ToLower(k)] = true
	}
	for _, kv := range s.hostEnv() {
		k, _, ok := strings.Cut(kv, "=")
		if ok && buildEnvKeep(k) && !have[strings.ToLower(k)] {
			env = append(env, kv)
		}
	}
	if r := npmRegistry(); r != "" && !have["npm_config_registry"] && s.lookup("npm_config_registry") == "" && s.lookup("NPM_CONFIG_REGISTRY") == "" {
		env = append(env, "npm_config_registry="+r)
	}
	return env
}

// toolPath is the standard PATH plus the directories of the host's
// toolchains that live in bound directories but off the standard PATH
// (Go's usual /usr/local/go/bin).
func (s *Sandbox) toolPath() string {
	dirs := []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
	for _, tool := range []string{"go", "node", "npm", "python3"} {
		p, err := lookPath(tool)
		if err != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		if d := filepath.Dir(p); s.Root.Under(d) && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return strings.Join(dirs, ":")
}

// npmRegistry is the registry the host user's ~/.npmrc names, if any, so
// builds use the same mirror (only that line: the file may hold tokens).
func npmRegistry() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	f, err := os.Open(filepath.Join(home, ".npmrc"))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.TrimSpace(k) == "registry" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// prepareCache makes the app's cache directory, owned by the build user
// and private to it.
func (s *Sandbox) prepareCache(cache string) error {
	if err := os.MkdirAll(s.CacheDir, 0o700); err != nil {
		return fmt.Errorf("build cache: %w", err)
	}
	if err := os.Mkdir(cache, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("build cache: %w", err)
	}
	if err := os.Lchown(cache, BuildUID, BuildGID); err != nil {
		return fmt.Errorf("build cache: %w", err)
	}
	home := filepath.Join(cache, "home")
	if err := os.Mkdir(home, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("build cache: %w", err)
	}
	return os.Lchown(home, BuildUID, BuildGID)
}

// bound empties the app's build cache when it has outgrown MaxCache.
func (s *Sandbox) bound(app string, out io.Writer) {
	limit := s.MaxCache
	if limit <= 0 {
		limit = DefaultMaxCache
	}
	cache := filepath.Join(s.CacheDir, app)
	var size int64
	filepath.WalkDir(cache, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	if size <= limit {
		return
	}
	fmt.Fprintf(out, "==> The build cache of %s holds %s, over its %s limit: emptied (the next build starts cold)\n", app, pier.Bytes(size), pier.Bytes(limit))
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(cache, e.Name()))
	}
}

// RemoveCache deletes an app's build cache.
func (s *Sandbox) RemoveCache(app string) error {
	return os.RemoveAll(filepath.Join(s.CacheDir, app))
}

// handOver gives the build tree to the build user before the steps run.
func handOver(dir string) error {
	return chownTree(dir, BuildUID, BuildGID)
}

// takeBack makes the build tree root's again once no build process is
// left: every entry root-owned, without set-id bits, so nothing the build
// made runs with another identity later. Symlinks are never followed.
func takeBack(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, 0, 0); err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			return os.Chmod(path, fi.Mode()&^(fs.ModeSetuid|fs.ModeSetgid))
		}
		return nil
	})
}

func chownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// lockedWriter lets a machine's stdout and stderr share one writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
