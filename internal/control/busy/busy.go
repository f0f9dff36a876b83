// Package busy is the control plane's table of the work under way: one
// piece at a time per name, so that a deploy, a scale, a delete, a backup
// or a health check never overlaps another on the same app or resource
// (apps and resources share one namespace, and so one table). Operations
// (internal/ops) already run one at a time per target; the table also
// keeps them apart from the server's own background work.
package busy

import (
	"context"
	"sync"

	"github.com/pier-dev/pier/internal/pier"
)

// Table holds the work under way per name. The zero value is empty and
// ready; it is safe for concurrent use.
type Table struct {
	mu  sync.Mutex
	ops map[string]*entry
}

type entry struct {
	op   string        // as a phrase: "a deploy"
	free chan struct{} // closed at unlock
}

// TryLock marks name busy with op until unlock is called; Conflict,
// naming the work under way, if another holds it.
func (t *Table) TryLock(name, op string) (unlock func(), err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.ops[name]; ok {
		return nil, pier.Errorf(pier.Conflict, "%s of %s is in progress; wait for it to finish and try again", cur.op, name)
	}
	return t.take(name, op), nil
}

// Lock marks name busy with op, waiting for the work under way there to
// finish; Conflict, naming that work, if ctx ends first.
func (t *Table) Lock(ctx context.Context, name, op string) (unlock func(), err error) {
	for {
		t.mu.Lock()
		cur, ok := t.ops[name]
		if !ok {
			defer t.mu.Unlock()
			return t.take(name, op), nil
		}
		t.mu.Unlock()
		select {
		case <-cur.free:
		case <-ctx.Done():
			return nil, pier.Errorf(pier.Conflict, "%s of %s is in progress; gave up waiting for it (%v)", cur.op, name, context.Cause(ctx))
		}
	}
}

// take marks name busy; t.mu must be held.
func (t *Table) take(name, op string) func() {
	if t.ops == nil {
		t.ops = map[string]*entry{}
	}
	e := &entry{op: op, free: make(chan struct{})}
	t.ops[name] = e
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			if t.ops[name] == e {
				delete(t.ops, name)
			}
			t.mu.Unlock()
			close(e.free)
		})
	}
}

// Elsewhere says whether op is under way on a name other than name.
func (t *Table) Elsewhere(name, op string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, cur := range t.ops {
		if n != name && cur.op == op {
			return true
		}
	}
	return false
}
