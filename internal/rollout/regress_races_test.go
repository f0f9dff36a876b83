package rollout

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/runtime"
)

// Bug: serving() sorts by m.startedAt without m.mu while run() rewrites it
// under m.mu on every (re)start.
func TestRegressionStartedAtRace(t *testing.T) {
	h := newHarness(t)
	r := rel("web", 1, "exit 1", pier.StrategyRolling)
	if err := h.ro.Scale(context.Background(), r, 2); err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(800 * time.Millisecond)
	for time.Now().Before(end) {
		h.ro.Scale(context.Background(), r, 2) // only reads: 2 machines already
		time.Sleep(time.Millisecond)
	}
}

// Bug: progress is called from several goroutines at once (immediate).
func TestRegressionProgressConcurrent(t *testing.T) {
	h := newHarness(t)
	var lines []string // unsynchronized, like control's fmt.Fprintf(out, ...)
	progress := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	if err := h.ro.Deploy(context.Background(), rel("web", 1, "serve", pier.StrategyImmediate), 4, progress); err != nil {
		t.Fatal(err)
	}
}

type slowStart struct {
	inner   *fakeDriver
	entered chan struct{}
	release chan struct{}
}

func (d *slowStart) Isolates() bool { return false }

func (d *slowStart) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	d.entered <- struct{}{}
	<-d.release
	return d.inner.Start(ctx, spec)
}

// Bug: a machine asked to stop while Driver.Start is still running (longer
// than StopGrace) is never signalled; shutdown waits for it forever.
func TestRegressionStopDuringSlowStart(t *testing.T) {
	h := newHarness(t)
	d := &slowStart{inner: h.driver, entered: make(chan struct{}, 1), release: make(chan struct{})}
	h.mg = h.newManager(d)
	h.ro.Fleet = h.mg
	if err := h.ro.Scale(context.Background(), rel("web", 1, "serve", pier.StrategyRolling), 1); err != nil {
		t.Fatal(err)
	}
	<-d.entered
	stopped := make(chan struct{})
	go func() { h.ro.StopApp("web"); close(stopped) }()
	time.Sleep(400 * time.Millisecond) // > StopGrace (200ms): SIGKILL went to no process
	close(d.release)                   // the runtime finally hands back the process
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		id := h.ids("web")[0]
		t.Fatalf("StopApp hangs; machine %+v, process exited %v", h.mg.AppMachines("web"), h.driver.latest(id).exited())
	}
}
