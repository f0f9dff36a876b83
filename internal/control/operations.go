package control

import (
	"context"
	"fmt"
	"time"

	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// The kinds of operations the API runs (internal/ops), by what they change.
const (
	OpAppCreate      = "app.create"
	OpAppDestroy     = "app.destroy"
	OpDeploy         = "deploy"
	OpRollback       = "rollback"
	OpScale          = "scale"
	OpSecretsSet     = "secrets.set"
	OpSecretsUnset   = "secrets.unset"
	OpConnect        = "connect"
	OpDisconnect     = "disconnect"
	OpResourceCreate = "resource.create"
	OpResourceDelete = "resource.delete"
	OpBackup         = "backup"
	OpRestore        = "restore"
)

// settleStore is what settling reads.
type settleStore interface {
	App(ctx context.Context, name string) (pier.App, error)
	Release(ctx context.Context, app string, v int) (pier.Release, error)
	Resource(ctx context.Context, name string) (store.ResourceRow, error)
}

// Settle decides what became of an operation a crash of the server cut
// short, once the restarted server has finished or undone the work itself
// (StartResources, then Reconcile): an app runs its current release on its
// stored count of machines, a resource left creating is gone, one left
// deleting is deleted. It only reads the state that left.
func (p *Plane) Settle(ctx context.Context, op ops.Operation) ops.Outcome {
	return settle(ctx, p.Store, op)
}

func settle(ctx context.Context, st settleStore, op ops.Operation) ops.Outcome {
	failed := func(format string, args ...any) ops.Outcome {
		return ops.Outcome{State: ops.Failed, Recovery: "interrupted by a restart of pier server: " + fmt.Sprintf(format, args...)}
	}
	finished := func(format string, args ...any) ops.Outcome {
		return ops.Outcome{State: ops.Succeeded, Recovery: "finished on restart: " + fmt.Sprintf(format, args...)}
	}
	switch op.Kind {
	case OpResourceCreate, OpResourceDelete, OpBackup, OpRestore:
		r, err := st.Resource(ctx, op.Target)
		gone := pier.KindOf(err) == pier.NotFound
		if err != nil && !gone {
			return failed("%s cannot be read (%v)", op.Target, err)
		}
		switch {
		case op.Kind == OpResourceCreate && gone:
			return ops.Outcome{State: ops.Failed, Recovery: "rolled back on restart: nothing of " + op.Target + " is left; create it again"}
		case op.Kind == OpResourceCreate && r.Status == resources.StatusReady:
			return finished("%s is ready", op.Target)
		case op.Kind == OpResourceDelete && gone:
			return finished("%s is deleted", op.Target)
		case gone:
			return failed("%s is gone", op.Target)
		case op.Kind == OpRestore:
			return failed("%s was not restored, or only in part; it is %s: restore it again", op.Target, r.Status)
		default:
			return failed("%s is %s; run it again", op.Target, r.Status)
		}
	}
	a, err := st.App(ctx, op.Target)
	if pier.KindOf(err) == pier.NotFound {
		if op.Kind == OpAppDestroy {
			return finished("%s is destroyed", op.Target)
		}
		return failed("%s is gone", op.Target)
	}
	if err != nil {
		return failed("%s cannot be read (%v)", op.Target, err)
	}
	live := "no release is live"
	if a.Release > 0 {
		live = fmt.Sprintf("v%d is live", a.Release)
		if rel, err := st.Release(ctx, a.Name, a.Release); err == nil && !rel.CreatedAt.Before(began(op)) {
			// The release this operation made went live before the crash.
			return finished("%s", live)
		}
	}
	switch op.Kind {
	case OpAppCreate:
		return finished("%s exists", op.Target)
	case OpScale:
		// The count is stored before machines change; the restart ran
		// the app on it.
		return finished("%s runs %d machine(s)", op.Target, a.Count)
	case OpDeploy, OpRollback:
		return ops.Outcome{State: ops.Failed, Recovery: "rolled back on restart: " + live + "; deploy again"}
	case OpAppDestroy:
		return failed("%s is still there; destroy it again", op.Target)
	default: // secrets, connections: the change may be stored, the roll did not finish
		return failed("the roll of %s did not finish and %s; run it again to be sure every machine has the change", op.Target, live)
	}
}

// began is when op started running: a release made after that is its own
// (one queued behind a deploy was created before that deploy's release).
func began(op ops.Operation) time.Time {
	if op.StartedAt != nil {
		return *op.StartedAt
	}
	return op.CreatedAt
}
