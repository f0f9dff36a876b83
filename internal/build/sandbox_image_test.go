package build

import (
	"context"
	"io"
	"slices"
	"syscall"
	"testing"

	"github.com/pier-dev/pier/internal/hostfs"
	"github.com/pier-dev/pier/internal/runtime"
)

// fakeMachines records the spec it is asked to start and exits with code.
type fakeMachines struct {
	got  runtime.Spec
	code int
}

func (f *fakeMachines) Start(_ context.Context, spec runtime.Spec) (runtime.Process, error) {
	f.got = spec
	return exited{code: f.code}, nil
}

type exited struct{ code int }

func (exited) Addr() string                { return "" }
func (exited) PID() int                    { return 1 }
func (e exited) Wait() runtime.Exit        { return runtime.Exit{Code: e.code} }
func (exited) Signal(syscall.Signal) error { return nil }

// TestRunImageSpec: an image step gets the sandbox's limits and nothing of
// the host bound in, whatever the caller put in the spec.
func TestRunImageSpec(t *testing.T) {
	m := &fakeMachines{}
	s := &Sandbox{Machines: m, Root: &hostfs.FS{Base: "/host"}, Env: []string{"HTTPS_PROXY=http://proxy", "PIER_TOKEN=x", "no_proxy=local"}}
	err := s.RunImage(context.Background(), runtime.Spec{
		ID: "b-1", Rootfs: []string{"/layers/1"}, Upper: "/work/upper", Command: []string{"/bin/sh", "-c", "true"},
		Env:    []string{"PATH=/bin", "no_proxy=mine"},
		Mounts: []runtime.Mount{{Source: "/", Target: "/host"}}, Files: []runtime.File{{Path: "/x"}}, HostPorts: []int{5432},
		Stdout: io.Discard, Stderr: io.Discard, DenyOutbound: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	g := m.got
	if g.Mounts != nil || g.Files != nil || g.HostPorts != nil || !g.DenyOutbound || g.Upper != "/work/upper" || !slices.Equal(g.Rootfs, []string{"/layers/1"}) {
		t.Errorf("spec %+v", g)
	}
	if g.Resources.MemoryMB != DefaultBuildMemoryMB || g.Resources.Pids != DefaultBuildPids || g.Resources.CPUs <= 0 {
		t.Errorf("limits %+v", g.Resources)
	}
	if want := []string{"PATH=/bin", "no_proxy=mine", "HTTPS_PROXY=http://proxy"}; !slices.Equal(g.Env, want) {
		t.Errorf("env %q, want %q", g.Env, want)
	}

	m.code = 3
	if err := s.RunImage(context.Background(), runtime.Spec{ID: "b-2", Upper: "/u", Command: []string{"false"}}); err == nil || err.Error() != "exit code 3" {
		t.Errorf("failed step: %v", err)
	}
	if err := s.RunImage(context.Background(), runtime.Spec{ID: "b-3", Command: []string{"true"}}); err == nil {
		t.Error("a step without an upper layer ran")
	}
}
