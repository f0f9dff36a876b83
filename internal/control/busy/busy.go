// Package busy is the control plane's table of the operations under way:
// one at a time per name, so that a deploy, a scale, a delete or a backup
// never overlaps another on the same app or resource (apps and resources
// share one namespace, and so one table).
package busy

import (
	"sync"

	"github.com/pier-dev/pier/internal/pier"
)

// Table holds the operation under way per name. The zero value is empty
// and ready; it is safe for concurrent use.
type Table struct {
	mu  sync.Mutex
	ops map[string]string // name -> operation, as a phrase: "a deploy"
}

// Lock marks name busy with op until unlock is called; Conflict, naming
// the operation under way, if another holds it.
func (t *Table) Lock(name, op string) (unlock func(), err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ops == nil {
		t.ops = map[string]string{}
	}
	if cur, ok := t.ops[name]; ok {
		return nil, pier.Errorf(pier.Conflict, "%s of %s is in progress; wait for it to finish and try again", cur, name)
	}
	t.ops[name] = op
	return func() {
		t.mu.Lock()
		delete(t.ops, name)
		t.mu.Unlock()
	}, nil
}

// Elsewhere says whether op is under way on a name other than name.
func (t *Table) Elsewhere(name, op string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, cur := range t.ops {
		if n != name && cur == op {
			return true
		}
	}
	return false
}
