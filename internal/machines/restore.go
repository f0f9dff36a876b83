package machines

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"syscall"

	"github.com/pier-dev/pier/internal/runtime"
)

// Cleaner removes what a previous run of the server left running.
type Cleaner interface {
	Cleanup(ctx context.Context, machineIDs []string) (int, error)
}

// Recoverer is implemented by drivers whose machines outlive the server
// (internal/runtime/runc): Recover adopts a machine a previous server left
// running, and Detach lets go of every machine without stopping it.
type Recoverer interface {
	Recover(ctx context.Context, id string, stdout, stderr io.Writer) (runtime.Process, error)
	Detach()
}

// Restore loads the stored machines after a start. Machines that were
// running are adopted as they run when the driver can (no restart, and
// their output while no server was reading goes to the logs); what is
// left of the others is removed, and those that were running are started
// again (clean restarts, never duplicates).
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
		m.App, m.Lease, m.Role = d.App, d.Lease, d.Role
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
	// Adopted first: Cleanup leaves the machines the driver knows alone.
	var fresh []*entry
	for _, e := range restart {
		if e.m.State == StateDestroying || !mg.adopt(ctx, e) {
			fresh = append(fresh, e)
		}
	}
	restart = fresh
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
			if mg.driver == nil || (e.m.Role == nil && !mg.isolating()) {
				continue
			}
			var img Image
			if e.m.Role == nil {
				if img, err = mg.images.Resolve(ctx, image); err != nil {
					mg.log.Error("restart machine: image", "machine", id, "err", err)
					continue
				}
			}
			mg.start(e, img)
		}
	}
	return nil
}

// adopt takes over the machine's running process from the previous server,
// if the driver can; e's state says it was running.
func (mg *Manager) adopt(ctx context.Context, e *entry) bool {
	r, ok := mg.driver.(Recoverer)
	if !ok || (e.m.Role == nil && !mg.isolating()) {
		return false
	}
	out, errw := mg.logs.Writer(e.m.App, e.m.ID, "stdout"), mg.logs.Writer(e.m.App, e.m.ID, "stderr")
	proc, err := r.Recover(ctx, e.m.ID, out, errw)
	if err != nil {
		mg.log.Info("machine not adopted; it starts again", "app", e.m.App, "machine", e.m.ID, "reason", err)
		return false
	}
	e.mu.Lock()
	wasStopping := e.m.State == StateStopping
	e.stopReq = wasStopping
	running := make(chan struct{})
	e.running = running
	e.mu.Unlock()
	mg.log.Info("machine adopted", "app", e.m.App, "machine", e.m.ID, "pid", proc.PID())
	go mg.run(e, Image{}, running, &adopted{proc: proc, out: out, errw: errw})
	if wasStopping { // a stop the previous server did not see through
		proc.Signal(syscall.SIGTERM)
	}
	return true
}

// Detach lets go of every machine without stopping it, when the driver
// can (see Recoverer): the server is exiting and the next one adopts them.
// It reports false when the driver cannot, and then does nothing: call
// Shutdown.
func (mg *Manager) Detach() bool {
	r, ok := mg.driver.(Recoverer)
	if !ok {
		return false
	}
	mg.closing.Store(true)
	r.Detach()
	mg.mu.Lock()
	var es []*entry
	for _, e := range mg.ms {
		es = append(es, e)
	}
	mg.mu.Unlock()
	for _, e := range es { // cut restart backoffs short
		e.mu.Lock()
		e.notify()
		e.mu.Unlock()
	}
	for _, e := range es {
		e.mu.Lock()
		running := e.running
		e.mu.Unlock()
		if running != nil {
			<-running
		}
	}
	return true
}
