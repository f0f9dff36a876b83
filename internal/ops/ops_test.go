package ops

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// memStore is an in-memory Store.
type memStore struct {
	mu     sync.Mutex
	order  []string
	recs   map[string]Operation
	events map[string][]Event
}

func newMem() *memStore {
	return &memStore{recs: map[string]Operation{}, events: map[string][]Event{}}
}

func (s *memStore) CreateOperation(_ context.Context, op Operation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.order = append(s.order, op.ID)
	s.recs[op.ID] = op
	return nil
}

func (s *memStore) UpdateOperation(_ context.Context, op Operation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs[op.ID] = op
	return nil
}

func (s *memStore) Operation(_ context.Context, id string) (Operation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	op, ok := s.recs[id]
	if !ok {
		return op, pier.Errorf(pier.NotFound, "no operation %s", id)
	}
	return op, nil
}

func (s *memStore) Operations(_ context.Context, target string, states []State, limit int) ([]Operation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Operation
	for i := len(s.order) - 1; i >= 0; i-- {
		op := s.recs[s.order[i]]
		if (target == "" || op.Target == target) && (states == nil || slices.Contains(states, op.State)) {
			out = append(out, op)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func (s *memStore) AddOperationEvent(_ context.Context, id string, ev Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events[id] = append(s.events[id], ev)
	return nil
}

func (s *memStore) OperationEvents(_ context.Context, id string, from int) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Event
	for _, ev := range s.events[id] {
		if ev.Seq >= from {
			out = append(out, ev)
		}
	}
	return out, nil
}

// wait follows an operation to its end and returns its events.
func wait(t *testing.T, m *Manager, id string, from int) []Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var evs []Event
	if err := m.Watch(ctx, id, from, func(ev Event) error { evs = append(evs, ev); return nil }); err != nil {
		t.Fatalf("watch %s: %v", id, err)
	}
	return evs
}

func last(evs []Event) Event { return evs[len(evs)-1] }

func TestRunRecordsEventsAndResult(t *testing.T) {
	m := &Manager{Store: newMem()}
	op, err := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web", Who: "admin"}, func(ctx context.Context, out io.Writer) (any, error) {
		fmt.Fprintln(out, "building")
		return map[string]int{"version": 3}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(op.ID, "op_") || op.State != Pending || op.Who != "admin" {
		t.Fatalf("submitted: %+v", op)
	}
	evs := wait(t, m, op.ID, 1)
	var types []string
	for i, ev := range evs {
		if ev.Seq != i+1 {
			t.Errorf("event %d numbered %d", i, ev.Seq)
		}
		types = append(types, ev.Type+":"+string(ev.State)+ev.Text)
	}
	want := []string{"state:pending", "state:running", "output:building\n", "state:succeeded"}
	if !slices.Equal(types, want) {
		t.Errorf("events %q, want %q", types, want)
	}
	if string(last(evs).Result) != `{"version":3}` {
		t.Errorf("result %s", last(evs).Result)
	}
	rec, err := m.Get(context.Background(), op.ID)
	if err != nil || rec.State != Succeeded || rec.StartedAt == nil || rec.EndedAt == nil || rec.Events != 4 || string(rec.Result) != `{"version":3}` {
		t.Errorf("record %+v, %v", rec, err)
	}
	// Resumed from an event number: only the rest.
	if rest := wait(t, m, op.ID, 3); len(rest) != 2 || rest[0].Seq != 3 {
		t.Errorf("from 3: %+v", rest)
	}
}

func TestFailureKeepsKind(t *testing.T) {
	m := &Manager{Store: newMem()}
	op, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web"}, func(context.Context, io.Writer) (any, error) {
		return nil, pier.Errorf(pier.Failed, "build failed")
	})
	end := last(wait(t, m, op.ID, 1))
	if end.State != Failed || end.Text != "build failed" || end.Kind != "failed" {
		t.Errorf("end %+v", end)
	}
	rec, _ := m.Get(context.Background(), op.ID)
	if rec.Error != "build failed" || rec.ErrorKind != "failed" {
		t.Errorf("record %+v", rec)
	}
}

func TestPanicFailsTheOperation(t *testing.T) {
	m := &Manager{Store: newMem()}
	op, _ := m.Submit(context.Background(), Request{Kind: "scale", Target: "web"}, func(context.Context, io.Writer) (any, error) {
		panic("boom")
	})
	if end := last(wait(t, m, op.ID, 1)); end.State != Failed || !strings.Contains(end.Text, "internal error") {
		t.Errorf("end %+v", end)
	}
	// The queue moved on.
	next, _ := m.Submit(context.Background(), Request{Kind: "scale", Target: "web"}, func(context.Context, io.Writer) (any, error) { return nil, nil })
	if end := last(wait(t, m, next.ID, 1)); end.State != Succeeded {
		t.Errorf("after a panic: %+v", end)
	}
}

// blocker is a Func that runs until released, recording when it ran.
type blocker struct {
	name    string
	started chan struct{}
	release chan struct{}
	log     *[]string
	mu      *sync.Mutex
}

func newBlocker(name string, log *[]string, mu *sync.Mutex) *blocker {
	return &blocker{name: name, started: make(chan struct{}), release: make(chan struct{}), log: log, mu: mu}
}

func (b *blocker) run(ctx context.Context, out io.Writer) (any, error) {
	b.mu.Lock()
	*b.log = append(*b.log, "start "+b.name)
	b.mu.Unlock()
	close(b.started)
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	b.mu.Lock()
	*b.log = append(*b.log, "end "+b.name)
	b.mu.Unlock()
	return nil, nil
}

func started(t *testing.T, b *blocker) {
	t.Helper()
	select {
	case <-b.started:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never started", b.name)
	}
}

func TestOneAtATimePerTargetInOrder(t *testing.T) {
	m := &Manager{Store: newMem()}
	var log []string
	var mu sync.Mutex
	a, b, c, other := newBlocker("a", &log, &mu), newBlocker("b", &log, &mu), newBlocker("c", &log, &mu), newBlocker("other", &log, &mu)
	opA, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web"}, a.run)
	started(t, a)
	opB, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web"}, b.run)
	opC, _ := m.Submit(context.Background(), Request{Kind: "scale", Target: "web"}, c.run)
	opO, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "api"}, other.run)
	started(t, other) // another target does not wait
	if rec, _ := m.Get(context.Background(), opB.ID); rec.State != Pending {
		t.Errorf("b while a runs: %s", rec.State)
	}
	evs, _ := m.Store.OperationEvents(context.Background(), opC.ID, 1)
	if len(evs) != 1 || !strings.Contains(evs[0].Text, "waiting for 2 operation(s) on web") {
		t.Errorf("c's first event: %+v", evs)
	}
	close(a.release)
	started(t, b)
	if rec, _ := m.Get(context.Background(), opC.ID); rec.State != Pending {
		t.Errorf("c while b runs: %s", rec.State)
	}
	close(b.release)
	close(c.release)
	close(other.release)
	for _, id := range []string{opA.ID, opB.ID, opC.ID, opO.ID} {
		wait(t, m, id, 1)
	}
	mu.Lock()
	defer mu.Unlock()
	var web []string
	for _, l := range log {
		if !strings.HasSuffix(l, "other") {
			web = append(web, l)
		}
	}
	if want := []string{"start a", "end a", "start b", "end b", "start c", "end c"}; !slices.Equal(web, want) {
		t.Errorf("order %q, want %q", web, want)
	}
	list, _ := m.List(context.Background(), "web", 0)
	if len(list) != 3 || list[0].ID != opC.ID || list[2].ID != opA.ID {
		t.Errorf("list of web, newest first: %+v", list)
	}
}

func TestCancel(t *testing.T) {
	m := &Manager{Store: newMem()}
	var log []string
	var mu sync.Mutex
	run, queued, stubborn := newBlocker("run", &log, &mu), newBlocker("queued", &log, &mu), newBlocker("stubborn", &log, &mu)
	opRun, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web", Cancellable: true}, run.run)
	started(t, run)
	dropped := false
	opQ, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web", Drop: func() { dropped = true }}, queued.run)

	// A pending one goes at once and never runs.
	rec, err := m.Cancel(context.Background(), opQ.ID, "admin")
	if err != nil || rec.State != Cancelled {
		t.Fatalf("cancel pending: %+v, %v", rec, err)
	}
	if !dropped {
		t.Error("the input of a cancelled pending operation was not dropped")
	}
	// A running, cancellable one stops.
	if _, err := m.Cancel(context.Background(), opRun.ID, "admin"); err != nil {
		t.Fatal(err)
	}
	if end := last(wait(t, m, opRun.ID, 1)); end.State != Cancelled || end.Text != "cancelled by admin" {
		t.Errorf("cancelled running: %+v", end)
	}
	mu.Lock()
	if slices.Contains(log, "start queued") {
		t.Error("a cancelled pending operation ran")
	}
	mu.Unlock()
	// One that cannot be stopped says so and goes on.
	opS, _ := m.Submit(context.Background(), Request{Kind: "resource.delete", Target: "db"}, stubborn.run)
	started(t, stubborn)
	if _, err := m.Cancel(context.Background(), opS.ID, "admin"); pier.KindOf(err) != pier.Conflict {
		t.Errorf("cancel a running delete: %v, want Conflict", err)
	}
	close(stubborn.release)
	if end := last(wait(t, m, opS.ID, 1)); end.State != Succeeded {
		t.Errorf("delete after a refused cancel: %+v", end)
	}
	// A finished one cannot be cancelled.
	if _, err := m.Cancel(context.Background(), opS.ID, "admin"); pier.KindOf(err) != pier.Invalid {
		t.Errorf("cancel a finished one: %v", err)
	}
	if _, err := m.Cancel(context.Background(), "op_nope", "admin"); pier.KindOf(err) != pier.NotFound {
		t.Errorf("cancel an unknown one: %v", err)
	}
}

func TestWatchFollowsLive(t *testing.T) {
	m := &Manager{Store: newMem()}
	step := make(chan struct{})
	op, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web"}, func(ctx context.Context, out io.Writer) (any, error) {
		for i := range 3 {
			<-step
			fmt.Fprintf(out, "step %d\n", i)
		}
		return nil, nil
	})
	got := make(chan []Event)
	go func() {
		var evs []Event
		m.Watch(context.Background(), op.ID, 1, func(ev Event) error { evs = append(evs, ev); return nil })
		got <- evs
	}()
	for range 3 {
		step <- struct{}{}
	}
	select {
	case evs := <-got:
		var text string
		for _, ev := range evs {
			text += ev.Text
		}
		if text != "step 0\nstep 1\nstep 2\n" || last(evs).State != Succeeded {
			t.Errorf("watched %+v", evs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end with the operation")
	}
	if err := m.Watch(context.Background(), "op_nope", 1, func(Event) error { return nil }); pier.KindOf(err) != pier.NotFound {
		t.Errorf("watch unknown: %v", err)
	}
}

func TestDrain(t *testing.T) {
	m := &Manager{Store: newMem()}
	var log []string
	var mu sync.Mutex
	b := newBlocker("b", &log, &mu)
	m.Submit(context.Background(), Request{Kind: "deploy", Target: "web"}, b.run)
	started(t, b)
	done := make(chan bool)
	go func() { done <- m.Drain(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	_, err := m.Submit(context.Background(), Request{Kind: "deploy", Target: "api"}, b.run)
	if pier.KindOf(err) != pier.Unavailable {
		t.Errorf("submit while draining: %v, want Unavailable", err)
	}
	close(b.release)
	select {
	case ok := <-done:
		if !ok {
			t.Error("drain says not all finished")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not end when the operation did")
	}
	// A drain that runs out of time says so.
	m2 := &Manager{Store: newMem()}
	b2 := newBlocker("b2", &log, &mu)
	m2.Submit(context.Background(), Request{Kind: "deploy", Target: "web"}, b2.run)
	started(t, b2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if m2.Drain(ctx) {
		t.Error("drain with an operation still running says all finished")
	}
	close(b2.release)
}

// TestRecover is the table of what a restart does with each state an
// operation can be left in.
func TestRecover(t *testing.T) {
	now := time.Now().UTC()
	cases := []struct {
		name    string
		state   State
		outcome Outcome
		want    State
		recover string
		settled bool
	}{
		{"pending never ran", Pending, Outcome{}, Cancelled, "cancelled on restart", false},
		{"running, finished", Running, Outcome{Succeeded, "finished on restart: v5 is live"}, Succeeded, "finished on restart: v5 is live", true},
		{"running, rolled back", Running, Outcome{Failed, "rolled back on restart: v4 is live"}, Failed, "rolled back on restart: v4 is live", true},
		{"succeeded stays", Succeeded, Outcome{}, Succeeded, "", false},
		{"failed stays", Failed, Outcome{}, Failed, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := newMem()
			rec := Operation{ID: NewID(), Kind: "deploy", Target: "web", State: c.state, CreatedAt: now, Events: 2}
			st.CreateOperation(context.Background(), rec)
			st.AddOperationEvent(context.Background(), rec.ID, Event{Seq: 1, Type: EventState, State: Pending})
			st.AddOperationEvent(context.Background(), rec.ID, Event{Seq: 2, Type: EventState, State: Running})
			m := &Manager{Store: st}
			var settled []string
			err := m.Recover(context.Background(), func(_ context.Context, op Operation) Outcome {
				settled = append(settled, op.ID)
				return c.outcome
			})
			if err != nil {
				t.Fatal(err)
			}
			if (len(settled) == 1) != c.settled {
				t.Errorf("settle called for %v, want %v", settled, c.settled)
			}
			got, _ := m.Get(context.Background(), rec.ID)
			if got.State != c.want || !strings.HasPrefix(got.Recovery, c.recover) {
				t.Errorf("after recover: %s %q, want %s %q", got.State, got.Recovery, c.want, c.recover)
			}
			evs := wait(t, m, rec.ID, 1)
			if c.recover != "" {
				if end := last(evs); end.State != c.want || end.Seq != 4 || got.EndedAt == nil {
					t.Errorf("events after recover: %+v", evs)
				}
			} else if len(evs) != 2 {
				t.Errorf("a finished operation got events: %+v", evs)
			}
		})
	}
}

func TestSubmitNeedsKindAndTarget(t *testing.T) {
	m := &Manager{Store: newMem()}
	if _, err := m.Submit(context.Background(), Request{Kind: "deploy"}, nil); err == nil {
		t.Error("no target accepted")
	}
	if _, err := m.Submit(context.Background(), Request{Target: "web"}, nil); err == nil {
		t.Error("no kind accepted")
	}
	if recs, _ := m.List(context.Background(), "", 0); len(recs) != 0 {
		t.Errorf("refused submissions were recorded: %+v", recs)
	}
}

// TestCancelledWhateverTheWorkSays: work that stops on cancel with an
// error of its own (not wrapping context.Canceled) is cancelled, not failed.
func TestCancelledWhateverTheWorkSays(t *testing.T) {
	m := &Manager{Store: newMem()}
	running := make(chan struct{})
	op, _ := m.Submit(context.Background(), Request{Kind: "deploy", Target: "web", Cancellable: true}, func(ctx context.Context, out io.Writer) (any, error) {
		close(running)
		<-ctx.Done()
		return nil, pier.Errorf(pier.Failed, "deploy stopped")
	})
	<-running
	if _, err := m.Cancel(context.Background(), op.ID, "admin"); err != nil {
		t.Fatal(err)
	}
	if end := last(wait(t, m, op.ID, 1)); end.State != Cancelled || end.Text != "cancelled by admin" {
		t.Errorf("end %+v", end)
	}
}
