package daemon

import (
	"encoding/binary"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// serverUser is the unprivileged account the tests prepare directories
// for; they need root, like pier when it runs servers as other users.
func serverUser(t *testing.T) (name string, uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the directory tests run as root, like pier (servers run as other users)")
		}
		t.Skip("not root: servers run as pier's own user")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return "nobody", uid, gid
}

// reachableTempDir is a temp dir that other users may search: the test's
// own temp dirs are 0700.
func reachableTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func statT(t *testing.T, p string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// aclGranting is an access ACL (the kernel's xattr format) that lets uid
// search the directory, as earlier versions of pier added.
func aclGranting(uid int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 7, ^uint32(0)}, {0x02, 1, uint32(uid)}, {0x04, 0, ^uint32(0)}, {0x10, 1, ^uint32(0)}, {0x20, 0, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

func TestPrepare(t *testing.T) {
	name, uid, gid := serverUser(t)
	tests := []struct {
		name string
		// setup changes the parent of the server's directory (0711, root's).
		setup func(t *testing.T, parent string)
		// refused: a part of the error, "" if Prepare must succeed.
		refused string
	}{
		{name: "traversable parent", setup: func(*testing.T, string) {}},
		{name: "sticky world-writable parent", setup: chmod(os.ModeSticky | 0o777)},
		{name: "parent searchable by the user's group", setup: func(t *testing.T, p string) {
			chmod(0o710)(t, p)
			if err := os.Chown(p, 0, gid); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "existing directory with an ACL", setup: func(t *testing.T, p string) {
			dir := filepath.Join(p, "cache")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Setxattr(dir, aclXattr, aclGranting(uid), 0); err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("no POSIX ACLs here: %v", err)
				}
				t.Skipf("no POSIX ACLs here: %v", err)
			}
		}},
		{name: "group-writable parent", setup: chmod(0o771), refused: "writable by its group or others"},
		{name: "world-writable parent", setup: chmod(0o777), refused: "writable by its group or others"},
		{name: "parent the user cannot search", setup: chmod(0o700), refused: "cannot reach"},
		{name: "parent only its group may search", setup: chmod(0o710), refused: "cannot reach"},
		{name: "parent owned by another user", setup: func(t *testing.T, p string) {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}, refused: "not root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := filepath.Join(reachableTempDir(t), "servers")
			if err := os.Mkdir(parent, 0o711); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, parent)
			before := statT(t, parent)
			d := Daemon{Name: "redis", Dir: filepath.Join(parent, "cache"), User: name}
			err := d.Prepare("data", "run")

			after := statT(t, parent)
			if after.Mode != before.Mode || after.Uid != before.Uid || after.Gid != before.Gid {
				t.Errorf("parent changed: mode %o uid %d gid %d, was %o %d %d", after.Mode, after.Uid, after.Gid, before.Mode, before.Uid, before.Gid)
			}
			if _, xerr := syscall.Getxattr(parent, aclXattr, make([]byte, 256)); xerr == nil {
				t.Error("parent got an ACL")
			}
			if tt.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("Prepare = %v; want an error saying %q", err, tt.refused)
				}
				if !strings.Contains(err.Error(), parent) {
					t.Errorf("the error does not name %s: %v", parent, err)
				}
				if _, serr := os.Stat(filepath.Join(d.Dir, "data")); serr == nil {
					t.Error("refused, yet made the data dir")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][3]int{d.Dir: {0, gid, 0o710}, filepath.Join(d.Dir, "data"): {uid, gid, 0o700}, filepath.Join(d.Dir, "run"): {uid, gid, 0o700}}
			for p, w := range want {
				st := statT(t, p)
				if int(st.Uid) != w[0] || int(st.Gid) != w[1] || int(st.Mode&0o7777) != w[2] {
					t.Errorf("%s: uid %d gid %d mode %o; want %d %d %o", p, st.Uid, st.Gid, st.Mode&0o7777, w[0], w[1], w[2])
				}
			}
			if _, xerr := syscall.Getxattr(d.Dir, aclXattr, make([]byte, 256)); xerr == nil {
				t.Error("the server's directory kept its ACL")
			}
			// Again, as at every start: nothing changes.
			if err := d.Prepare("data", "run"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func chmod(mode os.FileMode) func(*testing.T, string) {
	return func(t *testing.T, p string) {
		t.Helper()
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPrepareAsPiersUser(t *testing.T) {
	d := Daemon{Name: "redis", Dir: filepath.Join(t.TempDir(), "resources", "cache")}
	if err := d.Prepare("data"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{d.Dir, filepath.Join(d.Dir, "data")} {
		if st := statT(t, p); st.Mode&0o7777 != 0o700 || int(st.Uid) != os.Geteuid() {
			t.Errorf("%s: mode %o uid %d; want 0700, pier's", p, st.Mode&0o7777, st.Uid)
		}
	}
}

func TestMakeServersDir(t *testing.T) {
	serverUser(t)
	base := reachableTempDir(t)
	root := filepath.Join(base, "servers")
	dir, err := MakeServersDir(root, "/var/lib/pier")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := ServersDir(root, "/var/lib/pier/"); dir != want || filepath.Dir(dir) != root || len(filepath.Base(dir)) != 16 {
		t.Errorf("MakeServersDir = %s; want %s: root/<16 hex digits>", dir, want)
	}
	if other, _ := ServersDir(root, "/var/lib/pier2"); other == dir {
		t.Error("two data dirs share a servers dir")
	}
	for _, p := range []string{root, dir} {
		if st := statT(t, p); st.Mode&0o7777 != 0o711 || st.Uid != 0 {
			t.Errorf("%s: mode %o uid %d; want 0711, root's", p, st.Mode&0o7777, st.Uid)
		}
	}
	if _, err := MakeServersDir(root, "/var/lib/pier"); err != nil {
		t.Errorf("again: %v", err)
	}

	if err := os.Chmod(dir, 0o731); err != nil {
		t.Fatal(err)
	}
	if _, err := MakeServersDir(root, "/var/lib/pier"); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("group-writable servers dir: %v; want refused", err)
	}
	if st := statT(t, dir); st.Mode&0o7777 != 0o731 {
		t.Errorf("refused servers dir changed to %o", st.Mode&0o7777)
	}

	data := filepath.Join(base, "data")
	if _, err := MakeServersDir(filepath.Join(data, "servers"), data); err == nil || !strings.Contains(err.Error(), "--servers-dir") {
		t.Errorf("servers dir in the data dir: %v; want refused", err)
	}
}
