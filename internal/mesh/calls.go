package mesh

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/metrics"
)

// errRevoked is the cause of a call cut because its edge was revoked.
var errRevoked = errors.New("the connection that allowed the call was removed")

// calls tracks the open calls of each edge (caller → callee) on one side
// of the mesh, so that revoking the edge ends them at once. The policy is
// read when a call begins; without this, a call that lasts (a WebSocket,
// a TCP tunnel, a streaming answer) would outlive the connection that
// allowed it for as long as its peers keep it open.
//
// A call is tracked before the policy is read for it, and an edge is cut
// after the policy denies it (see Mesh.Revoke): so every call either is
// seen by the cut or reads the denying policy.
type calls struct {
	mu    sync.Mutex
	edges map[metrics.Edge]map[*openCall]struct{}
}

type openCall struct{ cut func() }

func newCalls() *calls { return &calls{edges: map[metrics.Edge]map[*openCall]struct{}{}} }

// track records a call of e, which cut ends (it must not block); the
// returned func forgets the call once it is over.
func (cs *calls) track(e metrics.Edge, cut func()) (untrack func()) {
	c := &openCall{cut: cut}
	cs.mu.Lock()
	set := cs.edges[e]
	if set == nil {
		set = map[*openCall]struct{}{}
		cs.edges[e] = set
	}
	set[c] = struct{}{}
	cs.mu.Unlock()
	return func() {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if set := cs.edges[e]; set != nil {
			delete(set, c)
			if len(set) == 0 {
				delete(cs.edges, e)
			}
		}
	}
}

// cut ends every open call of e and returns how many it ended.
func (cs *calls) cut(e metrics.Edge) int {
	cs.mu.Lock()
	set := cs.edges[e]
	delete(cs.edges, e)
	cs.mu.Unlock()
	for c := range set {
		c.cut()
	}
	return len(set)
}

// open lists the edges with open calls.
func (cs *calls) open() []metrics.Edge {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]metrics.Edge, 0, len(cs.edges))
	for e := range cs.edges {
		out = append(out, e)
	}
	return out
}

// trackCall makes ctx cancellable by a cut of e on side (a cut cancels it
// with errRevoked), or returns it as it is for the edge proxy's calls,
// which no connection governs. The caller must call done when the call is
// over.
func trackCall(ctx context.Context, side *calls, e metrics.Edge) (cctx context.Context, done func()) {
	if e.Src == Edge {
		return ctx, func() {}
	}
	cctx, cancel := context.WithCancelCause(ctx)
	untrack := side.track(e, func() { cancel(errRevoked) })
	return cctx, func() { untrack(); cancel(context.Canceled) }
}

// revoked says whether ctx ended because its call's edge was revoked.
func revoked(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errRevoked) }

// Revoke cuts every open call from src to dst, on both sides: upgraded
// connections (WebSocket), TCP tunnels and HTTP requests in flight. Call it
// once the policy denies src → dst (a connection removed, an app
// destroyed), whatever becomes of src's machines: new calls are refused by
// the policy, and this ends the ones it allowed before. The calls cut count
// as denied.
func (m *Mesh) Revoke(src, dst string) {
	e := metrics.Edge{Src: src, Dst: dst}
	n := m.in.calls.cut(e)
	m.out.calls.cut(e)
	for range n {
		m.cfg.Metrics.Denied(e)
	}
	if n > 0 {
		m.log.Info("mesh: cut open calls of a revoked edge", "src", src, "dst", dst, "calls", n)
	}
}

// recheck cuts, every RecheckEvery, the open calls of the edges the policy
// no longer allows: a backstop for a policy change the mesh was not told
// of through Revoke.
func (m *Mesh) recheck(ctx context.Context) {
	t := time.NewTicker(m.cfg.RecheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep revokes every edge with open calls that the policy denies.
func (m *Mesh) sweep() {
	seen := map[metrics.Edge]bool{}
	for _, side := range []*calls{m.in.calls, m.out.calls} {
		for _, e := range side.open() {
			if seen[e] || e.Src == Edge {
				continue
			}
			seen[e] = true
			if !m.cfg.Policy.Allowed(e.Src, e.Dst) {
				m.Revoke(e.Src, e.Dst)
			}
		}
	}
}
