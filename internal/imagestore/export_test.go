package imagestore

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// storedImage puts a two-layer image as web:v3 and returns it as read back
// from the store, which is what the API exports.
func storedImage(t *testing.T) (*Store, v1.Image) {
	t.Helper()
	s := openStore(t)
	put(t, s, "web", "v3", imageOf(t, randomLayer(t), randomLayer(t)))
	img, err := s.Image(context.Background(), "web", "v3")
	if err != nil {
		t.Fatal(err)
	}
	return s, img
}

func exportFile(t *testing.T, img v1.Image, format string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "web-"+format+".tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Export(context.Background(), f, img, "web:v3", format); err != nil {
		t.Fatal(err)
	}
	return path
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var ds []v1.Hash
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

func TestExportDocker(t *testing.T) {
	_, img := storedImage(t)
	path := exportFile(t, img, FormatDocker)
	got, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := layerDigests(t, got), layerDigests(t, img); !slices.Equal(g, w) {
		t.Errorf("archive layers %v, want %v", g, w)
	}
	gc, _ := got.ConfigName()
	wc, _ := img.ConfigName()
	if gc != wc {
		t.Errorf("archive config %s, want %s", gc, wc)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{"web:v3"}) {
		t.Errorf("manifest.json: %+v, want RepoTags [web:v3]", m)
	}
}

func TestExportOCI(t *testing.T) {
	_, img := storedImage(t)
	path := exportFile(t, img, FormatOCI)
	dir := untar(t, path)
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.Annotations[RefNameAnnotation] != "web:v3" || desc.Annotations[containerdNameAnnotation] != "docker.io/library/web:v3" {
		t.Errorf("annotations %v", desc.Annotations)
	}
	got, err := ii.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := got.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("archive manifest type %s, want %s", mt, types.OCIManifestSchema1)
	}
	if g, w := layerDigests(t, got), layerDigests(t, img); !slices.Equal(g, w) {
		t.Errorf("archive layers %v, want %v", g, w)
	}
	gc, _ := got.ConfigName()
	wc, _ := img.ConfigName()
	if gc != wc {
		t.Errorf("archive config %s, want %s", gc, wc)
	}
	checkLayersRead(t, got, img)
}

func checkLayersRead(t *testing.T, got, want v1.Image) {
	t.Helper()
	gl, _ := got.Layers()
	wl, _ := want.Layers()
	if len(gl) != len(wl) {
		t.Fatalf("%d layers, want %d", len(gl), len(wl))
	}
	for i := range gl {
		if string(compressed(t, gl[i])) != string(compressed(t, wl[i])) {
			t.Errorf("layer %d differs", i)
		}
	}
}

func untar(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(target, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(target), 0o755)
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExportErrors(t *testing.T) {
	_, img := storedImage(t)
	ctx := context.Background()
	if err := Export(ctx, io.Discard, img, "web:v3", "zip"); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("format zip: %v", err)
	}
	if err := Export(ctx, io.Discard, img, "Web:v3!", FormatDocker); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad name: %v", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for _, f := range []string{FormatDocker, FormatOCI} {
		if err := Export(canceled, io.Discard, img, "web:v3", f); !errors.Is(err, context.Canceled) {
			t.Errorf("%s export with a canceled context: %v", f, err)
		}
	}
}

// skopeo is the real skopeo binary; CI must have it.
func skopeo(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("skopeo")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("skopeo is not installed: apt-get install -y skopeo (CI must have it)")
		}
		t.Skip("skopeo is not installed (apt-get install -y skopeo)")
	}
	return p
}

func runSkopeo(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	// --insecure-policy: local files only, and no policy.json is needed.
	cmd := exec.Command(bin, append([]string{"--insecure-policy"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("skopeo %v: %v\n%s", args, err, ee.Stderr)
		}
		t.Fatalf("skopeo %v: %v", args, err)
	}
	return out
}

// TestSkopeoReads: skopeo reads the store's layout and both archives of
// Docker- and OCI-typed images, and copies from the archives (what a user
// does with an export).
func TestSkopeoReads(t *testing.T) {
	bin := skopeo(t)
	for _, oci := range []bool{false, true} {
		kind := map[bool]string{false: "docker-typed", true: "oci-typed"}[oci]
		t.Run(kind, func(t *testing.T) {
			s := openStore(t)
			src := imageOf(t, randomLayer(t), randomLayer(t))
			if oci {
				src = ociImageOf(t, randomOCILayer(t), randomOCILayer(t))
			}
			put(t, s, "web", "v3", src)
			img, err := s.Image(context.Background(), "web", "v3")
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			dockerArchive, ociArchive := exportFile(t, img, FormatDocker), exportFile(t, img, FormatOCI)
			refs := map[string][]v1.Hash{
				// docker-archive: skopeo names layers by their diff ids.
				"docker-archive":        cfg.RootFS.DiffIDs,
				"docker-archive tagged": cfg.RootFS.DiffIDs,
				"oci-archive":           layerDigests(t, img),
				"oci-archive tagged":    layerDigests(t, img),
			}
			paths := map[string]string{
				"docker-archive":        "docker-archive:" + dockerArchive,
				"docker-archive tagged": "docker-archive:" + dockerArchive + ":web:v3",
				"oci-archive":           "oci-archive:" + ociArchive,
				"oci-archive tagged":    "oci-archive:" + ociArchive + ":web:v3",
			}
			if oci {
				// skopeo finds only OCI manifests by name in a layout.
				refs["store layout"] = layerDigests(t, img)
				paths["store layout"] = "oci:" + s.Dir() + ":web:v3"
			}
			for name, want := range refs {
				t.Run(name, func(t *testing.T) {
					var got struct{ Layers []string }
					if err := json.Unmarshal(runSkopeo(t, bin, "inspect", paths[name]), &got); err != nil {
						t.Fatal(err)
					}
					var gotH []v1.Hash
					for _, l := range got.Layers {
						h, err := v1.NewHash(l)
						if err != nil {
							t.Fatal(err)
						}
						gotH = append(gotH, h)
					}
					if !slices.Equal(gotH, want) {
						t.Errorf("skopeo inspect %s: layers %v, want %v", paths[name], gotH, want)
					}
				})
			}
			out := filepath.Join(t.TempDir(), "copied.tar")
			runSkopeo(t, bin, "copy", "oci-archive:"+ociArchive, "docker-archive:"+out+":web:v3")
			if _, err := tarball.ImageFromPath(out, nil); err != nil {
				t.Errorf("skopeo's copy of the oci-archive: %v", err)
			}
		})
	}
}
