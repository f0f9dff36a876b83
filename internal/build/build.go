package build

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// Builder runs builds and keeps their results under Dir.
type Builder struct {
	// Dir holds one directory per build: Dir/<app>/<build id>.
	Dir string
	// Sandbox, when set, runs every build step in an isolated build
	// machine. Without it steps run on the host as pier's own user: only
	// for servers that cannot isolate (not root, or no runc).
	Sandbox *Sandbox
	// Images, when set, makes each build into a release image.
	Images *Imager
}

// Result is a finished build.
type Result struct {
	ID    string
	Image pier.ReleaseImage // zero without Builder.Images
}

// Isolated reports whether build steps run in build machines.
func (b *Builder) Isolated() bool { return b.Sandbox != nil }

// NewBuildID returns a fresh, time-ordered build id.
func NewBuildID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

// Path is where the artifact of build id of app lives.
func (b *Builder) Path(app, id string) string { return filepath.Join(b.Dir, app, id) }

// Build moves the source tree src into a new build directory, runs the plan's
// steps there with their output going to out, makes the release image, and
// returns the build. On failure nothing is left behind.
func (b *Builder) Build(ctx context.Context, app, src string, plan Plan, out io.Writer) (Result, error) {
	id := NewBuildID()
	img, err := b.build(ctx, app, id, src, plan, out)
	if err != nil {
		return Result{}, err
	}
	return Result{ID: id, Image: img}, nil
}

func (b *Builder) build(ctx context.Context, app, id, src string, plan Plan, out io.Writer) (pier.ReleaseImage, error) {
	var img pier.ReleaseImage
	final := b.Path(app, id)
	work := final + ".tmp"
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return img, err
	}
	if err := os.Rename(src, work); err != nil {
		return img, fmt.Errorf("stage build: %w", err)
	}
	// Uploads are unpacked into a private temp dir; the release must be
	// readable by the unprivileged user isolated machines run as.
	if err := os.Chmod(work, 0o755); err != nil {
		return img, fmt.Errorf("stage build: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(work)
		}
	}()
	if b.Sandbox != nil {
		if err := handOver(work); err != nil {
			return img, fmt.Errorf("stage build: %w", err)
		}
		if plan.Builder == "go" {
			b.Sandbox.seedGoCache(ctx, app, out)
		}
	} else if plan.NoNetwork && len(plan.Steps) > 0 {
		return img, pier.Errorf(pier.Invalid, "pier.toml: [build] network = \"none\" needs isolated builds: run `pier server` as root with runc installed")
	}
	for i, step := range plan.Steps {
		fmt.Fprintf(out, "$ %s\n", step)
		start := time.Now()
		var err error
		if b.Sandbox != nil {
			err = b.Sandbox.Run(ctx, Step{ID: fmt.Sprintf("build-%s-%d", id, i+1), App: app, Dir: work, Command: step, NoNetwork: plan.NoNetwork, Out: out})
		} else {
			err = runOnHost(ctx, work, step, out)
		}
		if err != nil {
			if ctx.Err() != nil {
				return img, fmt.Errorf("build step `%s` stopped: %w", step, context.Cause(ctx))
			}
			return img, &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("build step `%s` failed", step), Err: err}
		}
		fmt.Fprintf(out, "  done in %s\n", time.Since(start).Round(10*time.Millisecond))
	}
	if b.Sandbox != nil {
		if err := takeBack(work); err != nil {
			return img, fmt.Errorf("finish build: %w", err)
		}
		b.Sandbox.bound(app, out)
	}
	switch {
	case plan.Builder == "dockerfile" && b.Images != nil:
		var err error
		if img, err = b.Images.MakeDockerfile(ctx, b.Sandbox, app, id, work, plan, out); err != nil {
			if ctx.Err() != nil {
				return img, fmt.Errorf("Dockerfile build stopped: %w", context.Cause(ctx))
			}
			return img, err
		}
	case plan.Builder == "dockerfile":
		return img, pier.Errorf(pier.Invalid, "Dockerfile builds need isolated build machines: run `pier server` as root with runc installed")
	case b.Images != nil:
		var err error
		if img, err = b.Images.Make(ctx, app, id, work, plan, out); err != nil {
			return img, &pier.Error{Kind: pier.Failed, Msg: "making the release image failed", Err: err}
		}
	}
	if err := os.Rename(work, final); err != nil {
		return img, fmt.Errorf("finish build: %w", err)
	}
	ok = true
	return img, nil
}

// Sweep removes builds a crash left unfinished (their .tmp directories).
func (b *Builder) Sweep() (int, error) {
	dirs, err := filepath.Glob(filepath.Join(b.Dir, "*", "*.tmp"))
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, d := range dirs {
		errs = append(errs, os.RemoveAll(d))
	}
	return len(dirs), errors.Join(errs...)
}

// runOnHost runs a step as a host process in its own process group.
func runOnHost(ctx context.Context, dir, step string, out io.Writer) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", step)
	cmd.Dir = dir
	cmd.Env = BuildEnv()
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so cancelling kills what the step started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd.Run()
}

// Remove deletes the builds of an app and its build cache.
func (b *Builder) Remove(app string) error {
	err := os.RemoveAll(filepath.Join(b.Dir, app))
	if b.Sandbox != nil {
		err = errors.Join(err, b.Sandbox.RemoveCache(app))
	}
	return err
}

var (
	goruntimeNumCPU = goruntime.NumCPU
	lookPath        = exec.LookPath
)

// BuildEnv is the environment of build steps: the server's own, minus pier's
// credentials and settings, plus CI=true so tools do not prompt.
func BuildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PIER_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "CI=true", "NPM_CONFIG_UPDATE_NOTIFIER=false")
}
