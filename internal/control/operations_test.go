package control

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// TestSettle is the table of operations a crash left running, and what
// the restarted server's record says of each once it has finished or
// undone the work (the state below is what StartResources and Reconcile
// leave).
func TestSettle(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t0 := time.Now().UTC().Add(-time.Hour)
	started := t0.Add(30 * time.Minute)
	// web: v1 from before the operations started, v2 pending (cut short).
	// api: v1 old, v2 made during the operation and live.
	for _, name := range []string{"web", "api", "fresh"} {
		if err := st.CreateApp(ctx, pier.App{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	rel := func(app string, at time.Time, status string, activate bool) {
		r, err := st.CreateRelease(ctx, pier.Release{App: app, BuildID: "b", Status: status, CreatedAt: at})
		if err != nil {
			t.Fatal(err)
		}
		if activate {
			st.Activate(ctx, app, r.Version)
		}
	}
	rel("web", t0, pier.ReleaseActive, true)
	rel("web", started.Add(time.Minute), pier.ReleaseFailed, false)
	rel("api", t0, pier.ReleaseRetired, false)
	rel("api", started.Add(time.Minute), pier.ReleaseActive, true)
	st.SetCount(ctx, "web", 3)
	st.CreateResource(ctx, store.ResourceRow{Resource: resources.Resource{Name: "db", Type: "postgres", Status: resources.StatusReady, CreatedAt: t0}})
	st.CreateResource(ctx, store.ResourceRow{Resource: resources.Resource{Name: "cache", Type: "redis", Status: resources.StatusReady, CreatedAt: t0}})

	cases := []struct {
		kind, target string
		want         ops.State
		says         string
	}{
		{OpDeploy, "web", ops.Failed, "rolled back on restart: v1 is live"},
		{OpDeploy, "api", ops.Succeeded, "finished on restart: v2 is live"},
		{OpDeploy, "fresh", ops.Failed, "rolled back on restart: no release is live"},
		{OpRollback, "web", ops.Failed, "rolled back on restart: v1 is live"},
		{OpScale, "web", ops.Succeeded, "finished on restart: web runs 3 machine(s)"},
		{OpSecretsSet, "web", ops.Failed, "the roll of web did not finish and v1 is live"},
		{OpConnect, "web", ops.Failed, "the roll of web did not finish"},
		{OpSecretsSet, "api", ops.Succeeded, "finished on restart: v2 is live"},
		{OpAppCreate, "fresh", ops.Succeeded, "finished on restart: fresh exists"},
		{OpAppDestroy, "gone", ops.Succeeded, "finished on restart: gone is destroyed"},
		{OpAppDestroy, "web", ops.Failed, "web is still there"},
		{OpDeploy, "gone", ops.Failed, "gone is gone"},
		{OpResourceCreate, "db", ops.Succeeded, "finished on restart: db is ready"},
		{OpResourceCreate, "nothing", ops.Failed, "rolled back on restart: nothing of nothing is left"},
		{OpResourceDelete, "nothing", ops.Succeeded, "finished on restart: nothing is deleted"},
		{OpResourceDelete, "cache", ops.Failed, "cache is ready; run it again"},
		{OpBackup, "db", ops.Failed, "db is ready; run it again"},
		{OpRestore, "db", ops.Failed, "db was not restored, or only in part"},
	}
	for _, c := range cases {
		op := ops.Operation{ID: "op_x", Kind: c.kind, Target: c.target, State: ops.Running, CreatedAt: started, StartedAt: &started}
		got := settle(ctx, st, op)
		if got.State != c.want || !strings.Contains(got.Recovery, c.says) {
			t.Errorf("%s %s: %s %q, want %s %q", c.kind, c.target, got.State, got.Recovery, c.want, c.says)
		}
	}
	// A deploy queued behind the one that made api's v2, and running when
	// the server died, did not make v2.
	queuedAt := t0.Add(10 * time.Minute)
	startedLater := started.Add(2 * time.Minute)
	op := ops.Operation{ID: "op_q", Kind: OpDeploy, Target: "api", State: ops.Running, CreatedAt: queuedAt, StartedAt: &startedLater}
	if got := settle(ctx, st, op); got.State != ops.Failed || !strings.Contains(got.Recovery, "rolled back on restart: v2 is live") {
		t.Errorf("queued deploy: %+v", got)
	}
}
