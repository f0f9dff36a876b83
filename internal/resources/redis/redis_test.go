package redis

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/internal/resources"
	"github.com/pier-dev/pier/internal/resources/daemon"
	"github.com/pier-dev/pier/internal/resources/daemon/daemontest"
	goredis "github.com/redis/go-redis/v9"
)

// requireServer skips (fails in CI) when the integration tests cannot run:
// they start real redis-servers as the redis user, which needs root.
func requireServer(t testing.TB) *Driver {
	t.Helper()
	why := ""
	d := New(Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := exec.LookPath(d.Config().Binary); err != nil {
		why = "redis-server not installed (apt-get install redis-server)"
	} else if os.Getuid() != 0 {
		why = "not root: the tests run redis-server as another user"
	}
	if why == "" {
		return d
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
	return nil
}

// freePort returns a port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newInstance makes an instance the way pier does as root: a directory in
// the servers dir, apart from a 0700 data dir that no server may enter, a
// free port, loopback only. The test's own temp dirs are opened to be
// searched, as /var/lib is.
func newInstance(t testing.TB, name string, params map[string]any) resources.Instance {
	t.Helper()
	dir := daemontest.ResourceDir(t, name)
	if params == nil {
		params = map[string]any{"maxmemory_mb": float64(64), "maxmemory_policy": "noeviction", "persistence": "aof"}
	}
	return resources.Instance{Name: name, Params: params, Dir: dir, Port: freePort(t), Listen: []string{"127.0.0.1"}, Host: "127.0.0.1"}
}

// provision provisions inst and destroys it when the test ends.
func provision(t testing.TB, d *Driver, inst *resources.Instance) {
	t.Helper()
	ctx := context.Background()
	admin, err := d.Provision(ctx, *inst)
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	inst.Admin = admin
	t.Cleanup(func() {
		if err := d.Destroy(context.Background(), *inst); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
}

func grant(t *testing.T, d *Driver, inst resources.Instance, app string, a resources.Access) (resources.Credentials, *goredis.Client) {
	t.Helper()
	creds, err := d.Grant(context.Background(), inst, resources.Grant{App: app, Access: a})
	if err != nil {
		t.Fatalf("grant %s %s: %v", app, a, err)
	}
	return creds, connect(t, creds["url"])
}

func connect(t testing.TB, url string) *goredis.Client {
	t.Helper()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.MaxRetries = -1
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func adminClient(t testing.TB, inst resources.Instance) *goredis.Client {
	t.Helper()
	opt, err := adminOptions(inst)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func wantPrefix(t *testing.T, err error, prefixes ...string) {
	t.Helper()
	for _, p := range prefixes {
		if err != nil && goredis.HasErrorPrefix(err, p) {
			return
		}
	}
	t.Errorf("got error %v, want one starting with %v", err, prefixes)
}

func TestManaged(t *testing.T) {
	d := requireServer(t)
	ctx := context.Background()
	inst := newInstance(t, "cache", nil)
	provision(t, d, &inst)
	admin := adminClient(t, inst)

	t.Run("admin", func(t *testing.T) {
		if inst.Admin["user"] != adminUser || len(inst.Admin["password"]) < 24 {
			t.Fatalf("admin = %v", inst.Admin)
		}
		if err := admin.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("files", func(t *testing.T) {
		cred, err := daemon.Credential(d.Config().User)
		if err != nil || cred == nil {
			t.Fatalf("server user %q: %v", d.Config().User, err)
		}
		want := map[string][3]uint32{inst.Dir: {0, cred.Gid, 0o710}, filepath.Join(inst.Dir, dataName): {cred.Uid, cred.Gid, 0o700}, filepath.Dir(inst.Dir): {0, 0, 0o711}}
		for p, w := range want {
			var st syscall.Stat_t
			if err := syscall.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			if st.Uid != w[0] || st.Gid != w[1] || st.Mode&0o7777 != w[2] {
				t.Errorf("%s: uid %d gid %d mode %o; want %d %d %o", p, st.Uid, st.Gid, st.Mode&0o7777, w[0], w[1], w[2])
			}
		}
	})

	t.Run("no anonymous access", func(t *testing.T) {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(inst.Port))
		anon := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, Protocol: 2, DisableIdentity: true})
		defer anon.Close()
		wantPrefix(t, anon.Get(ctx, "web:x").Err(), "NOAUTH")
		def := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, Username: "default", Password: "x"})
		defer def.Close()
		wantPrefix(t, def.Ping(ctx).Err(), "WRONGPASS")
	})

	webCreds, web := grant(t, d, inst, "web", resources.ReadWrite)
	_, api := grant(t, d, inst, "api", resources.ReadWrite)
	_, ro := grant(t, d, inst, "ro", resources.Read)

	t.Run("credentials", func(t *testing.T) {
		want := map[string]string{"host": "127.0.0.1", "port": strconv.Itoa(inst.Port), "user": "app-web", "key_prefix": "web:"}
		for k, v := range want {
			if webCreds[k] != v {
				t.Errorf("%s = %q, want %q", k, webCreds[k], v)
			}
		}
		if len(webCreds["password"]) < 24 || strings.ContainsAny(webCreds["password"], "+/=") {
			t.Errorf("password %q: want >= 24 URL-safe characters", webCreds["password"])
		}
		if !strings.HasPrefix(webCreds["url"], "redis://app-web:") || !strings.HasSuffix(webCreds["url"], "/0") {
			t.Errorf("url = %q", webCreds["url"])
		}
	})

	t.Run("readwrite", func(t *testing.T) {
		if err := web.Set(ctx, "web:x", "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := web.Get(ctx, "web:x").Result(); err != nil || v != "1" {
			t.Fatalf("get web:x = %q, %v", v, err)
		}
		wantPrefix(t, web.Get(ctx, "other:x").Err(), "NOPERM")
		wantPrefix(t, web.Set(ctx, "other:x", "1", 0).Err(), "NOPERM")
		if err := web.Eval(ctx, "return redis.call('SET', KEYS[1], '2')", []string{"web:y"}).Err(); err != nil && !errors.Is(err, goredis.Nil) {
			t.Errorf("script on own key: %v", err)
		}
		// Redis 7 checks the keys a script touches, declared or not.
		if err := web.Eval(ctx, "return redis.call('GET', 'api:x')", nil).Err(); err == nil || !strings.Contains(err.Error(), "can't access") {
			t.Errorf("script reading api:x: got %v, want an ACL error", err)
		}
		wantPrefix(t, web.Publish(ctx, "api:events", "x").Err(), "NOPERM")
		if err := web.Publish(ctx, "web:events", "x").Err(); err != nil {
			t.Errorf("publish on own channel: %v", err)
		}
	})

	t.Run("read", func(t *testing.T) {
		if err := admin.Set(ctx, "ro:x", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := ro.Get(ctx, "ro:x").Result(); err != nil || v != "v" {
			t.Fatalf("get ro:x = %q, %v", v, err)
		}
		wantPrefix(t, ro.Set(ctx, "ro:x", "w", 0).Err(), "NOPERM")
		wantPrefix(t, ro.Del(ctx, "ro:x").Err(), "NOPERM")
		wantPrefix(t, ro.Get(ctx, "web:x").Err(), "NOPERM")
	})

	t.Run("apps are isolated", func(t *testing.T) {
		if err := api.Set(ctx, "api:x", "secret", 0).Err(); err != nil {
			t.Fatal(err)
		}
		wantPrefix(t, web.Get(ctx, "api:x").Err(), "NOPERM")
		wantPrefix(t, api.Get(ctx, "web:x").Err(), "NOPERM")
		wantPrefix(t, api.Del(ctx, "web:x").Err(), "NOPERM")
		wantPrefix(t, web.Scan(ctx, 0, "*", 100).Err(), "NOPERM")
		wantPrefix(t, web.RandomKey(ctx).Err(), "NOPERM")
	})

	t.Run("denied commands", func(t *testing.T) {
		denied := [][]any{
			{"FLUSHALL"}, {"FLUSHDB"}, {"CONFIG", "GET", "*"}, {"CONFIG", "SET", "maxmemory", "1"},
			{"KEYS", "*"}, {"DEBUG", "SLEEP", "0"}, {"SHUTDOWN", "NOSAVE"}, {"ACL", "LIST"},
			{"ACL", "SETUSER", "evil", "on", ">x", "+@all"}, {"INFO"}, {"MONITOR"},
			{"CLIENT", "LIST"}, {"CLIENT", "KILL", "USER", "app-api"}, {"SELECT", "1"},
			{"SWAPDB", "0", "1"}, {"FUNCTION", "FLUSH"}, {"SCRIPT", "FLUSH"}, {"SAVE"},
			{"BGREWRITEAOF"}, {"REPLICAOF", "127.0.0.1", "1"}, {"MIGRATE", "127.0.0.1", "1", "web:x", "0", "1"},
			{"PUBSUB", "CHANNELS"}, {"PUBSUB", "NUMSUB", "api:events"}, {"DBSIZE"},
			{"CLIENT", "TRACKING", "ON", "BCAST"}, {"SCRIPT", "DEBUG", "YES"},
		}
		for _, user := range []string{"app-web", "app-ro"} {
			c := map[string]*goredis.Client{"app-web": web, "app-ro": ro}[user]
			for _, cmd := range denied {
				// DEBUG is also refused by enable-debug-command; ACL DRYRUN
				// shows the ACL alone denies it too.
				if err := c.Do(ctx, cmd...).Err(); err == nil {
					t.Errorf("%s: %v allowed", user, cmd)
				}
				dry := append([]any{"ACL", "DRYRUN", user}, cmd...)
				if res, err := admin.Do(ctx, dry...).Text(); err != nil || res == "OK" {
					t.Errorf("%s: acl dryrun %v = %q, %v; want denied", user, cmd, res, err)
				}
			}
		}
		if err := admin.Ping(ctx).Err(); err != nil {
			t.Fatalf("server gone after denied commands: %v", err)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		creds, err := d.Grant(ctx, inst, resources.Grant{App: "gone", Access: resources.ReadWrite})
		if err != nil {
			t.Fatal(err)
		}
		conn := rawAuth(t, inst, creds["user"], creds["password"])
		g := resources.Grant{App: "gone", Access: resources.ReadWrite}
		if err := d.Revoke(ctx, inst, g, creds); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := conn.Read(make([]byte, 64)); err == nil {
			t.Errorf("open connection still readable after revoke (%d bytes)", n)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("open connection not closed by revoke")
		}
		wantPrefix(t, connect(t, creds["url"]).Ping(ctx).Err(), "WRONGPASS")
		if err := d.Revoke(ctx, inst, g, creds); err != nil {
			t.Errorf("second revoke: %v", err)
		}
	})

	t.Run("grant again rotates the password", func(t *testing.T) {
		creds, c := grant(t, d, inst, "web", resources.ReadWrite)
		if creds["password"] == webCreds["password"] {
			t.Fatal("same password")
		}
		if err := c.Get(ctx, "web:x").Err(); err != nil {
			t.Fatal(err)
		}
		wantPrefix(t, connect(t, webCreds["url"]).Ping(ctx).Err(), "WRONGPASS")
		webCreds = creds
	})

	t.Run("start is a no-op when running", func(t *testing.T) {
		dm := d.server(inst)
		pid, ok := dm.Running()
		if !ok {
			t.Fatal("server not running")
		}
		if err := d.Start(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if pid2, _ := dm.Running(); pid2 != pid {
			t.Fatalf("pid %d after start, was %d", pid2, pid)
		}
	})

	t.Run("listens only on the given address", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(inst.Port)), time.Second)
		if err == nil {
			c.Close()
			t.Fatal("connected through 127.0.0.2")
		}
	})

	t.Run("stop and start keep data and users", func(t *testing.T) {
		if err := connect(t, webCreds["url"]).Set(ctx, "web:kept", "yes", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := d.Stop(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if _, ok := d.server(inst).Running(); ok {
			t.Fatal("still running after stop")
		}
		if err := d.Start(ctx, inst); err != nil {
			t.Fatal(err)
		}
		if v, err := connect(t, webCreds["url"]).Get(ctx, "web:kept").Result(); err != nil || v != "yes" {
			t.Fatalf("after restart: get web:kept = %q, %v", v, err)
		}
	})
}

func TestConcurrentStartsRunOneServer(t *testing.T) {
	d := requireServer(t)
	ctx := context.Background()
	inst := newInstance(t, "race", nil)
	provision(t, d, &inst)
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
	if err := d.Stop(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if pids := serversIn(t, filepath.Join(inst.Dir, dataName)); len(pids) > 0 {
		t.Fatalf("servers left running after stop: %v", pids)
	}
}

func TestDestroyAndProvisionAgain(t *testing.T) {
	d := requireServer(t)
	ctx := context.Background()
	inst := newInstance(t, "again", nil)
	provision(t, d, &inst)
	if _, err := d.Grant(ctx, inst, resources.Grant{App: "web", Access: resources.ReadWrite}); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if pids := serversIn(t, filepath.Join(inst.Dir, dataName)); len(pids) > 0 {
		t.Errorf("servers left running after destroy: %v", pids)
	}
	if entries, _ := os.ReadDir(inst.Dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
	if err := d.Destroy(ctx, inst); err != nil {
		t.Errorf("second destroy: %v", err)
	}
	// A retried Provision starts over, running server or not.
	for range 2 {
		admin, err := d.Provision(ctx, inst)
		if err != nil {
			t.Fatal(err)
		}
		inst.Admin = admin
	}
	if err := adminClient(t, inst).Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
}

// serversIn returns the pids of the processes whose working directory is
// dir: the redis-servers of one resource.
func serversIn(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd"); err == nil && cwd == dir {
			pids = append(pids, pid)
		}
	}
	return pids
}

// rawAuth opens a plain connection authenticated as user, to watch the
// server close it.
func rawAuth(t *testing.T, inst resources.Instance, user, password string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(inst.Port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cmd := "*3\r\n$4\r\nAUTH\r\n$" + strconv.Itoa(len(user)) + "\r\n" + user + "\r\n$" + strconv.Itoa(len(password)) + "\r\n" + password + "\r\n"
	if _, err := io.WriteString(c, cmd); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "+OK\r\n" {
		t.Fatalf("auth: %q, %v", buf, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

func TestExternal(t *testing.T) {
	d := requireServer(t)
	ctx := context.Background()
	server := newInstance(t, "shared", nil)
	provision(t, d, &server)
	admin := adminClient(t, server)
	if err := admin.ACLSetUser(ctx, "someone", "on", ">pw", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	adminURL := "redis://" + adminUser + ":" + server.Admin["password"] + "@127.0.0.1:" + strconv.Itoa(server.Port)
	ext := resources.Instance{Name: "ext", Params: map[string]any{"admin_url": adminURL, "maxmemory_mb": json.Number("64")}}

	t.Run("bad admin", func(t *testing.T) {
		bad := ext
		bad.Params = map[string]any{"admin_url": "redis://someone:wrong@127.0.0.1:" + strconv.Itoa(server.Port)}
		if _, err := d.Provision(ctx, bad); err == nil {
			t.Fatal("provision with a wrong password succeeded")
		}
		admin.ACLSetUser(ctx, "weak", "on", ">pw", "~*", "+@read")
		bad.Params = map[string]any{"admin_url": "redis://weak:pw@127.0.0.1:" + strconv.Itoa(server.Port)}
		if _, err := d.Provision(ctx, bad); err == nil {
			t.Fatal("provision with a user without ACL rights succeeded")
		}
		admin.ACLDelUser(ctx, "weak")
	})

	if _, err := d.Provision(ctx, ext); err != nil {
		t.Fatal(err)
	}
	for _, f := range []func(context.Context, resources.Instance) error{d.Start, d.Stop} {
		if err := f(ctx, ext); err != nil {
			t.Fatal(err)
		}
	}
	creds, web := grant(t, d, ext, "web", resources.ReadWrite)
	if creds["user"] != "pier-ext.web" || creds["port"] != strconv.Itoa(server.Port) || creds["host"] != "127.0.0.1" {
		t.Errorf("credentials = %v", creds)
	}
	if err := web.Set(ctx, "web:x", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	wantPrefix(t, web.Get(ctx, "api:x").Err(), "NOPERM")
	wantPrefix(t, web.FlushAll(ctx).Err(), "NOPERM")
	grant(t, d, ext, "api", resources.Read)

	if err := d.Destroy(ctx, ext); err != nil {
		t.Fatal(err)
	}
	users, err := admin.Do(ctx, "ACL", "USERS").StringSlice()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(users, " "), "pier-ext.") || !strings.Contains(strings.Join(users, " "), "someone") {
		t.Errorf("users after destroy = %v; want pier's gone and someone kept", users)
	}
	if v, err := admin.Get(ctx, "web:x").Result(); err != nil || v != "1" {
		t.Errorf("keys after destroy: web:x = %q, %v; want kept", v, err)
	}
	if err := d.Destroy(ctx, ext); err != nil {
		t.Errorf("second destroy: %v", err)
	}
}

func TestProvisionFailureLeavesNothing(t *testing.T) {
	d := requireServer(t)
	inst := newInstance(t, "busy", nil)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(inst.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = d.Provision(context.Background(), inst)
	if err == nil {
		t.Fatal("provision on a busy port succeeded")
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error does not carry the log tail: %v", err)
	}
	if _, ok := d.server(inst).Running(); ok {
		t.Error("server left running")
	}
	if entries, _ := os.ReadDir(inst.Dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestPersistenceNoneAndRDB(t *testing.T) {
	d := requireServer(t)
	for _, mode := range []string{"rdb", "none"} {
		t.Run(mode, func(t *testing.T) {
			inst := newInstance(t, mode, map[string]any{"maxmemory_mb": int64(16), "maxmemory_policy": "allkeys-lru", "persistence": mode, "maxclients": int64(42)})
			provision(t, d, &inst)
			ctx := context.Background()
			admin := adminClient(t, inst)
			if err := admin.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if v, err := admin.ConfigGet(ctx, "maxmemory-policy").Result(); err != nil || v["maxmemory-policy"] != "allkeys-lru" {
				t.Fatalf("maxmemory-policy = %v, %v", v, err)
			}
			if v, err := admin.ConfigGet(ctx, "maxclients").Result(); err != nil || v["maxclients"] != "42" {
				t.Fatalf("maxclients = %v, %v", v, err)
			}
			if err := d.Stop(ctx, inst); err != nil {
				t.Fatal(err)
			}
			if err := d.Start(ctx, inst); err != nil {
				t.Fatal(err)
			}
			n, err := adminClient(t, inst).Exists(ctx, "k").Result()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]int64{"rdb": 1, "none": 0}[mode]; n != want {
				t.Errorf("key kept across restart: %d, want %d", n, want)
			}
		})
	}
}

func TestStartWithoutUsersFails(t *testing.T) {
	d := requireServer(t)
	ctx := context.Background()
	inst := newInstance(t, "lost", nil)
	provision(t, d, &inst)
	if err := d.Stop(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(inst.Dir, dataName)); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, inst); err == nil {
		t.Fatal("start with its data gone succeeded")
	}
	if _, ok := d.server(inst).Running(); ok {
		t.Fatal("server running without its users")
	}
}

func TestServerExeCopiesAcrossFileSystems(t *testing.T) {
	d := requireServer(t)
	if exeName(d.cfg.Binary, "/x") == d.cfg.Binary {
		t.Skip(d.cfg.Binary + " is not a symlink to another name")
	}
	dir, err := os.MkdirTemp("/dev/shm", "pier-redis-test")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	defer os.RemoveAll(dir)
	for range 2 {
		path, err := serverExe(d.cfg.Binary, dir)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(path); err != nil || st.Mode().Perm()&0o111 == 0 || filepath.Base(path) != "redis-server" {
			t.Fatalf("%s: %v, %v", path, st, err)
		}
	}
	out, err := exec.Command(filepath.Join(dir, "redis-server"), "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "Redis server") {
		t.Fatalf("copy runs as %q, %v", out, err)
	}
}

func TestParams(t *testing.T) {
	for _, v := range []any{float64(128), json.Number("128"), int64(128), 128} {
		p, err := parseParams(map[string]any{"maxmemory_mb": v})
		if err != nil || p.MaxMemMB != 128 {
			t.Errorf("maxmemory_mb %T: %d, %v", v, p.MaxMemMB, err)
		}
	}
	if _, err := parseParams(map[string]any{"maxmemory_mb": 1.5}); err == nil {
		t.Error("maxmemory_mb 1.5 accepted")
	}
	var s map[string]any
	if err := json.Unmarshal(New(Config{}).Info().Schema, &s); err != nil {
		t.Fatalf("schema: %v", err)
	}
	inst := resources.Instance{Name: "x", Port: 1, Listen: []string{"0.0.0.0"}}
	if err := checkListen(inst); err == nil {
		t.Error("0.0.0.0 accepted as a listen address")
	}
	if _, err := aclRules("we*b", resources.ReadWrite, "pw"); err == nil {
		t.Error("app name with a glob accepted")
	}
	if _, err := aclRules("web", resources.Admin, "pw"); err == nil {
		t.Error("admin access accepted")
	}
}

func BenchmarkProvision(b *testing.B) {
	d := requireServer(b)
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		inst := newInstance(b, "bench", nil)
		b.StartTimer()
		if _, err := d.Provision(ctx, inst); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.Destroy(ctx, inst); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
