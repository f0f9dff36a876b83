package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/resources/daemon"
)

// A managed resource's directory (inst.Dir, laid out by daemon.Prepare:
// root's with the server's group, 0710, when pier runs as root):
//
//	postgres.pid, postgres.log  the daemon's (the log is the server's stderr)
//	data/                       the cluster, the server user's, 0700
//	run/                        its Unix socket, the server user's, 0700
const (
	dataDir = "data"
	runDir  = "run"
)

// readyTimeout bounds how long a starting server may take to accept
// connections (crash recovery after an unclean stop included).
const readyTimeout = 30 * time.Second

// stopGrace is how long a fast shutdown may take before the server is
// killed.
const stopGrace = 10 * time.Second

func isExternal(inst resources.Instance) bool { return stringParam(inst.Params, "admin_url") != "" }

func (d *Driver) daemon(inst resources.Instance) daemon.Daemon {
	data := filepath.Join(inst.Dir, dataDir)
	return daemon.Daemon{
		Name:    "postgres",
		Dir:     inst.Dir,
		Argv:    []string{filepath.Join(d.binDir, "postgres"), "-D", data},
		WorkDir: data,
		User:    d.user,
	}
}

// lock serialises Provision, Start, Stop and Destroy of one managed
// resource: pier's periodic Start must not start a second server while
// another call starts or stops the first. It returns the unlock.
func (d *Driver) lock(inst resources.Instance) func() {
	m, _ := d.locks.LoadOrStore(inst.Dir, new(sync.Mutex))
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// running returns the pid of the resource's own server. daemon.Running
// trusts any live process named postgres whose pid is in the pid file, and
// after a reboot that pid may well belong to another resource's server or
// to one of its backends. A postmaster's command line names its data
// directory, which tells them apart. A pid file naming another process is
// removed, so that the daemon starts the server again and Stop signals
// nobody else.
func (d *Driver) running(inst resources.Instance) (int, bool) {
	dm := d.daemon(inst)
	pid, ok := dm.Running()
	if !ok {
		return 0, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if err == nil && len(args) == len(dm.Argv) && slices.Equal(args[1:], dm.Argv[1:]) {
		return pid, true
	}
	d.log.Warn("pid file names another process: ignoring it", "resource", inst.Name, "pid", pid)
	// The daemon's pid file, as it names it.
	os.Remove(filepath.Join(dm.Dir, dm.Name+".pid"))
	return 0, false
}

// adminHost is the loopback address pier administers a managed server
// through: the first listen address.
func adminHost(inst resources.Instance) string {
	if len(inst.Listen) > 0 && inst.Listen[0] != "" {
		return inst.Listen[0]
	}
	return "127.0.0.1"
}

// adminURL is where the admin connects to db: the admin_url (with its
// database replaced) for an external resource, pier_admin over loopback
// for a managed one.
func adminURL(inst resources.Instance, password, db string) (string, error) {
	if !isExternal(inst) {
		u := url.URL{
			Scheme:   "postgres",
			User:     url.UserPassword(adminUser, password),
			Host:     net.JoinHostPort(adminHost(inst), strconv.Itoa(inst.Port)),
			Path:     "/" + db,
			RawQuery: "sslmode=disable&connect_timeout=5",
		}
		return u.String(), nil
	}
	u, err := url.Parse(stringParam(inst.Params, "admin_url"))
	if err != nil {
		return "", fmt.Errorf("admin_url: %w", err)
	}
	if db != "" {
		u.Path = "/" + db
		q := u.Query()
		q.Del("dbname")
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

func (d *Driver) connectAdmin(ctx context.Context, inst resources.Instance, db string) (*pgx.Conn, error) {
	return connectAs(ctx, inst, inst.Admin["password"], db)
}

func connectAs(ctx context.Context, inst resources.Instance, password, db string) (*pgx.Conn, error) {
	u, err := adminURL(inst, password, db)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return nil, fmt.Errorf("postgres resource %s: admin connection settings: %w", inst.Name, err)
	}
	// Connected roles can create functions and operators in schemas they
	// own; pier's admin (often a superuser) must never resolve a name to
	// one of them. The startup parameter overrides any ALTER ROLE or
	// ALTER DATABASE ... SET search_path, and pg_temp last keeps temporary
	// objects out of the way too. Queries also name pg_catalog themselves.
	cfg.RuntimeParams["search_path"] = adminSearchPath
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres resource %s as its admin: %w", inst.Name, err)
	}
	return conn, nil
}

// adminSearchPath is the search_path of every admin session pier opens.
const adminSearchPath = "pg_catalog, pg_temp"

// Provision creates the resource: a new server for a managed resource, a
// database and roles on the server of an external one.
func (d *Driver) Provision(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	if isExternal(inst) {
		return d.provisionExternal(ctx, inst)
	}
	defer d.lock(inst)()
	log := d.log.With("resource", inst.Name)
	start := time.Now()
	admin, err := d.provisionManaged(ctx, inst)
	if err != nil {
		// Nothing stays behind: a later Provision starts over.
		if cerr := d.removeManaged(context.WithoutCancel(ctx), inst); cerr != nil {
			log.Error("clean up after failed provision", "err", cerr)
		}
		return nil, fmt.Errorf("provision postgres resource %s: %w", inst.Name, err)
	}
	log.Info("postgres provisioned", "port", inst.Port, "database", admin["database"], "took", time.Since(start).Round(time.Millisecond))
	return admin, nil
}

func (d *Driver) provisionManaged(ctx context.Context, inst resources.Instance) (map[string]string, error) {
	// Whatever an interrupted Provision left is useless (its admin
	// password was never returned): start from scratch.
	if err := d.removeManaged(ctx, inst); err != nil {
		return nil, err
	}
	if err := d.prepareDirs(inst); err != nil {
		return nil, err
	}
	password := newPassword()
	if err := d.initdb(ctx, inst, password); err != nil {
		return nil, err
	}
	if err := d.writeConfig(inst); err != nil {
		return nil, err
	}
	if err := d.startAndWait(ctx, inst, password); err != nil {
		return nil, err
	}
	db := databaseName(inst)
	if err := createDatabase(ctx, inst, password, db); err != nil {
		return nil, err
	}
	conn, err := connectAs(ctx, inst, password, db)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := setupDatabase(ctx, conn, inst, db, true); err != nil {
		return nil, err
	}
	return map[string]string{"user": adminUser, "password": password, "database": db}, nil
}

// prepareDirs makes data/ and run/ for the server user (daemon.Prepare),
// which must be able to reach inst.Dir already: nothing above it is
// loosened.
func (d *Driver) prepareDirs(inst resources.Instance) error {
	if _, _, err := d.serverUID(); err != nil {
		return err
	}
	return d.daemon(inst).Prepare(dataDir, runDir)
}

// initdb creates the cluster with pier_admin as its superuser. The password
// goes through a file in run/ that only the server user can read, removed
// right after.
func (d *Driver) initdb(ctx context.Context, inst resources.Instance, password string) error {
	initdb, err := d.bin("initdb")
	if err != nil {
		return err
	}
	if _, err := d.bin("postgres"); err != nil {
		return err
	}
	uid, gid, err := d.serverUID()
	if err != nil {
		return err
	}
	pwfile := filepath.Join(inst.Dir, runDir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := os.Chown(pwfile, uid, gid); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, initdb,
		"-D", filepath.Join(inst.Dir, dataDir),
		"--username="+adminUser, "--pwfile="+pwfile,
		"--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8")
	cmd.Dir = filepath.Join(inst.Dir, runDir)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"}
	if d.user != "" {
		cred, err := daemon.Credential(d.user)
		if err != nil {
			return err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeConfig writes pier's settings to pier.conf, included from
// postgresql.conf, and replaces pg_hba.conf. Start rewrites them so that a
// change of listen addresses takes effect at the next start.
func (d *Driver) writeConfig(inst resources.Instance) error {
	data := filepath.Join(inst.Dir, dataDir)
	listen := inst.Listen
	if len(listen) == 0 {
		listen = []string{"127.0.0.1"}
	}
	socketDir := filepath.Join(inst.Dir, runDir)
	if len(socketDir)+len("/.s.PGSQL.65535") > 107 {
		// Longer than a Unix socket path may be: TCP only.
		socketDir = ""
	}
	conf := fmt.Sprintf(`# Written by pier; rewritten at every start.
listen_addresses = %s
port = %d
unix_socket_directories = %s
unix_socket_permissions = 0700
max_connections = %d
shared_buffers = '%dMB'
password_encryption = 'scram-sha-256'
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%%m [%%p] %%q%%u@%%d '
`, quoteLiteral(strings.Join(listen, ",")), inst.Port, quoteLiteral(socketDir),
		intParam(inst.Params, "max_connections", 100), intParam(inst.Params, "shared_buffers_mb", 128))
	hba := `# Written by pier: passwords (SCRAM) for everyone, from anywhere the
# server listens; no trust, no peer, no replication.
local all all scram-sha-256
host  all all 0.0.0.0/0 scram-sha-256
host  all all ::/0      scram-sha-256
`
	if err := d.writeServerFile(filepath.Join(data, "pier.conf"), conf); err != nil {
		return err
	}
	if err := d.writeServerFile(filepath.Join(data, "pg_hba.conf"), hba); err != nil {
		return err
	}
	return includePierConf(filepath.Join(data, "postgresql.conf"))
}

func includePierConf(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read postgresql.conf: %w", err)
	}
	const include = "include = 'pier.conf'\n"
	if strings.Contains(string(b), include) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("\n" + include); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (d *Driver) writeServerFile(path, content string) error {
	uid, gid, err := d.serverUID()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Chown(path, uid, gid)
}

// startAndWait starts the server and waits until pier_admin can log in
// over TCP, failing early if the server exits.
func (d *Driver) startAndWait(ctx context.Context, inst resources.Instance, password string) error {
	dm := d.daemon(inst)
	if _, err := dm.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var lastErr error
	for {
		conn, err := connectAs(ctx, inst, password, "postgres")
		if err == nil {
			return conn.Close(ctx)
		}
		lastErr = err
		if _, ok := dm.Running(); !ok {
			return fmt.Errorf("postgres exited while starting; its log %s ends:\n%s", dm.LogFile(), dm.Tail(2000))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres did not accept connections within %s (%v); its log %s ends:\n%s", readyTimeout, lastErr, dm.LogFile(), dm.Tail(2000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func createDatabase(ctx context.Context, inst resources.Instance, password, db string) error {
	conn, err := connectAs(ctx, inst, password, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", db, err)
	}
	// Apps connect to their database only: not to those initdb made.
	if _, err := conn.Exec(ctx, "REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC"); err != nil {
		return fmt.Errorf("revoke access to the default databases: %w", err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident(db)); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	return nil
}

// Start starts a managed server that is not running and waits until it
// accepts connections. When it runs, Start only reads its pid file.
func (d *Driver) Start(ctx context.Context, inst resources.Instance) error {
	if isExternal(inst) {
		return nil
	}
	defer d.lock(inst)()
	if _, ok := d.running(inst); ok {
		return nil
	}
	if _, err := os.Stat(filepath.Join(inst.Dir, dataDir, "PG_VERSION")); err != nil {
		return fmt.Errorf("start postgres resource %s: no data in %s; destroy and create the resource again, or restore a backup into a new one", inst.Name, filepath.Join(inst.Dir, dataDir))
	}
	if _, err := d.bin("postgres"); err != nil {
		return err
	}
	if err := d.prepareDirs(inst); err != nil {
		return fmt.Errorf("start postgres resource %s: %w", inst.Name, err)
	}
	if err := d.writeConfig(inst); err != nil {
		return fmt.Errorf("start postgres resource %s: %w", inst.Name, err)
	}
	if err := d.startAndWait(ctx, inst, inst.Admin["password"]); err != nil {
		return fmt.Errorf("start postgres resource %s: %w", inst.Name, err)
	}
	d.log.Info("postgres started", "resource", inst.Name, "port", inst.Port)
	return nil
}

// Stop shuts a managed server down fast: sessions are ended, transactions
// rolled back, and the data is consistent on disk.
func (d *Driver) Stop(ctx context.Context, inst resources.Instance) error {
	if isExternal(inst) {
		return nil
	}
	defer d.lock(inst)()
	d.running(inst) // drops a pid file that names another process
	if err := d.daemon(inst).Stop(ctx, stopGrace, syscall.SIGINT); err != nil {
		return fmt.Errorf("stop postgres resource %s: %w", inst.Name, err)
	}
	return nil
}

// Destroy stops a managed server and deletes its data; for an external
// resource it drops what pier created there.
func (d *Driver) Destroy(ctx context.Context, inst resources.Instance) error {
	if isExternal(inst) {
		return d.destroyExternal(ctx, inst)
	}
	defer d.lock(inst)()
	if err := d.removeManaged(ctx, inst); err != nil {
		return fmt.Errorf("destroy postgres resource %s: %w", inst.Name, err)
	}
	return nil
}

func (d *Driver) removeManaged(ctx context.Context, inst resources.Instance) error {
	d.running(inst) // drops a pid file that names another process
	dm := d.daemon(inst)
	if err := dm.Stop(ctx, stopGrace, syscall.SIGINT); err != nil {
		return err
	}
	var errs []error
	for _, p := range []string{filepath.Join(inst.Dir, dataDir), filepath.Join(inst.Dir, runDir), dm.LogFile()} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
