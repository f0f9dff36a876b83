package baseimage

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const fakeStatus = `Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21

Package: app
Status: install ok installed
Architecture: amd64
Version: 1.0
Depends: notthere (>= 2) | libfoo:any (>= 1.2), mta,
 libbar:amd64 [amd64]
Pre-Depends: libc6 (>= 2.34)

Package: libfoo
Status: install ok installed
Architecture: all
Version: 2

Package: libbar
Status: install ok installed
Architecture: amd64
Version: 3
Depends: libc6

Package: libbar
Status: install ok installed
Architecture: i386
Version: 3
Depends: i386only

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36

Package: zmailer
Status: install ok installed
Architecture: amd64
Version: 1
Provides: mta

Package: amailer
Status: install ok installed
Architecture: amd64
Version: 1
Provides: mta (= 1)

Package: removed
Status: deinstall ok config-files
Architecture: amd64
Version: 9

Package: broken
Status: install ok installed
Architecture: amd64
Version: 1
Depends: removed | gone
`

// fakeRoot writes a dpkg database with fakeStatus under a new directory.
func fakeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	admin := filepath.Join(root, "var/lib/dpkg")
	if err := os.MkdirAll(filepath.Join(admin, "info"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(admin, "status"), []byte(fakeStatus), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func names(ps []*pkg) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func TestClosureRules(t *testing.T) {
	db, err := loadDB(fakeRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	if db.native != "amd64" {
		t.Errorf("native arch %q, want dpkg's amd64", db.native)
	}
	if db.pkgs["removed"] != nil {
		t.Error("a package in config-files state counted as installed")
	}
	ps, err := db.closure("t", []string{"app"}, []string{"nope"})
	if err != nil {
		t.Fatal(err)
	}
	// notthere is skipped for libfoo; mta goes to its first provider by
	// name; libbar is the native one, without the i386 copy's dependency.
	want := []string{"amailer", "app", "libbar", "libc6", "libfoo"}
	if got := names(ps); !slices.Equal(got, want) {
		t.Errorf("closure %v, want %v", got, want)
	}

	_, err = db.closure("t", []string{"broken"}, nil)
	var me *MissingPackageError
	if !errors.As(err, &me) || !errors.Is(err, ErrMissingPackage) || me.Package != "removed" || me.For != "broken" {
		t.Errorf("unsatisfied dependency: %v", err)
	}
	_, err = db.closure("web", []string{"nodejs"}, nil)
	if err == nil || err.Error() != "base image web needs nodejs: apt-get install nodejs" {
		t.Errorf("missing package: %v", err)
	}
}

func TestDepName(t *testing.T) {
	for in, want := range map[string]string{
		"libc6":                 "libc6",
		" libc6 (>= 2.34) ":     "libc6",
		"python3:any (>= 3.9)":  "python3",
		"libbar:amd64 [amd64]":  "libbar",
		"foo<!nocheck>":         "foo",
		"debconf (>= 0.5)":      "debconf",
		"libgcc-s1:amd64(>=12)": "libgcc-s1",
	} {
		if got := depName(in); got != want {
			t.Errorf("depName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHostClosure(t *testing.T) {
	db, err := loadDB("/")
	if err != nil {
		t.Skipf("no dpkg database: %v", err)
	}
	for root, musts := range map[string][]string{
		"nodejs":  {"libc6", "libstdc++6"},
		"python3": {"libc6", "python3-minimal", "python3.11-minimal", "libpython3.11-stdlib"},
	} {
		if db.resolve(root) == nil {
			t.Logf("%s is not installed here", root)
			continue
		}
		ps, err := db.closure("t", []string{root}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := names(ps)
		for _, m := range musts {
			if db.resolve(m) != nil && !slices.Contains(got, m) {
				t.Errorf("closure of %s lacks %s: %v", root, m, got)
			}
		}
	}
}

func TestDiversions(t *testing.T) {
	root := fakeRoot(t)
	admin := filepath.Join(root, "var/lib/dpkg")
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(admin, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("diversions", "/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/x\n/usr/bin/x.real\nlibfoo\n")
	write("info/libc6:amd64.list", "/.\n/bin\n/bin/sh\n/usr/bin/x\n/usr/./lib/y\n")
	db, err := loadDB(root)
	if err != nil {
		t.Fatal(err)
	}
	files, err := db.files(db.pkgs["libc6"])
	if err != nil {
		t.Fatal(err)
	}
	// libc6's /bin/sh is at /bin/sh.distrib (dash diverted it); its
	// /usr/bin/x too, at /usr/bin/x.real.
	want := []string{"/bin", "/bin/sh.distrib", "/usr/bin/x.real", "/usr/lib/y"}
	if !slices.Equal(files, want) {
		t.Errorf("files %v, want %v", files, want)
	}
}
