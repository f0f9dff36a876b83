// Package store keeps pier's state (apps, releases, secrets, machines and the
// event history) in an embedded SQLite database with versioned migrations.
package store

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/pier-dev/pier/internal/pier"
	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

//go:embed migrations/sqlite/*.sql
var migrations embed.FS

// Store is the SQLite-backed state store. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the database at path and migrates it to
// the latest schema.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := privateFiles(path); err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	dsn := "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	// SQLite has one writer; a single connection serialises writes without
	// SQLITE_BUSY surprises and is plenty for a control plane.
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open state store %s: %w", path, err)
	}
	sub, err := fs.Sub(migrations, "migrations/sqlite")
	if err != nil {
		return nil, err
	}
	prov, err := goose.NewProvider(goose.DialectSQLite3, db, sub)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrations: %w", err)
	}
	if _, err := prov.Up(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate state store: %w", err)
	}
	return &Store{db: db}, nil
}

// privateFiles makes the database file pier's alone (0600) before SQLite
// opens it, whatever the umask: it holds apps' environments. SQLite gives
// the -wal and -shm files it creates the database's mode; those an earlier
// version left more open are closed too.
func privateFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		if err := os.Chmod(path+suffix, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

const timeFormat = time.RFC3339Nano

func ts(t time.Time) string { return t.UTC().Format(timeFormat) }

func parseTS(s string) time.Time {
	t, _ := time.Parse(timeFormat, s)
	return t
}

// CreateApp inserts a new app; Conflict if the name is taken.
func (s *Store) CreateApp(ctx context.Context, a pier.App) error {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM resources WHERE name = ?`, a.Name).Scan(&n); err != nil {
		return fmt.Errorf("create app %s: %w", a.Name, err)
	}
	if n > 0 {
		return pier.Errorf(pier.Conflict, "the name %q is taken by a resource; pick another app name", a.Name)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO apps(name, count, release, created_at) VALUES (?, ?, ?, ?)`,
		a.Name, a.Count, a.Release, ts(a.CreatedAt))
	if err != nil {
		if _, gerr := s.App(ctx, a.Name); gerr == nil {
			return pier.Errorf(pier.Conflict, "app %q already exists", a.Name)
		}
		return fmt.Errorf("create app %s: %w", a.Name, err)
	}
	return nil
}

// App returns the named app, or a NotFound error.
func (s *Store) App(ctx context.Context, name string) (pier.App, error) {
	var a pier.App
	var created string
	err := s.db.QueryRowContext(ctx, `SELECT name, count, release, created_at FROM apps WHERE name = ?`, name).
		Scan(&a.Name, &a.Count, &a.Release, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return a, pier.Errorf(pier.NotFound, "app %q not found (see `pier apps list`)", name)
	}
	if err != nil {
		return a, fmt.Errorf("read app %s: %w", name, err)
	}
	a.CreatedAt = parseTS(created)
	return a, nil
}

// Apps lists all apps by name.
func (s *Store) Apps(ctx context.Context) ([]pier.App, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, count, release, created_at FROM apps ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	defer rows.Close()
	var out []pier.App
	for rows.Next() {
		var a pier.App
		var created string
		if err := rows.Scan(&a.Name, &a.Count, &a.Release, &created); err != nil {
			return nil, err
		}
		a.CreatedAt = parseTS(created)
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetCount records the desired number of machines of an app.
func (s *Store) SetCount(ctx context.Context, app string, n int) error {
	res, err := s.db.ExecContext(ctx, `UPDATE apps SET count = ? WHERE name = ?`, n, app)
	return appAffected(app, res, err)
}

// DeleteApp removes an app with its releases, secrets and events.
func (s *Store) DeleteApp(ctx context.Context, app string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM apps WHERE name = ?`, app)
	if err := appAffected(app, res, err); err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `DELETE FROM events WHERE app = ?`, app)
	return err
}

// appAffected turns "no row changed" into NotFound.
func appAffected(app string, res sql.Result, err error) error {
	if err != nil {
		return fmt.Errorf("update app %s: %w", app, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return pier.Errorf(pier.NotFound, "app %q not found (see `pier apps list`)", app)
	}
	return nil
}

// CreateRelease stores r under the next version number of its app and
// returns it with Version set.
func (s *Store) CreateRelease(ctx context.Context, r pier.Release) (pier.Release, error) {
	cfg, err := json.Marshal(r.Config)
	if err != nil {
		return r, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return r, err
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app = ?`, r.App).Scan(&r.Version); err != nil {
		return r, fmt.Errorf("next release of %s: %w", r.App, err)
	}
	lowers, err := json.Marshal(r.Image.Lowers)
	if err != nil {
		return r, err
	}
	var run []byte
	if r.Image.Run != nil {
		if run, err = json.Marshal(r.Image.Run); err != nil {
			return r, err
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO releases(app, version, build_id, builder, start, config, status, description, created_at, image_digest, image_size, image_lowers, image_run) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		r.App, r.Version, r.BuildID, r.Builder, r.Start, string(cfg), r.Status, r.Description, ts(r.CreatedAt), r.Image.Digest, r.Image.Size, string(lowers), string(run)); err != nil {
		return r, fmt.Errorf("create release of %s: %w", r.App, err)
	}
	return r, tx.Commit()
}

// Release returns version v of app.
func (s *Store) Release(ctx context.Context, app string, v int) (pier.Release, error) {
	rs, err := s.releases(ctx, `WHERE app = ? AND version = ?`, app, v)
	if err != nil {
		return pier.Release{}, err
	}
	if len(rs) == 0 {
		return pier.Release{}, pier.Errorf(pier.NotFound, "release v%d of %s not found (see `pier releases -a %s`)", v, app, app)
	}
	return rs[0], nil
}

// Releases lists an app's releases, newest first.
func (s *Store) Releases(ctx context.Context, app string) ([]pier.Release, error) {
	return s.releases(ctx, `WHERE app = ? ORDER BY version DESC`, app)
}

func (s *Store) releases(ctx context.Context, where string, args ...any) ([]pier.Release, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT app, version, build_id, builder, start, config, status, description, created_at, image_digest, image_size, image_lowers, image_run FROM releases `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("read releases: %w", err)
	}
	defer rows.Close()
	var out []pier.Release
	for rows.Next() {
		var r pier.Release
		var cfg, created, lowers, run string
		if err := rows.Scan(&r.App, &r.Version, &r.BuildID, &r.Builder, &r.Start, &cfg, &r.Status, &r.Description, &created, &r.Image.Digest, &r.Image.Size, &lowers, &run); err != nil {
			return nil, err
		}
		if run != "" {
			r.Image.Run = &pier.ImageRun{}
			if err := json.Unmarshal([]byte(run), r.Image.Run); err != nil {
				return nil, fmt.Errorf("release %s v%d image: %w", r.App, r.Version, err)
			}
		}
		if err := json.Unmarshal([]byte(lowers), &r.Image.Lowers); err != nil {
			return nil, fmt.Errorf("release %s v%d image: %w", r.App, r.Version, err)
		}
		if err := json.Unmarshal([]byte(cfg), &r.Config); err != nil {
			return nil, fmt.Errorf("release %s v%d config: %w", r.App, r.Version, err)
		}
		r.CreatedAt = parseTS(created)
		out = append(out, r)
	}
	return out, rows.Err()
}

// SetReleaseStatus changes the status of one release.
func (s *Store) SetReleaseStatus(ctx context.Context, app string, v int, status string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE releases SET status = ? WHERE app = ? AND version = ?`, status, app, v)
	return err
}

// Activate makes version v the app's current release: v becomes active, the
// previously active one retired, in one transaction.
func (s *Store) Activate(ctx context.Context, app string, v int) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE releases SET status = ? WHERE app = ? AND status = ? AND version != ?`, pier.ReleaseRetired, app, pier.ReleaseActive, v); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE releases SET status = ? WHERE app = ? AND version = ?`, pier.ReleaseActive, app, v); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE apps SET release = ? WHERE name = ?`, v, app); err != nil {
		return err
	}
	return tx.Commit()
}

// SealedSecret is a secret as stored: encrypted, with the id of its key.
type SealedSecret struct {
	Name   string
	KeyID  string
	Sealed []byte
	Digest string
}

// PutSecrets sets several secrets of an app at once.
func (s *Store) PutSecrets(ctx context.Context, app string, secs []SealedSecret) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := ts(time.Now())
	for _, sec := range secs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO secrets(app, name, key_id, sealed, digest, updated_at) VALUES (?,?,?,?,?,?)
			ON CONFLICT(app, name) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed, digest = excluded.digest, updated_at = excluded.updated_at`,
			app, sec.Name, sec.KeyID, sec.Sealed, sec.Digest, now); err != nil {
			return fmt.Errorf("store secret %s of %s: %w", sec.Name, app, err)
		}
	}
	return tx.Commit()
}

// DeleteSecrets removes the named secrets; NotFound (and no change) if any
// of them is not set.
func (s *Store) DeleteSecrets(ctx context.Context, app string, names []string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, n := range names {
		res, err := tx.ExecContext(ctx, `DELETE FROM secrets WHERE app = ? AND name = ?`, app, n)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 0 {
			return pier.Errorf(pier.NotFound, "secret %s is not set on %s", n, app)
		}
	}
	return tx.Commit()
}

// Secrets returns an app's sealed secrets with their metadata.
func (s *Store) Secrets(ctx context.Context, app string) ([]SealedSecret, []pier.SecretInfo, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, key_id, sealed, digest, updated_at FROM secrets WHERE app = ? ORDER BY name`, app)
	if err != nil {
		return nil, nil, fmt.Errorf("read secrets of %s: %w", app, err)
	}
	defer rows.Close()
	var sealed []SealedSecret
	var infos []pier.SecretInfo
	for rows.Next() {
		var sec SealedSecret
		var updated string
		if err := rows.Scan(&sec.Name, &sec.KeyID, &sec.Sealed, &sec.Digest, &updated); err != nil {
			return nil, nil, err
		}
		sealed = append(sealed, sec)
		infos = append(infos, pier.SecretInfo{Name: sec.Name, Digest: sec.Digest, UpdatedAt: parseTS(updated)})
	}
	return sealed, infos, rows.Err()
}

// AddMachine records a machine that is about to start.
func (s *Store) AddMachine(ctx context.Context, m pier.Machine) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO machines(id, app, release, started_at) VALUES (?,?,?,?)`, m.ID, m.App, m.Release, ts(m.StartedAt))
	return err
}

// RemoveMachine forgets a machine that has stopped for good.
func (s *Store) RemoveMachine(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM machines WHERE id = ?`, id)
	return err
}

// MachineIDs lists the machines recorded as possibly running.
func (s *Store) MachineIDs(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM machines`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// AddEvent appends to the history.
func (s *Store) AddEvent(ctx context.Context, app, typ, msg string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO events(app, type, message, at) VALUES (?,?,?,?)`, app, typ, msg, ts(time.Now()))
	return err
}

// Events returns the latest limit events of an app, oldest first.
func (s *Store) Events(ctx context.Context, app string, limit int) ([]pier.Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, app, type, message, at FROM (SELECT * FROM events WHERE app = ? ORDER BY id DESC LIMIT ?) ORDER BY id`, app, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []pier.Event
	for rows.Next() {
		var e pier.Event
		var at string
		if err := rows.Scan(&e.ID, &e.App, &e.Type, &e.Message, &at); err != nil {
			return nil, err
		}
		e.At = parseTS(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// PutMachineDoc stores the JSON document of an API machine.
func (s *Store) PutMachineDoc(ctx context.Context, id, app string, doc []byte) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO api_machines(id, app, doc, updated_at) VALUES (?,?,?,?)
		ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at`, id, app, string(doc), ts(time.Now()))
	if err != nil {
		return fmt.Errorf("store machine %s: %w", id, err)
	}
	return nil
}

// DeleteMachineDoc forgets an API machine.
func (s *Store) DeleteMachineDoc(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM api_machines WHERE id = ?`, id)
	return err
}

// MachineDocs returns the JSON documents of all API machines.
func (s *Store) MachineDocs(ctx context.Context) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT doc FROM api_machines ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var doc string
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		out = append(out, []byte(doc))
	}
	return out, rows.Err()
}
