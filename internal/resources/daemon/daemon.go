// Package daemon runs the servers behind managed resources (postgres,
// redis-server) as detached, unprivileged processes that outlive a restart
// of pier: each runs in its own session, its pid is kept in a file, and a
// later pier finds it running again instead of starting a second one.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Daemon is one server process.
type Daemon struct {
	// Name is used in errors and names the pid and log files ("postgres").
	Name string
	// Dir holds the pid file and the log; it must exist and must not be
	// writable by User (pier opens the log there as itself). Prepare
	// lays it out so.
	Dir string
	// Argv is the command line; Argv[0] is an absolute path.
	Argv []string
	// Env is the process environment (nil: a minimal one).
	Env []string
	// WorkDir is the working directory (default Dir).
	WorkDir string
	// User is the account to run as ("" runs as pier's own user).
	User string
}

func (d Daemon) pidFile() string { return filepath.Join(d.Dir, d.Name+".pid") }

// LogFile is where the process's stdout and stderr go.
func (d Daemon) LogFile() string { return filepath.Join(d.Dir, d.Name+".log") }

// Running returns the pid of the daemon if it is alive. A pid file left by a
// process that is gone, or whose pid now belongs to another process (after
// a reboot, another resource's server of the same program), does not count:
// the file records the process's start time as well.
func (d Daemon) Running() (int, bool) {
	if len(d.Argv) == 0 {
		return 0, false
	}
	b, err := os.ReadFile(d.pidFile())
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil || pid <= 0 {
		return 0, false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0, false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	want := d.Argv[0]
	if real, err := filepath.EvalSymlinks(want); err == nil {
		want = real // Debian's redis-server is a symlink to redis-check-rdb
	}
	if filepath.Base(exe) != filepath.Base(want) && filepath.Base(exe) != filepath.Base(d.Argv[0]) {
		return 0, false
	}
	start, zombie := procStart(pid)
	if zombie || (len(fields) > 1 && fields[1] != start) {
		return 0, false
	}
	return pid, true
}

// procStart returns a process's start time (in clock ticks since boot, as
// /proc/PID/stat has it) and whether it is a zombie.
func procStart(pid int) (string, bool) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", false
	}
	i := strings.LastIndexByte(string(st), ')')
	if i < 0 {
		return "", false
	}
	// After the command name: state is field 3, starttime field 22.
	f := strings.Fields(string(st[i+1:]))
	if len(f) < 20 {
		return "", false
	}
	return f[19], f[0] == "Z"
}

// locks serialise Start and Stop of one daemon (keyed by its pid file), so
// two callers cannot both start a server.
var (
	locksMu sync.Mutex
	locks   = map[string]*sync.Mutex{}
)

func (d Daemon) lock() func() {
	locksMu.Lock()
	m, ok := locks[d.pidFile()]
	if !ok {
		m = &sync.Mutex{}
		locks[d.pidFile()] = m
	}
	locksMu.Unlock()
	m.Lock()
	return m.Unlock
}

// Credential returns the uid and gid of name ("" or the current user: nil).
func Credential(name string) (*syscall.Credential, error) {
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == os.Getuid() {
		return nil, nil
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Chown gives paths to the daemon's user (no-op when it runs as pier's).
func (d Daemon) Chown(paths ...string) error {
	cred, err := Credential(d.User)
	if err != nil || cred == nil {
		return err
	}
	for _, p := range paths {
		if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	return nil
}

// Start starts the daemon unless it is already running. It does not wait
// for the server to accept connections; the caller checks that its own way.
// The process is reaped by a goroutine while pier lives and by init after.
func (d Daemon) Start() (int, error) {
	if len(d.Argv) == 0 {
		return 0, fmt.Errorf("start %s: no command", d.Name)
	}
	defer d.lock()()
	if pid, ok := d.Running(); ok {
		return pid, nil
	}
	cred, err := Credential(d.User)
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(d.LogFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	if cred != nil {
		os.Chown(d.LogFile(), int(cred.Uid), int(cred.Gid))
	}
	cmd := exec.Command(d.Argv[0], d.Argv[1:]...)
	cmd.Dir = d.WorkDir
	if cmd.Dir == "" {
		cmd.Dir = d.Dir
	}
	cmd.Env = d.Env
	if cmd.Env == nil {
		cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"}
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: a signal to pier's process group (Ctrl-C, a killed
	// test run) does not reach the database.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", d.Name, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait()
	start, _ := procStart(pid)
	if err := os.WriteFile(d.pidFile(), []byte(strconv.Itoa(pid)+"\n"+start+"\n"), 0o600); err != nil {
		cmd.Process.Kill()
		return 0, err
	}
	return pid, nil
}

// Stop sends SIGTERM (or sig, if given), waits up to grace for the process
// to exit, then kills it.
func (d Daemon) Stop(ctx context.Context, grace time.Duration, sig ...syscall.Signal) error {
	defer d.lock()()
	pid, ok := d.Running()
	if !ok {
		os.Remove(d.pidFile())
		return nil
	}
	s := syscall.SIGTERM
	if len(sig) > 0 {
		s = sig[0]
	}
	if err := syscall.Kill(pid, s); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: %w", d.Name, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if _, ok := d.Running(); !ok {
			os.Remove(d.pidFile())
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if _, ok := d.Running(); !ok {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	os.Remove(d.pidFile())
	return nil
}

// Tail returns the last n bytes of the daemon's log, for error messages.
func (d Daemon) Tail(n int64) string {
	f, err := os.Open(d.LogFile())
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		f.Seek(st.Size()-n, 0)
	}
	b := make([]byte, n)
	k, _ := f.Read(b)
	return strings.TrimSpace(string(b[:k]))
}
