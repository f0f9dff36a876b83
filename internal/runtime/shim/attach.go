package shim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LineWriter is implemented by output sinks that keep each line's own time
// (the log hub): output a monitor kept while no server was attached is
// stored with the time it was written, not the time it was collected.
type LineWriter interface {
	WriteLine(t time.Time, line string)
}

// Attached is a server's attachment to a machine's monitor.
type Attached struct {
	conn   net.Conn
	exited chan struct{} // closed once the exit has arrived; exit is set
	gone   chan struct{} // closed when the stream ended, exit or not
	exit   Exit
	mu     sync.Mutex
	closed bool
	// A monitor made by Prepare: its process, and closed once reaped.
	proc       *os.Process
	procExited <-chan struct{}
}

// listenFile makes the monitor's socket, reachable by root alone, and
// returns it as a file for the monitor to inherit. The socket file stays
// when this process's copy is closed.
func listenFile(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		os.Remove(path)
		return nil, err
	}
	f, err := ln.File()
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return f, nil
}

// Run lets the command of a monitor made by Prepare start.
func (a *Attached) Run() error {
	select {
	case <-a.gone:
		return errors.New("the machine monitor is gone")
	default:
	}
	a.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer a.conn.SetWriteDeadline(time.Time{})
	if _, err := io.WriteString(a.conn, "run\n"); err != nil {
		return fmt.Errorf("machine monitor: %w", err)
	}
	return nil
}

// Abort ends a monitor made by Prepare (its command, if it was let run,
// goes with it by its death signal) and returns once it is gone.
func (a *Attached) Abort() {
	a.Detach()
	if a.proc != nil {
		a.proc.Kill()
		<-a.procExited
	}
}

// Attach connects to the monitor in dir and copies the machine's output to
// stdout and stderr (from the oldest line it still holds) until the
// machine exits or Detach is called. It waits (bounded by ctx) for a
// monitor that is still starting.
func Attach(ctx context.Context, dir string, stdout, stderr io.Writer) (*Attached, error) {
	path := filepath.Join(dir, sockFile)
	var d net.Dialer
	delay := time.Millisecond
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			a := &Attached{conn: c, exited: make(chan struct{}), gone: make(chan struct{})}
			go a.read(stdout, stderr)
			return a, nil
		}
		// A monitor that wrote its pid and is gone will never listen;
		// one without a pid file yet may still be starting.
		if gone(dir) {
			return nil, fmt.Errorf("%w in %s: %v", errNoMonitor, dir, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("attach to the machine monitor: %w (%v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Running reports whether the monitor of dir is alive.
func Running(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// gone reports whether dir's monitor wrote its pid and has ended since.
func gone(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return err == nil && pid > 0 && syscall.Kill(pid, 0) != nil
}

// IsNoMonitor reports whether err says there was no monitor to attach to.
func IsNoMonitor(err error) bool { return errors.Is(err, errNoMonitor) }

func (a *Attached) read(stdout, stderr io.Writer) {
	defer close(a.gone)
	sc := bufio.NewScanner(a.conn)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		var msg message
		if json.Unmarshal(sc.Bytes(), &msg) != nil {
			continue
		}
		if msg.Exit != nil {
			a.exit = *msg.Exit
			close(a.exited)
			return
		}
		w := stdout
		if msg.Stream == "stderr" {
			w = stderr
		}
		if w == nil {
			continue
		}
		if lw, ok := w.(LineWriter); ok {
			lw.WriteLine(msg.Time, msg.Line)
		} else {
			w.Write([]byte(msg.Line + "\n"))
		}
	}
}

// Exited is closed once the machine's command has exited.
func (a *Attached) Exited() <-chan struct{} { return a.exited }

// Gone is closed when the stream from the monitor ended: the command
// exited, the attachment was detached, or the monitor died.
func (a *Attached) Gone() <-chan struct{} { return a.gone }

// Exit is how the command ended; valid once Exited is closed.
func (a *Attached) Exit() Exit { return a.exit }

// Ack tells the monitor its exit is dealt with: it removes its socket and
// ends.
func (a *Attached) Ack() {
	a.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(a.conn, "ack\n")
	a.Detach()
}

// Detach leaves the monitor (and the machine) running; a later Attach
// gets the output written from then on.
func (a *Attached) Detach() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.closed = true
		a.conn.Close()
	}
}

// Stop ends the monitor of dir, if one runs, without waiting for a server
// to collect its exit: for a machine that is being removed whatever state
// it is in (what the monitor ran goes with it, by its death signal). A pid
// that is no longer dir's monitor is left alone.
func Stop(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil || !bytes.Contains(env, []byte(envShim+"="+dir+"\x00")) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
}
