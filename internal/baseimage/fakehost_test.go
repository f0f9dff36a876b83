package baseimage

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
