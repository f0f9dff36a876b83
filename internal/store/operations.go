package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/pier"
)

// KeepOperations is how many finished operations the store keeps; older
// ones go, with their events, as new ones come.
const KeepOperations = 1000

func optTS(t *time.Time) string {
	if t == nil {
		return ""
	}
	return ts(*t)
}

func parseOptTS(s string) *time.Time {
	if s == "" {
		return nil
	}
	t := parseTS(s)
	return &t
}

// CreateOperation records a new operation, and forgets the oldest
// finished ones beyond KeepOperations.
func (s *Store) CreateOperation(ctx context.Context, op ops.Operation) error {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO operations(id, kind, target, state, who, created_at) VALUES (?,?,?,?,?,?)`,
		op.ID, op.Kind, op.Target, string(op.State), op.Who, ts(op.CreatedAt)); err != nil {
		return fmt.Errorf("store operation %s: %w", op.ID, err)
	}
	_, err := s.db.ExecContext(ctx, `DELETE FROM operations WHERE id IN (
		SELECT id FROM operations WHERE state IN ('succeeded','failed','cancelled') ORDER BY rowid DESC LIMIT -1 OFFSET ?)`, KeepOperations)
	return err
}

// UpdateOperation stores an operation's record as it is now.
func (s *Store) UpdateOperation(ctx context.Context, op ops.Operation) error {
	_, err := s.db.ExecContext(ctx, `UPDATE operations SET state = ?, started_at = ?, ended_at = ?, error = ?, error_kind = ?,
		recovery = ?, result = ?, events = ? WHERE id = ?`,
		string(op.State), optTS(op.StartedAt), optTS(op.EndedAt), op.Error, op.ErrorKind, op.Recovery, string(op.Result), op.Events, op.ID)
	return err
}

const opColumns = `id, kind, target, state, who, created_at, started_at, ended_at, error, error_kind, recovery, result, events`

func scanOperation(sc interface{ Scan(...any) error }) (ops.Operation, error) {
	var op ops.Operation
	var state, created, started, ended, result string
	if err := sc.Scan(&op.ID, &op.Kind, &op.Target, &state, &op.Who, &created, &started, &ended, &op.Error, &op.ErrorKind, &op.Recovery, &result, &op.Events); err != nil {
		return op, err
	}
	op.State, op.CreatedAt, op.StartedAt, op.EndedAt = ops.State(state), parseTS(created), parseOptTS(started), parseOptTS(ended)
	if result != "" {
		op.Result = json.RawMessage(result)
	}
	return op, nil
}

// Operation returns an operation's record.
func (s *Store) Operation(ctx context.Context, id string) (ops.Operation, error) {
	op, err := scanOperation(s.db.QueryRowContext(ctx, `SELECT `+opColumns+` FROM operations WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return op, pier.Errorf(pier.NotFound, "no operation %s (see `pier ops`)", id)
	}
	return op, err
}

// Operations lists the latest limit operations (0: all), newest first, of
// target ("": every one) in states (nil: every state).
func (s *Store) Operations(ctx context.Context, target string, states []ops.State, limit int) ([]ops.Operation, error) {
	q := `SELECT ` + opColumns + ` FROM operations WHERE 1=1`
	var args []any
	if target != "" {
		q += ` AND target = ?`
		args = append(args, target)
	}
	if len(states) > 0 {
		q += ` AND state IN (?` + strings.Repeat(",?", len(states)-1) + `)`
		for _, st := range states {
			args = append(args, string(st))
		}
	}
	q += ` ORDER BY rowid DESC` // insertion order: the times, as text, do not sort
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ops.Operation
	for rows.Next() {
		op, err := scanOperation(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, op)
	}
	return out, rows.Err()
}

// AddOperationEvent stores an event of an operation.
func (s *Store) AddOperationEvent(ctx context.Context, id string, ev ops.Event) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO operation_events(op_id, seq, at, type, state, text, kind, result) VALUES (?,?,?,?,?,?,?,?)`,
		id, ev.Seq, ts(ev.Time), ev.Type, string(ev.State), ev.Text, ev.Kind, string(ev.Result))
	return err
}

// OperationEvents lists an operation's events numbered from on, in order.
func (s *Store) OperationEvents(ctx context.Context, id string, from int) ([]ops.Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, type, state, text, kind, result FROM operation_events WHERE op_id = ? AND seq >= ? ORDER BY seq`, id, from)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ops.Event
	for rows.Next() {
		var ev ops.Event
		var at, state, result string
		if err := rows.Scan(&ev.Seq, &at, &ev.Type, &state, &ev.Text, &ev.Kind, &result); err != nil {
			return nil, err
		}
		ev.Time, ev.State = parseTS(at), ops.State(state)
		if result != "" {
			ev.Result = json.RawMessage(result)
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}
