package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func sleeper(t *testing.T) Daemon {
	t.Helper()
	dir := t.TempDir()
	// A symlink, like Debian's redis-server -> redis-check-rdb.
	link := filepath.Join(dir, "napper")
	if err := os.Symlink("/bin/sleep", link); err != nil {
		t.Fatal(err)
	}
	d := Daemon{Name: "nap", Dir: dir, Argv: []string{link, "30"}}
	t.Cleanup(func() { d.Stop(context.Background(), time.Second) })
	return d
}

func TestStartIsIdempotentAndStops(t *testing.T) {
	d := sleeper(t)
	pid, err := d.Start()
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := d.Running(); !ok || got != pid {
		t.Fatalf("Running = %d, %v; want %d (a symlinked binary must be recognised)", got, ok, pid)
	}
	again, err := d.Start()
	if err != nil || again != pid {
		t.Fatalf("second Start = %d, %v; want the same pid %d", again, err, pid)
	}
	if err := d.Stop(context.Background(), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Running(); ok {
		t.Fatal("still running after Stop")
	}
	// A process that is exiting loses its exe link before it is a
	// zombie: give it a moment to finish dying.
	for i := 0; ; i++ {
		start, zombie := procStart(pid)
		if start == "" || zombie {
			break
		}
		if i == 100 {
			t.Fatal("process alive a second after Stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentStartsStartOne(t *testing.T) {
	d := sleeper(t)
	pids := make([]int, 6)
	var wg sync.WaitGroup
	for i := range pids {
		wg.Add(1)
		go func() { defer wg.Done(); pids[i], _ = d.Start() }()
	}
	wg.Wait()
	for _, p := range pids {
		if p != pids[0] || p == 0 {
			t.Fatalf("concurrent starts gave pids %v", pids)
		}
	}
}

func TestReusedPidIsNotRunning(t *testing.T) {
	d := sleeper(t)
	pid, err := d.Start()
	if err != nil {
		t.Fatal(err)
	}
	// The pid file now names the live process with another start time, as
	// after a reboot that handed the pid to another program of that name.
	os.WriteFile(filepath.Join(d.Dir, "nap.pid"), []byte(strconv.Itoa(pid)+"\n1\n"), 0o600)
	if _, ok := d.Running(); ok {
		t.Fatal("a pid with another start time counts as running")
	}
	os.WriteFile(filepath.Join(d.Dir, "nap.pid"), []byte(strconv.Itoa(pid)+"\n"), 0o600)
	if _, ok := d.Running(); !ok {
		t.Fatal("an old pid file without a start time is not read")
	}
}

func TestEmptyArgv(t *testing.T) {
	d := Daemon{Name: "x", Dir: t.TempDir()}
	if _, ok := d.Running(); ok {
		t.Fatal("running with no command")
	}
	if _, err := d.Start(); err == nil {
		t.Fatal("started with no command")
	}
}
