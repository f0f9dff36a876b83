// Package ops runs the control plane's mutating operations (deploys,
// rollbacks, scales, secrets changes, connections, resources' lifecycles)
// in the server, apart from the request that asked for them: each has an
// id, a state, numbered progress events kept in the store, who started it,
// and when it started and ended. A client that disconnects leaves the
// operation running, and any client can follow it again from an event
// number.
//
// At most one operation per target (an app or a resource: they share one
// namespace) runs at a time; the others wait their turn in the order they
// were submitted. After a crash, Recover settles the operations the last
// server left pending or running and records what became of each.
package ops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// State is where an operation is in its life.
type State string

// An operation is pending until its turn comes, then running, then one of
// the three final states.
const (
	Pending   State = "pending"
	Running   State = "running"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
)

// Done says whether s is final.
func (s State) Done() bool { return s == Succeeded || s == Failed || s == Cancelled }

// Operation is the record of one operation.
type Operation struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`   // deploy, rollback, scale, secrets.set, connect, resource.create...
	Target string `json:"target"` // the app or resource it changes
	State  State  `json:"state"`
	// Who started it: the token's name.
	Who       string     `json:"who"`
	CreatedAt time.Time  `json:"created_at"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	// Error says why it failed or was cancelled; ErrorKind is the error's
	// kind (invalid, conflict...), as the API names them.
	Error     string `json:"error,omitempty"`
	ErrorKind string `json:"error_kind,omitempty"`
	// Recovery says what a restart of the server did with an operation
	// the previous server left unfinished.
	Recovery string `json:"recovery,omitempty"`
	// Result is what it returned, as JSON (a release, a resource...).
	Result json.RawMessage `json:"result,omitempty"`
	// Events is how many progress events it has.
	Events int `json:"events"`
}

// Event is one numbered step of an operation's progress: a change of
// state, or output. The event that ends an operation carries its error or
// result.
type Event struct {
	Seq    int             `json:"seq"`
	Time   time.Time       `json:"time"`
	Type   string          `json:"type"` // EventState or EventOutput
	State  State           `json:"state,omitempty"`
	Text   string          `json:"text,omitempty"`
	Kind   string          `json:"kind,omitempty"` // the error's kind, on a failure
	Result json.RawMessage `json:"result,omitempty"`
}

// The types of events.
const (
	EventState  = "state"
	EventOutput = "output"
)

// Store keeps operations and their events.
type Store interface {
	CreateOperation(ctx context.Context, op Operation) error
	UpdateOperation(ctx context.Context, op Operation) error
	Operation(ctx context.Context, id string) (Operation, error)
	// Operations lists the latest operations, newest first; target ""
	// means every target, states nil every state.
	Operations(ctx context.Context, target string, states []State, limit int) ([]Operation, error)
	AddOperationEvent(ctx context.Context, id string, ev Event) error
	// OperationEvents lists an operation's events numbered from on.
	OperationEvents(ctx context.Context, id string, from int) ([]Event, error)
}

// Func does the work of an operation, writing progress to out; what it
// returns is the operation's result. ctx is cancelled by Cancel.
type Func func(ctx context.Context, out io.Writer) (any, error)

// Request describes an operation to run.
type Request struct {
	Kind   string
	Target string
	Who    string
	// Cancellable says the work may be stopped once it has started
	// (a pending operation can always be cancelled).
	Cancellable bool
	// Drop, if set, releases the work's input when it will never run:
	// cancelled while pending.
	Drop func()
}

// Manager runs operations. The zero value is not usable: set Store.
type Manager struct {
	Store Store
	Log   *slog.Logger

	mu       sync.Mutex
	queues   map[string][]*op // target -> operations in order; the head runs
	live     map[string]*op   // id -> operation not yet finished
	draining bool
	idle     chan struct{} // closed when live empties while draining
}

// op is an operation the manager holds until it finishes.
type op struct {
	m           *Manager
	fn          Func
	drop        func()
	cancellable bool
	ctx         context.Context
	cancel      context.CancelCauseFunc

	mu      sync.Mutex
	rec     Operation
	changed chan struct{} // closed, and replaced, at each new event
}

func (m *Manager) log() *slog.Logger {
	if m.Log == nil {
		return slog.Default()
	}
	return m.Log
}

// NewID returns a new operation id.
func NewID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "op_" + hex.EncodeToString(b)
}

// Submit records an operation and queues it behind the target's others;
// it runs detached from ctx, which only bounds the recording.
func (m *Manager) Submit(ctx context.Context, req Request, fn Func) (Operation, error) {
	if req.Kind == "" || req.Target == "" {
		return Operation{}, pier.Errorf(pier.Invalid, "an operation needs a kind and a target")
	}
	rec := Operation{ID: NewID(), Kind: req.Kind, Target: req.Target, State: Pending, Who: req.Who, CreatedAt: time.Now().UTC()}
	octx, cancel := context.WithCancelCause(context.Background())
	o := &op{m: m, fn: fn, drop: req.Drop, cancellable: req.Cancellable, ctx: octx, cancel: cancel, rec: rec, changed: make(chan struct{})}
	m.mu.Lock()
	if m.draining {
		m.mu.Unlock()
		cancel(nil)
		return Operation{}, pier.Errorf(pier.Unavailable, "pier server is stopping; try again in a moment")
	}
	if err := m.Store.CreateOperation(ctx, rec); err != nil {
		m.mu.Unlock()
		cancel(nil)
		return Operation{}, fmt.Errorf("record the operation: %w", err)
	}
	if m.queues == nil {
		m.queues, m.live = map[string][]*op{}, map[string]*op{}
	}
	q := m.queues[req.Target]
	m.queues[req.Target] = append(q, o)
	m.live[rec.ID] = o
	// The first event is recorded before the operation can start: the
	// one ahead cannot finish (and start this one) while m.mu is held.
	defer m.mu.Unlock()
	if len(q) > 0 {
		o.event(Event{Type: EventState, State: Pending, Text: fmt.Sprintf("waiting for %d operation(s) on %s to finish", len(q), req.Target)})
		return o.snapshot(), nil
	}
	o.event(Event{Type: EventState, State: Pending})
	rec = o.snapshot() // as submitted: it may be done by the time the caller looks
	go o.run()
	return rec, nil
}

func (o *op) snapshot() Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rec
}

// event numbers ev, keeps it and wakes the watchers; with a state, the
// record changes with it.
func (o *op) event(ev Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rec.Events++
	ev.Seq, ev.Time = o.rec.Events, time.Now().UTC()
	if ev.Type == EventState {
		o.rec.State = ev.State
		switch {
		case ev.State == Running:
			o.rec.StartedAt = &ev.Time
		case ev.State.Done():
			o.rec.EndedAt = &ev.Time
			o.rec.Result = ev.Result
			if ev.State != Succeeded {
				o.rec.Error, o.rec.ErrorKind = ev.Text, ev.Kind
			}
		}
	}
	// Recorded with the event's own deadline: a client gone does not stop
	// the record.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.m.Store.AddOperationEvent(ctx, o.rec.ID, ev); err != nil {
		o.m.log().Warn("record an operation's event", "op", o.rec.ID, "err", err)
	}
	if ev.Type == EventState || o.rec.Events%50 == 0 {
		if err := o.m.Store.UpdateOperation(ctx, o.rec); err != nil {
			o.m.log().Warn("record an operation", "op", o.rec.ID, "err", err)
		}
	}
	close(o.changed)
	o.changed = make(chan struct{})
}

// Write makes output events.
func (o *op) Write(p []byte) (int, error) {
	if len(p) > 0 {
		o.event(Event{Type: EventOutput, Text: string(p)})
	}
	return len(p), nil
}

func (o *op) run() {
	o.event(Event{Type: EventState, State: Running})
	v, err := o.call()
	end := Event{Type: EventState, State: Succeeded}
	switch {
	case err != nil && o.ctx.Err() != nil:
		// Cancelled: the error is how the work stopped, however it says so.
		end.State, end.Text = Cancelled, context.Cause(o.ctx).Error()
	case err != nil:
		end.State, end.Text, end.Kind = Failed, err.Error(), pier.KindOf(err).String()
	default:
		if v != nil {
			b, merr := json.Marshal(v)
			if merr != nil {
				end.State, end.Text = Failed, "encode the result: "+merr.Error()
			}
			end.Result = b
		}
	}
	o.event(end)
	o.cancel(nil)
	o.m.finished(o)
}

// call runs the work; a panic fails the operation instead of the server.
func (o *op) call() (v any, err error) {
	defer func() {
		if r := recover(); r != nil {
			o.m.log().Error("operation panicked", "op", o.rec.ID, "kind", o.rec.Kind, "panic", r)
			err = fmt.Errorf("internal error in %s (see the server's log)", o.rec.Kind)
		}
	}()
	return o.fn(o.ctx, o)
}

// finished takes o off its queue and starts the next operation there.
func (m *Manager) finished(o *op) {
	m.mu.Lock()
	defer m.mu.Unlock()
	target := o.rec.Target
	m.remove(o)
	if q := m.queues[target]; len(q) > 0 && q[0].snapshot().State == Pending {
		go q[0].run()
	}
	if m.draining && len(m.live) == 0 && m.idle != nil {
		close(m.idle)
		m.idle = nil
	}
}

// remove drops o from its queue and the live set; m.mu must be held.
func (m *Manager) remove(o *op) {
	delete(m.live, o.rec.ID)
	q := m.queues[o.rec.Target]
	for i, x := range q {
		if x == o {
			q = append(q[:i:i], q[i+1:]...)
			break
		}
	}
	if len(q) == 0 {
		delete(m.queues, o.rec.Target)
	} else {
		m.queues[o.rec.Target] = q
	}
}

// Get returns an operation's record.
func (m *Manager) Get(ctx context.Context, id string) (Operation, error) {
	m.mu.Lock()
	o := m.live[id]
	m.mu.Unlock()
	if o != nil {
		return o.snapshot(), nil
	}
	return m.Store.Operation(ctx, id)
}

// List returns the latest operations, newest first, the live ones as they
// are now; target "" means all.
func (m *Manager) List(ctx context.Context, target string, limit int) ([]Operation, error) {
	recs, err := m.Store.Operations(ctx, target, nil, limit)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, r := range recs {
		if o := m.live[r.ID]; o != nil {
			recs[i] = o.snapshot()
		}
	}
	return recs, nil
}

// Watch calls fn with the operation's events numbered from on, as they
// happen, until its last event has been given or ctx is done.
func (m *Manager) Watch(ctx context.Context, id string, from int, fn func(Event) error) error {
	if from < 1 {
		from = 1
	}
	for {
		// Take the live operation's signal before reading, so an event
		// that lands between the read and the wait still wakes us.
		m.mu.Lock()
		o := m.live[id]
		m.mu.Unlock()
		var changed chan struct{}
		if o != nil {
			o.mu.Lock()
			changed = o.changed
			o.mu.Unlock()
		}
		evs, err := m.Store.OperationEvents(ctx, id, from)
		if err != nil {
			return err
		}
		if len(evs) == 0 && from == 1 {
			if _, err := m.Get(ctx, id); err != nil {
				return err
			}
		}
		for _, ev := range evs {
			if err := fn(ev); err != nil {
				return err
			}
			from = ev.Seq + 1
			if ev.Type == EventState && ev.State.Done() {
				return nil
			}
		}
		if changed == nil {
			// Not live: every event is in the store; a record that never
			// ended (a crash not yet recovered) has nothing more to say.
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Cancel stops an operation: a pending one at once, a running one if its
// work can be stopped.
func (m *Manager) Cancel(ctx context.Context, id, who string) (Operation, error) {
	m.mu.Lock()
	o := m.live[id]
	if o == nil {
		m.mu.Unlock()
		rec, err := m.Store.Operation(ctx, id)
		if err != nil {
			return rec, err
		}
		return rec, pier.Errorf(pier.Invalid, "%s already %s", id, rec.State)
	}
	rec := o.snapshot()
	by := "cancelled"
	if who != "" {
		by = "cancelled by " + who
	}
	if rec.State == Pending && (len(m.queues[rec.Target]) == 0 || m.queues[rec.Target][0] != o) {
		m.remove(o)
		m.mu.Unlock()
		o.cancel(nil)
		if o.drop != nil {
			o.drop()
		}
		o.event(Event{Type: EventState, State: Cancelled, Text: by + " before it started"})
		return o.snapshot(), nil
	}
	m.mu.Unlock()
	if !o.cancellable {
		return rec, pier.Errorf(pier.Conflict, "%s (%s of %s) cannot be stopped once it has started; wait for it with `pier ops watch %s`", id, rec.Kind, rec.Target, id)
	}
	o.cancel(errors.New(by))
	return o.snapshot(), nil
}

// Drain refuses new operations and waits until those under way (running
// and queued) have finished or ctx is done; it says whether all finished.
func (m *Manager) Drain(ctx context.Context) bool {
	m.mu.Lock()
	m.draining = true
	if len(m.live) == 0 {
		m.mu.Unlock()
		return true
	}
	if m.idle == nil {
		m.idle = make(chan struct{})
	}
	idle := m.idle
	m.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// Outcome is what became of an operation the last server left running,
// as a Settle function decides once the server has restored its state.
type Outcome struct {
	State State // Succeeded (it was finished), Failed (undone) or Cancelled
	// Recovery says which, for the record: "finished on restart: v5 is
	// live", "rolled back on restart: v4 is live".
	Recovery string
}

// Settle decides the outcome of an operation cut short by a crash.
type Settle func(ctx context.Context, op Operation) Outcome

// Recover settles what the last server left unfinished, before any new
// operation is submitted: a pending operation never started and is
// cancelled (its input went with the server); a running one is settled.
func (m *Manager) Recover(ctx context.Context, settle Settle) error {
	recs, err := m.Store.Operations(ctx, "", []State{Pending, Running}, 0)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		out := Outcome{State: Cancelled, Recovery: "cancelled on restart: pier server stopped before it started; run it again"}
		if rec.State == Running {
			out = settle(ctx, rec)
		}
		o := &op{m: m, rec: rec, changed: make(chan struct{})}
		o.rec.Recovery = out.Recovery
		o.event(Event{Type: EventOutput, Text: "==> " + out.Recovery + "\n"})
		ev := Event{Type: EventState, State: out.State, Text: out.Recovery}
		if out.State == Succeeded {
			ev.Text = ""
		}
		o.event(ev)
		m.log().Info("operation settled after a restart", "op", rec.ID, "kind", rec.Kind, "target", rec.Target, "state", out.State, "recovery", out.Recovery)
	}
	return nil
}
