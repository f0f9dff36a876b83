package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResolve(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"usr/lib", "etc", "a/b"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "etc/file"), nil, 0o644)
	links := map[string]string{
		"lib":       "usr/lib",
		"abslib":    "/usr/lib",
		"a/b/up":    "../..",
		"a/b/out":   "../../..",
		"loop1":     "loop2",
		"loop2":     "loop1",
		"dangling":  "/nowhere/deeper",
		"rootlink":  "/",
		"chain":     "lib",
		"dotdotabs": "/../etc",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	u := newUnpacker(root, DefaultMaxSize)
	tests := []struct {
		in, want string
		errIs    error
	}{
		{in: "", want: ""},
		{in: "usr/lib", want: "usr/lib"},
		{in: "lib", want: "usr/lib"},
		{in: "lib/x/y", want: "usr/lib/x/y"},
		{in: "abslib/x", want: "usr/lib/x"},
		{in: "chain", want: "usr/lib"},
		{in: "a/b/up/etc", want: "etc"},
		{in: "rootlink/etc", want: "etc"},
		{in: "dangling/x", want: "nowhere/deeper/x"},
		{in: "missing/x", want: "missing/x"},
		{in: "a/b/out", errIs: ErrUnsafeLayer},
		{in: "a/b/out/x", errIs: ErrUnsafeLayer},
		{in: "dotdotabs", errIs: ErrUnsafeLayer},
		{in: "loop1/x", errIs: ErrInvalid},
		{in: "etc/file/x", errIs: errNotDir},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := u.resolve(tt.in)
			switch {
			case tt.errIs == errNotDir:
				if err == nil || !strings.Contains(err.Error(), "not a directory") {
					t.Errorf("resolve(%q) = %q, %v; want a not-a-directory error", tt.in, got, err)
				}
			case tt.errIs != nil:
				if !errors.Is(err, tt.errIs) {
					t.Errorf("resolve(%q) = %q, %v; want %v", tt.in, got, err, tt.errIs)
				}
			case err != nil || got != tt.want:
				t.Errorf("resolve(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

var errNotDir = errors.New("not a directory")

func TestCleanEntryName(t *testing.T) {
	tests := []struct {
		in, want string
		errIs    error
	}{
		{in: "./", want: ""},
		{in: ".", want: ""},
		{in: "./etc/passwd", want: "etc/passwd"},
		{in: "etc/", want: "etc"},
		{in: "a//b/./c", want: "a/b/c"},
		{in: "a/../b", want: "b"},
		{in: "..", errIs: ErrUnsafeLayer},
		{in: "../x", errIs: ErrUnsafeLayer},
		{in: "a/../../x", errIs: ErrUnsafeLayer},
		{in: "/etc/passwd", errIs: ErrUnsafeLayer},
		{in: "/", errIs: ErrUnsafeLayer},
		{in: "", errIs: ErrInvalid},
	}
	for _, tt := range tests {
		got, err := cleanEntryName(tt.in)
		if tt.errIs != nil {
			if !errors.Is(err, tt.errIs) {
				t.Errorf("cleanEntryName(%q) = %q, %v; want %v", tt.in, got, err, tt.errIs)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("cleanEntryName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestUnpackNotRoot runs the unpacker as it runs for a user other than
// root: devices and foreign extended attributes are skipped with a note,
// ownership is left alone, and read-only directories still receive later
// layers' files and end with their own modes.
func TestUnpackNotRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	os.Mkdir(root, 0o755)
	u := newUnpacker(root, DefaultMaxSize)
	u.asRoot = false
	layers := [][]ent{
		{
			ent{name: "./", typ: tar.TypeDir, mode: 0o755},
			ent{name: "ro", typ: tar.TypeDir, mode: 0o555},
			file("ro/a", "a"),
			ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
			ent{name: "caps", body: "c", uid: 1234, pax: map[string]string{"SCHILY.xattr.security.capability": "x"}},
		},
		{
			file("ro/b", "b"),
			ent{name: "ro/sub", typ: tar.TypeDir, mode: 0o500},
			file("ro/sub/c", "c"),
		},
	}
	for i, l := range layers {
		b := tarOf(t, l...)
		err := u.applyLayer(context.Background(), layerSource{open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}})
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	if err := u.finish(); err != nil {
		t.Fatal(err)
	}
	if err := u.finishRoot(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(root) })
	diffTrees(t, tree(t, root), map[string]string{
		"ro":       "dr-xr-xr-x",
		"ro/a":     "-rw-r--r-- a",
		"ro/b":     "-rw-r--r-- b",
		"ro/sub":   "dr-x------",
		"ro/sub/c": "-rw-r--r-- c",
		"dev":      "drwxr-xr-x",
		"caps":     "-rw-r--r-- c",
	})
	notes := u.noteLines()
	want := []string{
		"device nodes skipped: a machine's devices come from its runtime (1 entries)",
		"extended attributes skipped: file capabilities and trusted or security attributes are not kept (1 entries)",
	}
	if !slices.Equal(notes, want) {
		t.Errorf("notes = %q, want %q", notes, want)
	}
	fi, err := os.Lstat(filepath.Join(root, "caps"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Sys().(*syscall.Stat_t).Uid == 1234 {
		t.Error("ownership applied while not acting as root")
	}
}

// TestUnprivileged runs the tests that unpack, as an unprivileged user,
// when the suite runs as root: the test binary re-executes itself as
// nobody, where permission checks apply.
func TestUnprivileged(t *testing.T) {
	if os.Getenv("PIER_IMAGE_TEST_UNPRIVILEGED") != "" {
		t.Skip("already the unprivileged run")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: the whole suite already runs unprivileged")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	// The test binary, and t.TempDir(), live in directories only root may
	// enter: run a copy from a directory anyone may.
	dir, err := os.MkdirTemp("", "pier-image-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "image.test")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(tmp, 0o1777)
	cmd := exec.Command(bin, "-test.count=1", "-test.v", "-test.run=^(TestGetTransports|TestGetUnsafeLayers|TestGC|TestGetCacheHit|TestGetTooLarge|TestUnpackNotRoot)$")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "PIER_IMAGE_TEST_UNPRIVILEGED=1", "TMPDIR="+tmp, "HOME="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	for _, name := range []string{"TestGetTransports", "TestGetUnsafeLayers", "TestGC", "TestUnpackNotRoot"} {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Errorf("as nobody, %s did not pass:\n%s", name, out)
		}
	}
}

// TestHostileLayerGivesTheHostNothing unpacks, as root (as pier does), a
// layer with a device node that would open the host's memory, a file with
// file capabilities and trusted.* (overlay) attributes: none of them is
// made. (Set-id bits are kept for the machine, where no_new_privs voids
// them; the host never runs them: the tree is under 0700 directories and
// mounted nosuid, see internal/runtime/runc.)
func TestHostileLayerGivesTheHostNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root, as pier runs")
		}
		t.Skip("needs root, as pier runs")
	}
	root := filepath.Join(t.TempDir(), "root")
	os.Mkdir(root, 0o755)
	u := newUnpacker(root, DefaultMaxSize)
	b := tarOf(t,
		ent{name: "./", typ: tar.TypeDir, mode: 0o755},
		ent{name: "mem", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 1},
		ent{name: "sda", typ: tar.TypeBlock, mode: 0o666, major: 8, minor: 0},
		ent{name: "capped", body: "c", pax: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"}},
		ent{name: "opaque", typ: tar.TypeDir, mode: 0o755, pax: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.kept": "1"}},
	)
	if err := u.applyLayer(context.Background(), layerSource{open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}}); err != nil {
		t.Fatal(err)
	}
	if err := u.finish(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(root) })
	for _, dev := range []string{"mem", "sda"} {
		if _, err := os.Lstat(filepath.Join(root, dev)); !os.IsNotExist(err) {
			t.Errorf("device node %s was made (%v)", dev, err)
		}
	}
	buf := make([]byte, 256)
	if n, err := unix.Lgetxattr(filepath.Join(root, "capped"), "security.capability", buf); err == nil {
		t.Errorf("file capabilities kept: %d bytes", n)
	}
	if _, err := unix.Lgetxattr(filepath.Join(root, "opaque"), "trusted.overlay.opaque", buf); err == nil {
		t.Error("trusted.overlay.opaque kept")
	}
	if n, err := unix.Lgetxattr(filepath.Join(root, "opaque"), "user.kept", buf); err != nil || string(buf[:n]) != "1" {
		t.Errorf("user.kept = %q, %v; user attributes are kept", buf[:n], err)
	}
}
