package imagestore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/stream"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "oci"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func randomLayer(t *testing.T) v1.Layer {
	t.Helper()
	l, err := random.Layer(2048, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf is an image of layers, each distinct image getting its own
// config (random layers differ, so configs differ by their diff ids).
func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func randomOCILayer(t *testing.T) v1.Layer {
	t.Helper()
	l, err := random.Layer(2048, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ociImageOf is imageOf with OCI media types, as skopeo would copy it.
func ociImageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func put(t *testing.T, s *Store, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	d, err := s.Put(context.Background(), repo, tag, img)
	if err != nil {
		t.Fatal(err)
	}
	if want := digestOf(t, img); d != want {
		t.Fatalf("Put returned %s, image digest is %s", d, want)
	}
	return d
}

// checkImage reads every blob of repo:ref back and compares it with want.
func checkImage(t *testing.T, s *Store, repo, ref string, want v1.Image) {
	t.Helper()
	got, err := s.Image(context.Background(), repo, ref)
	if err != nil {
		t.Fatalf("Image(%s, %s): %v", repo, ref, err)
	}
	if g, w := digestOf(t, got), digestOf(t, want); g != w {
		t.Fatalf("%s:%s has digest %s, want %s", repo, ref, g, w)
	}
	gotLayers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	wantLayers, err := want.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(gotLayers) != len(wantLayers) {
		t.Fatalf("%s:%s has %d layers, want %d", repo, ref, len(gotLayers), len(wantLayers))
	}
	for i := range gotLayers {
		if !bytes.Equal(compressed(t, gotLayers[i]), compressed(t, wantLayers[i])) {
			t.Errorf("%s:%s layer %d differs", repo, ref, i)
		}
	}
	if _, err := got.ConfigFile(); err != nil {
		t.Errorf("%s:%s config: %v", repo, ref, err)
	}
}

func compressed(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hasBlob(s *Store, h v1.Hash) bool {
	_, err := os.Stat(s.blobPath(h))
	return err == nil
}

func TestPutAndImage(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	docker := imageOf(t, randomLayer(t), randomLayer(t))
	ociImg := ociImageOf(t, randomOCILayer(t))
	d := put(t, s, "web", "v3", docker)
	put(t, s, "web", "latest", docker)
	put(t, s, "api", "v1", ociImg)

	for _, tc := range []struct {
		repo, ref string
		want      v1.Image
	}{
		{"web", "v3", docker},
		{"web", "latest", docker},
		{"web", d.String(), docker},
		{"api", "v1", ociImg},
	} {
		t.Run(tc.repo+" "+tc.ref, func(t *testing.T) { checkImage(t, s, tc.repo, tc.ref, tc.want) })
	}
	got, err := s.Image(ctx, "api", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := got.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("api:v1 media type %s, want %s", mt, types.OCIManifestSchema1)
	}

	if tags, err := s.Tags(ctx, "web"); err != nil || !slices.Equal(tags, []string{"latest", "v3"}) {
		t.Errorf("Tags(web) = %v, %v; want [latest v3]", tags, err)
	}
	if repos, err := s.Repos(ctx); err != nil || !slices.Equal(repos, []string{"api", "web"}) {
		t.Errorf("Repos = %v, %v; want [api web]", repos, err)
	}

	// Another Store on the directory sees the same tags.
	again, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, again, "web", "v3", docker)
}

func TestPermissions(t *testing.T) {
	s := openStore(t)
	put(t, s, "web", "v1", imageOf(t, randomLayer(t)))
	err := filepath.WalkDir(s.Dir(), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// An existing directory open to others is closed on Open.
	dir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("Open left %s with mode %v", dir, fi.Mode().Perm())
	}
}

func TestTagReplace(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	first, second := imageOf(t, randomLayer(t)), imageOf(t, randomLayer(t))
	put(t, s, "web", "latest", first)
	put(t, s, "web", "latest", second)
	checkImage(t, s, "web", "latest", second)
	if tags, _ := s.Tags(ctx, "web"); !slices.Equal(tags, []string{"latest"}) {
		t.Errorf("tags after replace: %v", tags)
	}
	if _, err := s.Image(ctx, "web", digestOf(t, first).String()); !errors.Is(err, ErrNotFound) {
		t.Errorf("the replaced image is still reachable by digest: %v", err)
	}
	// The same image again changes nothing.
	put(t, s, "web", "latest", second)
	if len(s.index) != 1 {
		t.Errorf("index has %d entries, want 1", len(s.index))
	}
}

func TestUntagAndRemoveRepo(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	img := imageOf(t, randomLayer(t))
	put(t, s, "web", "v1", img)
	put(t, s, "web", "v2", img)
	put(t, s, "api", "v1", img)

	if err := s.Untag(ctx, "web", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Untag(ctx, "web", "v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Untag: %v, want ErrNotFound", err)
	}
	if tags, _ := s.Tags(ctx, "web"); !slices.Equal(tags, []string{"v2"}) {
		t.Errorf("web tags after untag: %v", tags)
	}
	if err := s.RemoveRepo(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveRepo(ctx, "web"); err != nil {
		t.Errorf("RemoveRepo of a repository without tags: %v", err)
	}
	if _, err := s.Tags(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tags of a removed repository: %v, want ErrNotFound", err)
	}
	if repos, _ := s.Repos(ctx); !slices.Equal(repos, []string{"api"}) {
		t.Errorf("repos: %v", repos)
	}
	checkImage(t, s, "api", "v1", img)
}

func TestNotFoundAndInvalid(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	img := imageOf(t, randomLayer(t))
	put(t, s, "web", "v1", img)
	other := digestOf(t, imageOf(t, randomLayer(t)))
	for _, tc := range []struct {
		repo, ref string
		want      error
	}{
		{"web", "v2", ErrNotFound},
		{"api", "v1", ErrNotFound},
		{"web", other.String(), ErrNotFound},
		{"api", digestOf(t, img).String(), ErrNotFound}, // another repo's image
		{"Web", "v1", ErrInvalidName},
		{"web/x", "v1", ErrInvalidName},
		{"-web", "v1", ErrInvalidName},
		{"web-", "v1", ErrInvalidName},
		{"", "v1", ErrInvalidName},
		{"web", "", ErrInvalidName},
		{"web", ".v1", ErrInvalidName},
		{"web", "v1:x", ErrInvalidName},
		{"web", "sha256:xyz", ErrInvalidName},
		{"web", string(bytes.Repeat([]byte("a"), 129)), ErrInvalidName},
	} {
		t.Run(tc.repo+" "+tc.ref, func(t *testing.T) {
			if _, err := s.Image(ctx, tc.repo, tc.ref); !errors.Is(err, tc.want) {
				t.Errorf("Image: %v, want %v", err, tc.want)
			}
			if tc.want == ErrInvalidName && !bytes.HasPrefix([]byte(tc.ref), []byte("sha256:")) {
				if _, err := s.Put(ctx, tc.repo, tc.ref, img); !errors.Is(err, ErrInvalidName) {
					t.Errorf("Put: %v, want ErrInvalidName", err)
				}
			}
		})
	}
	for _, ok := range []string{"web", "web-2", "a.b", "a__b", "a--b", "0"} {
		if err := ValidRepo(ok); err != nil {
			t.Errorf("ValidRepo(%q): %v", ok, err)
		}
	}
}

// countingLayer counts the reads of a layer's content.
type countingLayer struct {
	v1.Layer
	reads *atomic.Int32
}

func (l countingLayer) Compressed() (io.ReadCloser, error) {
	l.reads.Add(1)
	return l.Layer.Compressed()
}

func TestPutSkipsStoredBlobs(t *testing.T) {
	s := openStore(t)
	var reads atomic.Int32
	base := countingLayer{randomLayer(t), &reads}
	put(t, s, "web", "v1", imageOf(t, base, randomLayer(t)))
	if reads.Load() != 1 {
		t.Fatalf("first Put read the base layer %d times, want 1", reads.Load())
	}
	put(t, s, "api", "v1", imageOf(t, base, randomLayer(t)))
	if reads.Load() != 1 {
		t.Errorf("second Put read the stored base layer again")
	}
}

func TestPutStreamedLayer(t *testing.T) {
	s := openStore(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
	tw.Write([]byte("hello"))
	tw.Close()
	img := imageOf(t, randomLayer(t), stream.NewLayer(io.NopCloser(&buf)))
	d, err := s.Put(context.Background(), "web", "v1", img)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Image(context.Background(), "web", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if digestOf(t, got) != d {
		t.Errorf("stored digest %s, Put said %s", digestOf(t, got), d)
	}
	layers, _ := got.Layers()
	if len(layers) != 2 {
		t.Fatalf("%d layers", len(layers))
	}
	rc, err := layers[1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if h, err := tr.Next(); err != nil || h.Name != "hello" {
		t.Errorf("streamed layer reads back as %v, %v", h, err)
	}
}

// lyingLayer claims the digest of another layer.
type lyingLayer struct {
	v1.Layer
	claim v1.Layer
}

func (l lyingLayer) Digest() (v1.Hash, error) { return l.claim.Digest() }
func (l lyingLayer) Size() (int64, error)     { return l.Layer.Size() }

func TestPutRejectsCorruptLayer(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	good, bad := randomLayer(t), randomLayer(t)
	img := imageOf(t, lyingLayer{bad, good})
	if _, err := s.Put(ctx, "web", "v1", img); err == nil {
		t.Fatal("Put stored a layer whose content does not match its digest")
	}
	if _, err := s.Tags(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the tag was set: %v", err)
	}
	entries, _ := os.ReadDir(s.blobDir())
	if len(entries) != 0 {
		t.Errorf("the failed Put left %d files in blobs/sha256", len(entries))
	}
}

func TestPutCanceled(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(ctx, "web", "v1", imageOf(t, randomLayer(t))); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a canceled context: %v", err)
	}
}

func TestGCKeepsSharedLayers(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	base, webOwn, apiOwn := randomLayer(t), randomLayer(t), randomLayer(t)
	web, api := imageOf(t, base, webOwn), imageOf(t, base, apiOwn)
	put(t, s, "web", "v1", web)
	put(t, s, "web", "latest", web)
	put(t, s, "api", "v1", api)
	// A crash's leftover is collected too.
	if err := os.WriteFile(filepath.Join(s.blobDir(), ".tmp-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	ld := func(l v1.Layer) v1.Hash { d, _ := l.Digest(); return d }

	steps := []struct {
		name        string
		do          func() error
		wantRemoved int // files
		kept, gone  []v1.Hash
	}{
		{"nothing untagged", func() error { return nil }, 1, []v1.Hash{ld(base), ld(webOwn), ld(apiOwn), digestOf(t, web)}, nil},
		{"one of web's two tags", func() error { return s.Untag(ctx, "web", "v1") }, 0, []v1.Hash{ld(base), ld(webOwn), digestOf(t, web)}, nil},
		{"web's last tag", func() error { return s.Untag(ctx, "web", "latest") }, 3, // manifest, config, own layer
			[]v1.Hash{ld(base), ld(apiOwn), digestOf(t, api)}, []v1.Hash{ld(webOwn), digestOf(t, web)}},
		{"the repo of the last user of base", func() error { return s.RemoveRepo(ctx, "api") }, 4,
			nil, []v1.Hash{ld(base), ld(apiOwn), digestOf(t, api)}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := st.do(); err != nil {
				t.Fatal(err)
			}
			removed, freed, err := s.GC(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if removed != st.wantRemoved || (removed > 0) != (freed > 0) {
				t.Errorf("GC removed %d files (%d bytes), want %d", removed, freed, st.wantRemoved)
			}
			for _, h := range st.kept {
				if !hasBlob(s, h) {
					t.Errorf("GC removed %s, still in use", h)
				}
			}
			for _, h := range st.gone {
				if hasBlob(s, h) {
					t.Errorf("GC kept %s, no longer in use", h)
				}
			}
		})
	}
	if entries, _ := os.ReadDir(s.blobDir()); len(entries) != 0 {
		t.Errorf("%d blobs left in an empty store", len(entries))
	}
}

// TestConcurrent runs Puts of images sharing a base layer, reads, untags
// and GCs at once (run with -race): every tag left must be whole.
func TestConcurrent(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	base := randomLayer(t)
	const writers, rounds = 4, 5
	images := make([][]v1.Image, writers)
	for w := range images {
		for range rounds {
			images[w] = append(images[w], imageOf(t, base, randomLayer(t)))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range writers {
		wg.Go(func() {
			repo := fmt.Sprintf("app%d", w)
			for r, img := range images[w] {
				tag := fmt.Sprintf("v%d", r)
				if _, err := s.Put(ctx, repo, tag, img); err != nil {
					errs <- err
					return
				}
				if _, err := s.Put(ctx, repo, "latest", img); err != nil {
					errs <- err
					return
				}
				if r > 0 {
					if err := s.Untag(ctx, repo, fmt.Sprintf("v%d", r-1)); err != nil {
						errs <- err
						return
					}
				}
				got, err := s.Image(ctx, repo, "latest")
				if err != nil {
					errs <- err
					return
				}
				if _, err := got.Manifest(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	stop := make(chan struct{})
	var gcs sync.WaitGroup
	gcs.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := s.GC(ctx); err != nil {
				errs <- err
				return
			}
			s.Repos(ctx)
		}
	})
	wg.Wait()
	close(stop)
	gcs.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	for w := range writers {
		repo := fmt.Sprintf("app%d", w)
		last := images[w][rounds-1]
		checkImage(t, s, repo, "latest", last)
		checkImage(t, s, repo, fmt.Sprintf("v%d", rounds-1), last)
		if tags, _ := s.Tags(ctx, repo); len(tags) != 2 {
			t.Errorf("%s has tags %v, want latest and v%d", repo, tags, rounds-1)
		}
	}
}
