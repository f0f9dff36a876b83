package image

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// benchImage is a small distribution-like image: three layers, 3,000
// files of 4 KiB, and one 16 MiB file of random (incompressible) bytes.
func benchImage(b *testing.B) (v1.Image, int64) {
	b.Helper()
	var layers []v1.Layer
	var size int64
	small := make([]byte, 4<<10)
	rand.Read(small)
	for l := range 3 {
		ents := []ent{dir(fmt.Sprintf("l%d", l))}
		for i := range 1000 {
			ents = append(ents, file(fmt.Sprintf("l%d/f%04d", l, i), string(small)))
			size += int64(len(small))
		}
		if l == 0 {
			big := make([]byte, 16<<20)
			rand.Read(big)
			ents = append(ents, file("big", string(big)))
			size += int64(len(big))
		}
		layers = append(layers, layerOf(b, ents...))
	}
	return imageOf(b, v1.Config{}, layers...), size
}

func BenchmarkGetCached(b *testing.B) {
	img, _ := benchImage(b)
	dir := filepath.Join(b.TempDir(), "layout")
	writeLayout(b, dir, map[string]v1.Image{"bench": img})
	s := newStore(b)
	ref := "oci:" + dir + ":bench"
	if _, err := s.Get(context.Background(), ref, nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Get(context.Background(), ref, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnpack(b *testing.B) {
	img, size := benchImage(b)
	dir := filepath.Join(b.TempDir(), "layout")
	writeLayout(b, dir, map[string]v1.Image{"bench": img})
	ref := "oci:" + dir + ":bench"
	s := newStore(b)
	b.SetBytes(size)
	for b.Loop() {
		if _, err := s.Get(context.Background(), ref, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := os.RemoveAll(filepath.Join(s.Dir, "rootfs")); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
