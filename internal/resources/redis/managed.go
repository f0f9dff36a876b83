package redis

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/resources/daemon"
)

// Layout of a managed resource's directory (inst.Dir, laid out by
// daemon.Prepare):
//
//	redis.conf    generated from the instance on every start; root:<server group> 0640
//	redis.pid     daemon's pid file, redis.log its output
//	redis-server  hard link or copy of the binary, see serverExe
//	data/         owned by the server's user: users.acl, appendonlydir/, dump.rdb
//
// inst.Dir itself stays pier's: the server's user only gets to traverse it
// (group, 0710), so it cannot swap the pid or log file that pier, as root,
// signals and writes.
const (
	confName = "redis.conf"
	dataName = "data"
	aclName  = "users.acl"

	adminUser = "pier-admin"

	readyTimeout = 20 * time.Second
	stopGrace    = 60 * time.Second // SIGTERM makes redis flush its AOF or snapshot first
)

func (d *Driver) server(inst resources.Instance) daemon.Daemon {
	return daemon.Daemon{
		Name:    "redis",
		Dir:     inst.Dir,
		Argv:    []string{exeName(d.cfg.Binary, inst.Dir), filepath.Join(inst.Dir, confName)},
		WorkDir: filepath.Join(inst.Dir, dataName),
		User:    d.cfg.User,
	}
}

func (d *Driver) provisionManaged(ctx context.Context, inst resources.Instance, p params) (admin map[string]string, err error) {
	if err := checkListen(inst); err != nil {
		return nil, err
	}
	// A retried Provision starts over: nothing was granted before it
	// succeeded, so there is nothing to keep.
	if err := d.destroyManaged(ctx, inst); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := d.destroyManaged(context.WithoutCancel(ctx), inst); cerr != nil {
				d.cfg.Log.Error("clean up after failed provision", "resource", inst.Name, "err", cerr)
			}
		}
	}()
	password, err := randomPassword()
	if err != nil {
		return nil, err
	}
	inst.Admin = map[string]string{"user": adminUser, "password": password}
	if err := d.prepareDir(inst); err != nil {
		return nil, fmt.Errorf("provision redis %s: %w", inst.Name, err)
	}
	if err := d.writeACL(inst); err != nil {
		return nil, fmt.Errorf("provision redis %s: %w", inst.Name, err)
	}
	if err := d.startServer(ctx, inst, p); err != nil {
		return nil, fmt.Errorf("provision redis %s: %w", inst.Name, err)
	}
	d.cfg.Log.Info("redis provisioned", "resource", inst.Name, "port", inst.Port, "listen", inst.Listen)
	return inst.Admin, nil
}

// startManaged is Start of a managed resource: cheap when the server runs.
func (d *Driver) startManaged(ctx context.Context, inst resources.Instance) error {
	dm := d.server(inst)
	if _, ok := dm.Running(); ok {
		return nil
	}
	p, err := parseParams(inst.Params)
	if err != nil {
		return err
	}
	if err := checkListen(inst); err != nil {
		return err
	}
	if inst.Admin["password"] == "" {
		return fmt.Errorf("start redis %s: no admin password recorded; destroy and create the resource again", inst.Name)
	}
	if err := d.startServer(ctx, inst, p); err != nil {
		return fmt.Errorf("start redis %s: %w", inst.Name, err)
	}
	d.cfg.Log.Info("redis started", "resource", inst.Name, "port", inst.Port)
	return nil
}

// startServer writes the configuration, starts redis-server and waits until
// the admin user can PING it. A server that does not get ready is stopped.
func (d *Driver) startServer(ctx context.Context, inst resources.Instance, p params) error {
	if err := d.writeConf(inst, p); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(inst.Dir, dataName, aclName)); err != nil {
		return fmt.Errorf("its users are gone (%w): restore the resource's directory from a backup, or destroy and create it again", err)
	}
	if _, err := serverExe(d.cfg.Binary, inst.Dir); err != nil {
		return err
	}
	dm := d.server(inst)
	if _, err := dm.Start(); err != nil {
		return fmt.Errorf("%w (is %s the redis-server binary? set its path in the redis driver's config)", err, d.cfg.Binary)
	}
	if err := waitReady(ctx, dm, managedAdminOptions(inst)); err != nil {
		if serr := dm.Stop(context.WithoutCancel(ctx), 5*time.Second); serr != nil {
			d.cfg.Log.Error("stop redis that did not get ready", "resource", inst.Name, "err", serr)
		}
		return err
	}
	return nil
}

func (d *Driver) stopManaged(ctx context.Context, inst resources.Instance) error {
	dm := d.server(inst)
	if err := dm.Stop(ctx, stopGrace); err != nil {
		return fmt.Errorf("stop redis %s: %w", inst.Name, err)
	}
	return nil
}

// destroyManaged stops the server and empties inst.Dir (the directory
// itself is pier's).
func (d *Driver) destroyManaged(ctx context.Context, inst resources.Instance) error {
	dm := d.server(inst)
	if err := dm.Stop(ctx, 5*time.Second); err != nil {
		return fmt.Errorf("destroy redis %s: %w", inst.Name, err)
	}
	entries, err := os.ReadDir(inst.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("destroy redis %s: %w", inst.Name, err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(inst.Dir, e.Name())); err != nil {
			return fmt.Errorf("destroy redis %s: %w", inst.Name, err)
		}
	}
	return nil
}

// checkListen refuses addresses that would expose the server beyond what
// pier chose: only explicit IPs, never a wildcard.
func checkListen(inst resources.Instance) error {
	if inst.Port <= 0 || inst.Port > 65535 {
		return fmt.Errorf("redis %s: port %d out of range", inst.Name, inst.Port)
	}
	if len(inst.Listen) == 0 {
		return fmt.Errorf("redis %s: no listen address; pier must pass at least the loopback address", inst.Name)
	}
	for _, a := range inst.Listen {
		ip := net.ParseIP(a)
		if ip == nil || ip.IsUnspecified() {
			return fmt.Errorf("redis %s: listen address %q is not a specific IP address", inst.Name, a)
		}
	}
	return nil
}

// prepareDir creates the data directory for the server's user
// (daemon.Prepare), who must be able to reach inst.Dir already: nothing
// above it is loosened.
func (d *Driver) prepareDir(inst resources.Instance) error {
	return d.server(inst).Prepare(dataName)
}

// writeConf (re)writes redis.conf from the instance, so a changed listen
// address or parameter applies at the next start. It holds no secret: the
// users are in the ACL file.
func (d *Driver) writeConf(inst resources.Instance, p params) error {
	if err := d.prepareDir(inst); err != nil {
		return err
	}
	conf, err := renderConf(inst, p)
	if err != nil {
		return err
	}
	path := filepath.Join(inst.Dir, confName)
	cred, err := daemon.Credential(d.cfg.User)
	if err != nil {
		return err
	}
	gid := -1
	if cred != nil {
		gid = int(cred.Gid)
	}
	return writeFile(path, []byte(conf), 0o640, -1, gid)
}

func renderConf(inst resources.Instance, p params) (string, error) {
	data := filepath.Join(inst.Dir, dataName)
	dir, err := quote(data)
	if err != nil {
		return "", err
	}
	acl, err := quote(filepath.Join(data, aclName))
	if err != nil {
		return "", err
	}
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	line("# Written by pier for resource %s; rewritten whenever pier starts the server.", inst.Name)
	line("bind %s", strings.Join(inst.Listen, " "))
	line("port %d", inst.Port)
	line("# No anonymous access: the default user is off in the ACL file.")
	line("protected-mode no")
	line("daemonize no")
	line(`logfile ""`)
	line("dir %s", dir)
	line("aclfile %s", acl)
	line("maxmemory %dmb", p.MaxMemMB)
	line("maxmemory-policy %s", p.Policy)
	line("maxclients %d", p.MaxClients)
	switch p.Persistence {
	case "aof":
		line("appendonly yes")
		line("appendfsync everysec")
		line(`save ""`)
	case "rdb":
		line("appendonly no")
		line("save 3600 1 300 100 60 10000")
	case "none":
		line("appendonly no")
		line(`save ""`)
	default:
		return "", fmt.Errorf("parameter persistence: %q is not one of aof, rdb, none", p.Persistence)
	}
	return b.String(), nil
}

// quote writes s as a redis.conf string.
func quote(s string) (string, error) {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("path %q has control characters; choose a data directory without them", s)
		}
	}
	s = strings.ReplaceAll(s, `\`, `\\`)
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`, nil
}

// writeACL writes the initial ACL file: the default user off and the
// admin. Once the server runs, ACL SAVE owns the file.
func (d *Driver) writeACL(inst resources.Instance) error {
	path := filepath.Join(inst.Dir, dataName, aclName)
	acl := "user default off resetpass resetkeys resetchannels -@all\n" +
		"user " + adminUser + " on #" + passwordHash(inst.Admin["password"]) + " ~* &* +@all\n"
	uid, gid := -1, -1
	cred, err := daemon.Credential(d.cfg.User)
	if err != nil {
		return err
	}
	if cred != nil {
		uid, gid = int(cred.Uid), int(cred.Gid)
	}
	return writeFile(path, []byte(acl), 0o600, uid, gid)
}

// writeFile writes a file atomically with the given mode and owner (-1:
// unchanged).
func writeFile(path string, b []byte, mode os.FileMode, uid, gid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if uid != -1 || gid != -1 {
		if err := os.Chown(tmp, uid, gid); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return os.Rename(tmp, path)
}

// exeName is the path Start runs redis-server from (see serverExe), without
// creating anything.
func exeName(binary, dir string) string {
	real, err := filepath.EvalSymlinks(binary)
	if err != nil || filepath.Base(real) == filepath.Base(binary) {
		return binary
	}
	return filepath.Join(dir, filepath.Base(binary))
}

// serverExe returns the path to run redis-server from. Debian installs
// /usr/bin/redis-server as a symlink to redis-check-rdb: the binary picks
// its mode from argv[0], while daemon.Running compares the name of
// /proc/<pid>/exe (the symlink's target) with argv[0] and would never see
// the server running. A hard link (or, failing that, a copy) named
// redis-server in dir satisfies both.
func serverExe(binary, dir string) (string, error) {
	path := exeName(binary, dir)
	if path == binary {
		return binary, nil
	}
	real, err := filepath.EvalSymlinks(binary)
	if err != nil {
		return "", err
	}
	want, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if have, err := os.Stat(path); err == nil && os.SameFile(have, want) {
		return path, nil
	}
	os.Remove(path)
	if err := os.Link(real, path); err == nil {
		return path, nil
	}
	if err := copyExe(real, path); err != nil {
		return "", fmt.Errorf("link or copy %s to %s: %w", real, path, err)
	}
	return path, nil
}

func copyExe(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// waitReady polls until the admin user gets PONG, the server exits, or
// readyTimeout passes; errors carry the server's log tail.
func waitReady(ctx context.Context, dm daemon.Daemon, opt *goredis.Options) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		if _, ok := dm.Running(); !ok {
			return fmt.Errorf("redis-server exited at start; its log says:\n%s", dm.Tail(2000))
		}
		if last = ping(ctx, opt); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis-server not ready after %s (%v); its log says:\n%s", readyTimeout, last, dm.Tail(2000))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
