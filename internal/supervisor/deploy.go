package supervisor

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// Progress receives human-readable lines about a rollout.
type Progress func(format string, args ...any)

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
func (s *Supervisor) Deploy(ctx context.Context, rel pier.Release, env []string, count int, report Progress) error {
	// Machines report from their own goroutines; callers get one line at a time.
	var progressMu sync.Mutex
	progress := func(format string, args ...any) {
		progressMu.Lock()
		defer progressMu.Unlock()
		report(format, args...)
	}
	old := s.serving(rel.App)
	cfg := rel.Config
	var started []*machine
	abort := func(err error) error {
		progress("aborting: stopping the %d new machine(s); the running release keeps serving", len(started))
		s.retire(started, 0)
		return err
	}
	if count == 0 {
		count = 1
	}
	if cfg.Strategy == pier.StrategyImmediate {
		for range count {
			m, err := s.start(rel, env, false)
			if err != nil {
				return abort(err)
			}
			started = append(started, m)
			progress("machine %s starting", m.id)
		}
		if err := s.waitHealthy(ctx, started, cfg.WaitTimeout.Duration, progress); err != nil {
			return abort(err)
		}
		for _, m := range started {
			m.setRoutable(true)
		}
		progress("traffic switched to v%d", rel.Version)
		if len(old) > 0 {
			progress("draining %d old machine(s)", len(old))
		}
		s.retire(old, cfg.DrainTimeout.Duration)
		return nil
	}
	for i := range count {
		m, err := s.start(rel, env, false)
		if err != nil {
			return abort(err)
		}
		started = append(started, m)
		progress("machine %s starting (%d/%d)", m.id, i+1, count)
		if err := s.waitHealthy(ctx, []*machine{m}, cfg.WaitTimeout.Duration, progress); err != nil {
			return abort(err)
		}
		m.setRoutable(true)
	}
	for _, m := range old {
		progress("draining old machine %s (v%d)", m.id, m.rel.Version)
		m.shutdown(cfg.DrainTimeout.Duration, s.grace)
	}
	return nil
}

// waitHealthy waits until every machine has passed its checks. It fails as
// soon as one exits, or when timeout passes.
func (s *Supervisor) waitHealthy(ctx context.Context, ms []*machine, timeout time.Duration, progress func(string, ...any)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errs := make(chan error, len(ms))
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			select {
			case <-m.healthy:
				progress("machine %s is healthy (%s)", m.id, time.Since(begin).Round(time.Millisecond))
			case exit := <-m.exits:
				errs <- &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("machine %s of v%d exited with %s before passing its health checks%s", m.id, m.rel.Version, exit, s.lastOutput(m))}
				cancel()
			case <-ctx.Done():
				if ctx.Err() == context.DeadlineExceeded {
					errs <- &pier.Error{Kind: pier.Failed, Msg: fmt.Sprintf("machine %s of v%d did not pass its health checks within %s (%s)%s", m.id, m.rel.Version, timeout, describeChecks(m.rel.Config.Checks), s.lastOutput(m))}
				} else {
					errs <- fmt.Errorf("deploy cancelled: %w", context.Cause(ctx))
				}
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
func (s *Supervisor) lastOutput(m *machine) string {
	lines, err := s.logs.Tail(m.app, 200)
	if err != nil {
		return ""
	}
	var mine []string
	for _, l := range lines {
		if l.Machine == m.id {
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
