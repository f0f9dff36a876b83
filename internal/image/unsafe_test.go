package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestGetUnsafeLayers unpacks layers that try to reach outside their root
// filesystem, and checks that each is refused, or, where the kernel would
// keep it inside the machine, kept inside; and that nothing outside the
// store changed either way.
func TestGetUnsafeLayers(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(outside, "keep")
	if err := os.WriteFile(keep, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Unpacks happen in base/store/tmp/unpack-*/: three levels up is base.
	up := "../../../outside"
	deep := strings.Repeat("../", 16) + strings.TrimPrefix(outside, "/")

	tests := []struct {
		name   string
		layers [][]ent
		// want: ErrUnsafeLayer, or nil with inside naming a path that must
		// exist in the rootfs, with its contents or link target.
		want   error
		inside map[string]string
	}{
		{name: "dot-dot path", layers: [][]ent{{file(up+"/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "dot-dot in the middle", layers: [][]ent{{dir("a"), file("a/../../../../outside/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "absolute path", layers: [][]ent{{file(outside+"/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "write through escaping symlink", layers: [][]ent{{symlink("esc", up), file("esc/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "write through deep symlink", layers: [][]ent{{symlink("esc", deep), file("esc/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "symlink chain", layers: [][]ent{{symlink("a", "b"), symlink("b", "../../.."), file("a/outside/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "nested symlink", layers: [][]ent{{dir("d"), symlink("d/up", "../../../../outside"), file("d/up/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "symlink from a lower layer", layers: [][]ent{{symlink("esc", up)}, {file("esc/pwned", "x")}}, want: ErrUnsafeLayer},
		{name: "directory through symlink", layers: [][]ent{{symlink("esc", up)}, {dir("esc/newdir")}}, want: ErrUnsafeLayer},
		{name: "hard link out", layers: [][]ent{{hardlink("hl", up+"/keep")}}, want: ErrUnsafeLayer},
		{name: "hard link absolute", layers: [][]ent{{hardlink("hl", keep)}}, want: ErrUnsafeLayer},
		{name: "hard link through symlink", layers: [][]ent{{symlink("esc", up), hardlink("hl", "esc/keep")}}, want: ErrUnsafeLayer},
		{name: "whiteout through symlink", layers: [][]ent{{symlink("esc", up)}, {whiteout("esc/.wh.keep")}}, want: ErrUnsafeLayer},
		{name: "opaque through symlink", layers: [][]ent{{symlink("esc", up)}, {whiteout("esc/.wh..wh..opq")}}, want: ErrUnsafeLayer},
		{name: "whiteout of dot-dot", layers: [][]ent{{dir("d")}, {whiteout("d/.wh...")}}, want: ErrUnsafeLayer},

		// The kernel resolves these inside the machine; so do we.
		{name: "absolute symlink", layers: [][]ent{{symlink("esc", outside), file("esc/pwned", "x")}},
			inside: map[string]string{"esc": "-> " + outside, strings.TrimPrefix(outside, "/") + "/pwned": "-rw-r--r-- x"}},
		{name: "symlink to root", layers: [][]ent{{symlink("r", "/"), dir("r/etc"), file("r/etc/x", "x")}},
			inside: map[string]string{"r": "-> /", "etc/x": "-rw-r--r-- x"}},
		{name: "dot-dot inside", layers: [][]ent{{dir("a"), symlink("a/up", ".."), file("a/up/x", "x")}},
			inside: map[string]string{"x": "-rw-r--r-- x"}},
		{name: "file replaces symlink", layers: [][]ent{{symlink("f", keep)}, {file("f", "mine")}},
			inside: map[string]string{"f": "-rw-r--r-- mine"}},
		{name: "file replaces escaping symlink", layers: [][]ent{{symlink("f", up+"/keep"), file("f", "mine")}},
			inside: map[string]string{"f": "-rw-r--r-- mine"}},
		{name: "directory replaces symlink", layers: [][]ent{{symlink("d", outside)}, {dir("d"), file("d/x", "x")}},
			inside: map[string]string{"d": "drwxr-xr-x", "d/x": "-rw-r--r-- x"}},
		{name: "hard link to escaping symlink", layers: [][]ent{{symlink("s", up+"/keep"), hardlink("h", "s")}},
			inside: map[string]string{"h": "-> " + up + "/keep"}},
		{name: "whiteout of escaping symlink", layers: [][]ent{{symlink("esc", up)}, {whiteout(".wh.esc")}},
			inside: map[string]string{}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var layers []v1.Layer
			for _, l := range tt.layers {
				layers = append(layers, layerOf(t, l...))
			}
			img := imageOf(t, v1.Config{}, layers...)
			layoutDir := filepath.Join(base, "layout"+itoa(uint64(i)))
			writeLayout(t, layoutDir, map[string]v1.Image{"": img})
			s := &Store{Dir: filepath.Join(base, "store")}
			got, err := s.Get(context.Background(), "oci:"+layoutDir, nil)

			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				if es := dirEntries(t, filepath.Join(s.Dir, "rootfs")); len(es) != 0 {
					t.Errorf("rootfs/ holds %v", es)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				all := tree(t, got.Rootfs)
				for p, want := range tt.inside {
					if all[p] != want {
						t.Errorf("%s: %q, want %q", p, all[p], want)
					}
				}
				if _, err := s.GC(context.Background(), nil); err != nil {
					t.Fatal(err)
				}
			}
			if es := dirEntries(t, filepath.Join(s.Dir, "tmp")); len(es) != 0 {
				t.Errorf("tmp/ holds %v", es)
			}
			if es := dirEntries(t, outside); !slices.Equal(es, []string{"keep"}) {
				t.Errorf("outside holds %v, want just keep", es)
			}
			if b, err := os.ReadFile(keep); err != nil || string(b) != "keep" {
				t.Errorf("outside/keep = %q, %v", b, err)
			}
			for _, e := range dirEntries(t, base) {
				if e != "outside" && e != "store" && !strings.HasPrefix(e, "layout") {
					t.Errorf("%s appeared next to the store", e)
				}
			}
		})
	}
}
