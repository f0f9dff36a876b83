package postgres

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"os/exec"
	"strings"

	"github.com/pier-dev/pier/internal/resources"
)

// Backup writes a pg_dump archive (custom format) of the resource's
// database to w. Ownership and privileges are kept: they name the group
// roles, which every server of the resource has.
func (d *Driver) Backup(ctx context.Context, inst resources.Instance, w io.Writer) error {
	pgDump, err := d.bin("pg_dump")
	if err != nil {
		return err
	}
	cmd, err := clientCommand(ctx, inst, pgDump, "--format=custom", "--no-password")
	if err != nil {
		return err
	}
	cmd.Stdout = w
	if err := runClient(cmd); err != nil {
		return fmt.Errorf("back up postgres resource %s: %w", inst.Name, err)
	}
	return nil
}

// Restore replaces the database's contents with a Backup archive in one
// transaction: other sessions are ended first (their locks would hold it
// up), and the group roles' privileges come back with the objects, so
// every connection's credentials keep working.
func (d *Driver) Restore(ctx context.Context, inst resources.Instance, r io.Reader) error {
	pgRestore, err := d.bin("pg_restore")
	if err != nil {
		return err
	}
	db := databaseName(inst)
	conn, err := d.connectAdmin(ctx, inst, db)
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()`, db)
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("restore postgres resource %s: end sessions: %w", inst.Name, err)
	}
	cmd, err := clientCommand(ctx, inst, pgRestore, "--clean", "--if-exists", "--single-transaction", "--exit-on-error", "--no-password")
	if err != nil {
		return err
	}
	cmd.Stdin = r
	if err := runClient(cmd); err != nil {
		return fmt.Errorf("restore postgres resource %s: %w", inst.Name, err)
	}
	d.log.Info("postgres restored", "resource", inst.Name, "database", db)
	return nil
}

// clientCommand runs a PostgreSQL client as the admin against the
// resource's database. The password goes in the environment, never on a
// command line where ps would show it.
func clientCommand(ctx context.Context, inst resources.Instance, bin string, args ...string) (*exec.Cmd, error) {
	raw, err := adminURL(inst, inst.Admin["password"], databaseName(inst))
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	var password string
	if u.User != nil {
		password, _ = u.User.Password()
		u.User = url.User(u.User.Username())
	}
	if q := u.Query(); q.Has("password") {
		password = q.Get("password")
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "PGPASSWORD=" + password}
	cmd := exec.CommandContext(ctx, bin, append(args, "--dbname="+u.String())...)
	cmd.Env = env
	return cmd, nil
}

func runClient(cmd *exec.Cmd) error {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd.Path, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
