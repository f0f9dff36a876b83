package image

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// skopeo checks that layouts written the way these tests write them are
// what skopeo reads, and that archives skopeo writes are what Get reads.
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
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("skopeo %v: %v\n%s", args, err, stderr)
	}
	return out
}

func TestSkopeoInterop(t *testing.T) {
	bin := skopeo(t)
	img := ociImageOf(t, richConfig, richLayers(t)...)
	base := t.TempDir()
	dir := filepath.Join(base, "layout")
	writeLayout(t, dir, map[string]v1.Image{"rich": img})

	var inspected struct {
		Digest string
		Layers []string
		Env    []string
	}
	if err := json.Unmarshal(runSkopeo(t, bin, "inspect", "oci:"+dir+":rich"), &inspected); err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	got, err := s.Get(context.Background(), "oci:"+dir+":rich", nil)
	if err != nil {
		t.Fatal(err)
	}
	if inspected.Digest != got.Digest || len(inspected.Layers) != 3 {
		t.Errorf("skopeo inspect: digest %s, %d layers; Get: %s, 3 layers", inspected.Digest, len(inspected.Layers), got.Digest)
	}

	// Archives written by skopeo unpack to the same tree.
	ociArchive := filepath.Join(base, "skopeo-oci.tar")
	runSkopeo(t, bin, "copy", "oci:"+dir+":rich", "oci-archive:"+ociArchive+":rich")
	dockerArchive := filepath.Join(base, "skopeo-docker.tar")
	runSkopeo(t, bin, "copy", "oci:"+dir+":rich", "docker-archive:"+dockerArchive+":example.com/rich:1")
	skopeoDir := filepath.Join(base, "skopeo-layout")
	runSkopeo(t, bin, "copy", "oci:"+dir+":rich", "oci:"+skopeoDir+":again")

	for name, ref := range map[string]string{
		"oci-archive":           "oci-archive:" + ociArchive + ":rich",
		"docker-archive tagged": "docker-archive:" + dockerArchive + ":example.com/rich:1",
		"docker-archive only":   "docker-archive:" + dockerArchive,
		"oci written by skopeo": "oci:" + skopeoDir + ":again",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := newStore(t).Get(context.Background(), ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkRichTree(t, got.Rootfs)
		})
	}
}
