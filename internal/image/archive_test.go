package image

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestGetDockerArchiveSelection(t *testing.T) {
	a := imageOf(t, v1.Config{}, layerOf(t, file("which", "a")))
	b := imageOf(t, v1.Config{}, layerOf(t, file("which", "b")))
	archive := filepath.Join(t.TempDir(), "two.tar")
	writeDockerArchive(t, archive, map[string]v1.Image{"alpha:1": a, "registry.example.com/beta:2": b})

	tests := []struct {
		sel   string
		want  string
		errIs error
	}{
		{":alpha:1", "a", nil},
		{":docker.io/library/alpha:1", "a", nil},
		{":registry.example.com/beta:2", "b", nil},
		{"", "", ErrNotFound},
		{":alpha:2", "", ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			got, err := newStore(t).Get(context.Background(), "docker-archive:"+archive+tt.sel, nil)
			if tt.errIs != nil {
				if !errors.Is(err, tt.errIs) || !strings.Contains(err.Error(), "alpha:1") {
					t.Fatalf("err = %v, want %v naming the tags", err, tt.errIs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(got.Rootfs, "which")); string(b) != tt.want {
				t.Errorf("which = %q, want %q", b, tt.want)
			}
		})
	}
	// The index of an image follows manifest.json's order, which is not
	// worth pinning; each index names some image, and past the end none.
	for _, sel := range []string{":@0", ":@1"} {
		if _, err := newStore(t).Get(context.Background(), "docker-archive:"+archive+sel, nil); err != nil {
			t.Errorf("%s: %v", sel, err)
		}
	}
	if _, err := newStore(t).Get(context.Background(), "docker-archive:"+archive+":@2", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("@2: err = %v, want ErrNotFound", err)
	}
}

// TestGetDockerArchiveWithLayout reads a tarball in the format docker save
// writes since Docker 25: an OCI layout plus manifest.json. The image is
// known by its manifest digest, as through oci:.
func TestGetDockerArchiveWithLayout(t *testing.T) {
	img := ociImageOf(t, richConfig, richLayers(t)...)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, map[string]v1.Image{"1": img})
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	entry := dockerArchiveEntry{Config: "blobs/sha256/" + cfg.Hex, RepoTags: []string{"example.com/rich:1"}}
	for _, l := range m.Layers {
		entry.Layers = append(entry.Layers, "blobs/sha256/"+l.Digest.Hex)
	}
	b, err := json.Marshal([]dockerArchiveEntry{entry})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "docker25.tar")
	tarDir(t, dir, archive)

	got, err := newStore(t).Get(context.Background(), "docker-archive:"+archive+":example.com/rich:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, img) {
		t.Errorf("Digest = %s, want the manifest digest %s", got.Digest, digestOf(t, img))
	}
	checkRichTree(t, got.Rootfs)
}
