package image

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

var richConfig = v1.Config{
	Entrypoint:   []string{"/bin/tool"},
	Cmd:          []string{"serve", "--port", "8080"},
	Env:          []string{"PATH=/usr/bin:/bin", "MODE=test"},
	WorkingDir:   "/data",
	User:         "1000:1000",
	ExposedPorts: map[string]struct{}{"8080/tcp": {}, "53/udp": {}},
	Labels:       map[string]string{"org.example": "yes"},
	StopSignal:   "SIGINT",
}

var dirTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// richImage exercises whiteouts, opaque directories (marker before and
// after the layer's own entries), links of both kinds, writes through a
// symlinked directory, special modes, devices, ownership and times.
func richImage(t testing.TB) v1.Image {
	return imageOf(t, richConfig, richLayers(t)...)
}

func richLayers(t testing.TB) []v1.Layer {
	l1 := layerOf(t,
		dir("etc"),
		file("etc/passwd", "root:x:0:0\n"),
		file("etc/gone", "bye"),
		dir("dirgone"), file("dirgone/x", "x"),
		dir("opq"), file("opq/old", "old"), dir("opq/sub"), file("opq/sub/old2", "old2"),
		dir("opq2"), file("opq2/old3", "old3"),
		dir("bin"), ent{name: "bin/tool", body: "#!/bin/sh\n", mode: 0o4755},
		dir("usr"), dir("usr/lib"),
		symlink("lib", "usr/lib"),
		symlink("abs", "/etc/passwd"),
		symlink("abslib", "/usr/lib"),
		ent{name: "data", typ: tar.TypeDir, mode: 0o700, mtime: dirTime},
		ent{name: "tmp", typ: tar.TypeDir, mode: 0o1777},
		dir("hl"), file("hl/a", "hard"), hardlink("hl/b", "hl/a"),
		dir("dev"), ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		ent{name: "fifo", typ: tar.TypeFifo, mode: 0o640},
		file("replaced-by-dir", "f"),
		dir("replaced-by-file"), file("replaced-by-file/x", "x"),
	)
	l2 := layerOf(t,
		whiteout("etc/.wh.gone"),
		whiteout(".wh.dirgone"),
		dir("opq"), whiteout("opq/.wh..wh..opq"), file("opq/new", "new"),
		file("lib/libx.so", "elf"),
		file("abslib/liby.so", "elf2"),
		ent{name: "etc/passwd", body: "root:x:0:0:new\n", mode: 0o600},
		ent{name: "owned", body: "mine", uid: 1000, gid: 1001, pax: map[string]string{"SCHILY.xattr.user.pier": "1"}},
		dir("replaced-by-dir"), file("replaced-by-dir/y", "y"),
		file("replaced-by-file", "now a file"),
		hardlink("hl/c", "hl/a"),
	)
	l3 := layerOf(t,
		dir("opq2"), file("opq2/new2", "new2"), whiteout("opq2/.wh..wh..opq"),
		whiteout("opq/.wh.nothing-here"),
	)
	return []v1.Layer{l1, l2, l3}
}

func richTree() map[string]string {
	want := map[string]string{
		"etc":               "drwxr-xr-x",
		"etc/passwd":        "-rw------- root:x:0:0:new\n",
		"opq":               "drwxr-xr-x",
		"opq/new":           "-rw-r--r-- new",
		"opq2":              "drwxr-xr-x",
		"opq2/new2":         "-rw-r--r-- new2",
		"bin":               "drwxr-xr-x",
		"bin/tool":          "urwxr-xr-x #!/bin/sh\n",
		"usr":               "drwxr-xr-x",
		"usr/lib":           "drwxr-xr-x",
		"usr/lib/libx.so":   "-rw-r--r-- elf",
		"usr/lib/liby.so":   "-rw-r--r-- elf2",
		"lib":               "-> usr/lib",
		"abs":               "-> /etc/passwd",
		"abslib":            "-> /usr/lib",
		"data":              "drwx------",
		"tmp":               "dtrwxrwxrwx",
		"hl":                "drwxr-xr-x",
		"hl/a":              "-rw-r--r-- hard",
		"hl/b":              "-rw-r--r-- hard",
		"hl/c":              "-rw-r--r-- hard",
		"dev":               "drwxr-xr-x",
		"fifo":              "prw-r-----",
		"owned":             "-rw-r--r-- mine",
		"replaced-by-dir":   "drwxr-xr-x",
		"replaced-by-dir/y": "-rw-r--r-- y",
		"replaced-by-file":  "-rw-r--r-- now a file",
		// dev/null is in the layer but never made, as root or not: a
		// machine's devices come from its runtime.
	}
	return want
}

func TestGetTransports(t *testing.T) {
	img := richImage(t)
	other := imageOf(t, v1.Config{Cmd: []string{"other"}}, layerOf(t, file("other", "o")))
	base := t.TempDir()

	ociDir := filepath.Join(base, "layout")
	writeLayout(t, ociDir, map[string]v1.Image{"rich": img, "other": other})
	ociArchive := filepath.Join(base, "layout.tar")
	tarDir(t, ociDir, ociArchive)
	dockerArchive := filepath.Join(base, "docker.tar")
	writeDockerArchive(t, dockerArchive, map[string]v1.Image{"example.com/rich:1": img, "other:2": other})
	single := filepath.Join(base, "single.tar")
	writeDockerArchive(t, single, map[string]v1.Image{"rich:latest": img})

	manifestDigest := digestOf(t, img)
	cfgName, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		ref    string
		digest string
	}{
		{"oci:" + ociDir + ":rich", manifestDigest},
		{"oci-archive:" + ociArchive + ":rich", manifestDigest},
		{"docker-archive:" + dockerArchive + ":example.com/rich:1", cfgName.String()},
		{"docker-archive:" + single, cfgName.String()},
	}
	for _, tt := range tests {
		t.Run(strings.SplitN(tt.ref, ":", 2)[0], func(t *testing.T) {
			s := newStore(t)
			var progress strings.Builder
			got, err := s.Get(context.Background(), tt.ref, &progress)
			if err != nil {
				t.Fatal(err)
			}
			if got.Ref != tt.ref || got.Digest != tt.digest {
				t.Errorf("Ref, Digest = %q, %q; want %q, %q", got.Ref, got.Digest, tt.ref, tt.digest)
			}
			wantRootfs, _ := filepath.Abs(filepath.Join(s.Dir, "rootfs", strings.TrimPrefix(tt.digest, "sha256:")))
			if got.Rootfs != wantRootfs {
				t.Errorf("Rootfs = %s, want %s", got.Rootfs, wantRootfs)
			}
			t.Logf("progress:\n%s", progress.String())
			checkRichTree(t, got.Rootfs)
			wantCfg := ImageConfig{
				Entrypoint: []string{"/bin/tool"}, Cmd: []string{"serve", "--port", "8080"},
				Env: []string{"PATH=/usr/bin:/bin", "MODE=test"}, WorkingDir: "/data", User: "1000:1000",
				ExposedPorts: []string{"53/udp", "8080/tcp"}, Labels: map[string]string{"org.example": "yes"},
				StopSignal: "SIGINT",
			}
			if !reflect.DeepEqual(got.Config, wantCfg) {
				t.Errorf("Config = %+v\nwant %+v", got.Config, wantCfg)
			}
			for _, line := range []string{"unpacking layer 1/3 (", "unpacking layer 3/3 (", "unpacked " + tt.digest} {
				if !strings.Contains(progress.String(), line) {
					t.Errorf("progress lacks %q:\n%s", line, progress.String())
				}
			}
			if left := dirEntries(t, filepath.Join(s.Dir, "tmp")); len(left) != 0 {
				t.Errorf("tmp/ left with %v", left)
			}
		})
	}
}

func checkRichTree(t *testing.T, root string) {
	t.Helper()
	diffTrees(t, tree(t, root), richTree())

	var a, b, c unix.Stat_t
	for p, st := range map[string]*unix.Stat_t{"hl/a": &a, "hl/b": &b, "hl/c": &c} {
		if err := unix.Lstat(filepath.Join(root, p), st); err != nil {
			t.Fatal(err)
		}
	}
	if a.Ino != b.Ino || a.Ino != c.Ino || a.Nlink != 3 {
		t.Errorf("hl/a, hl/b, hl/c: inodes %d %d %d, %d links; want one inode with 3 links", a.Ino, b.Ino, c.Ino, a.Nlink)
	}
	for p, want := range map[string]time.Time{"data": dirTime, "etc/passwd": testTime, "abs": testTime, "usr/lib": testTime} {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %s, want %s", p, fi.ModTime().UTC(), want)
		}
	}
	if os.Geteuid() == 0 {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, "owned"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 1000 || st.Gid != 1001 {
			t.Errorf("owned: uid:gid %d:%d, want 1000:1001", st.Uid, st.Gid)
		}
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(root, "owned"), "user.pier", buf); err != nil {
		if !errors.Is(err, unix.ENOTSUP) {
			t.Errorf("owned: xattr user.pier: %v", err)
		}
	} else if string(buf[:n]) != "1" {
		t.Errorf("owned: xattr user.pier = %q, want 1", buf[:n])
	}
}

func TestGetZstdAndUncompressedLayers(t *testing.T) {
	img := imageOf(t, v1.Config{},
		zstdLayerOf(t, dir("z"), file("z/zstd", "zz")),
		layerOf(t, file("gz", "g")),
	)
	// OCI media types this time; the other tests use Docker's.
	img = mutate.ConfigMediaType(mutate.MediaType(img, types.OCIManifestSchema1), types.OCIConfigJSON)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"": img})
	got, err := newStore(t).Get(context.Background(), "oci:"+dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	diffTrees(t, tree(t, got.Rootfs), map[string]string{"z": "drwxr-xr-x", "z/zstd": "-rw-r--r-- zz", "gz": "-rw-r--r-- g"})

	// docker save writes layers uncompressed.
	uncompressed := imageOf(t, v1.Config{}, layerOfTar(t, tarOf(t, file("plain", "p"))))
	archive := filepath.Join(t.TempDir(), "plain.tar")
	writeDockerArchive(t, archive, map[string]v1.Image{"plain:1": uncompressed})
	got, err = newStore(t).Get(context.Background(), "docker-archive:"+archive+":plain:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	diffTrees(t, tree(t, got.Rootfs), map[string]string{"plain": "-rw-r--r-- p"})
}

func TestGetEmptyImage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"empty": empty.Image})
	got, err := newStore(t).Get(context.Background(), "oci:"+dir+":empty", nil)
	if err != nil {
		t.Fatal(err)
	}
	if es := dirEntries(t, got.Rootfs); len(es) != 0 || !isDir(got.Rootfs) {
		t.Errorf("rootfs of the empty image: %v (dir: %v)", es, isDir(got.Rootfs))
	}
}

func TestGetTagSelection(t *testing.T) {
	one := imageOf(t, v1.Config{Cmd: []string{"one"}}, layerOf(t, file("which", "one")))
	two := imageOf(t, v1.Config{Cmd: []string{"two"}}, layerOf(t, file("which", "two")))
	base := t.TempDir()
	dir := filepath.Join(base, "layout")
	writeLayout(t, dir, map[string]v1.Image{"one": one, "two": two})
	archive := filepath.Join(base, "layout.tar")
	tarDir(t, dir, archive)

	for _, transport := range []string{"oci:" + dir, "oci-archive:" + archive} {
		tests := []struct {
			tag     string
			want    string // contents of /which, or "" for an error
			errIs   error
			errText []string
		}{
			{tag: ":one", want: "one"},
			{tag: ":two", want: "two"},
			{tag: "", errIs: ErrNotFound, errText: []string{"holds 2 images", "one", "two", ":TAG"}},
			{tag: ":three", errIs: ErrNotFound, errText: []string{`no image tagged "three"`, "one, two"}},
		}
		for _, tt := range tests {
			t.Run(transport[:strings.Index(transport, ":")]+tt.tag, func(t *testing.T) {
				got, err := newStore(t).Get(context.Background(), transport+tt.tag, nil)
				if tt.want == "" {
					if !errors.Is(err, tt.errIs) {
						t.Fatalf("err = %v, want %v", err, tt.errIs)
					}
					for _, s := range tt.errText {
						if !strings.Contains(err.Error(), s) {
							t.Errorf("error %q lacks %q", err, s)
						}
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(filepath.Join(got.Rootfs, "which"))
				if err != nil || string(b) != tt.want {
					t.Errorf("which = %q, %v; want %q", b, err, tt.want)
				}
				if got.Config.Cmd[0] != tt.want {
					t.Errorf("Cmd = %v", got.Config.Cmd)
				}
			})
		}
	}
}

func TestGetPlatformSelection(t *testing.T) {
	mine := imageOf(t, v1.Config{}, layerOf(t, file("arch", runtime.GOARCH)))
	foreign := imageOf(t, v1.Config{}, layerOf(t, file("arch", "foreign")))
	plat := func(arch string) *v1.Platform { return &v1.Platform{OS: "linux", Architecture: arch} }
	foreignArch := "s390x"
	if runtime.GOARCH == foreignArch {
		foreignArch = "riscv64"
	}
	withMine := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: foreign, Descriptor: v1.Descriptor{Platform: plat(foreignArch)}},
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: plat(runtime.GOARCH)}},
	)
	withoutMine := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: foreign, Descriptor: v1.Descriptor{Platform: plat(foreignArch)}},
		mutate.IndexAddendum{Add: foreign, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "windows", Architecture: runtime.GOARCH}}},
	)
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for tag, idx := range map[string]v1.ImageIndex{"multi": withMine, "foreign": withoutMine} {
		if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnnotation: tag})); err != nil {
			t.Fatal(err)
		}
	}
	s := newStore(t)
	got, err := s.Get(context.Background(), "oci:"+dir+":multi", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, mine) {
		t.Errorf("Digest = %s, want the %s image's %s", got.Digest, runtime.GOARCH, digestOf(t, mine))
	}
	if b, _ := os.ReadFile(filepath.Join(got.Rootfs, "arch")); string(b) != runtime.GOARCH {
		t.Errorf("arch = %q", b)
	}

	_, err = s.Get(context.Background(), "oci:"+dir+":foreign", nil)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "linux/"+foreignArch) || !strings.Contains(err.Error(), "no linux/"+runtime.GOARCH) {
		t.Errorf("err = %v, want ErrNotFound listing the platforms", err)
	}

	// The index was kept: the same image by index digest through a
	// registry reference is answered from the store, registry unreachable.
	idxDigest := digestOf(t, withMine)
	got2, err := s.Get(context.Background(), closedRegistry(t)+"/x/y@"+idxDigest, nil)
	if err != nil {
		t.Fatalf("registry reference by index digest, from the store: %v", err)
	}
	if got2.Rootfs != got.Rootfs {
		t.Errorf("Rootfs = %s, want %s", got2.Rootfs, got.Rootfs)
	}
}

func TestGetCacheHit(t *testing.T) {
	img := richImage(t)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"rich": img})
	s := newStore(t)
	ref := "oci:" + dir + ":rich"
	first, err := s.Get(context.Background(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	var before unix.Stat_t
	if err := unix.Stat(first.Rootfs, &before); err != nil {
		t.Fatal(err)
	}

	// A hit reads index, manifest and config, never a layer: take the
	// layers away.
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if err := os.Remove(filepath.Join(dir, "blobs", "sha256", d.Hex)); err != nil {
			t.Fatal(err)
		}
	}
	var progress strings.Builder
	second, err := s.Get(context.Background(), ref, &progress)
	if err != nil {
		t.Fatalf("second Get: %v", err)
	}
	if !reflect.DeepEqual(first, second) {
		t.Errorf("second Get = %+v, want %+v", second, first)
	}
	var after unix.Stat_t
	if err := unix.Stat(second.Rootfs, &after); err != nil {
		t.Fatal(err)
	}
	if before.Ino != after.Ino || before.Mtim != after.Mtim || before.Ctim != after.Ctim {
		t.Errorf("rootfs changed on a cache hit: %+v -> %+v", before, after)
	}
	if !strings.Contains(progress.String(), "using cached "+first.Digest) {
		t.Errorf("progress = %q", progress.String())
	}
	checkRichTree(t, second.Rootfs)

	// A fresh store must read the layers, and says so.
	_, err = newStore(t).Get(context.Background(), ref, nil)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "is missing") {
		t.Errorf("fresh store without layers: err = %v", err)
	}
}

func TestGetConcurrentUnpacksOnce(t *testing.T) {
	img := richImage(t)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"": img})
	s := newStore(t)
	var progress syncBuffer
	var wg sync.WaitGroup
	results := make([]Image, 8)
	errs := make([]error, len(results))
	for i := range results {
		wg.Go(func() {
			results[i], errs[i] = s.Get(context.Background(), "oci:"+dir, &progress)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if !reflect.DeepEqual(results[i], results[0]) {
			t.Errorf("Get %d = %+v, want %+v", i, results[i], results[0])
		}
	}
	out := progress.String()
	if n := strings.Count(out, "unpacking layer 1/3"); n != 1 {
		t.Errorf("layer 1 unpacked %d times:\n%s", n, out)
	}
	if n := strings.Count(out, "using cached"); n != len(results)-1 {
		t.Errorf("%d cache hits, want %d:\n%s", n, len(results)-1, out)
	}
	checkRichTree(t, results[0].Rootfs)
}

func TestGetErrors(t *testing.T) {
	base := t.TempDir()
	notDir := filepath.Join(base, "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	emptyDir := filepath.Join(base, "emptydir")
	os.Mkdir(emptyDir, 0o755)
	gz := filepath.Join(base, "image.tar.gz")
	os.WriteFile(gz, []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}, 0o644)
	ociDir := filepath.Join(base, "layout")
	writeLayout(t, ociDir, map[string]v1.Image{"x": empty.Image})
	ociTar := filepath.Join(base, "layout.tar")
	tarDir(t, ociDir, ociTar)

	tests := []struct {
		ref   string
		errIs error
		says  []string
	}{
		{"", ErrBadRef, []string{"empty image reference", "oci:DIR"}},
		{"oci:", ErrBadRef, []string{"no path", "oci:PATH[:TAG]"}},
		{"oci:" + ociDir + ":", ErrBadRef, []string{"ends in ':'"}},
		{"containers-storage:/var/lib/x", ErrBadRef, []string{`transport "containers-storage" is not supported`}},
		{"UPPER/Case:tag", ErrBadRef, []string{"not a valid image reference"}},
		{"oci:" + filepath.Join(base, "missing"), ErrNotFound, []string{"does not exist", "skopeo copy"}},
		{"oci:" + notDir, ErrBadRef, []string{"is a file", "oci-archive:"}},
		{"oci:" + emptyDir, ErrNotFound, []string{"not an OCI image layout", "no index.json"}},
		{"oci-archive:" + filepath.Join(base, "missing.tar"), ErrNotFound, []string{"does not exist"}},
		{"oci-archive:" + ociDir, ErrBadRef, []string{"is a directory", "oci:" + ociDir}},
		{"oci-archive:" + gz, ErrInvalid, []string{"gzip-compressed", "gunzip"}},
		{"oci-archive:" + notDir, ErrInvalid, []string{"not a readable tar"}},
		{"docker-archive:" + ociTar, ErrNotFound, []string{"no manifest.json", "use oci-archive:"}},
		{"docker-archive:" + ociTar + ":bad::tag", ErrBadRef, []string{"not a valid repository:tag"}},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			_, err := newStore(t).Get(context.Background(), tt.ref, nil)
			if !errors.Is(err, tt.errIs) {
				t.Fatalf("err = %v, want %v", err, tt.errIs)
			}
			for _, s := range tt.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

func TestGetCorruptLayer(t *testing.T) {
	img := imageOf(t, v1.Config{}, layerOf(t, file("a", "a")))
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"": img})
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	// A valid layer, but not the one the manifest names.
	evil, _ := layerOf(t, file("a", "evil")).Compressed()
	defer evil.Close()
	b, err := io.ReadAll(evil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Hex), b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	_, err = s.Get(context.Background(), "oci:"+dir, nil)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("err = %v, want ErrInvalid saying the image is corrupt", err)
	}
	if es := dirEntries(t, filepath.Join(s.Dir, "rootfs")); len(es) != 0 {
		t.Errorf("rootfs/ holds %v after a failed unpack", es)
	}
	if es := dirEntries(t, filepath.Join(s.Dir, "tmp")); len(es) != 0 {
		t.Errorf("tmp/ holds %v after a failed unpack", es)
	}
}

func TestGetTooLarge(t *testing.T) {
	big := strings.Repeat("0", 2<<20) // compresses to almost nothing
	img := imageOf(t, v1.Config{}, layerOf(t, file("big", big)))
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"": img})
	s := newStore(t)
	s.MaxSize = 1 << 20
	_, err := s.Get(context.Background(), "oci:"+dir, nil)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "1.0 MiB") || !strings.Contains(err.Error(), "Store.MaxSize") {
		t.Fatalf("err = %v, want ErrTooLarge naming the limit", err)
	}
	if es := dirEntries(t, filepath.Join(s.Dir, "tmp")); len(es) != 0 {
		t.Errorf("tmp/ holds %v", es)
	}
	s.MaxSize = 4 << 20
	if _, err := s.Get(context.Background(), "oci:"+dir, nil); err != nil {
		t.Errorf("with a larger limit: %v", err)
	}
}

func TestGetCancelled(t *testing.T) {
	img := richImage(t)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"": img})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := newStore(t)
	if _, err := s.Get(ctx, "oci:"+dir, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if es := dirEntries(t, filepath.Join(s.Dir, "rootfs")); len(es) != 0 {
		t.Errorf("rootfs/ holds %v", es)
	}
}

func TestGetUnreachableRegistry(t *testing.T) {
	reg := closedRegistry(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err := newStore(t).Get(ctx, reg+"/team/app:1.0", nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	t.Log(err)
	for _, s := range []string{"registry " + reg + " is unreachable", "oci-archive:", "docker-archive:", "skopeo copy docker://" + reg + "/team/app:1.0 oci-archive:"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %s to report an unreachable registry", d)
	}
}

func TestGetRegistryDigestFromStore(t *testing.T) {
	img := imageOf(t, v1.Config{Cmd: []string{"x"}}, layerOf(t, file("a", "a")))
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"": img})
	s := newStore(t)
	first, err := s.Get(context.Background(), "oci:"+dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ref := closedRegistry(t) + "/team/app@" + first.Digest
	got, err := s.Get(context.Background(), ref, nil)
	if err != nil {
		t.Fatalf("pinned reference to an unpacked image: %v", err)
	}
	if got.Rootfs != first.Rootfs || got.Ref != ref || got.Config.Cmd[0] != "x" {
		t.Errorf("got %+v", got)
	}
	// A tag always asks the registry.
	if _, err := s.Get(context.Background(), closedRegistry(t)+"/team/app:latest", nil); !errors.Is(err, ErrUnreachable) {
		t.Errorf("by tag: err = %v, want ErrUnreachable", err)
	}
}

// closedRegistry returns host:port of a loopback port nothing listens on.
func closedRegistry(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	// Bound but never listening: connections are refused.
	return "127.0.0.1:" + itoa(uint64(sa.(*syscall.SockaddrInet4).Port))
}
