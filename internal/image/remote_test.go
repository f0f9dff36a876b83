package image

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestGetFromRegistry pulls through the registry transport from an
// in-process registry on the loopback interface (go-containerregistry's
// own), the only kind of registry these tests may reach.
func TestGetFromRegistry(t *testing.T) {
	var blobGets atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	rich := richImage(t)
	mine := imageOf(t, v1.Config{}, layerOf(t, file("arch", runtime.GOARCH)))
	foreign := imageOf(t, v1.Config{}, layerOf(t, file("arch", "foreign")))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: foreign, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "foreign"}}},
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	push := func(ref string, img v1.Image) {
		t.Helper()
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
	}
	push(host+"/team/rich:1", rich)
	idxRef, _ := name.ParseReference(host + "/team/multi:1")
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}

	s := newStore(t)
	ctx := context.Background()
	var progress strings.Builder
	got, err := s.Get(ctx, host+"/team/rich:1", &progress)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, rich) {
		t.Errorf("Digest = %s, want %s", got.Digest, digestOf(t, rich))
	}
	checkRichTree(t, got.Rootfs)
	if !strings.Contains(progress.String(), "unpacking layer 3/3") {
		t.Errorf("progress = %q", progress.String())
	}

	// A second Get asks for the manifest again (tags move) but reads only
	// the config, no layer.
	before := blobGets.Load()
	again, err := s.Get(ctx, "docker://"+host+"/team/rich:1", nil)
	if err != nil || again.Rootfs != got.Rootfs {
		t.Fatalf("second Get = %+v, %v", again, err)
	}
	if n := blobGets.Load() - before; n != 1 {
		t.Errorf("second Get fetched %d blobs, want 1 (the config)", n)
	}

	multi, err := s.Get(ctx, host+"/team/multi:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(multi.Rootfs, "arch")); string(b) != runtime.GOARCH {
		t.Errorf("multi-platform image: arch = %q, want %q", b, runtime.GOARCH)
	}

	_, err = s.Get(ctx, host+"/team/rich:2", nil)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "check the name and tag") {
		t.Errorf("missing tag: err = %v, want ErrNotFound", err)
	}

	// With the registry gone, references pinned by digest still resolve,
	// index digests included; tags do not.
	srv.Close()
	for _, ref := range []string{host + "/team/rich@" + got.Digest, host + "/team/multi@" + digestOf(t, idx)} {
		if _, err := s.Get(ctx, ref, nil); err != nil {
			t.Errorf("%s with the registry gone: %v", ref, err)
		}
	}
	if _, err := s.Get(ctx, host+"/team/rich:1", nil); !errors.Is(err, ErrUnreachable) {
		t.Errorf("by tag with the registry gone: err = %v, want ErrUnreachable", err)
	}
}
