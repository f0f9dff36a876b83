package process

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/runtime"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, d *Driver, id, script string) (runtime.Process, *syncBuf, *syncBuf) {
	t.Helper()
	out, errw := &syncBuf{}, &syncBuf{}
	p, err := d.Start(context.Background(), runtime.Spec{ID: id, Dir: t.TempDir(), Command: []string{"/bin/sh", "-c", script},
		Env: []string{"PATH=" + os.Getenv("PATH")}, Stdout: out, Stderr: errw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Signal(syscall.SIGKILL); p.Wait() })
	return p, out, errw
}

func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !bytes.Contains(stat, []byte(") Z "))
}

func TestOutputExitCodeAndPort(t *testing.T) {
	d := New()
	p, out, errw := start(t, d, "m-exit", `echo "port=$PORT id=$PIER_MACHINE_ID"; echo oops >&2; exit 5`)
	exit := p.Wait()
	if exit.Code != 5 || exit.Signal != "" {
		t.Fatalf("exit = %+v", exit)
	}
	_, port, _ := net.SplitHostPort(p.Addr())
	if !strings.Contains(out.String(), "port="+port+" id=m-exit\n") || errw.String() != "oops\n" {
		t.Fatalf("stdout %q stderr %q (addr %s)", out.String(), errw.String(), p.Addr())
	}
}

func TestSignalReachesTheGroupAndNothingOutlivesTheMachine(t *testing.T) {
	d := New()
	// The main shell waits on a child that ignores nothing; a grandchild is
	// started in the background and would outlive a plain kill of the shell.
	p, out, _ := start(t, d, "m-group", `sleep 300 & echo "bg=$!"; sleep 300`)
	var bg int
	deadline := time.Now().Add(5 * time.Second)
	for bg == 0 && time.Now().Before(deadline) {
		if _, v, ok := strings.Cut(out.String(), "bg="); ok {
			bg, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if bg == 0 {
		t.Fatal("background process id not printed")
	}
	// Kill only the main process, as a crash would: Wait must still return
	// and take the background process with it.
	syscall.Kill(p.PID(), syscall.SIGKILL)
	done := make(chan runtime.Exit)
	go func() { done <- p.Wait() }()
	select {
	case exit := <-done:
		if exit.Signal != "killed" {
			t.Errorf("exit = %+v", exit)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the main process died")
	}
	// The group's SIGKILL is delivered at once, but the kernel takes a
	// moment to tear the process down.
	for deadline := time.Now().Add(5 * time.Second); alive(bg) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(bg) {
		t.Fatalf("background process %d outlived its machine", bg)
	}
}

func TestCleanupKillsProcessesOfGivenMachines(t *testing.T) {
	// A process carrying a machine id, started outside the driver, as one
	// left over by a crashed server would be.
	cmd := exec.Command("sleep", "300")
	cmd.Env = []string{"PIER_MACHINE_ID=leftover-1"}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "300")
	other.Env = []string{"PIER_MACHINE_ID=someone-else"}
	other.Start()
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })

	n, err := New().Cleanup(context.Background(), []string{"leftover-1"})
	if err != nil || n != 1 {
		t.Fatalf("Cleanup = %d, %v; want 1 killed", n, err)
	}
	cmd.Wait()
	if !alive(other.Process.Pid) {
		t.Fatal("Cleanup killed a process of another machine")
	}
}

func TestPortsAreNotReusedAtOnce(t *testing.T) {
	d := New()
	seen := map[string]bool{}
	for range 20 {
		p, err := d.freePort()
		if err != nil {
			t.Fatal(err)
		}
		k := strconv.Itoa(p)
		if seen[k] {
			t.Fatalf("port %d handed out twice in 20 allocations", p)
		}
		seen[k] = true
	}
}
