package runc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pier-dev/pier/internal/runtime"
	"github.com/pier-dev/pier/internal/runtime/shim"
)

// proc is a running machine.
type proc struct {
	d    *Driver
	id   string
	log  *slog.Logger
	addr string
	pid  int        // set by Start before the proc is handed out
	kept *keptUpper // the caller's upper layer, or nil

	att      *shim.Attached // the machine's monitor, which runs runc
	exited   chan struct{}  // runc has returned
	done     chan struct{}  // torn down, output flushed; exit is set
	exit     runtime.Exit
	startErr string // runc's own error when it failed before the machine ran
	ranPid   int    // the machine's pid as runc recorded it; set before done closes

	execSeq atomic.Int64
}

func (p *proc) Addr() string { return p.addr }
func (p *proc) PID() int     { return p.pid }

func (p *proc) Wait() runtime.Exit {
	<-p.done
	return p.exit
}

// wait owns the machine after runc started: it waits for runc's exit (from
// the monitor), records how the machine ended, and removes everything the
// machine had on the host. When the server detaches from the machine
// instead (Driver.Detach), it leaves it running.
func (p *proc) wait(addr netip.Addr) {
	<-p.att.Gone()
	select {
	case <-p.att.Exited():
	default:
		if p.d.detaching.Load() {
			p.d.ipam.release(addr)
			p.d.forget(p.id)
			p.exit = runtime.Exit{Code: -1, Detached: true}
			close(p.done)
			return
		}
		// The monitor died: the machine's output and status are lost;
		// runc went with it (its death signal), and the teardown kills
		// what is left of the machine.
		p.log.Error("the machine's monitor is gone; stopping the machine")
	}
	close(p.exited)
	exit := runtime.Exit{Code: -1, Signal: "monitor lost"}
	select {
	case <-p.att.Exited():
		exit = exitOf(p.att.Exit().WaitStatus())
	default:
	}
	// With --keep the cgroup outlives the machine until runc delete, so the
	// kernel's OOM-kill count is still there to read.
	exit.OOMKilled = oomKilled(p.id)
	if data, serr := os.ReadFile(filepath.Join(p.d.bundle(p.id), "pid")); serr != nil {
		p.startErr = runcError(filepath.Join(p.d.bundle(p.id), "runc.log"))
	} else {
		// The machine ran, perhaps so briefly that Start never saw the pid
		// file before teardown removes it.
		p.ranPid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, terr := p.d.teardownKeeping(ctx, p.id, p.kept); terr != nil {
		p.log.Error("clean up machine", "err", terr)
		if p.kept != nil && p.kept.scratch != "" && exit.Code == 0 && exit.Signal == "" {
			// The machine succeeded but its changes are not all kept:
			// the caller must not take the layer for its result.
			exit.Code = 1
		}
	}
	if p.kept != nil {
		if ferr := p.kept.finish(); ferr != nil {
			p.log.Error("clean up machine", "err", ferr)
		}
	}
	// The monitor can go: its exit is dealt with.
	p.att.Ack()
	p.d.ipam.release(addr)
	p.d.forget(p.id)
	p.exit = exit
	p.log.Debug("machine exited", "exit", exit.String())
	close(p.done)
}

// exitOf reads runc's status. runc reports a machine killed by signal N as
// 128+N, so a command that itself exits with such a code reads as killed,
// as with shells.
func exitOf(ws syscall.WaitStatus) runtime.Exit {
	if ws.Signaled() { // runc itself was killed
		return runtime.Exit{Code: -1, Signal: ws.Signal().String()}
	}
	code := ws.ExitStatus()
	if code > 128 && code <= 128+64 {
		return runtime.Exit{Code: -1, Signal: syscall.Signal(code - 128).String()}
	}
	return runtime.Exit{Code: code}
}

// oomKilled reads the kernel's count of OOM kills in the machine's memory
// cgroup: "oom_kill N" in memory.oom_control on cgroup v1 (kernel 4.13+),
// in memory.events on v2. It counts kills of any process of the machine,
// so a machine whose helper process was OOM-killed and that then exited on
// its own also reads as OOM-killed: the limit was the cause either way.
func oomKilled(id string) bool {
	for _, f := range []string{
		filepath.Join("/sys/fs/cgroup/memory", cgroupPath(id), "memory.oom_control"),
		filepath.Join("/sys/fs/cgroup", cgroupPath(id), "memory.events"),
	} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if n, ok := strings.CutPrefix(line, "oom_kill "); ok {
				v, _ := strconv.Atoi(strings.TrimSpace(n))
				return v > 0
			}
		}
	}
	return false
}

// runcError returns the last error runc logged (its JSON log), for a start
// that failed before the machine ran.
func runcError(logFile string) string {
	data, err := os.ReadFile(logFile)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(lines[i]), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			return "runc: " + e.Msg
		}
	}
	return ""
}

// Signal sends sig to every process of the machine.
func (p *proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	out, err := exec.Command(p.d.cfg.Runc, "--root", p.d.root, "kill", "--all", p.id, strconv.Itoa(int(sig))).CombinedOutput()
	if err == nil {
		return nil
	}
	// The machine may have exited between the check and the kill: runc
	// then fails, and runc returns at once.
	select {
	case <-p.exited:
		return nil
	case <-time.After(time.Second):
	}
	return fmt.Errorf("signal machine %s: %w: %s", p.id, err, bytes.TrimSpace(out))
}

// execOutputLimit bounds what Exec keeps of each stream.
const execOutputLimit = 4 << 20

// Exec runs cmd inside the machine, with the machine's environment, user
// and working directory (runc exec starts from the machine's process spec),
// and waits for it. When ctx ends the command is killed and ctx's error is
// returned with what it had written. An exit status of 128+N means it died
// of signal N.
func (p *proc) Exec(ctx context.Context, cmd []string, stdin []byte) (runtime.ExecResult, error) {
	if len(cmd) == 0 {
		return runtime.ExecResult{}, errors.New("exec: empty command")
	}
	select {
	case <-p.exited:
		return runtime.ExecResult{}, fmt.Errorf("exec in machine %s: not running", p.id)
	default:
	}
	pidFile := filepath.Join(p.d.bundle(p.id), fmt.Sprintf("exec-%d.pid", p.execSeq.Add(1)))
	defer os.Remove(pidFile)
	c := exec.CommandContext(ctx, p.d.cfg.Runc, append([]string{"--root", p.d.root, "exec", "--pid-file", pidFile, p.id}, cmd...)...)
	c.Stdin = bytes.NewReader(stdin)
	var stdout, stderr capped
	c.Stdout, c.Stderr = &stdout, &stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// runc exec forwards the signals it gets to the command, but SIGKILL
	// cannot be forwarded: kill the command itself (runc then returns),
	// or runc if the command has not started yet.
	c.Cancel = func() error {
		if data, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
				return nil
			}
		}
		return c.Process.Kill()
	}
	// A background child of the command may keep the output pipes open.
	c.WaitDelay = 2 * time.Second
	err := c.Run()
	res := runtime.ExecResult{Stdout: stdout.String(), Stderr: stderr.String()}
	if c.ProcessState != nil {
		res.ExitCode = c.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("exec in machine %s: %w", p.id, ctx.Err())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) && !errors.Is(err, exec.ErrWaitDelay) {
		return res, fmt.Errorf("exec in machine %s: %w", p.id, err)
	}
	return res, nil
}

// capped keeps the first execOutputLimit bytes written to it and drops the
// rest, so a chatty command cannot exhaust the server's memory.
type capped struct{ bytes.Buffer }

func (c *capped) Write(b []byte) (int, error) {
	if room := execOutputLimit - c.Len(); room > 0 {
		c.Buffer.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}
