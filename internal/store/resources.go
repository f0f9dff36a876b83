package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/resources"
)

// ResourceRow is a resource as stored, with its sealed admin credentials.
type ResourceRow struct {
	resources.Resource
	AdminKeyID  string
	AdminSealed []byte
}

// ConnectionRow is a connection as stored, with its sealed credentials.
type ConnectionRow struct {
	resources.Connection
	Status ConnStatus
	KeyID  string
	Sealed []byte
}

// ConnStatus is where a connection is in its life. The values are stored
// as they are.
type ConnStatus string

// The connection statuses. A connection is revoking from the moment its
// removal starts until its credentials are revoked, which a crash can
// leave undone: the next start revokes them.
const (
	ConnActive   ConnStatus = "active"
	ConnRevoking ConnStatus = "revoking"
)

// CreateResource inserts a resource; Conflict if the name is taken by a
// resource or an app (they share one namespace, since both can be the
// target of a connection).
func (s *Store) CreateResource(ctx context.Context, r ResourceRow) error {
	params, err := json.Marshal(r.Params)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM apps WHERE name = ?) + (SELECT COUNT(*) FROM resources WHERE name = ?)`, r.Name, r.Name).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return pier.Errorf(pier.Conflict, "the name %q is taken by an app or a resource; pick another", r.Name)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO resources(name, type, params, managed, port, status, admin_key_id, admin_sealed, created_at) VALUES (?,?,?,?,?,?,?,?,?)`,
		r.Name, r.Type, string(params), r.Managed, r.Port, r.Status, r.AdminKeyID, r.AdminSealed, ts(r.CreatedAt)); err != nil {
		return fmt.Errorf("create resource %s: %w", r.Name, err)
	}
	return tx.Commit()
}

// ResourceReady records a provisioned resource's admin credentials.
func (s *Store) ResourceReady(ctx context.Context, name, keyID string, sealed []byte) error {
	_, err := s.db.ExecContext(ctx, `UPDATE resources SET status = ?, admin_key_id = ?, admin_sealed = ? WHERE name = ?`, resources.StatusReady, keyID, sealed, name)
	return err
}

// SetResourceStatus changes a resource's status.
func (s *Store) SetResourceStatus(ctx context.Context, name string, status resources.Status) error {
	_, err := s.db.ExecContext(ctx, `UPDATE resources SET status = ? WHERE name = ?`, status, name)
	return err
}

// DeleteResource forgets a resource and its backups' records.
func (s *Store) DeleteResource(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM resources WHERE name = ?`, name); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM backups WHERE resource = ?`, name); err != nil {
		return err
	}
	return tx.Commit()
}

// Resource returns one resource, or NotFound.
func (s *Store) Resource(ctx context.Context, name string) (ResourceRow, error) {
	rs, err := s.resources(ctx, `WHERE name = ?`, name)
	if err != nil {
		return ResourceRow{}, err
	}
	if len(rs) == 0 {
		return ResourceRow{}, pier.Errorf(pier.NotFound, "resource %q not found (see `pier resources list`)", name)
	}
	return rs[0], nil
}

// Resources lists all resources by name.
func (s *Store) Resources(ctx context.Context) ([]ResourceRow, error) {
	return s.resources(ctx, `ORDER BY name`)
}

func (s *Store) resources(ctx context.Context, where string, args ...any) ([]ResourceRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, type, params, managed, port, status, admin_key_id, admin_sealed, created_at FROM resources `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("read resources: %w", err)
	}
	defer rows.Close()
	var out []ResourceRow
	for rows.Next() {
		var r ResourceRow
		var params, created string
		if err := rows.Scan(&r.Name, &r.Type, &params, &r.Managed, &r.Port, &r.Status, &r.AdminKeyID, &r.AdminSealed, &created); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(params), &r.Params); err != nil {
			return nil, fmt.Errorf("resource %s params: %w", r.Name, err)
		}
		r.CreatedAt = parseTS(created)
		out = append(out, r)
	}
	return out, rows.Err()
}

// NameTaken says whether an app or a resource has the name.
func (s *Store) NameTaken(ctx context.Context, name string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM apps WHERE name = ?) + (SELECT COUNT(*) FROM resources WHERE name = ?)`, name, name).Scan(&n)
	return n > 0, err
}

// PutConnection stores a connection (replacing one between the same ends).
func (s *Store) PutConnection(ctx context.Context, c ConnectionRow) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO connections(app, target, kind, access, as_name, status, key_id, sealed, created_at) VALUES (?,?,?,?,?,?,?,?,?)
		ON CONFLICT(app, target) DO UPDATE SET kind = excluded.kind, access = excluded.access, as_name = excluded.as_name, status = excluded.status,
		key_id = excluded.key_id, sealed = excluded.sealed, created_at = excluded.created_at`,
		c.App, c.Target, c.Kind, string(c.Access), c.As, c.Status, c.KeyID, c.Sealed, ts(c.CreatedAt))
	if err != nil {
		return fmt.Errorf("store connection %s -> %s: %w", c.App, c.Target, err)
	}
	return nil
}

// SetConnectionStatus changes a connection's status.
func (s *Store) SetConnectionStatus(ctx context.Context, app, target string, status ConnStatus) error {
	_, err := s.db.ExecContext(ctx, `UPDATE connections SET status = ? WHERE app = ? AND target = ?`, status, app, target)
	return err
}

// DeleteConnection forgets a connection.
func (s *Store) DeleteConnection(ctx context.Context, app, target string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM connections WHERE app = ? AND target = ?`, app, target)
	return err
}

// DeleteRevoked forgets a connection whose credentials were revoked: only
// the very row that was revoked (same sealed credentials, still marked), so
// a reconnect made meanwhile is kept.
func (s *Store) DeleteRevoked(ctx context.Context, app, target, keyID string, sealed []byte) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM connections WHERE app = ? AND target = ? AND status = ? AND key_id = ? AND sealed IS ?`,
		app, target, ConnRevoking, keyID, sealed)
	return err
}

// Connection returns the connection app -> target, or NotFound.
func (s *Store) Connection(ctx context.Context, app, target string) (ConnectionRow, error) {
	cs, err := s.connections(ctx, `WHERE app = ? AND target = ?`, app, target)
	if err != nil {
		return ConnectionRow{}, err
	}
	if len(cs) == 0 {
		return ConnectionRow{}, pier.Errorf(pier.NotFound, "%s is not connected to %s (see `pier connections`)", app, target)
	}
	return cs[0], nil
}

// Connections lists connections; app or target "" matches all.
func (s *Store) Connections(ctx context.Context, app, target string) ([]ConnectionRow, error) {
	return s.connections(ctx, `WHERE (? = '' OR app = ?) AND (? = '' OR target = ?) ORDER BY app, target`, app, app, target, target)
}

func (s *Store) connections(ctx context.Context, where string, args ...any) ([]ConnectionRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT c.app, c.target, c.kind, COALESCE(r.type, 'app'), c.access, c.as_name, c.status, c.key_id, c.sealed, c.created_at
		FROM connections c LEFT JOIN resources r ON r.name = c.target `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("read connections: %w", err)
	}
	defer rows.Close()
	var out []ConnectionRow
	for rows.Next() {
		var c ConnectionRow
		var access, created string
		if err := rows.Scan(&c.App, &c.Target, &c.Kind, &c.Type, &access, &c.As, &c.Status, &c.KeyID, &c.Sealed, &created); err != nil {
			return nil, err
		}
		c.Access = resources.Access(access)
		c.CreatedAt = parseTS(created)
		out = append(out, c)
	}
	return out, rows.Err()
}

// AddBackup records a stored backup.
func (s *Store) AddBackup(ctx context.Context, b resources.Backup) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO backups(id, resource, size, trigger, created_at) VALUES (?,?,?,?,?)`, b.ID, b.Resource, b.Size, b.Trigger, ts(b.CreatedAt))
	return err
}

// DeleteBackup forgets a backup.
func (s *Store) DeleteBackup(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM backups WHERE id = ?`, id)
	return err
}

// Backups lists a resource's backups, newest first.
func (s *Store) Backups(ctx context.Context, resource string) ([]resources.Backup, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, resource, size, trigger, created_at FROM backups WHERE resource = ? ORDER BY created_at DESC, id DESC`, resource)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []resources.Backup
	for rows.Next() {
		var b resources.Backup
		var created string
		if err := rows.Scan(&b.ID, &b.Resource, &b.Size, &b.Trigger, &created); err != nil {
			return nil, err
		}
		b.CreatedAt = parseTS(created)
		out = append(out, b)
	}
	return out, rows.Err()
}

// Backup returns one backup of a resource, or NotFound.
func (s *Store) Backup(ctx context.Context, resource, id string) (resources.Backup, error) {
	bs, err := s.Backups(ctx, resource)
	if err != nil {
		return resources.Backup{}, err
	}
	for _, b := range bs {
		if b.ID == id {
			return b, nil
		}
	}
	return resources.Backup{}, pier.Errorf(pier.NotFound, "backup %q of %s not found (see `pier resources backups %s`)", id, resource, resource)
}
