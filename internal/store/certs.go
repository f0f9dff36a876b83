package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/pier-dev/pier/internal/pier"
)

// CreateCert records that domain routes to app; Conflict if the domain is
// taken, NotFound if the app does not exist.
func (s *Store) CreateCert(ctx context.Context, c pier.Cert) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var taken string
	switch err := tx.QueryRowContext(ctx, `SELECT app FROM certs WHERE domain = ?`, c.Domain).Scan(&taken); {
	case err == nil:
		return pier.Errorf(pier.Conflict, "%s is already a domain of app %s (remove it first with `pier certs remove %s`)", c.Domain, taken, c.Domain)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("create cert %s: %w", c.Domain, err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM apps WHERE name = ?`, c.App).Scan(&n); err != nil {
		return fmt.Errorf("create cert %s: %w", c.Domain, err)
	}
	if n == 0 {
		return pier.Errorf(pier.NotFound, "app %q not found (see `pier apps list`)", c.App)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO certs(domain, app, created_at) VALUES (?, ?, ?)`, c.Domain, c.App, ts(c.CreatedAt)); err != nil {
		return fmt.Errorf("create cert %s: %w", c.Domain, err)
	}
	return tx.Commit()
}

// DeleteCert forgets a domain; NotFound if it is not recorded.
func (s *Store) DeleteCert(ctx context.Context, domain string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM certs WHERE domain = ?`, domain)
	if err != nil {
		return fmt.Errorf("delete cert %s: %w", domain, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return pier.Errorf(pier.NotFound, "no domain %s (see `pier certs list`)", domain)
	}
	return nil
}

// Certs lists the custom domains by name, with their app and creation time
// (the certificate state is not stored here).
func (s *Store) Certs(ctx context.Context) ([]pier.Cert, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT domain, app, created_at FROM certs ORDER BY domain`)
	if err != nil {
		return nil, fmt.Errorf("list certs: %w", err)
	}
	defer rows.Close()
	var out []pier.Cert
	for rows.Next() {
		var c pier.Cert
		var created string
		if err := rows.Scan(&c.Domain, &c.App, &created); err != nil {
			return nil, err
		}
		c.CreatedAt = parseTS(created)
		out = append(out, c)
	}
	return out, rows.Err()
}
