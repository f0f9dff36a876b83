package infra

import (
	"context"
	"io"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/control/controltest"
	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/store"
)

// TestStartResourcesRecovery: at start, what a crash left half done is
// finished, and nothing else is touched.
func TestStartResourcesRecovery(t *testing.T) {
	const gone = store.ConnStatus("(none)")
	tests := []struct {
		name  string
		setup func(t *testing.T, e *env)
		// what the driver and the mesh must, and must not, have been asked
		// to do by StartResources
		did, didNot []string
		// the resource db and the connection web -> target afterwards
		// (absent: ""/gone)
		db     resources.Status
		target string
		conn   store.ConnStatus
		// events expected afterwards, as subject -> "type: message"
		events map[string]string
	}{
		{
			name:   "resource left creating is removed",
			setup:  func(t *testing.T, e *env) { e.create(t, "db"); e.leaveResource("db", resources.StatusCreating) },
			did:    []string{"destroy db"},
			didNot: []string{"start db"},
			db:     "",
			events: map[string]string{"resource/db": "resource.delete: kv db removed: its creation was interrupted"},
		},
		{
			name:   "resource left deleting is removed",
			setup:  func(t *testing.T, e *env) { e.create(t, "db"); e.leaveResource("db", resources.StatusDeleting) },
			did:    []string{"destroy db"},
			didNot: []string{"start db"},
			db:     "",
			events: map[string]string{"resource/db": "resource.delete: kv db removed: its deletion was interrupted"},
		},
		{
			name:   "ready resource is started and kept",
			setup:  func(t *testing.T, e *env) { e.create(t, "db") },
			did:    []string{"start db"},
			didNot: []string{"destroy db"},
			db:     resources.StatusReady,
		},
		{
			name: "connection left revoking is revoked and forgotten",
			setup: func(t *testing.T, e *env) {
				e.create(t, "db")
				e.connect(t, "web", "db")
				e.leaveConnection("web", "db", store.ConnRevoking)
			},
			did:    []string{"start db", "revoke db web"},
			db:     resources.StatusReady,
			target: "db", conn: gone,
			events: map[string]string{"resource/db": "disconnect: the credentials of web were revoked"},
		},
		{
			name: "connection left revoking stays marked if the revoke fails",
			setup: func(t *testing.T, e *env) {
				e.create(t, "db")
				e.connect(t, "web", "db")
				e.leaveConnection("web", "db", store.ConnRevoking)
				e.driver.setFail("revoke", errBoom)
			},
			did:    []string{"revoke db web"},
			db:     resources.StatusReady,
			target: "db", conn: store.ConnRevoking,
		},
		{
			name: "call connection left revoking is denied and forgotten",
			setup: func(t *testing.T, e *env) {
				e.connect(t, "web", "api")
				e.leaveConnection("web", "api", store.ConnRevoking)
			},
			did:    []string{"deny web->api"},
			target: "api", conn: gone,
			// as a resource's: finishRevokes does not tell the kinds apart
			events: map[string]string{"resource/api": "disconnect: the credentials of web were revoked"},
		},
		{
			name: "revoking connection of a busy app is its disconnect's",
			setup: func(t *testing.T, e *env) {
				e.create(t, "db")
				e.connect(t, "web", "db")
				e.leaveConnection("web", "db", store.ConnRevoking)
				unlock, err := e.busy.TryLock("web", "a disconnect")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(unlock)
			},
			didNot: []string{"revoke db web"},
			db:     resources.StatusReady,
			target: "db", conn: store.ConnRevoking,
		},
		{
			name: "active connection is kept",
			setup: func(t *testing.T, e *env) {
				e.create(t, "db")
				e.connect(t, "web", "db")
			},
			didNot: []string{"revoke db web"},
			db:     resources.StatusReady,
			target: "db", conn: store.ConnActive,
		},
		{
			name: "resource of an unknown type is left alone",
			setup: func(t *testing.T, e *env) {
				e.create(t, "db")
				e.store.mu.Lock()
				r := e.store.resources["db"]
				r.Type, r.Status = "gone", resources.StatusCreating
				e.store.resources["db"] = r
				e.store.mu.Unlock()
			},
			didNot: []string{"destroy db", "start db"},
			db:     resources.StatusCreating,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "web", "api")
			tc.setup(t, e)
			before := len(e.log.All())
			eventsBefore := len(e.store.events)
			if err := e.svc.StartResources(context.Background()); err != nil {
				t.Fatal(err)
			}
			did := e.log.All()[before:]
			controltest.Want(t, did, tc.did, tc.didNot)
			if st, _ := e.store.resourceStatus("db"); st != tc.db {
				t.Errorf("resource db: %q, want %q", st, tc.db)
			}
			if tc.db == "" {
				if _, err := os.Stat(e.svc.resourceDir("db")); !os.IsNotExist(err) {
					t.Errorf("directory of removed db: %v, want it gone", err)
				}
			}
			if tc.target != "" {
				st, ok := e.store.connStatus("web", tc.target)
				if !ok {
					st = gone
				}
				if st != tc.conn {
					t.Errorf("connection web -> %s: %q, want %q", tc.target, st, tc.conn)
				}
			}
			added := e.store.events[eventsBefore:]
			for subject, want := range tc.events {
				if !slices.Contains(e.store.eventsOf(subject), want) {
					t.Errorf("events of %s: %q, want %q", subject, e.store.eventsOf(subject), want)
				}
			}
			if len(added) != len(tc.events) {
				t.Errorf("recorded %d events %v, want %d", len(added), added, len(tc.events))
			}
		})
	}
}

// TestRunResourcesRetriesRevokes: a revoke that failed (the resource was
// down) is retried by the maintenance loop until it succeeds.
func TestRunResourcesRetriesRevokes(t *testing.T) {
	e := newEnv(t, "web")
	e.create(t, "db")
	e.connect(t, "web", "db")
	e.driver.setFail("revoke", errBoom)
	err := e.svc.Disconnect(context.Background(), "web", "db", io.Discard)
	if err == nil {
		t.Fatal("disconnect with a failing revoke: no error")
	}
	if st, _ := e.store.connStatus("web", "db"); st != store.ConnRevoking {
		t.Fatalf("after a failed revoke: %q, want revoking", st)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.svc.RunResources(ctx, time.Millisecond) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "a retried revoke", func() bool { return e.log.Count("revoke db web") >= 2 })
	if _, ok := e.store.connStatus("web", "db"); !ok {
		t.Fatal("the connection went while its revoke failed")
	}
	e.driver.setFail("revoke", nil)
	waitFor(t, "the connection to go", func() bool { _, ok := e.store.connStatus("web", "db"); return !ok })
	waitFor(t, "the disconnect event", func() bool {
		return slices.Contains(e.store.eventsOf("resource/db"), "disconnect: the credentials of web were revoked")
	})
}

// TestRunResourcesRestartsDown: a ready resource whose server is down is
// started every round; going down and coming back are one event each.
func TestRunResourcesRestartsDown(t *testing.T) {
	e := newEnv(t)
	e.create(t, "db")
	e.create(t, "new")
	e.leaveResource("new", resources.StatusCreating) // not ours to start
	e.driver.setFail("start", errBoom)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.svc.RunResources(ctx, time.Millisecond) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "three start attempts", func() bool { return e.log.Count("start db") >= 3 })
	e.driver.setFail("start", nil)
	waitFor(t, "the up event", func() bool { return contains(e.store.eventsOf("resource/db"), "resource.up") })
	cancel()
	<-done

	var down, up int
	for _, ev := range e.store.eventsOf("resource/db") {
		switch {
		case contains([]string{ev}, "resource.down: db is down: boom"):
			down++
		case contains([]string{ev}, "resource.up"):
			up++
		}
	}
	if down != 1 || up != 1 {
		t.Errorf("events %q: want one down and one up", e.store.eventsOf("resource/db"))
	}
	if n := e.log.Count("start new"); n != 0 {
		t.Errorf("started a resource being created %d times", n)
	}
}
