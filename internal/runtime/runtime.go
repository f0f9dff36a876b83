// Package runtime defines what a machine runtime is given and gives back.
// Drivers (internal/runtime/process today, runc next) implement
// Start(ctx, Spec) (Process, error); the machine manager (internal/machines)
// declares that interface.
package runtime

import (
	"context"
	"fmt"
	"io"
	"syscall"
)

// Spec describes one machine to start.
type Spec struct {
	ID      string    // machine id; unique for the life of the data dir
	App     string    // app name, for logs
	Dir     string    // host directory of the release artifact ("" for image machines)
	Command []string  // argv; run as is (shells are the caller's choice)
	Env     []string  // complete environment except PORT, which the driver sets
	Stdout  io.Writer // receives the machine's stdout; written from one goroutine
	Stderr  io.Writer // receives the machine's stderr; written from one goroutine

	// The fields below are for isolating runtimes (runc); the process
	// runtime ignores them.

	// Rootfs are read-only host directories stacked as the machine's root
	// filesystem, topmost first (an unpacked image, or host system dirs).
	// Each machine gets its own writable layer on top.
	Rootfs []string
	// Upper, when set, is a host directory the caller owns that becomes the
	// machine's writable layer instead of one of the driver's own, and
	// that the driver keeps when the machine is gone: what the machine
	// changed, in overlayfs' format (whiteouts are 0/0 character devices,
	// opaque directories carry trusted.overlay.opaque=y). A Dockerfile's
	// RUN step is such a machine. The driver removes from it what it put
	// there itself (its /etc/hosts, /etc/hostname, /etc/resolv.conf and the
	// empty mount points it made), so it holds the machine's own changes
	// only. While the machine runs, the runc driver keeps the layer on the
	// machine's own disk (Resources.DiskMB bounds it) and copies it into
	// Upper when the machine is gone.
	Upper string
	// Mounts are host paths bound into the machine.
	Mounts []Mount
	// Files are written into the machine's writable layer before it starts.
	Files []File
	// WorkDir is the working directory inside the machine (default "/").
	WorkDir string
	// User is "uid[:gid]" inside the machine (default 0:0).
	User string
	// Port is the port the machine listens on; 0 lets the driver choose.
	// It is passed as PORT.
	Port int
	// Resources are cgroup limits; zero values mean the driver's defaults.
	Resources Resources
	// DenyOutbound cuts the machine off from networks beyond pier.
	DenyOutbound bool
	// HostPorts are TCP ports on pier's host (the machine's gateway) that
	// the machine may reach: the servers of the resources its app is
	// connected to. Every other host service stays unreachable.
	HostPorts []int
}

// Mount binds a host path into a machine.
type Mount struct {
	Source   string // host path
	Target   string // path inside the machine
	ReadOnly bool
}

// File is a file to place in a machine.
type File struct {
	Path string // absolute path inside the machine
	Data []byte
	Mode uint32 // default 0644
}

// Resources are a machine's limits.
type Resources struct {
	CPUs     float64 // CPU time, in cores (e.g. 0.5)
	MemoryMB int     // memory limit; exceeding it gets the machine OOM-killed
	Pids     int     // maximum number of processes
	DiskMB   int     // size of the machine's writable layer (its own root filesystem's writes)
}

// Execer is implemented by processes that can run a command inside the
// running machine.
type Execer interface {
	Exec(ctx context.Context, cmd []string, stdin []byte) (ExecResult, error)
}

// ExecResult is the outcome of an Exec.
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

// Process is a started machine.
type Process interface {
	// Addr is the host:port on which the machine's PORT is reachable.
	Addr() string
	// PID is the machine's main process id on the host.
	PID() int
	// Wait blocks until the machine has exited and every process it started
	// is gone, and its output is flushed.
	Wait() Exit
	// Signal sends sig to every process of the machine.
	Signal(sig syscall.Signal) error
}

// Exit says how a machine ended.
type Exit struct {
	Code      int    // exit status, or -1 when killed by a signal
	Signal    string // the signal that killed it, if any
	OOMKilled bool   // the kernel killed it for exceeding its memory limit
	// Detached says the machine did not end: the server let go of it
	// (Detach) and it runs on, for the next server to Recover.
	Detached bool
}

func (e Exit) String() string {
	if e.OOMKilled {
		return "oom_killed"
	}
	if e.Signal != "" {
		return "killed by " + e.Signal
	}
	return fmt.Sprintf("exit code %d", e.Code)
}
