package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/graph"
	"github.com/pier-dev/pier/internal/resources"
)

// needResourceServers skips (fails in CI) without PostgreSQL and Redis.
func needResourceServers(t *testing.T) {
	t.Helper()
	need(t, "redis-server")
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/initdb"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("PostgreSQL 15 is required in CI but missing (scripts/deps.sh installs it)")
		}
		t.Skip("PostgreSQL 15 not installed (run scripts/deps.sh)")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the resource tests run managed servers as their own users and need root in CI")
		}
		t.Skip("managed resources need root to run servers as their own users")
	}
}

// call sends an HTTP request to an app through the edge proxy.
func (s *server) call(app, method, path, body string) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path), strings.NewReader(body))
	req.Host = app + ".localhost"
	resp, err := proxyClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s%s: %v", method, app, path, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, strings.TrimSpace(b.String())
}

// expect checks an app call's status and that its body contains want.
func (s *server) expect(app, method, path, body string, code int, want string) {
	s.t.Helper()
	got, out := s.call(app, method, path, body)
	if got != code || !strings.Contains(out, want) {
		s.t.Fatalf("%s %s%s (%q) = %d %q; want %d containing %q", method, app, path, body, got, out, code, want)
	}
}

// envOf lists the names of an app's environment variables (from inside
// its machine).
func (s *server) envOf(app string) map[string]bool {
	s.t.Helper()
	code, out := s.call(app, "GET", "/env", "")
	if code != 200 {
		s.t.Fatalf("GET %s/env = %d %s", app, code, out)
	}
	var names []string
	if err := json.Unmarshal([]byte(out), &names); err != nil {
		s.t.Fatal(err)
	}
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// credentialVars are the names of every variable a connection may inject.
func credentialVars(env map[string]bool) []string {
	var out []string
	for n := range env {
		for _, p := range []string{"DB_", "DATABASE_URL", "REDIS_URL", "CACHE_", "AWS_", "BUCKET_NAME", "UPLOADS_", "OTHER_"} {
			if strings.HasPrefix(n, p) {
				out = append(out, n)
			}
		}
	}
	return out
}

// launchResApp deploys testdata/apps/resapp as app, with extra pier.toml
// lines.
func (s *server) launchResApp(app, toml string) {
	s.t.Helper()
	dir := copyApp(s.t, "resapp")
	writeFile(s.t, filepath.Join(dir, "pier.toml"), "app = \""+app+"\"\n"+toml)
	if out, err := s.pierIn(dir, "launch", "--yes", "--no-resources"); err != nil {
		s.t.Fatalf("launch %s: %v\n%s", app, err, out)
	}
}

func TestResourcesAndConnections(t *testing.T) {
	needResourceServers(t)
	forEachRuntime(t, func(t *testing.T, start func(testing.TB) *server) {
		s := start(t)

		// Bad input changes nothing.
		out, err := s.pier("resources", "create", "redis", "bad", "--param", "maxmemory_mb=4", "--param", "colour=red")
		if err == nil || !strings.Contains(out, "parameter maxmemory_mb") || !strings.Contains(out, "parameter colour: unknown parameter") {
			t.Fatalf("bad params: %v\n%s", err, out)
		}
		out, err = s.pier("resources", "create", "mysql", "bad")
		if err == nil || !strings.Contains(out, `unknown resource type "mysql"`) {
			t.Fatalf("unknown type: %v\n%s", err, out)
		}
		out, err = s.pier("resources", "create", "postgres", "Bad_Name")
		if err == nil || !strings.Contains(out, "invalid resource name") {
			t.Fatalf("bad name: %v\n%s", err, out)
		}
		// An external server that cannot be reached: a clear error, nothing
		// kept, and the admin_url's password is not echoed back.
		out, err = s.pier("resources", "create", "postgres", "bad", "--param", "admin_url=postgres://admin:topsecret@127.0.0.1:1/app")
		if err == nil || !strings.Contains(out, "could not create postgres bad") || strings.Contains(out, "topsecret") {
			t.Fatalf("unreachable external server: %v\n%s", err, out)
		}
		if out := s.mustPier("resources", "list"); strings.Contains(out, "bad") {
			t.Fatalf("a failed create left a resource:\n%s", out)
		}
		if _, err := os.Stat(s.resourceDir("bad")); err == nil {
			t.Fatal("a refused resource left a directory")
		}

		s.mustPier("resources", "create", "postgres", "db")
		s.mustPier("resources", "create", "redis", "cache", "--param", "maxmemory_mb=32")
		s.mustPier("resources", "create", "bucket", "uploads")
		s.mustPier("resources", "create", "bucket", "other")
		var list []resources.Resource
		if err := json.Unmarshal([]byte(s.mustPier("resources", "list", "--json")), &list); err != nil || len(list) != 4 {
			t.Fatalf("resources list: %v %+v", err, list)
		}
		if out, err := s.pier("apps", "create", "db"); err == nil {
			t.Fatalf("an app took a resource's name:\n%s", out)
		}

		// ops migrates (admin), web reads and writes, reports only reads
		// (declared in its pier.toml), nocon has no connection.
		s.launchResApp("ops", "")
		s.launchResApp("web", "")
		s.launchResApp("reports", "[[connections]]\nresource = \"db\"\naccess = \"read\"\n\n[[connections]]\nresource = \"cache\"\naccess = \"read\"\n\n[[connections]]\nresource = \"uploads\"\naccess = \"read\"\n")
		s.launchResApp("nocon", "")
		s.mustPier("connect", "ops", "db", "--access", "admin")
		s.mustPier("connect", "web", "db")
		s.mustPier("connect", "web", "cache")
		s.mustPier("connect", "web", "uploads")

		s.expect("ops", "POST", "/pg/exec", "CREATE TABLE items (id serial PRIMARY KEY, name text)", 200, "CREATE TABLE")
		s.expect("web", "POST", "/pg/exec", "INSERT INTO items (name) VALUES ('first')", 200, "INSERT 0 1")
		s.expect("web", "POST", "/pg/query", "SELECT name FROM items", 200, "first")
		s.expect("reports", "POST", "/pg/query", "SELECT count(*) FROM items", 200, "1")
		s.expect("reports", "POST", "/pg/exec", "INSERT INTO items (name) VALUES ('nope')", 403, "permission denied")
		s.expect("web", "POST", "/pg/exec", "CREATE TABLE mine (x int)", 403, "permission denied")
		if vars := credentialVars(s.envOf("nocon")); len(vars) > 0 {
			t.Fatalf("an app without connections has credential variables: %v", vars)
		}
		webEnv := s.envOf("web")
		for _, v := range []string{"DATABASE_URL", "DB_URL", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_DATABASE", "REDIS_URL", "CACHE_URL",
			"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "BUCKET_NAME", "UPLOADS_BUCKET", "UPLOADS_ENDPOINT"} {
			if !webEnv[v] {
				t.Errorf("web lacks %s", v)
			}
		}

		// Under runc the host firewall lets a machine reach only the
		// resources its app is connected to.
		if s.isolated() {
			for _, r := range list {
				if r.Name != "db" {
					continue
				}
				addr := fmt.Sprintf("/dial?addr=%s:%d", r.Host, r.Port)
				s.expect("web", "GET", addr, "", 200, "connected")
				s.expect("nocon", "GET", addr, "", 502, "")
			}
		}

		// Redis: web's keys only, no admin commands; read cannot write.
		s.expect("web", "GET", "/redis?c=SET&c=web:greeting&c=hello", "", 200, "OK")
		s.expect("web", "GET", "/redis?c=GET&c=web:greeting", "", 200, "hello")
		s.expect("web", "GET", "/redis?c=GET&c=reports:secret", "", 403, "NOPERM")
		s.expect("web", "GET", "/redis?c=FLUSHALL", "", 403, "NOPERM")
		s.expect("web", "GET", "/redis?c=CONFIG&c=GET&c=*", "", 403, "NOPERM")
		s.expect("reports", "GET", "/redis?c=GET&c=reports:x", "", 200, "<nil>")
		s.expect("reports", "GET", "/redis?c=SET&c=reports:x&c=1", "", 403, "NOPERM")
		s.expect("reports", "GET", "/redis?c=GET&c=web:greeting", "", 403, "NOPERM")

		// Buckets: through the AWS SDK configured from the env alone.
		s.expect("web", "POST", "/s3/put?key=hello.txt", "hi there", 200, "ok")
		s.expect("web", "GET", "/s3/get?key=hello.txt", "", 200, "hi there")
		s.expect("web", "POST", "/s3/put?bucket=other&key=x", "x", 403, "AccessDenied")
		s.expect("reports", "GET", "/s3/get?key=hello.txt", "", 200, "hi there")
		s.expect("reports", "POST", "/s3/put?key=y", "y", 403, "AccessDenied")

		// Credentials are sealed at rest: the revealed password appears
		// nowhere in the data dir's files.
		var det control.ConnectionDetail
		if err := json.Unmarshal([]byte(s.mustPier("connections", "show", "reports", "db", "--reveal", "--json")), &det); err != nil {
			t.Fatal(err)
		}
		oldURL, password := det.Values["DATABASE_URL"], det.Values["DB_PASSWORD"]
		if oldURL == "" || len(password) < 16 {
			t.Fatalf("revealed values: %+v", det.Values)
		}
		if hidden := s.mustPier("connections", "show", "reports", "db"); strings.Contains(hidden, password) {
			t.Fatal("connections show printed the password without --reveal")
		}
		assertNotInFiles(t, filepath.Join(s.dataDir, "state.db"), password)
		assertNotInFiles(t, filepath.Join(s.dataDir, "state.db-wal"), password)
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, oldURL)
		if err != nil {
			t.Fatalf("the revealed URL does not log in: %v", err)
		}

		// Disconnect: the app loses the variables, the role is gone and its
		// open session is ended.
		s.mustPier("disconnect", "reports", "db")
		if env := s.envOf("reports"); env["DATABASE_URL"] || env["DB_PASSWORD"] {
			t.Fatal("reports still has the database variables after disconnect")
		}
		if err := conn.Ping(ctx); err == nil {
			t.Fatal("a session of the revoked role survived the disconnect")
		}
		if c, err := pgx.Connect(ctx, oldURL); err == nil {
			c.Close(ctx)
			t.Fatal("revoked credentials still log in")
		}

		// Backup, drop the table, restore: the data is back and web keeps
		// its access.
		s.mustPier("resources", "backup", "db")
		var backups []resources.Backup
		if err := json.Unmarshal([]byte(s.mustPier("resources", "backups", "db", "--json")), &backups); err != nil || len(backups) != 1 {
			t.Fatalf("backups: %v %+v", err, backups)
		}
		s.expect("ops", "POST", "/pg/exec", "DROP TABLE items", 200, "DROP TABLE")
		s.expect("web", "POST", "/pg/query", "SELECT name FROM items", 500, "does not exist")
		s.mustPier("resources", "restore", "db", backups[0].ID)
		s.expect("web", "POST", "/pg/query", "SELECT name FROM items", 200, "first")
		s.expect("web", "POST", "/pg/exec", "INSERT INTO items (name) VALUES ('after restore')", 200, "INSERT 0 1")

		// A restart of pier keeps resources and connections.
		s.stop(syscall.SIGTERM)
		s.start()
		eventually(t, 30*time.Second, "web serving after the restart", func() error {
			if code, out := s.call("web", "POST", "/pg/query", "SELECT count(*) FROM items"); code != 200 || out != "2" {
				return fmt.Errorf("%d %s", code, out)
			}
			return nil
		})
		s.expect("web", "GET", "/redis?c=GET&c=web:greeting", "", 200, "hello")
		s.expect("web", "GET", "/s3/get?key=hello.txt", "", 200, "hi there")

		// The graph shows who uses what.
		var g graph.Graph
		if err := json.Unmarshal([]byte(s.mustPier("graph", "--format", "json")), &g); err != nil {
			t.Fatal(err)
		}
		edges := map[string]string{}
		for _, e := range g.Edges {
			if e.State == graph.StateUndeclared && e.From == "edge" {
				continue // requests from the edge proxy (this test's calls), not a connection
			}
			edges[e.From+"->"+e.To] = e.Access
		}
		want := map[string]string{"ops->db": "admin", "web->db": "readwrite", "web->cache": "readwrite", "web->uploads": "readwrite",
			"reports->cache": "read", "reports->uploads": "read"}
		for k, v := range want {
			if edges[k] != v {
				t.Errorf("graph edge %s = %q, want %q (edges %v)", k, edges[k], v, edges)
			}
		}
		if len(edges) != len(want) {
			t.Errorf("graph edges %v, want %v", edges, want)
		}
		if dot := s.mustPier("graph", "--format", "dot"); !strings.Contains(dot, `"web" -> "db" [label="readwrite"]`) {
			t.Errorf("dot graph:\n%s", dot)
		}

		// Destroying an app revokes its connections.
		var reportsCache control.ConnectionDetail
		if err := json.Unmarshal([]byte(s.mustPier("connections", "show", "reports", "cache", "--reveal", "--json")), &reportsCache); err != nil {
			t.Fatal(err)
		}
		if err := redisLogin(reportsCache.Values["REDIS_URL"]); err != nil {
			t.Fatalf("reports' Redis credentials do not log in before the destroy: %v", err)
		}
		s.mustPier("apps", "destroy", "reports", "--yes")
		if out := s.mustPier("connections"); strings.Contains(out, "reports") {
			t.Fatalf("connections of a destroyed app remain:\n%s", out)
		}
		if redisLogin(reportsCache.Values["REDIS_URL"]) == nil {
			t.Fatal("a destroyed app's Redis credentials still log in")
		}

		// A connected resource is not deleted by accident; --force revokes
		// first.
		if out, err := s.pier("resources", "delete", "cache"); err == nil || !strings.Contains(out, "connected to") {
			t.Fatalf("deleting a connected resource: %v\n%s", err, out)
		}
		if _, err := os.Stat(s.resourceDir("cache")); err != nil {
			t.Fatalf("the cache's files are not where the test looks: %v", err)
		}
		s.mustPier("resources", "delete", "cache", "--force")
		if env := s.envOf("web"); env["REDIS_URL"] || env["CACHE_URL"] {
			t.Fatal("web kept the cache's variables after a forced delete")
		}
		if _, err := os.Stat(s.resourceDir("cache")); err == nil {
			t.Fatal("the deleted resource's data is still there")
		}
	})
}

// assertNotInFiles fails if secret appears in the file.
func assertNotInFiles(t *testing.T, path, secret string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if strings.Contains(string(b), secret) {
		t.Fatalf("%s holds a credential in plain text", path)
	}
}

// redisLogin authenticates with a redis:// URL's user and password.
func redisLogin(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	pw, _ := u.User.Password()
	fmt.Fprintf(c, "AUTH %s %s\r\n", u.User.Username(), pw)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+OK") {
		return fmt.Errorf("AUTH: %s", strings.TrimSpace(line))
	}
	return nil
}
