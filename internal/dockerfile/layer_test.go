package dockerfile

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("layer tests need root (whiteouts are device nodes, owners are kept)")
	}
	t.Skip("needs root")
}

type ent struct {
	name string
	typ  byte
	body string
	link string
	mode int64
	uid  int
}

func tarOf(t *testing.T, es ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Uid: e.uid, Gid: e.uid, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func layerOf(t *testing.T, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// importTar unpacks a tar as one layer over below and returns its dir.
func importTar(t *testing.T, work string, below stack, b []byte) (string, *fileLayer, error) {
	t.Helper()
	l := layerOf(t, b)
	diffID, _ := l.DiffID()
	dir, err := os.MkdirTemp(work, "layer-")
	if err != nil {
		t.Fatal(err)
	}
	budget := int64(1 << 30)
	fl, err := importLayer(context.Background(), l, diffID, dir+".blob", dir, below, &budget)
	return dir, fl, err
}

func isWhiteoutAt(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && isWhiteout(fi)
}

// TestWhiteoutsBothWays: OCI whiteouts become overlayfs whiteouts and
// opaque directories when a layer is unpacked, and come back as the same
// OCI entries when the directory is written as a layer.
func TestWhiteoutsBothWays(t *testing.T) {
	needRoot(t)
	work := t.TempDir()
	lower, _, err := importTar(t, work, nil, tarOf(t,
		ent{name: "etc/", typ: tar.TypeDir}, ent{name: "etc/passwd", body: "root"},
		ent{name: "var/", typ: tar.TypeDir, mode: 0o750, uid: 7}, ent{name: "var/cache/", typ: tar.TypeDir}, ent{name: "var/cache/old", body: "x"},
		ent{name: "bin", typ: tar.TypeSymlink, link: "usr/bin"}))
	if err != nil {
		t.Fatal(err)
	}
	upper, fl, err := importTar(t, work, stack{lower}, tarOf(t,
		ent{name: "etc/.wh.passwd"},
		ent{name: "var/cache/.wh..wh..opq"}, ent{name: "var/cache/new", body: "y"},
		ent{name: "suid", body: "s", mode: 0o4755},
		ent{name: "hard", typ: tar.TypeLink, link: "suid"}))
	if err != nil {
		t.Fatal(err)
	}
	if fl.mediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("media type %s", fl.mediaType)
	}
	if !isWhiteoutAt(filepath.Join(upper, "etc/passwd")) {
		t.Error("etc/passwd is not an overlay whiteout")
	}
	if !isOpaque(filepath.Join(upper, "var/cache")) {
		t.Error("var/cache is not opaque")
	}
	// var/ was implicit in the upper layer's tar: it keeps the lower's attributes.
	fi, _ := os.Lstat(filepath.Join(upper, "var"))
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o750 || st.Uid != 7 {
		t.Errorf("implicit var/ is %v uid %d", fi.Mode(), st.Uid)
	}
	fi, _ = os.Lstat(filepath.Join(upper, "suid"))
	if fi.Mode()&os.ModeSetuid == 0 {
		t.Error("setuid bit lost")
	}

	// The merged view, as a machine would see it.
	s := stack{upper, lower}
	if _, _, ok := s.lstat("etc/passwd"); ok {
		t.Error("whited-out file visible")
	}
	if _, _, ok := s.lstat("var/cache/old"); ok {
		t.Error("file under an opaque directory visible")
	}
	if _, _, ok := s.lstat("var/cache/new"); !ok {
		t.Error("new file invisible")
	}
	if r, err := s.resolve("bin/sh", true); err != nil || r != "usr/bin/sh" {
		t.Errorf("resolve bin/sh = %q %v", r, err)
	}

	// And back to a layer.
	out, err := writeLayer(upper, filepath.Join(work, "out.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := out.layer()
	if err != nil {
		t.Fatal(err)
	}
	got := tarEntries(t, l)
	want := []string{"etc/", "etc/.wh.passwd", "hard", "suid->hard", "var/", "var/cache/", "var/cache/.wh..wh..opq", "var/cache/new"}
	if !slices.Equal(got, want) {
		t.Errorf("layer entries %q, want %q", got, want)
	}
	rc, _ := l.Uncompressed()
	h := newHashWriter(io.Discard)
	io.Copy(h, rc)
	if h.sum() != out.diffID {
		t.Errorf("diff ID %s, content %s", out.diffID, h.sum())
	}
}

func tarEntries(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		n := h.Name
		if h.Typeflag == tar.TypeLink {
			n += "->" + h.Linkname
		}
		names = append(names, n)
	}
}

// TestUnsafeLayers: a layer cannot write outside its directory, through
// its own symbolic links, or smuggle overlayfs' attributes.
func TestUnsafeLayers(t *testing.T) {
	needRoot(t)
	work := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	for name, b := range map[string][]byte{
		"dotdot":        tarOf(t, ent{name: "../../escape", body: "x"}),
		"absolute":      tarOf(t, ent{name: "/abs", body: "x"}),
		"through link":  tarOf(t, ent{name: "l", typ: tar.TypeSymlink, link: filepath.Dir(victim)}, ent{name: "l/victim", body: "x"}),
		"hardlink out":  tarOf(t, ent{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}),
		"whiteout name": tarOf(t, ent{name: "a/.wh.."}),
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := importTar(t, work, nil, b)
			if err == nil {
				t.Fatal("unpacked")
			}
			if _, err := os.Stat(victim); err == nil {
				t.Fatal("wrote outside")
			}
		})
	}
	b := tarOf(t, ent{name: "f", body: "x"})
	l := layerOf(t, b)
	dir := filepath.Join(work, "corrupt")
	os.Mkdir(dir, 0o700)
	budget := int64(1 << 30)
	if _, err := importLayer(context.Background(), l, v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}, dir+".blob", dir, nil, &budget); err == nil {
		t.Error("a layer whose content does not match its diff ID was accepted")
	}
	small := int64(0)
	os.Mkdir(dir+"2", 0o700)
	if _, err := importLayer(context.Background(), l, v1.Hash{}, dir+"2.blob", dir+"2", nil, &small); err == nil {
		t.Error("a layer over the size budget was accepted")
	}
	// xattrs other than user.* and file capabilities are not applied.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.ok": "1"}, Format: tar.FormatPAX})
	tw.Close()
	d, _, err := importTar(t, work, nil, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if isOpaque(filepath.Join(d, "d")) {
		t.Error("trusted.overlay.opaque taken from a tar header")
	}
	if n, err := unix.Lgetxattr(filepath.Join(d, "d"), "user.ok", make([]byte, 8)); err != nil || n != 1 {
		t.Errorf("user xattr not kept: %v", err)
	}
}

func TestChownIDs(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
	s := stack{dir}
	for spec, want := range map[string][2]int{"app": {1000, 1001}, "app:staff": {1000, 50}, "1000": {1000, 1001}, "42": {42, 42}, "42:7": {42, 7}, "root:root": {0, 0}} {
		uid, gid, err := s.chownIDs(spec)
		if err != nil || uid != want[0] || gid != want[1] {
			t.Errorf("chownIDs(%q) = %d:%d %v, want %v", spec, uid, gid, err, want)
		}
	}
	for _, bad := range []string{"nobody", "app:nogroup", "-1", ""} {
		if _, _, err := s.chownIDs(bad); err == nil {
			t.Errorf("chownIDs(%q) accepted", bad)
		}
	}
}

// TestCopyFromContext: COPY reads only the build context: .dockerignore
// holds, symbolic links are copied as links (never followed), paths climb
// no higher than the context, and directories the image has keep their
// attributes.
func TestCopyFromContext(t *testing.T) {
	needRoot(t)
	ctxDir := t.TempDir()
	write := func(rel, body string) {
		p := filepath.Join(ctxDir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("app/main.js", "main")
	write("app/node_modules/x/index.js", "dep")
	write("app/secret.env", "KEY=1")
	write("app/keep.env", "ok")
	write(".dockerignore", "**/node_modules\n*/*.env\n!app/keep.env\n")
	os.Symlink("/etc/shadow", filepath.Join(ctxDir, "app", "shadow"))
	os.Chmod(filepath.Join(ctxDir, "app/main.js"), 0o4755)

	image := t.TempDir()
	os.Mkdir(filepath.Join(image, "srv"), 0o711)
	os.Chown(filepath.Join(image, "srv"), 5, 5)
	bc, err := openContext(ctxDir)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	layer := t.TempDir()
	op := copyOp{sources: []string{"../../app"}, dest: "www/", workdir: "/srv", uid: 1000, gid: 1000, chown: true}
	if err := bc.copyInto(op, layer, stack{image}); err != nil {
		t.Fatal(err)
	}
	var got []string
	walkSorted(layer, "", func(rel string, fi os.FileInfo) error {
		got = append(got, rel)
		return nil
	})
	want := []string{"srv", "srv/www", "srv/www/keep.env", "srv/www/main.js", "srv/www/shadow"}
	if !slices.Equal(got, want) {
		t.Errorf("layer holds %q, want %q", got, want)
	}
	fi, _ := os.Lstat(filepath.Join(layer, "srv"))
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o711 || st.Uid != 5 {
		t.Errorf("/srv became %v uid %d", fi.Mode(), st.Uid)
	}
	fi, _ = os.Lstat(filepath.Join(layer, "srv/www/main.js"))
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != 0o755 || st.Uid != 1000 {
		t.Errorf("main.js is %v uid %d", fi.Mode(), st.Uid)
	}
	if target, err := os.Readlink(filepath.Join(layer, "srv/www/shadow")); err != nil || target != "/etc/shadow" {
		t.Errorf("symlink copied as %q %v", target, err)
	}

	for name, op := range map[string]copyOp{
		"ignored":     {sources: []string{"app/secret.env"}, dest: "/x"},
		"missing":     {sources: []string{"nope"}, dest: "/x"},
		"no match":    {sources: []string{"*.go"}, dest: "/x/"},
		"several":     {sources: []string{"app/main.js", "app/keep.env"}, dest: "/x"},
		"url":         {add: true, sources: []string{"https://example.com/x"}, dest: "/x"},
		"add archive": {add: true, sources: []string{"app.tgz"}, dest: "/x"},
	} {
		if name == "add archive" {
			write("app.tgz", "\x1f\x8b\x08\x00rest")
		}
		if err := bc.copyInto(op, t.TempDir(), stack{image}); err == nil {
			t.Errorf("%s: copied", name)
		}
	}
}
