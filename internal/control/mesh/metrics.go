package mesh

import (
	"context"
	"time"

	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
)

// MaxMetricsWindow bounds the windows of metrics queries.
const MaxMetricsWindow = 24 * time.Hour

func checkWindow(w time.Duration) error {
	if w < time.Second || w > MaxMetricsWindow {
		return pier.Errorf(pier.Invalid, "window %s: want between 1s and 24h", w)
	}
	return nil
}

// Stats are the golden metrics per app (by callee, every caller merged,
// the edge proxy included), or per edge (caller → callee) with edges.
func (s *Service) Stats(window time.Duration, edges bool) ([]metrics.Stat, error) {
	if err := checkWindow(window); err != nil {
		return nil, err
	}
	if edges {
		return s.Metrics.Edges(window), nil
	}
	return s.Metrics.Apps(window), nil
}

// AppStats are app's metrics per machine, and its busiest paths.
func (s *Service) AppStats(ctx context.Context, app string, window time.Duration, limit int) (machines, paths []metrics.Stat, err error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return nil, nil, err
	}
	if err := checkWindow(window); err != nil {
		return nil, nil, err
	}
	if limit <= 0 || limit > 100 {
		limit = 20
	}
	return s.Metrics.Machines(app, window), s.Metrics.Paths(app, window, limit), nil
}

// History is app's metrics over time (src "" = every caller).
func (s *Service) History(ctx context.Context, app, src string, window, step time.Duration) ([]metrics.Point, error) {
	if _, err := s.Store.App(ctx, app); err != nil {
		return nil, err
	}
	if err := checkWindow(window); err != nil {
		return nil, err
	}
	if step < time.Second || step > window {
		return nil, pier.Errorf(pier.Invalid, "step %s: want between 1s and the window (%s)", step, window)
	}
	return s.Metrics.History(app, src, window, step), nil
}
