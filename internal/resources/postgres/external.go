package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pier-dev/pier/internal/resources"
)

// provisionExternal sets up a database on a server pier does not run: it
// creates the database when it is missing and the admin may (marking it as
// pier's, so that Destroy drops it and nothing else), then the group roles.
func (d *Driver) provisionExternal(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	conn, err := connectAs(ctx, inst, "", "")
	if err != nil {
		return nil, fmt.Errorf("provision postgres resource %s: %w; check admin_url", inst.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	db, created, err := d.externalDatabase(ctx, conn, inst)
	if err != nil {
		return nil, fmt.Errorf("provision postgres resource %s: %w", inst.Name, err)
	}
	admin := map[string]string{"database": db, "created_database": fmt.Sprint(created)}
	inst.Admin = admin
	if err := setupExternal(ctx, inst, db, created); err != nil {
		if cerr := d.destroyExternal(context.WithoutCancel(ctx), inst); cerr != nil {
			d.log.Error("clean up after failed provision", "resource", inst.Name, "err", cerr)
		}
		return nil, fmt.Errorf("provision postgres resource %s: %w", inst.Name, err)
	}
	d.log.Info("postgres provisioned on external server", "resource", inst.Name, "database", db, "created", created)
	return admin, nil
}

func setupExternal(ctx context.Context, inst resources.Instance, db string, created bool) error {
	conn, err := connectAs(ctx, inst, "", db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return setupDatabase(ctx, conn, inst, db, created)
}

// externalDatabase picks the resource's database: the one named by the
// database parameter or after the resource, created if missing and the
// admin may create databases; else, unless the name was asked for, the
// admin_url's own database.
func (d *Driver) externalDatabase(ctx context.Context, conn *pgx.Conn, inst resources.Instance) (string, bool, error) {
	db := databaseName(inst)
	var comment *string
	err := conn.QueryRow(ctx, `SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = $1`, db).Scan(&comment)
	switch {
	case err == nil:
		// A database pier made in an interrupted Provision is still pier's.
		return db, comment != nil && *comment == marker(inst), nil
	case !errors.Is(err, pgx.ErrNoRows):
		return "", false, fmt.Errorf("look up database %s: %w", db, err)
	}
	var canCreate bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper OR rolcreatedb FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&canCreate); err != nil {
		return "", false, fmt.Errorf("look up admin role: %w", err)
	}
	if canCreate {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident(db)); err != nil {
			return "", false, fmt.Errorf("create database %s: %w", db, err)
		}
		if _, err := conn.Exec(ctx, "COMMENT ON DATABASE "+ident(db)+" IS "+quoteLiteral(marker(inst))); err != nil {
			return "", false, fmt.Errorf("comment on database %s: %w", db, err)
		}
		return db, true, nil
	}
	if stringParam(inst.Params, "database") != "" {
		return "", false, fmt.Errorf("database %s does not exist and the admin_url's role may not create databases; create it, or grant CREATEDB", db)
	}
	var current string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.current_database()`).Scan(&current); err != nil {
		return "", false, err
	}
	return current, false, nil
}

// destroyExternal drops the roles pier created for the resource and the
// database if pier created it. Objects in a database pier did not create
// go to the admin role and stay.
func (d *Driver) destroyExternal(ctx context.Context, inst resources.Instance) error {
	db := databaseName(inst)
	if err := d.dropExternalDatabase(ctx, inst, db); err != nil {
		return fmt.Errorf("destroy postgres resource %s: %w", inst.Name, err)
	}
	if err := dropExternalRoles(ctx, inst, db); err != nil {
		return fmt.Errorf("destroy postgres resource %s: %w", inst.Name, err)
	}
	return nil
}

// dropExternalDatabase drops db if pier created it; both the admin map and
// the database's comment must say so.
func (d *Driver) dropExternalDatabase(ctx context.Context, inst resources.Instance, db string) error {
	if inst.Admin["created_database"] != "true" {
		return nil
	}
	conn, err := connectAs(ctx, inst, "", "")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var current string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.current_database()`).Scan(&current); err != nil {
		return err
	}
	if current == db {
		conn.Close(ctx)
		if conn, err = connectAs(ctx, inst, "", "postgres"); err != nil {
			return err
		}
	}
	var comment *string
	err = conn.QueryRow(ctx, `SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = $1`, db).Scan(&comment)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up database %s: %w", db, err)
	}
	if comment == nil || *comment != marker(inst) {
		d.log.Warn("database not marked as pier's: keeping it", "resource", inst.Name, "database", db)
		return nil
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(db)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", db, err)
	}
	return nil
}

// dropExternalRoles drops every role carrying the resource's marker: login
// roles first, then the groups. In a surviving database what they own is
// handed to the admin role first.
func dropExternalRoles(ctx context.Context, inst resources.Instance, db string) error {
	conn, err := connectAs(ctx, inst, "", db)
	if err != nil {
		// The database is gone (dropped above), so the roles hold nothing
		// there: any database of the admin's does. Should db still exist,
		// DROP ROLE fails below and the transaction changes nothing.
		if conn, err = connectAs(ctx, inst, "", ""); err != nil {
			return err
		}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT rolname FROM pg_catalog.pg_roles WHERE pg_catalog.shobj_description(oid, 'pg_authid') = $1 ORDER BY rolcanlogin DESC, rolname`, marker(inst))
	if err != nil {
		return fmt.Errorf("list pier's roles: %w", err)
	}
	roles, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list pier's roles: %w", err)
	}
	if len(roles) == 0 {
		return nil
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1) AND pid <> pg_catalog.pg_backend_pid()`, roles); err != nil {
		return fmt.Errorf("end sessions of pier's roles: %w", err)
	}
	// One role at a time: DROP OWNED BY with several roles fails when two
	// of them share a default ACL entry (PostgreSQL 15: "could not find
	// tuple for default ACL").
	var stmts []string
	for _, r := range roles {
		stmts = append(stmts, "REASSIGN OWNED BY "+ident(r)+" TO CURRENT_USER", "DROP OWNED BY "+ident(r))
	}
	for _, r := range roles {
		stmts = append(stmts, "DROP ROLE "+ident(r))
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
}
