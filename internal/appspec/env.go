package appspec

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// baseEnv is what every machine sees besides its release's env and secrets:
// a usable PATH, HOME and locale, never the server's own settings.
func baseEnv() []string {
	env := []string{"LANG=C.UTF-8"}
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// Env assembles a machine's environment: base, release env, then secrets
// (secrets win), then pier's own variables.
func Env(rel pier.Release, secrets map[string]string) []string {
	env := baseEnv()
	keys := make([]string, 0, len(rel.Config.Env))
	for k := range rel.Config.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, secret := secrets[k]; !secret {
			env = append(env, k+"="+rel.Config.Env[k])
		}
	}
	keys = keys[:0]
	for k := range secrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+secrets[k])
	}
	return append(env, "PIER_APP_NAME="+rel.App, fmt.Sprintf("PIER_RELEASE_VERSION=%d", rel.Version))
}

// Command is the argv that runs a release; self is the pier binary, which
// serves static sites.
func Command(rel pier.Release, self string) []string {
	if rel.Builder == "static" && rel.Start == "" {
		return []string{self, "static-serve", "--dir", "."}
	}
	start := rel.Start
	// A simple command replaces the shell, so the machine's main process is
	// the app itself and signals reach it directly.
	if !strings.ContainsAny(start, ";&|\n()`$<>") {
		start = "exec " + start
	}
	return []string{"/bin/sh", "-c", start}
}

// Builder makes the runtime specs of releases' machines.
type Builder struct {
	// HostFS, when set, runs releases in isolated machines (the driver is
	// then an isolating one) with this root filesystem; nil runs them as
	// host processes in their build's directory.
	HostFS *HostFS
	// Lowers, when set, finds the layer directories of release images:
	// releases that have an image run on its layers alone, nothing of the
	// host's filesystem (HostFS is for releases made before images).
	Lowers Lowers
	// Artifact returns the directory of a build.
	Artifact func(app, buildID string) string
	// Self is the pier binary, which serves static sites.
	Self string
}

// Isolated reports whether releases run in isolated machines.
func (b *Builder) Isolated() bool { return b.HostFS != nil }

// Spec is the runtime spec of a machine of rel with environment env (see
// Env); the caller sets its id, output and network.
func (b *Builder) Spec(rel pier.Release, env []string) (runtime.Spec, error) {
	spec := runtime.Spec{App: rel.App, Dir: b.Artifact(rel.App, rel.BuildID), Command: Command(rel, b.Self), Env: env}
	if b.HostFS == nil {
		return spec, nil
	}
	if rel.Image.Digest != "" && b.Lowers != nil {
		return ImageSpec(spec, rel, b.Lowers)
	}
	return b.HostFS.Isolate(spec, rel.Builder == "static" && rel.Start == "", rel.Config.DenyOutbound), nil
}
