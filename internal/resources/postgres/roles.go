package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pier-dev/pier/internal/resources"
)

// groups are the NOLOGIN roles that hold a database's privileges. Each
// includes the one before: read ⊂ readwrite ⊂ owner.
type groups struct{ read, readwrite, owner string }

func groupRoles(db string) groups {
	return groups{
		read:      fitName("pier_"+db, "_read"),
		readwrite: fitName("pier_"+db, "_readwrite"),
		owner:     fitName("pier_"+db, "_owner"),
	}
}

func (g groups) forAccess(a resources.Access) (string, error) {
	switch a {
	case resources.Read:
		return g.read, nil
	case resources.ReadWrite:
		return g.readwrite, nil
	case resources.Admin:
		return g.owner, nil
	}
	return "", fmt.Errorf("postgres offers access read, readwrite or admin, not %q", a)
}

// marker is the comment pier puts on every role (and external database) it
// creates, so that it later drops those and nothing else.
func marker(inst resources.Instance) string { return "created by pier for resource " + inst.Name }

// loginRole names an app's login role. On a managed server it is app_<app>;
// on an external one, which may hold several pier databases, the database
// is part of the name.
func loginRole(inst resources.Instance, app string) string {
	if isExternal(inst) {
		return fitName("app_"+identifier(app)+"_"+databaseName(inst), "")
	}
	return fitName("app_"+identifier(app), "")
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteLiteral quotes s as an SQL string literal. With a backslash in s it
// uses the escape-string form (E'...'), which reads the same whatever
// standard_conforming_strings is.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return "E'" + strings.ReplaceAll(s, `\`, `\\`) + "'"
	}
	return "'" + s + "'"
}

// newPassword returns 43 URL-safe random characters (256 bits).
func newPassword() string {
	return base64.RawURLEncoding.EncodeToString(randomBytes(32))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return b
}

// scramVerifier returns what PostgreSQL stores for password under
// scram-sha-256. Sending it instead of the password keeps the password out
// of the server's statement log and out of pg_stat_activity.
func scramVerifier(password string) (string, error) {
	const iterations = 4096
	salt := randomBytes(16)
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, enc(salt), enc(storedKey[:]), enc(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// ensureRole creates role unless it exists. An existing role must carry
// pier's marker for this resource: pier never takes over a role it did not
// make. It reports whether the role was created.
func ensureRole(ctx context.Context, tx pgx.Tx, role, options, mark string) (bool, error) {
	var comment *string
	err := tx.QueryRow(ctx, `SELECT pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE rolname = $1`, role).Scan(&comment)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := tx.Exec(ctx, "CREATE ROLE "+ident(role)+" "+options); err != nil {
			return false, fmt.Errorf("create role %s: %w", role, err)
		}
		if _, err := tx.Exec(ctx, "COMMENT ON ROLE "+ident(role)+" IS "+quoteLiteral(mark)); err != nil {
			return false, fmt.Errorf("comment on role %s: %w", role, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("look up role %s: %w", role, err)
	case comment == nil || *comment != mark:
		return false, fmt.Errorf("role %s already exists and was not created by pier for this resource; drop or rename it, or give the resource another database name", role)
	}
	return false, nil
}

// setupDatabase creates db's group roles and grants them their
// privileges, on objects that exist and, by default privileges, on those
// that the owner group or admin will create. own is true when the database
// belongs to pier (always for a managed server): only then are PUBLIC's
// privileges taken away and schema public handed to the owner group.
func setupDatabase(ctx context.Context, conn *pgx.Conn, inst resources.Instance, db string, own bool) error {
	g := groupRoles(db)
	mark := marker(inst)
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, r := range []string{g.read, g.readwrite, g.owner} {
			if _, err := ensureRole(ctx, tx, r, "NOLOGIN", mark); err != nil {
				return err
			}
		}
		var admin string
		var super bool
		if err := tx.QueryRow(ctx, `SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&admin, &super); err != nil {
			return fmt.Errorf("look up admin role: %w", err)
		}
		stmts := grantStatements(g, db, admin, own, super)
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("set up access to database %s: %s: %w", db, s, err)
			}
		}
		return nil
	})
}

func grantStatements(g groups, db, admin string, own, super bool) []string {
	r, rw, o, d := ident(g.read), ident(g.readwrite), ident(g.owner), ident(db)
	var s []string
	s = append(s, "GRANT "+r+" TO "+rw, "GRANT "+rw+" TO "+o)
	if !super {
		// ALTER DEFAULT PRIVILEGES FOR ROLE owner needs membership in it.
		s = append(s, "GRANT "+o+" TO "+ident(admin))
	}
	if own {
		s = append(s,
			"REVOKE ALL ON DATABASE "+d+" FROM PUBLIC",
			"REVOKE CREATE ON SCHEMA public FROM PUBLIC",
			"ALTER SCHEMA public OWNER TO "+o)
	} else {
		s = append(s, "GRANT USAGE, CREATE ON SCHEMA public TO "+o)
	}
	s = append(s,
		"GRANT CONNECT, TEMPORARY ON DATABASE "+d+" TO "+r,
		"GRANT CREATE ON DATABASE "+d+" TO "+o,
		"GRANT USAGE ON SCHEMA public TO "+r,
		"GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+r,
		"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO "+r,
		"GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "+rw,
		"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "+rw)
	// Without IN SCHEMA, default privileges cover every schema, including
	// those the owner group creates later.
	for _, creator := range []string{o, ident(admin)} {
		adp := "ALTER DEFAULT PRIVILEGES FOR ROLE " + creator + " "
		s = append(s,
			adp+"GRANT USAGE ON SCHEMAS TO "+r,
			adp+"GRANT SELECT ON TABLES TO "+r,
			adp+"GRANT SELECT ON SEQUENCES TO "+r,
			adp+"GRANT INSERT, UPDATE, DELETE ON TABLES TO "+rw,
			adp+"GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO "+rw)
	}
	return s
}

// Grant creates (or, after a crash, resets) the app's login role with a new
// password and makes it a member of the group for g.Access, and of no
// other. An admin login starts every session as the owner group, so what
// it creates belongs to the group and outlives its credentials.
func (d *Driver) Grant(ctx context.Context, inst resources.Instance, gr resources.Grant) (resources.Credentials, error) {
	db := databaseName(inst)
	g := groupRoles(db)
	group, err := g.forAccess(gr.Access)
	if err != nil {
		return nil, err
	}
	login := loginRole(inst, gr.App)
	password := newPassword()
	verifier, err := scramVerifier(password)
	if err != nil {
		return nil, err
	}
	conn, err := d.connectAdmin(ctx, inst, db)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	limit := connectionLimit(inst)
	opts := fmt.Sprintf("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT %d PASSWORD %s", limit, quoteLiteral(verifier))
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		created, err := ensureRole(ctx, tx, login, opts, marker(inst))
		if err != nil {
			return err
		}
		var stmts []string
		if !created {
			stmts = append(stmts, "ALTER ROLE "+ident(login)+" "+opts)
		}
		for _, other := range []string{g.read, g.readwrite, g.owner} {
			if other != group {
				stmts = append(stmts, "REVOKE "+ident(other)+" FROM "+ident(login))
			}
		}
		stmts = append(stmts, "GRANT "+ident(group)+" TO "+ident(login))
		if gr.Access == resources.Admin {
			stmts = append(stmts, "ALTER ROLE "+ident(login)+" SET role = "+quoteLiteral(g.owner))
		} else {
			stmts = append(stmts, "ALTER ROLE "+ident(login)+" RESET role")
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("grant %s to %s: %w", gr.Access, login, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("grant app %s %s access to postgres resource %s: %w", gr.App, gr.Access, inst.Name, err)
	}
	return d.credentials(inst, db, login, password)
}

// connectionLimit keeps one app from taking every connection of the
// server: half of max_connections.
func connectionLimit(inst resources.Instance) int {
	return max(5, intParam(inst.Params, "max_connections", 100)/2)
}

// credentials are what a connection is given: the server as apps reach it
// (inst.Host for a managed server, the admin_url's host for an external
// one) and the login role.
func (d *Driver) credentials(inst resources.Instance, db, user, password string) (resources.Credentials, error) {
	host, port, query := inst.Host, strconv.Itoa(inst.Port), "sslmode=disable"
	if host == "" {
		host = adminHost(inst)
	}
	if isExternal(inst) {
		u, err := url.Parse(stringParam(inst.Params, "admin_url"))
		if err != nil {
			return nil, fmt.Errorf("admin_url: %w", err)
		}
		host, port = u.Hostname(), u.Port()
		if port == "" {
			port = "5432"
		}
		q := u.Query()
		for k := range q {
			// Connection settings (sslmode, ...) carry over; who and where do not.
			if k == "user" || k == "password" || k == "dbname" || k == "host" || k == "port" {
				q.Del(k)
			}
		}
		query = q.Encode()
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(host, port),
		Path:     "/" + db,
		RawQuery: query,
	}
	return resources.Credentials{
		"host":     host,
		"port":     port,
		"user":     user,
		"password": password,
		"database": db,
		"url":      u.String(),
	}, nil
}

// Revoke ends the login role: it can no longer log in, its sessions are
// terminated, what it owns goes to the owner group, and the role is
// dropped. A role that is already gone is fine.
func (d *Driver) Revoke(ctx context.Context, inst resources.Instance, gr resources.Grant, c resources.Credentials) error {
	db := databaseName(inst)
	login := c["user"]
	if login == "" {
		login = loginRole(inst, gr.App)
	}
	conn, err := d.connectAdmin(ctx, inst, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := dropLogin(ctx, conn, inst, login, groupRoles(db).owner); err != nil {
		return fmt.Errorf("revoke app %s's access to postgres resource %s: %w", gr.App, inst.Name, err)
	}
	return nil
}

func dropLogin(ctx context.Context, conn *pgx.Conn, inst resources.Instance, login, owner string) error {
	var comment *string
	err := conn.QueryRow(ctx, `SELECT pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE rolname = $1`, login).Scan(&comment)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up role %s: %w", login, err)
	}
	if comment == nil || *comment != marker(inst) {
		return fmt.Errorf("role %s was not created by pier for this resource; pier leaves it alone", login)
	}
	// NOLOGIN first, committed, so a session cannot open between the
	// terminations and the drop.
	if _, err := conn.Exec(ctx, "ALTER ROLE "+ident(login)+" NOLOGIN"); err != nil {
		return fmt.Errorf("disable role %s: %w", login, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()`, login); err != nil {
		return fmt.Errorf("end sessions of %s: %w", login, err)
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range []string{
			"REASSIGN OWNED BY " + ident(login) + " TO " + ident(owner),
			"DROP OWNED BY " + ident(login),
			"DROP ROLE " + ident(login),
		} {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
}
