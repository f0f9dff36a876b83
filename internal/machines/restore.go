package machines

import (
	"context"
	"encoding/json"
	"fmt"
)

// Cleaner removes what a previous run of the server left running.
type Cleaner interface {
	Cleanup(ctx context.Context, machineIDs []string) (int, error)
}

// Restore loads the stored machines after a start: leftovers of the previous
// run are removed first, then machines that were running are started again
// (clean restarts, never duplicates).
func (mg *Manager) Restore(ctx context.Context, c Cleaner) error {
	docs, err := mg.store.MachineDocs(ctx)
	if err != nil {
		return fmt.Errorf("load machines: %w", err)
	}
	var ids []string
	var restart []*entry
	for _, raw := range docs {
		var d document
		if err := json.Unmarshal(raw, &d); err != nil {
			return fmt.Errorf("stored machine is damaged: %w", err)
		}
		m := d.Machine
		m.App, m.Lease = d.App, d.Lease
		e := &entry{m: m, changed: make(chan struct{})}
		mg.mu.Lock()
		mg.ms[m.ID] = e
		mg.mu.Unlock()
		ids = append(ids, m.ID)
		switch m.State {
		case StateStarted, StateStarting, StateStopping:
			restart = append(restart, e)
		case StateDestroying:
			restart = append(restart, e) // finish the destroy below
		}
	}
	if c != nil && len(ids) > 0 {
		if _, err := c.Cleanup(ctx, ids); err != nil {
			return fmt.Errorf("clean up machines of the previous run: %w", err)
		}
	}
	for _, e := range restart {
		e.mu.Lock()
		st, app, id := e.m.State, e.m.App, e.m.ID
		image := e.m.Config.Image
		if st == StateStopping {
			e.setState(StateStopped)
		}
		e.mu.Unlock()
		switch st {
		case StateDestroying:
			e.mu.Lock()
			e.setState(StateStopped)
			e.mu.Unlock()
			if err := mg.Destroy(ctx, app, id, true, ""); err != nil {
				mg.log.Error("finish destroy", "machine", id, "err", err)
			}
		case StateStopping:
			mg.persist(ctx, e)
		default:
			if mg.driver == nil {
				continue
			}
			img, err := mg.images.Resolve(ctx, image)
			if err != nil {
				mg.log.Error("restart machine: image", "machine", id, "err", err)
				continue
			}
			mg.start(e, img)
		}
	}
	return nil
}
