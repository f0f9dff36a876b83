package image

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestGC(t *testing.T) {
	a := imageOf(t, v1.Config{}, layerOf(t, file("a", "a")))
	b := imageOf(t, v1.Config{}, layerOf(t, ent{name: "ro", typ: tar.TypeDir, mode: 0o555}, file("ro/b", "b")))
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"a": a, "b": b})
	archive := filepath.Join(t.TempDir(), "c.tar")
	writeDockerArchive(t, archive, map[string]v1.Image{"c:1": imageOf(t, v1.Config{}, layerOf(t, file("c", "c")))})
	s := newStore(t)
	ctx := context.Background()
	ia, err := s.Get(ctx, "oci:"+dir+":a", nil)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := s.Get(ctx, "oci:"+dir+":b", nil)
	if err != nil {
		t.Fatal(err)
	}
	ic, err := s.Get(ctx, "docker-archive:"+archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.Dir, "tmp", "unpack-crashed")
	os.MkdirAll(filepath.Join(stale, "x"), 0o755)
	old := time.Now().Add(-2 * staleTmp)
	os.Chtimes(stale, old, old)
	fresh := filepath.Join(s.Dir, "tmp", "unpack-other-process")
	os.Mkdir(fresh, 0o755)

	cfgA, _ := a.ConfigName()
	blobs := func() []string { return dirEntries(t, filepath.Join(s.Dir, "blobs", "sha256")) }

	removed, err := s.GC(ctx, map[string]bool{ia.Digest: true, ic.Digest: true})
	if err != nil || removed != 1 {
		t.Fatalf("GC = %d, %v; want 1 removed", removed, err)
	}
	if !isDir(ia.Rootfs) || isDir(ib.Rootfs) || !isDir(ic.Rootfs) {
		t.Errorf("after GC: a %v, b %v, c %v; want a and c kept", isDir(ia.Rootfs), isDir(ib.Rootfs), isDir(ic.Rootfs))
	}
	wantBlobs := []string{strings.TrimPrefix(ia.Digest, "sha256:"), cfgA.Hex, strings.TrimPrefix(ic.Digest, "sha256:")}
	if got := blobs(); !sameSet(got, wantBlobs) {
		t.Errorf("blobs = %v, want %v", got, wantBlobs)
	}
	if isDir(stale) || !isDir(fresh) {
		t.Errorf("tmp/: stale kept %v, fresh kept %v; want only the fresh one kept", isDir(stale), isDir(fresh))
	}
	// A removed image comes back on the next Get.
	if _, err := s.Get(ctx, "oci:"+dir+":b", nil); err != nil || !isDir(ib.Rootfs) {
		t.Errorf("Get after GC: %v", err)
	}

	removed, err = s.GC(ctx, nil)
	if err != nil || removed != 3 {
		t.Fatalf("GC = %d, %v; want 3 removed", removed, err)
	}
	if es := dirEntries(t, filepath.Join(s.Dir, "rootfs")); len(es) != 0 {
		t.Errorf("rootfs/ = %v", es)
	}
	if got := blobs(); len(got) != 0 {
		t.Errorf("blobs = %v", got)
	}
}

func sameSet(a, b []string) bool {
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}
