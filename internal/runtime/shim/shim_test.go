package shim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lines collects what a monitor hands over, with the lines' own times.
type lines struct {
	mu    sync.Mutex
	got   []string
	times []time.Time
}

func (l *lines) WriteLine(t time.Time, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, line)
	l.times = append(l.times, t)
}

func (l *lines) Write(p []byte) (int, error) { // not used: WriteLine wins
	panic("Write called on a LineWriter")
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

func start(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := Start(dir, Command{Argv: []string{"/bin/sh", "-c", script}}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func attach(t *testing.T, dir string, out, errs *lines) *Attached {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Attach(ctx, dir, out, errs)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func waitExit(t *testing.T, a *Attached) Exit {
	t.Helper()
	select {
	case <-a.Exited():
		return a.Exit()
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s")
	}
	return Exit{}
}

// waitGone waits (bounded) until the monitor of dir has ended.
func waitGone(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for Running(dir) {
		if time.Now().After(deadline) {
			t.Fatal("the monitor is still running after the exit was acknowledged")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if exists(filepath.Join(dir, sockFile)) {
		t.Error("the monitor left its socket behind")
	}
}

func TestOutputAndExit(t *testing.T) {
	dir := start(t, "echo one; echo two >&2; printf 'no newline'; exit 3")
	var out, errs lines
	a := attach(t, dir, &out, &errs)
	exit := waitExit(t, a)
	if ws := exit.WaitStatus(); !ws.Exited() || ws.ExitStatus() != 3 {
		t.Errorf("exit status = %v, want exit code 3", ws)
	}
	if got := strings.Join(out.all(), "|"); got != "one|no newline" {
		t.Errorf("stdout = %q", got)
	}
	if got := strings.Join(errs.all(), "|"); got != "two" {
		t.Errorf("stderr = %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, exitFile)); err != nil {
		t.Errorf("no exit file: %v", err)
	}
	a.Ack()
	waitGone(t, dir)
}

func TestSignalledCommand(t *testing.T) {
	dir := start(t, "kill -9 $$")
	var out lines
	a := attach(t, dir, &out, &out)
	exit := waitExit(t, a)
	if ws := exit.WaitStatus(); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("exit status = %v, want killed by SIGKILL", ws)
	}
	a.Ack()
	waitGone(t, dir)
}

// The server detaches (it stops, or crashes); the machine keeps running
// and writing; the next server gets every line, with the time it was
// written, and the exit that came while nobody was attached.
func TestOutputWhileDetachedIsKept(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	if _, err := Start(dir, Command{Argv: []string{"/bin/sh", "-c", `echo before; while [ ! -e "$1" ]; do sleep 0.01; done; for i in 1 2 3; do echo during $i; done; exit 0`, "sh", gate}}); err != nil {
		t.Fatal(err)
	}
	var first lines
	a := attach(t, dir, &first, &first)
	deadline := time.Now().Add(10 * time.Second)
	for len(first.all()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	a.Detach()
	<-a.Gone()
	detachedAt := time.Now()
	os.WriteFile(gate, nil, 0o600) // the machine writes while nobody is attached, then exits
	time.Sleep(300 * time.Millisecond)
	if !Running(dir) {
		t.Fatal("the monitor ended with no server to collect the exit")
	}

	var second lines
	b := attach(t, dir, &second, &second)
	exit := waitExit(t, b)
	if ws := exit.WaitStatus(); ws.ExitStatus() != 0 {
		t.Errorf("exit = %v", ws)
	}
	if got := strings.Join(first.all(), "|"); got != "before" {
		t.Errorf("first server got %q", got)
	}
	if got := strings.Join(second.all(), "|"); got != "during 1|during 2|during 3" {
		t.Errorf("second server got %q, want the lines written while detached, once each", got)
	}
	for i, tm := range second.times {
		if tm.Before(detachedAt) || tm.After(detachedAt.Add(300*time.Millisecond)) {
			t.Errorf("line %d has time %s, want when it was written (after %s, before the second attach)", i, tm, detachedAt)
		}
	}
	b.Ack()
	waitGone(t, dir)
}

// Output beyond MaxBuffered while nobody reads is dropped oldest first,
// and the next server is told how much.
func TestBufferIsBounded(t *testing.T) {
	dir := start(t, `line=$(head -c 1000 /dev/zero | tr '\0' x); i=0; while [ $i -lt 10000 ]; do echo "$i $line"; i=$((i+1)); done`)
	// Let it finish unattached: 10,000 lines of 1 kB is past the bound.
	deadline := time.Now().Add(30 * time.Second)
	for !exists(filepath.Join(dir, exitFile)) {
		if time.Now().After(deadline) {
			t.Fatal("the command did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var out, errs lines
	a := attach(t, dir, &out, &errs)
	waitExit(t, a)
	a.Ack()
	got := out.all()
	if len(got) == 0 || len(got) >= 10000 || !strings.HasPrefix(got[len(got)-1], "9999 ") {
		t.Fatalf("kept %d lines, last %q; want fewer than 10000, ending with the newest", len(got), got[len(got)-1])
	}
	if e := errs.all(); len(e) != 1 || !strings.Contains(e[0], "lines of output were dropped") {
		t.Errorf("stderr = %q, want the dropped-lines notice", e)
	}
	kept := 0
	for _, l := range got {
		kept += len(l) + 64
	}
	if kept > MaxBuffered {
		t.Errorf("kept %d bytes, over MaxBuffered %d", kept, MaxBuffered)
	}
}

func TestAttachWithoutMonitor(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, pidFile), []byte("999999999\n"), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := Attach(ctx, dir, nil, nil); !IsNoMonitor(err) {
		t.Fatalf("Attach = %v, want no monitor", err)
	}
}

// A pid file being written (empty for a moment) is a monitor starting,
// not one that is gone.
func TestAttachWaitsForAStartingMonitor(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, pidFile), nil, 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Attach(ctx, dir, nil, nil); err == nil || IsNoMonitor(err) {
		t.Fatalf("Attach = %v, want it to wait until ctx ends", err)
	}
}

// Stop ends a monitor whose exit no server will collect.
func TestStop(t *testing.T) {
	dir := start(t, "exit 0")
	deadline := time.Now().Add(10 * time.Second)
	for !exists(filepath.Join(dir, exitFile)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !Running(dir) {
		t.Fatal("the monitor did not wait for a server")
	}
	Stop(dir)
	waitGoneOrKilled(t, dir)
}

func waitGoneOrKilled(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for Running(dir) {
		if time.Now().After(deadline) {
			t.Fatal("the monitor still runs after Stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A monitor made by Prepare runs its command only once Run is called.
func TestPrepareWaitsForRun(t *testing.T) {
	dir := t.TempDir()
	mark := filepath.Join(dir, "ran")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out lines
	a, err := Prepare(ctx, dir, Command{Argv: []string{"/bin/sh", "-c", `touch "$1"; echo ran`, "sh", mark}}, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !Running(dir) {
		if time.Now().After(deadline) {
			t.Fatal("the monitor did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if exists(mark) {
		t.Fatal("the command ran before Run")
	}
	if err := a.Run(); err != nil {
		t.Fatal(err)
	}
	if ws := waitExit(t, a).WaitStatus(); ws.ExitStatus() != 0 {
		t.Errorf("exit = %v", ws)
	}
	if !exists(mark) {
		t.Error("the command did not run")
	}
	if got := strings.Join(out.all(), "|"); got != "ran" {
		t.Errorf("output = %q", got)
	}
	a.Ack()
	waitGone(t, dir)
}

// A prepared monitor whose server leaves (Detach, or dies) before Run ends
// without running its command; so does one that is aborted.
func TestPreparedMonitorEndsUnrun(t *testing.T) {
	for _, abort := range []bool{false, true} {
		dir := t.TempDir()
		mark := filepath.Join(dir, "ran")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		a, err := Prepare(ctx, dir, Command{Argv: []string{"/bin/sh", "-c", `touch "$1"`, "sh", mark}}, nil, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if abort {
			a.Abort()
		} else {
			a.Detach()
		}
		<-a.Gone()
		deadline := time.Now().Add(10 * time.Second)
		for !exists(filepath.Join(dir, pidFile)) || Running(dir) {
			if time.Now().After(deadline) {
				t.Fatalf("abort=%v: the monitor still runs", abort)
			}
			time.Sleep(5 * time.Millisecond)
			if abort && !exists(filepath.Join(dir, pidFile)) {
				break // killed before it wrote its pid
			}
		}
		if exists(mark) {
			t.Errorf("abort=%v: the command ran", abort)
		}
		if exists(filepath.Join(dir, exitFile)) {
			t.Errorf("abort=%v: an exit was recorded for a command that never ran", abort)
		}
	}
}
