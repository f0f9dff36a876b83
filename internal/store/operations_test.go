package store

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/pier"
)

func TestOperations(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC()
	a := ops.Operation{ID: "op_a", Kind: "deploy", Target: "web", State: ops.Pending, Who: "admin", CreatedAt: now}
	b := ops.Operation{ID: "op_b", Kind: "resource.create", Target: "db", State: ops.Pending, CreatedAt: now}
	for _, op := range []ops.Operation{a, b} {
		if err := s.CreateOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateOperation(ctx, a); err == nil {
		t.Error("a second operation with the same id was stored")
	}
	a.State, a.StartedAt, a.EndedAt, a.Error, a.ErrorKind, a.Recovery, a.Result, a.Events = ops.Failed, &now, &now, "build failed", "failed", "rolled back on restart", json.RawMessage(`{"version":2}`), 3
	if err := s.UpdateOperation(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := s.Operation(ctx, "op_a")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != ops.Failed || got.Who != "admin" || got.StartedAt == nil || !got.StartedAt.Equal(now) || got.Error != "build failed" ||
		got.ErrorKind != "failed" || got.Recovery != "rolled back on restart" || string(got.Result) != `{"version":2}` || got.Events != 3 {
		t.Errorf("read back %+v", got)
	}
	if _, err := s.Operation(ctx, "op_nope"); pier.KindOf(err) != pier.NotFound {
		t.Errorf("unknown id: %v", err)
	}
	all, _ := s.Operations(ctx, "", nil, 0)
	if len(all) != 2 || all[0].ID != "op_b" {
		t.Errorf("all, newest first: %+v", all)
	}
	web, _ := s.Operations(ctx, "web", nil, 0)
	if len(web) != 1 || web[0].ID != "op_a" {
		t.Errorf("of web: %+v", web)
	}
	open, _ := s.Operations(ctx, "", []ops.State{ops.Pending, ops.Running}, 0)
	if len(open) != 1 || open[0].ID != "op_b" {
		t.Errorf("unfinished: %+v", open)
	}
	for i := 1; i <= 3; i++ {
		if err := s.AddOperationEvent(ctx, "op_a", ops.Event{Seq: i, Time: now, Type: ops.EventOutput, Text: "line"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddOperationEvent(ctx, "op_a", ops.Event{Seq: 3, Time: now, Type: ops.EventOutput}); err == nil {
		t.Error("an event number was stored twice")
	}
	evs, _ := s.OperationEvents(ctx, "op_a", 2)
	if len(evs) != 2 || evs[0].Seq != 2 || evs[1].Text != "line" {
		t.Errorf("events from 2: %+v", evs)
	}
}

func TestOperationsKeepTheLatest(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	running := ops.Operation{ID: "op_running", Kind: "deploy", Target: "web", State: ops.Running, CreatedAt: time.Now()}
	s.CreateOperation(ctx, running)
	for i := range KeepOperations + 5 {
		op := ops.Operation{Kind: "scale", Target: "web", State: ops.Succeeded, CreatedAt: time.Now()}
		op.ID = fmt.Sprintf("op_%04d", i)
		if err := s.CreateOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
		s.AddOperationEvent(ctx, op.ID, ops.Event{Seq: 1, Time: time.Now(), Type: ops.EventState, State: ops.Succeeded})
	}
	all, _ := s.Operations(ctx, "", nil, 0)
	if len(all) != KeepOperations+1 {
		t.Errorf("%d operations kept, want %d finished and the running one", len(all), KeepOperations)
	}
	if all[len(all)-1].ID != "op_running" || all[len(all)-2].ID != "op_0005" {
		t.Errorf("kept the wrong ones: oldest are %s, %s", all[len(all)-1].ID, all[len(all)-2].ID)
	}
	if _, err := s.Operation(ctx, "op_running"); err != nil {
		t.Errorf("an unfinished operation was pruned: %v", err)
	}
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM operation_events WHERE op_id NOT IN (SELECT id FROM operations)`).Scan(&n)
	if n != 0 {
		t.Errorf("%d events of pruned operations left", n)
	}
}
