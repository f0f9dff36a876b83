// Package runtime defines what a machine runtime is given and gives back.
// Drivers (internal/runtime/process today, runc next) implement
// Start(ctx, Spec) (Process, error); the supervisor declares that interface.
package runtime

import (
	"fmt"
	"io"
	"syscall"
)

// Spec describes one machine to start.
type Spec struct {
	ID      string    // machine id; unique for the life of the data dir
	App     string    // app name, for logs
	Dir     string    // working directory: the release artifact
	Command []string  // argv; run as is (shells are the caller's choice)
	Env     []string  // complete environment except PORT, which the driver sets
	Stdout  io.Writer // receives the machine's stdout; written from one goroutine
	Stderr  io.Writer // receives the machine's stderr; written from one goroutine
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
	Code   int    // exit status, or -1 when killed by a signal
	Signal string // the signal that killed it, if any
}

func (e Exit) String() string {
	if e.Signal != "" {
		return "killed by " + e.Signal
	}
	return fmt.Sprintf("exit code %d", e.Code)
}
