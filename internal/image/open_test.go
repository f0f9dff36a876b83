package image

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestOpen: each local transport gives back the image as written, with
// the same layers (digests and diff IDs) and config.
func TestOpen(t *testing.T) {
	ctx := context.Background()
	cfg := v1.Config{Cmd: []string{"/bin/app"}, Env: []string{"A=1"}}
	img := ociImageOf(t, cfg, layerOf(t, dir("bin"), file("bin/app", "x")), zstdLayerOf(t, file("etc/conf", "y")))
	tmp := t.TempDir()
	lay := filepath.Join(tmp, "layout")
	writeLayout(t, lay, map[string]v1.Image{"v1": img})
	tarDir(t, lay, filepath.Join(tmp, "oci.tar"))
	writeDockerArchive(t, filepath.Join(tmp, "docker.tar"), map[string]v1.Image{"app:v1": imageOf(t, cfg, layerOf(t, file("a", "1")))})

	s := newStore(t)
	for _, ref := range []string{"oci:" + lay + ":v1", "oci-archive:" + filepath.Join(tmp, "oci.tar"), "docker-archive:" + filepath.Join(tmp, "docker.tar")} {
		t.Run(ref, func(t *testing.T) {
			got, release, err := s.Open(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			cf, err := got.ConfigFile()
			if err != nil || len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != "/bin/app" {
				t.Errorf("config %+v %v", cf, err)
			}
			if ref[:4] == "oci:" || ref[:4] == "oci-" {
				if digestOf(t, got) != digestOf(t, img) {
					t.Errorf("digest %s, want %s", digestOf(t, got), digestOf(t, img))
				}
			}
			layers, _ := got.Layers()
			for _, l := range layers {
				rc, err := l.Uncompressed()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Fatal(err)
				}
				rc.Close()
			}
		})
	}
	if _, _, err := s.Open(ctx, "oci:"+filepath.Join(tmp, "nope")); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing layout: %v", err)
	}
}
