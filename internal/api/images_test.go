package api_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/pier-dev/pier/internal/api"
	"github.com/pier-dev/pier/internal/client"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/pier"
	"github.com/pier-dev/pier/internal/registry"
	"github.com/pier-dev/pier/internal/store"
)

const token = "pier_test"

type fixture struct {
	srv    *httptest.Server
	images *imagestore.Store
	img    v1.Image // web:v2, the current release; v1 has no image
}

// newFixture serves the API with app web (releases v1 and v2, v2 current
// and the only one with an image) and app fresh (no releases).
func newFixture(t *testing.T, withRegistry bool) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	for _, app := range []string{"web", "fresh"} {
		if err := st.CreateApp(ctx, pier.App{Name: app, Count: 1, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := st.CreateRelease(ctx, pier.Release{App: "web", BuildID: "b", Builder: "static", Status: pier.ReleasePending, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Activate(ctx, "web", 2); err != nil {
		t.Fatal(err)
	}
	images, err := imagestore.Open(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := images.Put(ctx, "web", "v2", img); err != nil {
		t.Fatal(err)
	}
	s := &api.Server{Plane: &control.Plane{Store: st, Images: images}, Log: slog.New(slog.DiscardHandler), Token: token}
	if withRegistry {
		s.Registry = registry.New(images, token)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, images: images, img: img}
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

func TestExportImage(t *testing.T) {
	f := newFixture(t, true)
	c := client.New(f.srv.URL, token)
	ctx := context.Background()
	want := layerDigests(t, f.img)
	for _, version := range []string{"v2", "2", "current"} {
		t.Run("docker "+version, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "web.tar")
			out, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			n, err := c.ExportImage(ctx, "web", version, "docker", out)
			out.Close()
			if err != nil {
				t.Fatal(err)
			}
			if fi, _ := os.Stat(path); fi.Size() != n {
				t.Errorf("ExportImage said %d bytes, wrote %d", n, fi.Size())
			}
			got, err := tarball.ImageFromPath(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if g := layerDigests(t, got); !slices.Equal(g, want) {
				t.Errorf("layers %v, want %v", g, want)
			}
			m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
			if err != nil || len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{"web:v2"}) {
				t.Errorf("manifest.json %+v, %v; want RepoTags [web:v2]", m, err)
			}
			if bin, err := exec.LookPath("skopeo"); err == nil {
				cmd := exec.Command(bin, "--insecure-policy", "inspect", "docker-archive:"+path)
				cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("skopeo inspect docker-archive: %v\n%s", err, out)
				}
			} else if os.Getenv("CI") == "true" {
				t.Error("skopeo is not installed: apt-get install -y skopeo (CI must have it)")
			}
		})
	}
	t.Run("oci", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			_, err := c.ExportImage(ctx, "web", "current", "oci", pw)
			pw.CloseWithError(err)
		}()
		names := map[string]bool{}
		tr := tar.NewReader(pr)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			names[h.Name] = true
		}
		for _, d := range want {
			if !names["blobs/sha256/"+d.Hex] {
				t.Errorf("oci archive lacks layer %s: %v", d, names)
			}
		}
		if !names["index.json"] || !names["oci-layout"] {
			t.Errorf("oci archive lacks index.json or oci-layout: %v", names)
		}
	})
}

func TestExportImageErrors(t *testing.T) {
	f := newFixture(t, true)
	c := client.New(f.srv.URL, token)
	for _, tc := range []struct {
		app, version, format string
		status               int
		says                 string
	}{
		{"web", "v1", "docker", 404, "release v1 of web has no image: it was built before pier made images"},
		{"web", "v9", "docker", 404, "release v9 of web not found"},
		{"web", "vx", "docker", 400, "use vN, N or current"},
		{"web", "0", "docker", 400, "use vN, N or current"},
		{"web", "v2", "zip", 400, `unknown image format "zip"`},
		{"nope", "v1", "docker", 404, `app "nope" not found`},
		{"fresh", "current", "docker", 404, "fresh has no current release (run `pier deploy`)"},
	} {
		t.Run(tc.app+" "+tc.version+" "+tc.format, func(t *testing.T) {
			_, err := c.ExportImage(context.Background(), tc.app, tc.version, tc.format, io.Discard)
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.says) {
				t.Errorf("got %v, want %d saying %q", err, tc.status, tc.says)
			}
		})
	}
}

// TestExportBrokenImage: an export failing midway (a layer lost from the
// store) is an error for the client, not a short archive.
func TestExportBrokenImage(t *testing.T) {
	f := newFixture(t, false)
	ls, _ := f.img.Layers()
	d, _ := ls[1].Digest()
	if err := os.Remove(filepath.Join(f.images.Dir(), "blobs", "sha256", d.Hex)); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"docker", "oci"} {
		_, err := client.New(f.srv.URL, token).ExportImage(context.Background(), "web", "v2", format, io.Discard)
		if err == nil {
			t.Errorf("%s export of an image missing a layer succeeded", format)
		}
	}
}

func TestRegistryRouting(t *testing.T) {
	get := func(t *testing.T, srv *httptest.Server, path, auth string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth("pier", token)
	basicAuth, bearer := r.Header.Get("Authorization"), "Bearer "+token

	f := newFixture(t, true)
	for _, tc := range []struct {
		path, auth string
		status     int
		challenge  string
	}{
		{"/v2/", basicAuth, 200, ""},
		{"/v2/web/tags/list", bearer, 200, ""},
		{"/v2/", "", 401, `Basic realm="pier"`},
		{"/v1/status", bearer, 200, ""},
		{"/v1/status", basicAuth, 401, `Bearer realm="pier"`}, // /v1/ stays bearer-only
		{"/v1/status", "", 401, `Bearer realm="pier"`},
	} {
		resp := get(t, f.srv, tc.path, tc.auth)
		if resp.StatusCode != tc.status || resp.Header.Get("WWW-Authenticate") != tc.challenge {
			t.Errorf("GET %s (%.6s): %s, challenge %q; want %d, %q", tc.path, tc.auth, resp.Status, resp.Header.Get("WWW-Authenticate"), tc.status, tc.challenge)
		}
	}

	// Without a registry, /v2/ is just an unknown API route.
	f = newFixture(t, false)
	if resp := get(t, f.srv, "/v2/", bearer); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/v2/ without a registry: %s", resp.Status)
	}
}
