package baseimage

import (
	"archive/tar"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// fakeHost makes a small Debian-like root with what the collector must
// get right: merged /usr, a diversion, setuid bits, a fifo, excluded docs,
// symlinks climbing out of the root and looping, generated CA files.
func fakeHost(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"usr/bin/dash":                              "dash",
		"usr/bin/sh.distrib":                        "old sh",
		"usr/bin/su":                                "su",
		"usr/lib64/ld.so":                           "ld",
		"usr/lib/os-release":                        "ID=debian\n",
		"usr/share/doc/dash/copyright":              "GPL",
		"usr/share/ca-certificates/a.crt":           "A",
		"usr/local/share/ca-certificates/local.crt": "L",
		"etc/services":                              "http 80/tcp\n",
		"etc/passwd":                                "root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
		"etc/ssl/certs/ca-certificates.crt":         "A\nL\n",
		"etc/ssl/certs/java/cacerts":                "jks",
		"hostfile":                                  "at the root",
		"usr/lib/node_modules/npm/new.js":           "npm 11",
		"usr/bin/node":                              "node",
		"usr/bin/env":                               "env",
	}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"bin":                     "usr/bin",
		"lib":                     "usr/lib",
		"lib64":                   "usr/lib64",
		"usr/bin/sh":              "dash",
		"usr/lib/escape":          "../../../../etc/shadow",
		"usr/lib/up":              "../../../../..",
		"usr/lib/loop":            "loop",
		"etc/os-release":          "../usr/lib/os-release",
		"etc/ssl/certs/a.pem":     "/usr/share/ca-certificates/a.crt",
		"etc/ssl/certs/local.pem": "/usr/local/share/ca-certificates/local.crt",
	}
	for p, target := range links {
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "usr/bin/su"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "usr/lib/x"), 0o775|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "usr/lib/x/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}

	admin := filepath.Join(root, "var/lib/dpkg")
	if err := os.MkdirAll(filepath.Join(admin, "info"), 0o755); err != nil {
		t.Fatal(err)
	}
	var status strings.Builder
	status.WriteString("Package: dpkg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n")
	lists := map[string]string{
		"dash":            "/.\n/bin\n/bin/dash\n/bin/sh\n/usr/share/doc/dash/copyright\n/usr/bin/su\n/usr/lib/escape\n/usr/lib/up/hostfile\n/usr/lib/loop/x\n/gone\n",
		"libc6":           "/.\n/lib64/ld.so\n/lib/x\n/lib/x/fifo\n",
		"ca-certificates": "/etc\n/etc/ssl\n/etc/ssl/certs\n/usr/share/ca-certificates/a.crt\n",
		"netbase":         "/etc/services\n/etc/passwd-not-really\n",
		"nodejs":          "/usr/bin/node\n/usr/lib/node_modules/npm\n/usr/lib/node_modules/npm/old.js\n",
		"coreutils":       "/usr/bin/env\n",
	}
	for name, list := range lists {
		status.WriteString("Package: " + name + "\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n")
		if err := os.WriteFile(filepath.Join(admin, "info", name+".list"), []byte(list), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// dash diverted /bin/sh (to /bin/sh.distrib); its own /bin/sh stays.
	if err := os.WriteFile(filepath.Join(admin, "diversions"), []byte("/bin/sh\n/bin/sh.distrib\ndash\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(admin, "status"), []byte(status.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestFakeHost(t *testing.T) {
	b := New(t.TempDir(), nil)
	b.root = fakeHost(t)
	base, err := b.Get(context.Background(), "go", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Name != "go" || base.Canonical != "minimal" || !strings.HasPrefix(base.ID, "minimal-") {
		t.Errorf("base %q canonical %q id %q", base.Name, base.Canonical, base.ID)
	}
	if fi, err := os.Stat(filepath.Join(b.root, "usr/bin/su")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("the fake host's su is not setuid: %v %v", fi, err)
	}
	es := readLayer(t, base)
	checkLayer(t, base, es)
	got := listing(es)
	golden := filepath.Join("testdata", "fakehost.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("layer differs from %s (go test -run TestFakeHost -update rewrites it):\n%s", golden, got)
	}
}

// A changed host makes a new base; an unchanged one reuses the cached base.
func TestFakeHostChanges(t *testing.T) {
	root := fakeHost(t)
	b := New(t.TempDir(), nil)
	b.root = root
	b.specs = map[string]spec{"n": {Required: []string{"nodejs"}}}
	get := func() Base {
		t.Helper()
		base, err := b.Get(context.Background(), "n", nil)
		if err != nil {
			t.Fatal(err)
		}
		return base
	}
	first := get()
	m := entryMap(readLayer(t, first))
	if _, ok := m["usr/lib/node_modules/npm/new.js"]; !ok {
		t.Error("npm's files on disk are not in the base")
	}
	if get().ID != first.ID || b.builds.Load() != 1 {
		t.Fatalf("an unchanged host rebuilt the base")
	}

	// npm upgraded in place: same package version, other files.
	npm := filepath.Join(root, "usr/lib/node_modules/npm/new.js")
	if err := os.WriteFile(npm, []byte("npm 12"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(npm, time.Unix(1e9, 0), time.Unix(1e9, 0)); err != nil {
		t.Fatal(err)
	}
	second := get()
	if second.ID == first.ID || b.builds.Load() != 2 {
		t.Errorf("npm upgraded: base %s, before %s", second.ID, first.ID)
	}

	// A package upgraded.
	status := filepath.Join(root, "var/lib/dpkg/status")
	raw, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	raw = []byte(strings.Replace(string(raw), "Package: netbase\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0", "Package: netbase\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.1", 1))
	if err := os.WriteFile(status, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	third := get()
	if third.ID == second.ID || !slices.Contains(third.Packages, "netbase=1.1") {
		t.Errorf("netbase upgraded: base %s %v, before %s", third.ID, third.Packages, second.ID)
	}

	// The procfile base needs bash, which this host lacks.
	b.specs = nil
	_, err = b.Get(context.Background(), "procfile", nil)
	if err == nil || err.Error() != "base image procfile needs bash: apt-get install bash" {
		t.Errorf("procfile without bash: %v", err)
	}
}

// The unpacker goes through directories it made, never through a symlink.
func TestWriteRefusesPathsThroughSymlinks(t *testing.T) {
	dir := t.TempDir()
	entries := []*entry{
		{Path: "etc", Type: tar.TypeSymlink, Mode: 0o777, Link: "/etc"},
		{Path: "etc/evil", Type: tar.TypeReg, Mode: 0o644, Data: []byte("x")},
	}
	_, err := write(context.Background(), entries, filepath.Join(dir, "layer.tar.gz"), filepath.Join(dir, "rootfs"))
	if err == nil {
		t.Fatal("wrote through a symlink")
	}
	if _, err := os.Lstat("/etc/evil"); err == nil {
		t.Fatal("/etc/evil exists")
	}
	for _, p := range []string{"../x", "/x", "a/../../x", ""} {
		_, err := write(context.Background(), []*entry{{Path: p, Type: tar.TypeDir, Mode: 0o755}},
			filepath.Join(dir, "l"+strings.ReplaceAll(p, "/", "_")), filepath.Join(dir, "r"+strings.ReplaceAll(p, "/", "_")))
		if err == nil {
			t.Errorf("wrote %q", p)
		}
	}
}
