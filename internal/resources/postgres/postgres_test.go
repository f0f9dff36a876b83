package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	osexec "os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/resources/daemon/daemontest"
)

// requirePostgres skips (fails on CI) unless the server can be run for
// real: PostgreSQL installed and the test running as root, as pier does.
func requirePostgres(t testing.TB) {
	t.Helper()
	why := ""
	switch {
	case os.Geteuid() != 0:
		why = "postgres integration tests run as root, like pier (servers run as user postgres)"
	default:
		if _, err := os.Stat(filepath.Join(defaultBinDir(), "initdb")); err != nil {
			why = "PostgreSQL not installed (apt-get install postgresql-15)"
		} else if _, err := user.Lookup("postgres"); err != nil {
			why = "no user postgres (apt-get install postgresql-15 creates it)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newDriver(t testing.TB) *Driver {
	return New(Config{Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
}

// newInstance lays a resource out as pier does as root: its directory in
// the servers dir, apart from a 0700 data dir that no server may enter.
// The test's own temp dirs are opened to be searched, as /var/lib is.
func newInstance(t testing.TB, name string) resources.Instance {
	t.Helper()
	dir := daemontest.ResourceDir(t, name)
	return resources.Instance{
		Name: name,
		Params: map[string]any{
			"max_connections":   float64(20),
			"shared_buffers_mb": json.Number("16"),
			"backup_schedule":   "daily",
			"backup_retention":  float64(7),
		},
		Dir:    dir,
		Port:   freePort(t),
		Listen: []string{"127.0.0.1"},
		Host:   "127.0.0.1",
	}
}

// provision starts a managed server that the test destroys when it ends.
func provision(t testing.TB, d *Driver, inst resources.Instance) resources.Instance {
	t.Helper()
	admin, err := d.Provision(t.Context(), inst)
	if err != nil {
		t.Fatal(err)
	}
	inst.Admin = admin
	t.Cleanup(func() {
		if err := d.Destroy(context.Background(), inst); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return inst
}

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func grant(t testing.TB, d *Driver, inst resources.Instance, app string, a resources.Access) resources.Credentials {
	t.Helper()
	c, err := d.Grant(t.Context(), inst, resources.Grant{App: app, Access: a})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustExec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func count(t testing.TB, conn *pgx.Conn, table string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

// wantDenied checks that sql fails for lack of privilege (SQLSTATE 42501).
func wantDenied(t testing.TB, conn *pgx.Conn, sql string) {
	t.Helper()
	_, err := conn.Exec(t.Context(), sql)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("%s: got %v, want a permission error (42501)", sql, err)
	}
}

func TestManaged(t *testing.T) {
	requirePostgres(t)
	d := newDriver(t)
	inst := provision(t, d, newInstance(t, "shop-db"))
	ctx := t.Context()
	db := inst.Admin["database"]
	if db != "shop_db" {
		t.Fatalf("database %q, want shop_db", db)
	}

	t.Run("files", func(t *testing.T) {
		u, _ := user.Lookup("postgres")
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if st, err := os.Stat(inst.Dir); err != nil || st.Mode().Perm() != 0o710 || st.Sys().(*syscall.Stat_t).Uid != 0 || int(st.Sys().(*syscall.Stat_t).Gid) != gid {
			t.Errorf("%s: %v, %v; want 0710, root's with group postgres", inst.Dir, st.Mode(), err)
		}
		for _, name := range []string{dataDir, runDir} {
			st, err := os.Stat(filepath.Join(inst.Dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o700 || int(st.Sys().(*syscall.Stat_t).Uid) != uid {
				t.Errorf("%s: mode %v uid %d, want 0700 owned by postgres", name, st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
			}
		}
		hba, err := os.ReadFile(filepath.Join(inst.Dir, dataDir, "pg_hba.conf"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(hba), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] != "#" && f[len(f)-1] != "scram-sha-256" {
				t.Errorf("pg_hba.conf line %q: want scram-sha-256 only", line)
			}
		}
		if _, err := os.Stat(filepath.Join(inst.Dir, runDir, "pwfile")); err == nil {
			t.Error("initdb's password file left behind")
		}
		if _, err := os.Stat(filepath.Join(inst.Dir, runDir, fmt.Sprintf(".s.PGSQL.%d", inst.Port))); err != nil {
			t.Errorf("no Unix socket in run/: %v", err)
		}
	})

	admin := grant(t, d, inst, "migrator", resources.Admin)
	rw := grant(t, d, inst, "web", resources.ReadWrite)
	ro := grant(t, d, inst, "report", resources.Read)
	g := groupRoles(db)

	t.Run("credentials", func(t *testing.T) {
		if rw["user"] != "app_web" || rw["database"] != db || rw["host"] != "127.0.0.1" || rw["port"] != strconv.Itoa(inst.Port) {
			t.Errorf("credentials %v", rw)
		}
		if len(rw["password"]) < 24 {
			t.Errorf("password %q too short", rw["password"])
		}
		want := fmt.Sprintf("postgres://app_web:%s@127.0.0.1:%d/shop_db?sslmode=disable", rw["password"], inst.Port)
		if rw["url"] != want {
			t.Errorf("url %s, want %s", rw["url"], want)
		}
	})

	t.Run("access levels", func(t *testing.T) {
		ac, rwc, roc := connect(t, admin["url"]), connect(t, rw["url"]), connect(t, ro["url"])
		mustExec(t, ac, "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
		mustExec(t, ac, "INSERT INTO items (name) VALUES ('seed')")
		var owner string
		if err := ac.QueryRow(ctx, "SELECT tableowner FROM pg_tables WHERE tablename = 'items'").Scan(&owner); err != nil || owner != g.owner {
			t.Errorf("items owned by %q (%v), want %s", owner, err, g.owner)
		}

		wantDenied(t, rwc, "CREATE TABLE rw_table (id int)")
		mustExec(t, rwc, "INSERT INTO items (name) VALUES ('from web')")
		mustExec(t, rwc, "UPDATE items SET name = 'updated' WHERE name = 'from web'")
		if n := count(t, rwc, "items"); n != 2 {
			t.Errorf("readwrite sees %d rows, want 2", n)
		}

		if n := count(t, roc, "items"); n != 2 {
			t.Errorf("read sees %d rows, want 2", n)
		}
		wantDenied(t, roc, "INSERT INTO items (name) VALUES ('from report')")
		wantDenied(t, roc, "DELETE FROM items")
		wantDenied(t, roc, "CREATE TABLE ro_table (id int)")

		// A table made in a later admin session is covered by the default
		// privileges.
		ac2 := connect(t, admin["url"])
		mustExec(t, ac2, "CREATE TABLE later (v int)")
		ac2.Close(ctx)
		mustExec(t, rwc, "INSERT INTO later VALUES (1)")
		if n := count(t, roc, "later"); n != 1 {
			t.Errorf("read sees %d rows in later, want 1", n)
		}
	})

	t.Run("no escalation", func(t *testing.T) {
		roc, rwc := connect(t, ro["url"]), connect(t, rw["url"])
		for _, conn := range []*pgx.Conn{roc, rwc} {
			wantDenied(t, conn, "SET ROLE "+ident(g.owner))
			wantDenied(t, conn, "GRANT "+ident(g.owner)+" TO CURRENT_USER")
			wantDenied(t, conn, "DROP TABLE items")
		}
		wantDenied(t, roc, "SET ROLE "+ident(g.readwrite))
		if _, err := pgx.Connect(ctx, strings.Replace(ro["url"], "/shop_db?", "/postgres?", 1)); err == nil {
			t.Error("read role connected to database postgres")
		}
	})

	t.Run("revoke", func(t *testing.T) {
		tmp := grant(t, d, inst, "tmp", resources.ReadWrite)
		again := grant(t, d, inst, "tmp", resources.ReadWrite) // after a crash: new password
		if _, err := pgx.Connect(ctx, tmp["url"]); err == nil {
			t.Error("first password still works after a second Grant")
		}
		open := connect(t, again["url"])
		if err := d.Revoke(ctx, inst, resources.Grant{App: "tmp", Access: resources.ReadWrite}, again); err != nil {
			t.Fatal(err)
		}
		if _, err := open.Exec(ctx, "SELECT 1"); err == nil {
			t.Error("session of a revoked role still works")
		}
		if _, err := pgx.Connect(ctx, again["url"]); err == nil {
			t.Error("revoked credentials still log in")
		}
		if err := d.Revoke(ctx, inst, resources.Grant{App: "tmp", Access: resources.ReadWrite}, again); err != nil {
			t.Errorf("second Revoke: %v", err)
		}
	})

	t.Run("backup and restore", func(t *testing.T) {
		rwc := connect(t, rw["url"])
		before := count(t, rwc, "items")
		var buf bytes.Buffer
		if err := d.Backup(ctx, inst, &buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(buf.Bytes(), []byte("PGDMP")) {
			t.Fatalf("backup is not a pg_dump custom archive: %q", buf.Bytes()[:min(16, buf.Len())])
		}
		mustExec(t, connect(t, admin["url"]), "DROP TABLE items")
		if err := d.Restore(ctx, inst, &buf); err != nil {
			t.Fatal(err)
		}
		rwc = connect(t, rw["url"]) // Restore ended the old session
		if n := count(t, rwc, "items"); n != before {
			t.Errorf("%d rows after restore, want %d", n, before)
		}
		mustExec(t, rwc, "INSERT INTO items (name) VALUES ('after restore')")
		wantDenied(t, connect(t, ro["url"]), "INSERT INTO items (name) VALUES ('x')")
		mustExec(t, connect(t, admin["url"]), "ALTER TABLE items ADD COLUMN note text")
	})

	t.Run("listens only where told", func(t *testing.T) {
		other := strings.Replace(rw["url"], "@127.0.0.1:", "@127.0.0.2:", 1)
		if conn, err := pgx.Connect(ctx, other); err == nil {
			conn.Close(ctx)
			t.Error("server accepts connections on 127.0.0.2")
		}
	})

	t.Run("start when running", func(t *testing.T) {
		pid, ok := d.daemon(inst).Running()
		if !ok {
			t.Fatal("not running")
		}
		start := time.Now()
		if err := d.Start(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 50*time.Millisecond {
			t.Errorf("Start of a running server took %s", took)
		}
		if pid2, _ := d.daemon(inst).Running(); pid2 != pid {
			t.Errorf("pid %d after Start, was %d", pid2, pid)
		}
	})

	t.Run("stop and start", func(t *testing.T) {
		rows := count(t, connect(t, rw["url"]), "items")
		if err := d.Stop(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if _, ok := d.daemon(inst).Running(); ok {
			t.Fatal("running after Stop")
		}
		if conn, err := pgx.Connect(ctx, rw["url"]); err == nil {
			conn.Close(ctx)
			t.Fatal("connected to a stopped server")
		}
		if err := d.Start(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if n := count(t, connect(t, rw["url"]), "items"); n != rows {
			t.Errorf("%d rows after restart, want %d", n, rows)
		}
	})

	t.Run("pid file naming another process", func(t *testing.T) {
		fake := fakePostgres(t)
		pidFile := filepath.Join(inst.Dir, "postgres.pid")
		if err := d.Stop(ctx, inst); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(pidFile, []byte(strconv.Itoa(fake)+"\n"), 0o600)
		if err := d.Stop(ctx, inst); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(pidFile, []byte(strconv.Itoa(fake)+"\n"), 0o600)
		if err := d.Start(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", fake)); err != nil || strings.Contains(string(st), ") Z ") {
			t.Errorf("the other process was signalled: %s %v", st, err)
		}
		if pid, ok := d.running(inst); !ok || pid == fake {
			t.Errorf("running: pid %d %v, the other process is %d", pid, ok, fake)
		}
		mustExec(t, connect(t, rw["url"]), "SELECT 1")
	})

	t.Run("concurrent starts", func(t *testing.T) {
		if err := d.Stop(ctx, inst); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- d.Start(ctx, inst) }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if _, ok := d.running(inst); !ok {
			t.Error("not running")
		}
		mustExec(t, connect(t, rw["url"]), "SELECT 1")
	})
}

// fakePostgres starts a process that daemon.Running takes for a server (its
// executable is called postgres), like a pid reused after a reboot.
func fakePostgres(t *testing.T) int {
	t.Helper()
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Skip("no /bin/sleep to disguise")
	}
	bin := filepath.Join(t.TempDir(), "postgres")
	if err := os.WriteFile(bin, sleep, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := osexec.Command(bin, "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

func TestProvisionFailureLeavesNothing(t *testing.T) {
	requirePostgres(t)
	d := newDriver(t)
	inst := newInstance(t, "busy")
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", inst.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = d.Provision(t.Context(), inst)
	if err == nil {
		d.Destroy(context.Background(), inst)
		t.Fatal("Provision succeeded on a port in use")
	}
	if !strings.Contains(err.Error(), "could not") {
		t.Errorf("error does not show the server's log: %v", err)
	}
	if _, ok := d.daemon(inst).Running(); ok {
		t.Error("server left running")
	}
	for _, name := range []string{dataDir, runDir} {
		if _, err := os.Stat(filepath.Join(inst.Dir, name)); err == nil {
			t.Errorf("%s left behind", name)
		}
	}
}

func TestExternal(t *testing.T) {
	requirePostgres(t)
	d := newDriver(t)
	server := provision(t, d, newInstance(t, "shared"))
	ctx := t.Context()
	serverURL, _ := adminURL(server, server.Admin["password"], "postgres")
	superuser := connect(t, serverURL)

	roleCount := func(inst resources.Instance) int {
		var n int
		superuser.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = $1`, marker(inst)).Scan(&n)
		return n
	}
	dbExists := func(db string) bool {
		var ok bool
		superuser.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, db).Scan(&ok)
		return ok
	}

	t.Run("database created by pier", func(t *testing.T) {
		inst := resources.Instance{Name: "ext-app", Params: map[string]any{"admin_url": serverURL, "max_connections": float64(100)}}
		admin, err := d.Provision(ctx, inst)
		if err != nil {
			t.Fatal(err)
		}
		inst.Admin = admin
		if admin["database"] != "ext_app" || admin["created_database"] != "true" {
			t.Errorf("admin %v", admin)
		}
		if err := d.Start(ctx, inst); err != nil {
			t.Error(err)
		}
		if err := d.Stop(ctx, inst); err != nil {
			t.Error(err)
		}
		adm := grant(t, d, inst, "migrator", resources.Admin)
		rw := grant(t, d, inst, "web", resources.ReadWrite)
		if rw["port"] != strconv.Itoa(server.Port) || rw["host"] != "127.0.0.1" || !strings.Contains(rw["url"], "sslmode=disable") {
			t.Errorf("credentials %v", rw)
		}
		mustExec(t, connect(t, adm["url"]), "CREATE TABLE t (v int)")
		rwc := connect(t, rw["url"])
		mustExec(t, rwc, "INSERT INTO t VALUES (1)")
		wantDenied(t, rwc, "CREATE TABLE u (v int)")

		var buf bytes.Buffer
		if err := d.Backup(ctx, inst, &buf); err != nil {
			t.Fatal(err)
		}
		if err := d.Restore(ctx, inst, &buf); err != nil {
			t.Fatal(err)
		}
		if err := d.Destroy(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if dbExists("ext_app") || roleCount(inst) != 0 {
			t.Errorf("after Destroy: database exists %v, %d pier roles left", dbExists("ext_app"), roleCount(inst))
		}
		if err := d.Destroy(ctx, inst); err != nil {
			t.Errorf("second Destroy: %v", err)
		}
	})

	t.Run("existing database", func(t *testing.T) {
		mustExec(t, superuser, "CREATE DATABASE legacy")
		legacyURL, _ := adminURL(server, server.Admin["password"], "legacy")
		owner := connect(t, legacyURL)
		mustExec(t, owner, "CREATE TABLE customers (name text)")
		mustExec(t, owner, "INSERT INTO customers VALUES ('ada')")

		inst := resources.Instance{Name: "legacy", Params: map[string]any{"admin_url": serverURL, "database": "legacy"}}
		admin, err := d.Provision(ctx, inst)
		if err != nil {
			t.Fatal(err)
		}
		inst.Admin = admin
		if admin["created_database"] != "false" {
			t.Errorf("admin %v", admin)
		}
		ro := grant(t, d, inst, "report", resources.Read)
		roc := connect(t, ro["url"])
		if n := count(t, roc, "customers"); n != 1 {
			t.Errorf("read sees %d customers, want 1", n)
		}
		wantDenied(t, roc, "DELETE FROM customers")
		if err := d.Destroy(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if !dbExists("legacy") || count(t, owner, "customers") != 1 {
			t.Error("Destroy removed the user's database or data")
		}
		if n := roleCount(inst); n != 0 {
			t.Errorf("%d pier roles left", n)
		}
	})
}

func TestSchema(t *testing.T) {
	info := New(Config{}).Info()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(info.Schema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("postgres.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("postgres.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		params string
		ok     bool
	}{
		{`{}`, true},
		{`{"max_connections": 500, "shared_buffers_mb": 256, "backup_schedule": "off", "backup_retention": 30}`, true},
		{`{"admin_url": "postgres://u:p@db.example:5432/app", "database": "app_1"}`, true},
		{`{"max_connections": 5}`, false},
		{`{"shared_buffers_mb": 100000}`, false},
		{`{"database": "Robert'); DROP TABLE students;--"}`, false},
		{`{"backup_schedule": "hourly"}`, false},
		{`{"size": 1}`, false},
	} {
		v, err := jsonschema.UnmarshalJSON(strings.NewReader(tc.params))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Validate(v); (err == nil) != tc.ok {
			t.Errorf("%s: valid %v, want %v (%v)", tc.params, err == nil, tc.ok, err)
		}
	}
	if info.Access[0] != resources.ReadWrite || info.Conventional["DATABASE_URL"] != "url" {
		t.Errorf("info %+v", info)
	}
}

func TestNames(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct{ got, want string }{
		{identifier("shop-db"), "shop_db"},
		{identifier("9lives"), "_9lives"},
		{databaseName(resources.Instance{Name: "my-app"}), "my_app"},
		{databaseName(resources.Instance{Name: "x", Params: map[string]any{"database": "main"}}), "main"},
		{groupRoles("shop").readwrite, "pier_shop_readwrite"},
		{quoteLiteral("it's"), "'it''s'"},
		{quoteLiteral(`a\'b`), `E'a\\''b'`},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	g1, g2 := groupRoles(long), groupRoles(long[:62]+"b")
	for _, n := range []string{g1.read, g1.readwrite, g1.owner} {
		if len(n) > 63 {
			t.Errorf("%s: %d bytes", n, len(n))
		}
	}
	if g1.owner == g2.owner {
		t.Errorf("distinct long databases share group %s", g1.owner)
	}
}

func TestIntParam(t *testing.T) {
	p := map[string]any{"f": float64(42), "n": json.Number("43"), "i": 44}
	if intParam(p, "f", 0) != 42 || intParam(p, "n", 0) != 43 || intParam(p, "i", 0) != 44 || intParam(p, "missing", 7) != 7 {
		t.Error("intParam")
	}
}

// BenchmarkProvision measures a managed resource from nothing to accepting
// connections (initdb, start, database and roles).
func BenchmarkProvision(b *testing.B) {
	requirePostgres(b)
	d := newDriver(b)
	for b.Loop() {
		inst := newInstance(b, "bench")
		admin, err := d.Provision(b.Context(), inst)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		inst.Admin = admin
		if err := d.Destroy(context.Background(), inst); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// TestAdminAccessCannotHijackPierAdmin is the red team's escalation: an app
// with admin access owns schema public, so it plants functions there that
// outrank the catalog's for the calls pier's admin session makes
// (pg_terminate_backend(int, int) over (int, bigint); shobj_description
// (oid, text) over (oid, name) for an untyped literal). Run as pier's
// superuser, they would make the app a superuser. Grant and revoke
// afterwards must never run them.
func TestAdminAccessCannotHijackPierAdmin(t *testing.T) {
	requirePostgres(t)
	d := newDriver(t)
	inst := provision(t, d, newInstance(t, "hijack-db"))
	evil := grant(t, d, inst, "evil", resources.Admin)
	conn := connect(t, evil["url"])
	body := `BEGIN
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pwned') THEN
			EXECUTE 'CREATE ROLE pwned SUPERUSER LOGIN PASSWORD ''pwned''';
		END IF;
		INSERT INTO public.ran VALUES (current_user);
		RETURN %s;
	END`
	mustExec(t, conn, `CREATE TABLE public.ran (who text)`)
	mustExec(t, conn, `GRANT INSERT ON public.ran TO PUBLIC`)
	mustExec(t, conn, `CREATE FUNCTION public.pg_terminate_backend(integer, integer) RETURNS boolean LANGUAGE plpgsql AS $f$`+
		fmt.Sprintf(body, "false")+`$f$`)
	mustExec(t, conn, `CREATE FUNCTION public.shobj_description(oid, text) RETURNS text LANGUAGE plpgsql AS $f$`+
		fmt.Sprintf(body, "pg_catalog.shobj_description($1, $2::name)")+`$f$`)
	mustExec(t, conn, `GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC`)
	// The app's own sessions, and the owner group's, also ask for them.
	mustExec(t, conn, `ALTER ROLE CURRENT_USER SET search_path = public, pg_catalog`)

	// pier's admin now grants (ensureRole: shobj_description) and revokes
	// (dropLogin: both) as it does on connect and disconnect.
	grant(t, d, inst, "other", resources.ReadWrite)
	if err := d.Revoke(t.Context(), inst, resources.Grant{App: "other", Access: resources.ReadWrite}, nil); err != nil {
		t.Fatalf("revoke other: %v", err)
	}
	if err := d.Revoke(t.Context(), inst, resources.Grant{App: "evil", Access: resources.Admin}, evil); err != nil {
		t.Fatalf("revoke evil: %v", err)
	}

	su, err := connectAs(t.Context(), inst, inst.Admin["password"], inst.Admin["database"])
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	var supers []string
	rows, err := su.Query(t.Context(), `SELECT rolname FROM pg_catalog.pg_roles WHERE rolsuper AND rolname <> current_user AND rolname <> 'postgres'`)
	if err != nil {
		t.Fatal(err)
	}
	if supers, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(supers) > 0 {
		t.Errorf("superusers made by the app's functions: %v", supers)
	}
	var ran []string
	rows, err = su.Query(t.Context(), `SELECT who FROM public.ran`)
	if err != nil {
		t.Fatal(err)
	}
	if ran, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(ran) > 0 {
		t.Errorf("pier's admin session ran the app's functions as %v", ran)
	}
}
