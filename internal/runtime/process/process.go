// Package process is the simplest machine runtime: each machine is a process
// group on the host, listening on a loopback port. It gives no isolation; it
// is the runtime for development and for hosts without runc.
package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/pier-dev/pier/internal/runtime"
)

// Driver starts machines as host processes.
type Driver struct {
	mu       sync.Mutex
	nextPort int
}

// New returns a process driver.
func New() *Driver {
	return &Driver{nextPort: portLow + rand.IntN(portHigh-portLow)}
}

// Ports are handed out round-robin from a range below the kernel's ephemeral
// range, so a port freed by a stopped machine is not reused at once.
const (
	portLow  = 20000
	portHigh = 30000
)

func (d *Driver) freePort() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for range portHigh - portLow {
		p := d.nextPort
		d.nextPort++
		if d.nextPort >= portHigh {
			d.nextPort = portLow
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("no free port between 20000 and 30000")
}

// Start runs spec.Command in its own process group.
func (d *Driver) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	port, err := d.freePort()
	if err != nil {
		return nil, err
	}
	if len(spec.Command) == 0 {
		return nil, errors.New("empty command")
	}
	cmd := exec.Command(spec.Command[0], spec.Command[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = append(append([]string{}, spec.Env...), "PORT="+strconv.Itoa(port), "PIER_MACHINE_ID="+spec.ID)
	// Own process group so signals reach everything the machine starts;
	// Pdeathsig so a crashed server does not leave the main process behind
	// (Cleanup catches the rest on the next start).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	copies, err := runtime.StartWithOutput(cmd, spec.Stdout, spec.Stderr)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Command[0], err)
	}
	p := &proc{cmd: cmd, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		// The main process is gone; take the rest of its group with it so
		// nothing it forked outlives the machine.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		copies.Wait()
		p.exit = exitOf(cmd, err)
		close(p.done)
	}()
	return p, nil
}

func exitOf(cmd *exec.Cmd, err error) runtime.Exit {
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return runtime.Exit{Code: -1}
	}
	if ws.Signaled() {
		return runtime.Exit{Code: -1, Signal: ws.Signal().String()}
	}
	return runtime.Exit{Code: ws.ExitStatus()}
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
	exit runtime.Exit
}

func (p *proc) Addr() string { return p.addr }
func (p *proc) PID() int     { return p.cmd.Process.Pid }

func (p *proc) Wait() runtime.Exit {
	<-p.done
	return p.exit
}

func (p *proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Cleanup kills every process on the host that belongs to one of the given
// machines (found by the PIER_MACHINE_ID in its environment). The server
// calls it on start for machines a previous run did not see stop.
func (d *Driver) Cleanup(ctx context.Context, ids []string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	want := map[string]bool{}
	for _, id := range ids {
		want["PIER_MACHINE_ID="+id] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if want[string(kv)] {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed++
				}
				break
			}
		}
	}
	return killed, nil
}

// Isolates reports that machines are plain host processes, not isolated
// from the host or from each other.
func (d *Driver) Isolates() bool { return false }
