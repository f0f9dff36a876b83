package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDataDirStaysPrivate is the red team's local-user attack on the data
// dir: with a postgres and a redis resource serving an app, a local user
// (nobody) can neither list the data dir, nor read state.db or a build's
// pier.toml, nor list or read the resources' files. The data dir stays
// 0700 without ACLs, state.db 0600, and resources an earlier version kept
// in the data dir move out of it at start.
func TestDataDirStaysPrivate(t *testing.T) {
	needResourceServers(t)
	need(t, "ls", "cat", "stat")
	s := startProcessServer(t)
	servers := s.serversDir()
	above := map[string]os.FileMode{}
	for _, p := range []string{s.root, filepath.Dir(s.root)} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		above[p] = st.Mode()
	}

	s.mustPier("resources", "create", "postgres", "db")
	s.mustPier("resources", "create", "redis", "cache")
	s.launchResApp("web", "")
	s.mustPier("connect", "web", "db", "--access", "admin")
	s.mustPier("connect", "web", "cache")
	s.expect("web", "POST", "/pg/exec", "CREATE TABLE notes (body text)", 200, "CREATE TABLE")
	s.expect("web", "POST", "/pg/exec", "INSERT INTO notes VALUES ('kept')", 200, "INSERT 0 1")
	s.expect("web", "GET", "/redis?c=SET&c=web:note&c=kept", "", 200, "OK")

	tomls, _ := filepath.Glob(filepath.Join(s.dataDir, "builds", "web", "*", "pier.toml"))
	if len(tomls) == 0 {
		t.Fatal("no builds/web/*/pier.toml to try")
	}
	// Where the resources' files are: the servers dir, or the data dir
	// for a pier that still keeps them there.
	dirOf := func(name string) string {
		if _, err := os.Stat(filepath.Join(servers, name)); err != nil {
			return filepath.Join(s.dataDir, "resources", name)
		}
		return filepath.Join(servers, name)
	}
	files := []string{
		filepath.Join(dirOf("db"), "postgres.log"),
		filepath.Join(dirOf("db"), "data", "PG_VERSION"),
		filepath.Join(dirOf("db"), "data", "pier.conf"),
		filepath.Join(dirOf("cache"), "redis.conf"),
		filepath.Join(dirOf("cache"), "data", "users.acl"),
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("a resource file to try is missing: %v", err)
		}
	}
	attack := func(t *testing.T) {
		t.Helper()
		// The attacker can run commands at all.
		if out, err := asNobody("/bin/ls", "/"); err != nil {
			t.Fatalf("ls / as nobody: %v\n%s", err, out)
		}
		tries := [][]string{
			{"/bin/ls", s.dataDir},
			{"/usr/bin/stat", filepath.Join(s.dataDir, "state.db")},
			{"/bin/cat", filepath.Join(s.dataDir, "state.db")},
			{"/bin/cat", filepath.Join(s.dataDir, "admin.token")},
			{"/bin/cat", tomls[0]},
			{"/bin/ls", filepath.Join(s.dataDir, "resources")},
			{"/bin/ls", filepath.Dir(servers)},
			{"/bin/ls", servers},
			{"/bin/ls", dirOf("db")},
			{"/bin/ls", filepath.Join(dirOf("db"), "data")},
			{"/bin/ls", dirOf("cache")},
			{"/bin/ls", filepath.Join(dirOf("cache"), "data")},
		}
		for _, f := range files {
			tries = append(tries, []string{"/bin/cat", f}, []string{"/usr/bin/stat", f})
		}
		for _, try := range tries {
			if out, err := asNobody(try[0], try[1:]...); err == nil {
				t.Errorf("as nobody, %s succeeded:\n%s", strings.Join(try, " "), out)
			}
		}
	}
	private := func(t *testing.T) {
		t.Helper()
		wantMode(t, s.dataDir, 0o700)
		wantMode(t, filepath.Join(s.dataDir, "state.db"), 0o600)
		for _, suffix := range []string{"-wal", "-shm"} {
			if _, err := os.Stat(filepath.Join(s.dataDir, "state.db"+suffix)); err == nil {
				wantMode(t, filepath.Join(s.dataDir, "state.db"+suffix), 0o600)
			}
		}
		for _, p := range []string{s.root, s.dataDir, filepath.Join(s.dataDir, "resources")} {
			if hasACL(p) {
				t.Errorf("%s has an ACL", p)
			}
		}
		// Nothing above the data dir was opened either.
		for p, mode := range above {
			wantMode(t, p, mode&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
		}
	}
	t.Run("local user", attack)
	t.Run("modes", private)

	// An earlier version's layout: the resources' directories under the
	// data dir, which it opened with ACLs and o+x. pier moves them out and
	// closes the data dir again.
	s.stop(syscall.SIGTERM)
	stopServers(t, servers)
	old := filepath.Join(s.dataDir, "resources")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"db", "cache"} {
		if err := os.Rename(filepath.Join(servers, name), filepath.Join(old, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{s.dataDir, old} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Setxattr(s.dataDir, "system.posix_acl_access", aclSearch(101), 0); err != nil {
		t.Logf("no POSIX ACLs here (%v): only the modes are restored", err)
	}
	syscall.Setxattr(filepath.Join(old, "db"), "system.posix_acl_access", aclSearch(101), 0)
	os.Chmod(filepath.Join(s.dataDir, "state.db"), 0o644)
	s.start()
	eventually(t, 30*time.Second, "web serving after the move", func() error {
		if code, out := s.call("web", "POST", "/pg/query", "SELECT body FROM notes"); code != 200 || out != "kept" {
			return fmt.Errorf("postgres: %d %s", code, out)
		}
		if code, out := s.call("web", "GET", "/redis?c=GET&c=web:note", ""); code != 200 || out != "kept" {
			return fmt.Errorf("redis: %d %s", code, out)
		}
		return nil
	})
	for _, name := range []string{"db", "cache"} {
		if _, err := os.Stat(filepath.Join(old, name)); err == nil {
			t.Errorf("%s is still in the data dir", name)
		}
	}
	wantMode(t, old, 0o700)
	if hasACL(filepath.Join(servers, "db")) {
		t.Error("the moved postgres dir kept its ACL")
	}
	t.Run("local user after the move", attack)
	t.Run("modes after the move", private)

	// Deleting a resource removes its directory from the servers dir.
	s.mustPier("resources", "delete", "cache", "--force")
	if _, err := os.Stat(filepath.Join(servers, "cache")); err == nil {
		t.Error("the deleted resource's directory is still in the servers dir")
	}
	if _, err := os.Stat(filepath.Join(servers, "db", "data", "PG_VERSION")); err != nil {
		t.Errorf("the other resource's data: %v", err)
	}
}

// asNobody runs a command as user and group nobody, with no other group.
func asNobody(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func wantMode(t *testing.T, p string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky); got != want {
		t.Errorf("%s: mode %v; want %v", p, got, want)
	}
}

func hasACL(p string) bool {
	_, err := syscall.Getxattr(p, "system.posix_acl_access", make([]byte, 512))
	return err == nil
}

// aclSearch is an access ACL (the kernel's xattr format) granting uid
// search, like those earlier versions added for the postgres user.
func aclSearch(uid uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range [][3]uint32{{0x01, 7, ^uint32(0)}, {0x02, 1, uid}, {0x04, 0, ^uint32(0)}, {0x10, 1, ^uint32(0)}, {0x20, 1, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// stopServers stops the resource servers whose pid files are under dir,
// as cleanly as pier would (postgres: fast shutdown, redis: a final
// flush), and waits for them to exit.
func stopServers(t *testing.T, dir string) {
	t.Helper()
	pids, _ := filepath.Glob(filepath.Join(dir, "*", "*.pid"))
	for _, f := range pids {
		b, _ := os.ReadFile(f)
		first, _, _ := strings.Cut(string(b), "\n")
		pid, err := strconv.Atoi(strings.TrimSpace(first))
		if err != nil || pid <= 1 {
			continue
		}
		sig := syscall.SIGTERM
		if strings.HasSuffix(f, "postgres.pid") {
			sig = syscall.SIGINT
		}
		syscall.Kill(pid, sig)
		eventually(t, 60*time.Second, "resource server "+strconv.Itoa(pid)+" exiting", func() error {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				return fmt.Errorf("still running")
			}
			return nil
		})
	}
}
