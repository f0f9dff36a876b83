package rollout

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func TestRegressionDeployCancelled(t *testing.T) {
	for _, strategy := range strategies {
		t.Run(strategy, func(t *testing.T) {
			h := newHarness(t)
			oldIDs, oldRoutes := deployOld(t, h, "web", 1)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			err := h.ro.Deploy(ctx, rel("web", 2, "no-listen", strategy), 2, func(string, ...any) {})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Deploy cancelled by its caller = %v, want context.Canceled", err)
			}
			if pier.KindOf(err) == pier.Failed {
				t.Errorf("a cancelled deploy is reported as a failed release: %v", err)
			}
			t.Logf("routes after: %v machines: %+v", h.router.routed("web"), h.mg.AppMachines("web"))
			checkOldUntouched(t, h, "web", oldIDs, oldRoutes)
		})
	}
}
