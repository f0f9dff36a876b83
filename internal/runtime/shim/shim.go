// Package shim keeps a machine's main process and its output independent
// of the server, as conmon and containerd's shims do: a small monitor
// process per machine (this same binary, re-executed) starts the machine's
// command, holds its stdout and stderr, and hands them, with the command's
// exit status, to whichever server is attached over a unix socket. While
// no server is attached it keeps the output (bounded); a server that comes
// back attaches again and gets it, so restarting the server restarts no
// machine and loses no output.
//
// The monitor is the binary that imports this package, run with
// PIER_MACHINE_SHIM set: the package's init then becomes the monitor's
// main and never returns.
package shim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const envShim = "PIER_MACHINE_SHIM"

// Files in the machine's directory.
const (
	specFile = "shim.json" // what to run, written by Start
	sockFile = "shim.sock" // where servers attach
	exitFile = "exit.json" // the command's exit status, once it has exited
	pidFile  = "shim.pid"  // the monitor's pid
)

// MaxBuffered bounds the output a monitor keeps for a server that is not
// attached; past it the oldest lines go, and the server is told how many.
const MaxBuffered = 8 << 20

// maxUnclaimed is how long a monitor whose command has exited waits for a
// server to collect the exit before it gives up.
const maxUnclaimed = 24 * time.Hour

// Command is what a monitor runs.
type Command struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
}

// spec is what the monitor reads at its start (specFile).
type spec struct {
	Command
	// Gated: the command waits for the attached server's "run" (Prepare).
	Gated bool `json:"gated,omitempty"`
}

// listenerFd is the monitor's socket, listening already: the starter
// makes it, so a server can connect (and its connection wait in the
// backlog) before the monitor has even begun to run.
const listenerFd = 3

// maxGated bounds how long a gated monitor waits for its server's "run".
const maxGated = 10 * time.Minute

// message is one line of the monitor's stream to the server: an output
// line, or the command's exit.
type message struct {
	Seq    uint64    `json:"n"` // numbers messages from 1, in order
	Time   time.Time `json:"t,omitzero"`
	Stream string    `json:"s,omitempty"` // stdout, stderr
	Line   string    `json:"l,omitempty"`
	Exit   *Exit     `json:"exit,omitempty"`
}

// Exit is how the command ended.
type Exit struct {
	// Status is the raw wait status (syscall.WaitStatus).
	Status   uint32    `json:"status"`
	ExitedAt time.Time `json:"exited_at"`
}

// WaitStatus is the exit as a syscall.WaitStatus.
func (e Exit) WaitStatus() syscall.WaitStatus { return syscall.WaitStatus(e.Status) }

func init() {
	if dir := os.Getenv(envShim); dir != "" {
		os.Exit(monitor(dir))
	}
}

// Start starts a monitor for cmd in dir (the machine's own directory,
// private to root) and returns its pid. The monitor outlives the caller:
// it is in a session of its own, and nothing of the caller's is inherited
// but the environment it is given and its listening socket.
func Start(dir string, cmd Command) (int, error) {
	p, _, err := startMonitor(dir, spec{Command: cmd})
	if err != nil {
		return 0, err
	}
	return p.Pid, nil
}

// Prepare starts a monitor for cmd in dir, as Start does, and attaches to
// it (as Attach does), but the monitor holds the command back until Run:
// its own start (a fork and exec of this binary, and the Go runtime's and
// packages' start in it) happens while the caller gets the command ready.
// Should the attachment end before Run (Abort, or the caller dies), the
// monitor ends without running the command.
func Prepare(ctx context.Context, dir string, cmd Command, stdout, stderr io.Writer) (*Attached, error) {
	p, exited, err := startMonitor(dir, spec{Command: cmd, Gated: true})
	if err != nil {
		return nil, err
	}
	a, err := Attach(ctx, dir, stdout, stderr)
	if err != nil {
		p.Kill()
		<-exited
		return nil, err
	}
	a.proc, a.procExited = p, exited
	return a, nil
}

func startMonitor(dir string, sp spec) (*os.Process, <-chan struct{}, error) {
	js, err := json.Marshal(sp)
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, specFile), js, 0o600); err != nil {
		return nil, nil, err
	}
	for _, f := range []string{sockFile, exitFile, pidFile} {
		os.Remove(filepath.Join(dir, f))
	}
	lnf, err := listenFile(filepath.Join(dir, sockFile))
	if err != nil {
		return nil, nil, fmt.Errorf("the machine monitor's socket: %w", err)
	}
	defer lnf.Close()
	logf, err := os.OpenFile(filepath.Join(dir, "shim.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close()
	// The running binary itself, even when an upgrade has replaced the
	// file since: monitor and server are always the same version.
	c := exec.Command("/proc/self/exe")
	c.Args = []string{"pier-machine-monitor", dir} // what ps shows
	c.Env = []string{envShim + "=" + dir, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	c.Dir = "/"
	c.Stdout, c.Stderr = logf, logf
	c.ExtraFiles = []*os.File{lnf} // listenerFd
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		os.Remove(filepath.Join(dir, sockFile))
		return nil, nil, fmt.Errorf("start the machine monitor: %w", err)
	}
	exited := make(chan struct{})
	go func() { // reap it if it ends while this process lives
		c.Wait()
		close(exited)
	}()
	return c.Process, exited, nil
}

// monitor is the monitor process's main.
func monitor(dir string) int {
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s shim: %s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
	}
	data, err := os.ReadFile(filepath.Join(dir, specFile))
	if err != nil {
		logf("read spec: %v", err)
		return 1
	}
	var spec spec
	if err := json.Unmarshal(data, &spec); err != nil || len(spec.Argv) == 0 {
		logf("bad spec: %v", err)
		return 1
	}
	// Atomically: a server attaching reads it to tell a monitor that is
	// starting from one that is gone.
	if tmp := filepath.Join(dir, pidFile+".tmp"); os.WriteFile(tmp, fmt.Appendf(nil, "%d\n", os.Getpid()), 0o600) == nil {
		os.Rename(tmp, filepath.Join(dir, pidFile))
	}
	m := &mon{changed: make(chan struct{}), acked: make(chan struct{}), run: make(chan struct{}), abort: make(chan struct{})}
	lnf := os.NewFile(listenerFd, sockFile)
	ln, err := net.FileListener(lnf)
	lnf.Close()
	if err != nil {
		logf("listen: %v", err)
		return 1
	}
	go m.accept(ln)

	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env, cmd.Dir = spec.Env, spec.Dir
	if cmd.Env == nil { // the monitor's own, without what marks it as one
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, envShim+"=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
	}
	// If the monitor dies, its command goes too (what it ran, e.g. runc,
	// decides what happens to the machine).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	outR, outW, err := os.Pipe()
	if err != nil {
		logf("pipe: %v", err)
		return 1
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		logf("pipe: %v", err)
		return 1
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if spec.Gated {
		select {
		case <-m.run:
		case <-m.abort:
			logf("the server left before it let the command run; ending")
			ln.Close()
			os.Remove(filepath.Join(dir, sockFile))
			return 0
		case <-time.After(maxGated):
			logf("no server let the command run in %s; ending", maxGated)
			ln.Close()
			os.Remove(filepath.Join(dir, sockFile))
			return 0
		}
	}
	var status uint32
	if err := cmd.Start(); err != nil {
		logf("start %s: %v", spec.Argv[0], err)
		m.push(message{Time: time.Now().UTC(), Stream: "stderr", Line: fmt.Sprintf("pier: could not start %s: %v", spec.Argv[0], err)})
		status = 127 << 8
	}
	outW.Close()
	errW.Close()
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); m.copyLines("stdout", outR) }()
	go func() { defer copies.Done(); m.copyLines("stderr", errR) }()
	if cmd.Process != nil {
		cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			status = uint32(ws)
		}
	}
	// Every process holding the pipes is gone once the command is (runc
	// run waits for the whole machine); a background child that escaped
	// would keep them open, so the wait is bounded.
	done := make(chan struct{})
	go func() { copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	exit := Exit{Status: status, ExitedAt: time.Now().UTC()}
	if b, err := json.Marshal(exit); err == nil {
		tmp := filepath.Join(dir, exitFile+".tmp")
		if os.WriteFile(tmp, b, 0o600) == nil {
			os.Rename(tmp, filepath.Join(dir, exitFile))
		}
	}
	m.push(message{Exit: &exit})
	select {
	case <-m.acked:
	case <-time.After(maxUnclaimed):
		logf("no server collected the exit in %s; giving up", maxUnclaimed)
	}
	ln.Close()
	os.Remove(filepath.Join(dir, sockFile))
	return 0
}

// mon is the monitor's state: the queue of messages not yet handed to a
// server, and the attached server.
type mon struct {
	mu      sync.Mutex
	queue   []message
	bytes   int
	dropped int
	seq     uint64
	changed chan struct{} // closed and replaced when the queue grows
	conn    net.Conn      // the attached server, if any
	gen     int           // counts attachments; a sender stops when it is replaced
	acked   chan struct{} // closed when a server acknowledged the exit
	ackOnce sync.Once
	// A gated monitor's command waits for run; abort is closed instead
	// when an attachment ends before it.
	run, abort chan struct{}
	ran        bool // run is closed (mu)
	aborted    bool // abort is closed (mu)
}

func (m *mon) push(msg message) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	msg.Seq = m.seq
	m.queue = append(m.queue, msg)
	m.bytes += len(msg.Line) + 64
	for m.bytes > MaxBuffered && len(m.queue) > 1 && m.queue[0].Exit == nil {
		m.bytes -= len(m.queue[0].Line) + 64
		m.queue = m.queue[1:]
		m.dropped++
	}
	close(m.changed)
	m.changed = make(chan struct{})
}

// copyLines queues each line of r.
func (m *mon) copyLines(stream string, r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		m.push(message{Time: time.Now().UTC(), Stream: stream, Line: sc.Text()})
	}
	io.Copy(io.Discard, r) // a line over 1 MiB: drain so the writer is not blocked
}

// accept serves one server at a time: a new attachment replaces the old.
func (m *mon) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		if m.conn != nil {
			m.conn.Close()
		}
		m.conn = c
		m.gen++
		gen := m.gen
		m.mu.Unlock()
		go m.serve(c, gen)
	}
}

// serve sends the queue to the server on c, oldest first, and waits for
// the server's acknowledgment of the exit.
func (m *mon) serve(c net.Conn, gen int) {
	defer c.Close()
	go func() {
		// The server writes "run" to let a gated command start, and
		// "ack" once it has dealt with the exit. Anything else ends
		// nothing; EOF ends a gated monitor that was not let run.
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			switch sc.Text() {
			case "ack":
				m.ackOnce.Do(func() { close(m.acked) })
			case "run":
				m.mu.Lock()
				if !m.ran && !m.aborted {
					m.ran = true
					close(m.run)
				}
				m.mu.Unlock()
			}
		}
		m.mu.Lock()
		if !m.ran && !m.aborted {
			m.aborted = true
			close(m.abort)
		}
		m.mu.Unlock()
	}()
	w := bufio.NewWriter(c)
	enc := json.NewEncoder(w)
	for {
		m.mu.Lock()
		if m.gen != gen {
			m.mu.Unlock()
			return
		}
		var notice *message
		if m.dropped > 0 {
			notice = &message{Time: time.Now().UTC(), Stream: "stderr", Line: fmt.Sprintf("pier: %d lines of output were dropped while no server was reading them", m.dropped)}
			m.dropped = 0
		}
		batch := append([]message(nil), m.queue...)
		changed := m.changed
		m.mu.Unlock()
		if notice != nil {
			if enc.Encode(notice) != nil {
				return
			}
		}
		if len(batch) == 0 && notice == nil {
			select {
			case <-changed:
				continue
			case <-m.acked:
				return
			}
		}
		for _, msg := range batch {
			if enc.Encode(msg) != nil {
				return
			}
		}
		if w.Flush() != nil {
			return
		}
		// Sent: take them off the queue.
		if len(batch) > 0 {
			last := batch[len(batch)-1].Seq
			m.mu.Lock()
			for len(m.queue) > 0 && m.queue[0].Seq <= last {
				m.bytes -= len(m.queue[0].Line) + 64
				m.queue = m.queue[1:]
			}
			m.mu.Unlock()
		}
	}
}

// errNoMonitor says a machine has no monitor to attach to.
var errNoMonitor = errors.New("no machine monitor")
