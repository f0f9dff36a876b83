package baseimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// These tests assemble real bases from this host's Debian packages.

func TestMinimalBase(t *testing.T) {
	base := sharedGet(t, "minimal")
	es := readLayer(t, base)
	checkLayer(t, base, es)
	m := entryMap(es)

	for name, want := range map[string]string{"bin": "usr/bin", "lib": "usr/lib", "usr/bin/sh": "dash"} {
		if e, ok := m[name]; !ok || e.Hdr.Typeflag != tar.TypeSymlink || e.Hdr.Linkname != want {
			t.Errorf("%s: want a symlink to %s, have %+v", name, want, e.Hdr)
		}
	}
	if e := m["usr/bin/dash"]; e.Hdr == nil || e.Hdr.Typeflag != tar.TypeReg || e.Hdr.Mode != 0o755 {
		t.Errorf("usr/bin/dash: %+v", e.Hdr)
	}
	for name := range m {
		// Files are at their real path only: nothing is under a symlink.
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if m[d].Hdr.Typeflag != tar.TypeDir {
				t.Errorf("%s is under %s, which is not a directory", name, d)
			}
		}
		for _, x := range []string{"usr/share/doc/", "usr/share/man/", "usr/share/locale/", "usr/include/", "usr/share/lintian/"} {
			if strings.HasPrefix(name+"/", x) {
				t.Errorf("%s should be left out", name)
			}
		}
	}
	mustFile := func(name string) []byte {
		t.Helper()
		e, ok := m[name]
		if !ok || e.Hdr.Typeflag != tar.TypeReg {
			t.Fatalf("no file %s in the minimal base", name)
		}
		return e.Data
	}
	host, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustFile("etc/ssl/certs/ca-certificates.crt"), host) {
		t.Error("the CA bundle differs from the host's")
	}
	if !bytes.Contains(mustFile("etc/services"), []byte("443/tcp")) {
		t.Error("etc/services lacks https")
	}
	mustFile("etc/protocols")
	mustFile("usr/share/zoneinfo/Europe/Paris")
	if got := string(mustFile("etc/passwd")); got != "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" {
		t.Errorf("etc/passwd:\n%s", got)
	}
	if !bytes.Contains(mustFile("etc/os-release"), []byte("ID=")) {
		t.Error("etc/os-release has no ID")
	}
	for dir, mode := range map[string]int64{"tmp": 0o1777, "var/tmp": 0o1777, "app": 0o755, "home": 0o755} {
		if e := m[dir]; e.Hdr == nil || e.Hdr.Typeflag != tar.TypeDir || e.Hdr.Mode != mode {
			t.Errorf("%s: want a directory of mode %o, have %+v", dir, mode, e.Hdr)
		}
	}
	hashLinks := 0
	for name, e := range m {
		if strings.HasPrefix(name, "etc/ssl/certs/") && e.Hdr.Typeflag == tar.TypeSymlink {
			hashLinks++
		}
	}
	if hashLinks < 100 {
		t.Errorf("%d symlinks in etc/ssl/certs, want the whole farm", hashLinks)
	}
	for _, p := range []string{"libc6=", "dash=", "ca-certificates=", "netbase="} {
		if !slices.ContainsFunc(base.Packages, func(s string) bool { return strings.HasPrefix(s, p) }) {
			t.Errorf("packages %v lack %s", base.Packages, p)
		}
	}
}

func TestCachedBaseIsNotRebuilt(t *testing.T) {
	first := sharedGet(t, "minimal")
	builds := shared.bases.builds.Load()
	ino := func(p string) uint64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	for _, name := range []string{"minimal", "go", "static"} {
		again := sharedGet(t, name)
		if again.Dir != first.Dir || ino(again.Dir) != ino(first.Dir) || again.Digest != first.Digest {
			t.Errorf("%s: %s %s, want the cached %s %s", name, again.Dir, again.Digest, first.Dir, first.Digest)
		}
	}
	if n := shared.bases.builds.Load(); n != builds {
		t.Errorf("%d builds for cached bases", n-builds)
	}
}

// Concurrent Gets through one Bases build once; a second cache, built from
// the same host packages, gets the same layer.
func TestDeterministicAndBuiltOnce(t *testing.T) {
	want := sharedGet(t, "minimal")
	b := New(t.TempDir(), nil)
	var wg sync.WaitGroup
	got := make([]Base, 3)
	errs := make([]error, 3)
	for i := range got {
		wg.Go(func() { got[i], errs[i] = b.Get(context.Background(), "minimal", nil) })
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i].Digest != want.Digest || got[i].DiffID != want.DiffID || got[i].Size != want.Size {
			t.Errorf("second build: digest %s diff %s, first %s %s", got[i].Digest, got[i].DiffID, want.Digest, want.DiffID)
		}
	}
	if n := b.builds.Load(); n != 1 {
		t.Errorf("%d builds for 3 concurrent Gets", n)
	}
}

// Setuid programs of the host's packages lose the bit in a base.
func TestNoSetuid(t *testing.T) {
	sharedGet(t, "minimal") // skips off Debian
	var suid []string
	for _, p := range []string{"/usr/bin/mount", "/usr/bin/passwd", "/usr/bin/su"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSetuid != 0 {
			suid = append(suid, p)
		}
	}
	if len(suid) == 0 {
		t.Skip("no setuid mount, passwd or su on this host")
	}
	b := New(t.TempDir(), nil)
	b.specs = map[string]spec{"suid": {Required: []string{"mount"}, Optional: []string{"passwd", "util-linux"}}}
	base, err := b.Get(context.Background(), "suid", nil)
	if err != nil {
		t.Fatal(err)
	}
	es := readLayer(t, base)
	checkLayer(t, base, es) // no mode bits outside 01777
	m := entryMap(es)
	found := 0
	for _, p := range suid {
		if e, ok := m[strings.TrimPrefix(p, "/")]; ok {
			found++
			if e.Hdr.Mode&(syscall.S_ISUID|syscall.S_ISGID) != 0 {
				t.Errorf("%s keeps mode %o", p, e.Hdr.Mode)
			}
		}
	}
	if found == 0 {
		t.Errorf("none of the setuid programs %v is in the base", suid)
	}
}

func TestMissingPackage(t *testing.T) {
	sharedGet(t, "minimal")
	b := New(t.TempDir(), nil)
	b.specs = map[string]spec{"web": {Required: []string{"pier-no-such-package"}}}
	_, err := b.Get(context.Background(), "web", nil)
	var me *MissingPackageError
	if !errors.Is(err, ErrMissingPackage) || !errors.As(err, &me) || me.Package != "pier-no-such-package" {
		t.Fatalf("err %v", err)
	}
	if want := "base image web needs pier-no-such-package: apt-get install pier-no-such-package"; err.Error() != want {
		t.Errorf("err %q, want %q", err, want)
	}
	if _, err := b.Get(context.Background(), "ruby", nil); !errors.Is(err, ErrUnknownBase) {
		t.Errorf("unknown base: %v", err)
	}
}

func TestGC(t *testing.T) {
	dir := t.TempDir()
	b := New(dir, nil)
	for _, d := range []string{"minimal-old/rootfs/usr", "minimal-keep/rootfs", "tmp/node-x.123/rootfs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A rootfs directory without write permission, as bases have.
	if err := os.Chmod(filepath.Join(dir, "minimal-old/rootfs/usr"), 0o555); err != nil {
		t.Fatal(err)
	}
	n, err := b.GC(context.Background(), map[string]bool{"minimal-keep": true})
	if err != nil || n != 1 {
		t.Fatalf("gc removed %d: %v", n, err)
	}
	ents, _ := os.ReadDir(dir)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if !slices.Equal(left, []string{"minimal-keep", "tmp"}) {
		t.Errorf("left %v", left)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmps) != 0 {
		t.Errorf("tmp holds %d stale builds", len(tmps))
	}
}

// TestBaseSizes assembles every base and logs what it holds, how big it
// is and how long assembling took here: a measurement, not an assertion.
func TestBaseSizes(t *testing.T) {
	for _, name := range Names() {
		base := sharedGet(t, name)
		shared.mu.Lock()
		took := shared.built[base.Canonical]
		shared.mu.Unlock()
		t.Logf("base %-8s = %-7s %3d packages  unpacked %6.1f MB  layer %5.1f MB  assembled in %.1fs",
			name, base.Canonical, len(base.Packages), float64(base.Unpacked)/1e6, float64(base.Size)/1e6, took.Seconds())
	}
	m := entryMap(readLayer(t, sharedGet(t, "node")))
	for _, p := range []string{"usr/bin/node", "usr/bin/npm", "usr/lib/node_modules/npm/bin/npm-cli.js", "usr/bin/env"} {
		if _, ok := m[p]; !ok {
			t.Errorf("node base lacks %s", p)
		}
	}
}
