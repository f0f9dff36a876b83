package store

import (
	"context"
	"fmt"
)

// ServiceNumbers returns every app's service address number.
func (s *Store) ServiceNumbers(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT app, n FROM services`)
	if err != nil {
		return nil, fmt.Errorf("list service addresses: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var app string
		var n int
		if err := rows.Scan(&app, &n); err != nil {
			return nil, err
		}
		out[app] = n
	}
	return out, rows.Err()
}

// EnsureServiceNumber returns app's service address number, giving it the
// smallest free one (from 1) if it has none.
func (s *Store) EnsureServiceNumber(ctx context.Context, app string) (int, error) {
	// One connection serialises writers, so the read and the insert
	// cannot interleave with another allocation.
	_, err := s.db.ExecContext(ctx, `INSERT INTO services(app, n)
		SELECT ?, COALESCE((SELECT MIN(n) + 1 FROM services WHERE n + 1 NOT IN (SELECT n FROM services)), 1)
		WHERE NOT EXISTS (SELECT 1 FROM services WHERE app = ?)`, app, app)
	if err != nil {
		return 0, fmt.Errorf("service address of %s: %w", app, err)
	}
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT n FROM services WHERE app = ?`, app).Scan(&n); err != nil {
		return 0, fmt.Errorf("service address of %s: %w", app, err)
	}
	return n, nil
}
