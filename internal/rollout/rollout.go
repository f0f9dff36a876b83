// Package rollout deploys an app's releases onto machines with zero
// downtime, scales them, and brings an app back to its wanted state after
// a restart of the server. Machines are the machine manager's
// (internal/machines): rollout only decides which to create, admit into
// traffic and retire.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/pier"
)

// Fleet is what rollout needs of the machine manager.
type Fleet interface {
	CreateAppMachine(ctx context.Context, app string, req machines.AppMachine) (machines.Machine, error)
	WaitReady(ctx context.Context, app, id string) error
	Admit(ctx context.Context, app, id string) error
	Retire(ctx context.Context, app, id string) error
	AppMachines(app string) []machines.AppMachineStatus
}

// Logs quotes a machine's last output lines for error messages.
type Logs interface {
	Tail(app string, n int) ([]pier.LogLine, error)
}

// Progress receives human-readable lines about a rollout.
type Progress func(format string, args ...any)

// Rollout runs an app's releases on a Fleet.
type Rollout struct {
	Fleet Fleet
	Logs  Logs
	Log   *slog.Logger
}

// request is what a machine of rel is created with.
func request(rel pier.Release, standby bool) machines.AppMachine {
	c := rel.Config
	return machines.AppMachine{Release: rel.Version, Checks: c.Checks, Standby: standby, Drain: c.DrainTimeout.Duration,
		AutoStop: c.AutoStop, AutoStart: c.AutoStart, MinRunning: c.MinMachines, Idle: c.IdleTimeout.Duration}
}

// serving are the app's machines that are, or will be once healthy, in
// traffic: not a deploy's standby and not being retired. Stopped machines
// (autostop) count: a request starts them again.
func (r *Rollout) serving(app string) []machines.AppMachineStatus {
	var out []machines.AppMachineStatus
	for _, m := range r.Fleet.AppMachines(app) {
		if !m.Standby && m.State != machines.StateDestroying && m.State != machines.StateDestroyed {
			out = append(out, m)
		}
	}
	return out
}

// Serving counts the app's machines in (or coming into) traffic.
func (r *Rollout) Serving(app string) int { return len(r.serving(app)) }

// Deploy rolls rel out to count machines with zero downtime and returns when
// the old machines are gone.
//
// rolling: new machines start one at a time; each joins traffic as soon as it
// passes its checks. Once every new machine is healthy, the old ones are
// drained and stopped one at a time.
// immediate: all new machines start at once; when all are healthy, they join
// traffic together and the old ones are drained together.
//
// In both, no old machine is touched until every new one is healthy, so a
// release that fails its checks leaves the running one serving as it was.
func (r *Rollout) Deploy(ctx context.Context, rel pier.Release, count int, report Progress) error {
	// Machines report from their own goroutines; callers get one line at a time.
	var progressMu sync.Mutex
	progress := func(format string, args ...any) {
		progressMu.Lock()
		defer progressMu.Unlock()
		report(format, args...)
	}
	old := r.serving(rel.App)
	cfg := rel.Config
	var started []string
	abort := func(err error) error {
		progress("aborting: stopping the %d new machine(s); the running release keeps serving", len(started))
		r.retire(rel.App, started)
		return err
	}
	if count == 0 {
		count = 1
	}
	launch := func() (string, error) {
		m, err := r.Fleet.CreateAppMachine(ctx, rel.App, request(rel, true))
		if err != nil {
			return "", err
		}
		started = append(started, m.ID)
		return m.ID, nil
	}
	if cfg.Strategy == pier.StrategyImmediate {
		for range count {
			id, err := launch()
			if err != nil {
				return abort(err)
			}
			progress("machine %s starting", id)
		}
		if err := r.waitReady(ctx, rel, started, progress); err != nil {
			return abort(err)
		}
		for _, id := range started {
			if err := r.Fleet.Admit(ctx, rel.App, id); err != nil {
				return abort(err)
			}
		}
		progress("traffic switched to v%d", rel.Version)
		if len(old) > 0 {
			progress("draining %d old machine(s)", len(old))
		}
		r.retire(rel.App, ids(old))
		return nil
	}
	for i := range count {
		id, err := launch()
		if err != nil {
			return abort(err)
		}
		progress("machine %s starting (%d/%d)", id, i+1, count)
		if err := r.waitReady(ctx, rel, []string{id}, progress); err != nil {
			return abort(err)
		}
		if err := r.Fleet.Admit(ctx, rel.App, id); err != nil {
			return abort(err)
		}
	}
	for _, m := range old {
		progress("draining old machine %s (v%d)", m.ID, m.Release)
		r.retire(rel.App, []string{m.ID})
	}
	return nil
}

func ids(ms []machines.AppMachineStatus) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// retire drains, stops and destroys machines, all at once.
func (r *Rollout) retire(app string, ids []string) {
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Not the deploy's context: a cancelled deploy still cleans up.
			if err := r.Fleet.Retire(context.Background(), app, id); err != nil && pier.KindOf(err) != pier.NotFound && r.Log != nil {
				r.Log.Error("retire machine", "app", app, "machine", id, "err", err)
			}
		}()
	}
	wg.Wait()
}

// waitReady waits until every machine has passed its checks. It fails as
// soon as one exits, or when the release's wait timeout passes.
func (r *Rollout) waitReady(ctx context.Context, rel pier.Release, ms []string, progress Progress) error {
	timeout := rel.Config.WaitTimeout.Duration
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errs := make(chan error, len(ms))
	var wg sync.WaitGroup
	for _, id := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			err := r.Fleet.WaitReady(ctx, rel.App, id)
			var exited *machines.ExitedError
			switch {
			case err == nil:
				progress("machine %s is healthy (%s)", id, time.Since(begin).Round(time.Millisecond))
			case errors.As(err, &exited):
				errs <- &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("machine %s of v%d exited with %s before passing its health checks%s", id, rel.Version, exited.How(), r.lastOutput(rel.App, id))}
				cancel()
			case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == context.DeadlineExceeded:
				errs <- &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("machine %s of v%d did not pass its health checks within %s (%s)%s", id, rel.Version, timeout, describeChecks(rel.Config.Checks), r.lastOutput(rel.App, id))}
			case ctx.Err() != nil:
				errs <- fmt.Errorf("deploy cancelled: %w", context.Cause(ctx))
			default:
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	// A machine's own failure says more than the cancellation it caused in
	// the others, so it wins.
	var first error
	for err := range errs {
		if pier.KindOf(err) == pier.Failed {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func describeChecks(checks []pier.Check) string {
	if len(checks) == 0 {
		return "TCP connect on $PORT: does the app listen on the port in $PORT?"
	}
	var parts []string
	for _, c := range checks {
		if c.Type == "http" {
			parts = append(parts, "GET "+c.Path+" must answer 2xx/3xx")
		} else {
			parts = append(parts, "TCP connect on $PORT")
		}
	}
	return strings.Join(parts, ", ")
}

// lastOutput quotes the machine's last log lines, for error messages.
func (r *Rollout) lastOutput(app, id string) string {
	if r.Logs == nil {
		return ""
	}
	lines, err := r.Logs.Tail(app, 200)
	if err != nil {
		return ""
	}
	var mine []string
	for _, l := range lines {
		if l.Machine == id {
			mine = append(mine, "  | "+l.Line)
		}
	}
	if len(mine) == 0 {
		return "; it printed nothing"
	}
	if len(mine) > 10 {
		mine = mine[len(mine)-10:]
	}
	return "; its last output:\n" + strings.Join(mine, "\n")
}

// Scale brings the app's machine count to n: new machines run rel (the
// current release) and join traffic once healthy; extra ones are drained
// and stopped, newest first.
func (r *Rollout) Scale(ctx context.Context, rel pier.Release, n int) error {
	cur := r.serving(rel.App)
	for i := len(cur); i < n; i++ {
		if _, err := r.Fleet.CreateAppMachine(ctx, rel.App, request(rel, false)); err != nil {
			return err
		}
	}
	if n < len(cur) {
		r.retire(rel.App, ids(cur[n:]))
	}
	return nil
}

// StopApp retires every machine of an app's releases.
func (r *Rollout) StopApp(app string) {
	r.retire(app, ids(r.Fleet.AppMachines(app)))
}

// Reconcile brings an app's machines in line with what the store says
// after a restart of the server: machines of other releases than the
// current one (a deploy the restart cut short) and deploys' standbys are
// retired, and machines of the current release are added or removed until
// count serve. It reports what it changed.
func (r *Rollout) Reconcile(ctx context.Context, rel pier.Release, count int) (added, retired int, err error) {
	var stale []string
	for _, m := range r.Fleet.AppMachines(rel.App) {
		if m.Release != rel.Version || m.Standby {
			stale = append(stale, m.ID)
		}
	}
	r.retire(rel.App, stale)
	before := r.Serving(rel.App)
	if err := r.Scale(ctx, rel, count); err != nil {
		return 0, len(stale), err
	}
	if count > before {
		added = count - before
	} else {
		retired = before - count
	}
	return added, len(stale) + retired, nil
}
