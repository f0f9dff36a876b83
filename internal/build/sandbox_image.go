package build

import (
	"context"
	"fmt"
	"strings"

	"github.com/pier-dev/pier/internal/runtime"
)

// RunImage runs one build step in a build machine whose root filesystem is
// an image and nothing else: a Dockerfile's RUN (internal/dockerfile). The
// caller gives the image's layers (spec.Rootfs), the writable layer that
// keeps the step's changes (spec.Upper), the command, its environment,
// user and working directory, and DenyOutbound for [build] network =
// "none". The sandbox decides the rest as for Run: the step gets the
// sandbox's limits and the host firewall's build policy (no host services,
// no other machines), and nothing of the host is bound in — no /usr, no
// build tree, no cache, no extra files or hosts. Of the host's environment
// only the proxy settings go in, as Docker passes them to builds, unless
// the image sets them. The user is the Dockerfile's: root by default, which
// in a machine is root with the reduced capability set, no_new_privs,
// seccomp filter and namespaces of every machine (no user namespace yet).
//
// The error says how the step failed, as Run's does.
func (s *Sandbox) RunImage(ctx context.Context, spec runtime.Spec) error {
	if spec.Upper == "" {
		return fmt.Errorf("build step %s: no upper layer to keep its changes", spec.ID)
	}
	spec.Mounts, spec.Files, spec.HostPorts = nil, nil, nil
	spec.Port = 0
	spec.Resources = s.limits()
	spec.Env = s.proxyEnv(spec.Env)
	if spec.Stdout == spec.Stderr && spec.Stdout != nil {
		out := &lockedWriter{w: spec.Stdout}
		spec.Stdout, spec.Stderr = out, out
	}
	return s.runMachine(ctx, spec)
}

// limits are a build step's cgroup limits: the sandbox's, with defaults.
func (s *Sandbox) limits() runtime.Resources {
	res := s.Resources
	if res.CPUs <= 0 {
		res.CPUs = float64(goruntimeNumCPU())
	}
	if res.MemoryMB <= 0 {
		res.MemoryMB = DefaultBuildMemoryMB
	}
	if res.Pids <= 0 {
		res.Pids = DefaultBuildPids
	}
	if res.DiskMB <= 0 {
		res.DiskMB = DefaultBuildDiskMB
	}
	return res
}

// proxyEnv adds the host's proxy settings to env, where env lacks them.
func (s *Sandbox) proxyEnv(env []string) []string {
	have := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		have[k] = true
	}
	out := append([]string(nil), env...)
	for _, kv := range s.hostEnv() {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || have[k] {
			continue
		}
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "FTP_PROXY", "ALL_PROXY":
			out = append(out, kv)
		}
	}
	return out
}
