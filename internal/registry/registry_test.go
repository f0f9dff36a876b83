package registry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/pier-dev/pier/internal/imagestore"
)

const token = "pier_0123456789abcdef"

type fixture struct {
	srv      *httptest.Server
	host     string // 127.0.0.1:PORT
	web, api v1.Image
}

// newFixture serves a store holding web:v3 and web:latest (an OCI image)
// and api:v1 (a Docker one).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	s, err := imagestore.Open(filepath.Join(t.TempDir(), "oci"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{web: testImage(t, types.OCIManifestSchema1), api: testImage(t, types.DockerManifestSchema2)}
	ctx := context.Background()
	for _, p := range []struct {
		repo, tag string
		img       v1.Image
	}{{"web", "v3", f.web}, {"web", "latest", f.web}, {"api", "v1", f.api}} {
		if _, err := s.Put(ctx, p.repo, p.tag, p.img); err != nil {
			t.Fatal(err)
		}
	}
	f.srv = httptest.NewServer(New(s, token))
	t.Cleanup(f.srv.Close)
	f.host = strings.TrimPrefix(f.srv.URL, "http://")
	return f
}

func testImage(t *testing.T, mt types.MediaType) v1.Image {
	t.Helper()
	img := empty.Image
	lt := types.DockerLayer
	if mt == types.OCIManifestSchema1 {
		img = mutate.ConfigMediaType(mutate.MediaType(img, mt), types.OCIConfigJSON)
		lt = types.OCILayer
	}
	for range 2 {
		l, err := random.Layer(4096, lt)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func (f *fixture) ref(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(f.host+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// request sends an authenticated (unless auth is "") request.
func (f *fixture) request(t *testing.T, method, path, auth string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func basic(user, password string) string {
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth(user, password)
	return r.Header.Get("Authorization")
}

var goodAuth = basic("pier", token)

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 || e.Errors[0].Message == "" {
		t.Fatalf("not a distribution error: %s (%v)", body, err)
	}
	return e.Errors[0].Code
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPull(t *testing.T) {
	f := newFixture(t)
	auth := remote.WithAuth(&authn.Basic{Username: "pier", Password: token})
	for _, tc := range []struct {
		ref  string
		want v1.Image
	}{
		{"web:v3", f.web},
		{"web:latest", f.web},
		{"web@" + digest(t, f.web).String(), f.web},
		{"api:v1", f.api},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			got, err := remote.Image(f.ref(t, tc.ref), auth)
			if err != nil {
				t.Fatal(err)
			}
			if digest(t, got) != digest(t, tc.want) {
				t.Errorf("pulled %s, stored %s", digest(t, got), digest(t, tc.want))
			}
			gl, err := got.Layers()
			if err != nil {
				t.Fatal(err)
			}
			wl, _ := tc.want.Layers()
			if len(gl) != len(wl) {
				t.Fatalf("%d layers, want %d", len(gl), len(wl))
			}
			for i := range gl {
				// Reading verifies the content against the digest.
				if a, b := readLayer(t, gl[i]), readLayer(t, wl[i]); a != b {
					t.Errorf("layer %d differs", i)
				}
			}
			if _, err := got.ConfigFile(); err != nil {
				t.Error(err)
			}
		})
	}

	// The whole image copies into a layout, as crane pull would.
	p, err := layout.Write(t.TempDir(), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(f.ref(t, "web:v3"), auth)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}

	tags, err := remote.List(f.ref(t, "web:v3").Context(), auth)
	if err != nil || !slices.Equal(tags, []string{"latest", "v3"}) {
		t.Errorf("tags: %v, %v", tags, err)
	}
	repos, err := remote.Catalog(context.Background(), f.ref(t, "web:v3").Context().Registry, auth)
	if err != nil || !slices.Equal(repos, []string{"api", "web"}) {
		t.Errorf("catalog: %v, %v", repos, err)
	}
}

func readLayer(t *testing.T, l v1.Layer) string {
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
	return string(b)
}

func TestAuth(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"none", "", http.StatusUnauthorized},
		{"basic, wrong token", basic("pier", "pier_wrong"), http.StatusUnauthorized},
		{"basic, empty password", basic("pier", ""), http.StatusUnauthorized},
		{"bearer, wrong token", "Bearer pier_wrong", http.StatusUnauthorized},
		{"token as the user name", basic(token, ""), http.StatusUnauthorized},
		{"basic", goodAuth, http.StatusOK},
		{"basic, any user", basic("someone", token), http.StatusOK},
		{"bearer", "Bearer " + token, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/v2/", "/v2/web/manifests/v3", "/v2/_catalog"} {
				resp, body := f.request(t, "GET", path, tc.auth)
				if resp.StatusCode != tc.want {
					t.Fatalf("GET %s: %s, want %d", path, resp.Status, tc.want)
				}
				if resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
					t.Errorf("no Docker-Distribution-API-Version header")
				}
				if tc.want == http.StatusUnauthorized {
					if got := resp.Header.Get("WWW-Authenticate"); got != `Basic realm="pier"` {
						t.Errorf("WWW-Authenticate: %q", got)
					}
					if code := errorCode(t, body); code != "UNAUTHORIZED" {
						t.Errorf("code %s", code)
					}
				}
			}
		})
	}
	resp, body := f.request(t, "GET", "/v2/", goodAuth)
	if strings.TrimSpace(string(body)) != "{}" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("GET /v2/: %s %q", resp.Header.Get("Content-Type"), body)
	}

	// Clients with the wrong credentials get an error that says so.
	_, err := remote.Image(f.ref(t, "web:v3"), remote.WithAuth(&authn.Basic{Username: "pier", Password: "pier_wrong"}))
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
		t.Errorf("pull with a wrong token: %v", err)
	}
	_, err = remote.Image(f.ref(t, "web:v3"))
	if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous pull: %v", err)
	}

	// A registry without a token refuses everyone.
	srv := httptest.NewServer(New(nil, ""))
	defer srv.Close()
	for _, auth := range []string{basic("pier", ""), "Bearer "} {
		req, _ := http.NewRequest("GET", srv.URL+"/v2/", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("empty token with %q: %s", auth, resp.Status)
		}
	}
}

func TestManifestHeaders(t *testing.T) {
	f := newFixture(t)
	raw, _ := f.web.RawManifest()
	d := digest(t, f.web)
	for _, method := range []string{"GET", "HEAD"} {
		for _, ref := range []string{"v3", d.String()} {
			resp, body := f.request(t, method, "/v2/web/manifests/"+ref, goodAuth)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s %s: %s %s", method, ref, resp.Status, body)
			}
			h := resp.Header
			if h.Get("Content-Type") != string(types.OCIManifestSchema1) || h.Get("Docker-Content-Digest") != d.String() ||
				h.Get("Content-Length") != strconv.Itoa(len(raw)) {
				t.Errorf("%s %s headers: %v", method, ref, h)
			}
			want := string(raw)
			if method == "HEAD" {
				want = ""
			}
			if string(body) != want {
				t.Errorf("%s %s body: %q", method, ref, body)
			}
		}
	}
	resp, _ := f.request(t, "HEAD", "/v2/api/manifests/v1", goodAuth)
	if resp.Header.Get("Content-Type") != string(types.DockerManifestSchema2) {
		t.Errorf("Docker manifest served as %s", resp.Header.Get("Content-Type"))
	}
}

func TestBlobs(t *testing.T) {
	f := newFixture(t)
	wl, _ := f.web.Layers()
	layer, _ := wl[0].Digest()
	content := readLayer(t, wl[0])
	cfg, _ := f.web.ConfigName()
	al, _ := f.api.Layers()
	apiLayer, _ := al[0].Digest()
	path := "/v2/web/blobs/" + layer.String()

	resp, body := f.request(t, "GET", path, goodAuth)
	if resp.StatusCode != http.StatusOK || string(body) != content || resp.Header.Get("Docker-Content-Digest") != layer.String() {
		t.Fatalf("GET layer: %s, %d bytes, digest %s", resp.Status, len(body), resp.Header.Get("Docker-Content-Digest"))
	}
	resp, body = f.request(t, "HEAD", path, goodAuth)
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Length") != strconv.Itoa(len(content)) {
		t.Errorf("HEAD layer: %s, Content-Length %s", resp.Status, resp.Header.Get("Content-Length"))
	}
	resp, body = f.request(t, "GET", path, goodAuth, "Range", "bytes=10-19")
	if resp.StatusCode != http.StatusPartialContent || string(body) != content[10:20] {
		t.Errorf("range: %s, %q", resp.Status, body)
	}
	if resp, _ := f.request(t, "GET", "/v2/web/blobs/"+cfg.String(), goodAuth); resp.StatusCode != http.StatusOK {
		t.Errorf("config blob: %s", resp.Status)
	}
	if resp, _ := f.request(t, "GET", "/v2/web/blobs/"+digest(t, f.web).String(), goodAuth); resp.StatusCode != http.StatusOK {
		t.Errorf("manifest blob: %s", resp.Status)
	}

	for _, tc := range []struct {
		name, path string
		status     int
		code       string
	}{
		{"another repo's layer", "/v2/web/blobs/" + apiLayer.String(), 404, "BLOB_UNKNOWN"},
		{"unknown repo", "/v2/nope/blobs/" + layer.String(), 404, "NAME_UNKNOWN"},
		{"bad digest", "/v2/web/blobs/sha256:xyz", 400, "DIGEST_INVALID"},
		{"unknown tag", "/v2/web/manifests/v9", 404, "MANIFEST_UNKNOWN"},
		{"another repo's manifest", "/v2/web/manifests/" + digest(t, f.api).String(), 404, "MANIFEST_UNKNOWN"},
		{"unknown repo manifest", "/v2/nope/manifests/v1", 404, "NAME_UNKNOWN"},
		{"invalid repo", "/v2/No_Pe/manifests/v1", 404, "NAME_UNKNOWN"},
		{"nested repo", "/v2/library/web/manifests/v3", 404, "NAME_UNKNOWN"},
		{"unknown repo tags", "/v2/nope/tags/list", 404, "NAME_UNKNOWN"},
		{"bad page size", "/v2/web/tags/list?n=x", 400, "PAGINATION_NUMBER_INVALID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.request(t, "GET", tc.path, goodAuth)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s: %s, want %d", tc.path, resp.Status, tc.status)
			}
			if code := errorCode(t, body); code != tc.code {
				t.Errorf("%s: code %s, want %s", tc.path, code, tc.code)
			}
		})
	}
}

func TestListsAndPages(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		path, want, link string
	}{
		{"/v2/web/tags/list", `{"name":"web","tags":["latest","v3"]}`, ""},
		{"/v2/web/tags/list?n=1", `{"name":"web","tags":["latest"]}`, `</v2/web/tags/list?last=latest&n=1>; rel="next"`},
		{"/v2/web/tags/list?n=1&last=latest", `{"name":"web","tags":["v3"]}`, ""},
		{"/v2/_catalog", `{"repositories":["api","web"]}`, ""},
		{"/v2/_catalog?last=web", `{"repositories":[]}`, ""},
	} {
		resp, body := f.request(t, "GET", tc.path, goodAuth)
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != tc.want || resp.Header.Get("Link") != tc.link {
			t.Errorf("%s: %s %s, Link %q; want %s, Link %q", tc.path, resp.Status, body, resp.Header.Get("Link"), tc.want, tc.link)
		}
	}
}

func TestReadOnly(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct{ method, path string }{
		{"PUT", "/v2/web/manifests/v4"},
		{"DELETE", "/v2/web/manifests/v3"},
		{"POST", "/v2/web/blobs/uploads/"},
		{"PATCH", "/v2/web/blobs/uploads/123"},
		{"PUT", "/v2/web/blobs/uploads/123?digest=sha256:00"},
		{"DELETE", "/v2/web/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"},
	} {
		resp, body := f.request(t, tc.method, tc.path, goodAuth)
		if resp.StatusCode != http.StatusMethodNotAllowed || errorCode(t, body) != "UNSUPPORTED" {
			t.Errorf("%s %s: %s %s", tc.method, tc.path, resp.Status, body)
		}
	}
	// Writes without credentials are told to authenticate first, as
	// clients expect.
	if resp, _ := f.request(t, "PUT", "/v2/web/manifests/v4", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous PUT: %s", resp.Status)
	}
	err := remote.Write(f.ref(t, "web:v4"), testImage(t, types.OCIManifestSchema1), remote.WithAuth(&authn.Basic{Username: "pier", Password: token}))
	if err == nil {
		t.Error("a push succeeded")
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

func runSkopeo(bin, home string, args ...string) ([]byte, error) {
	// --insecure-policy: no policy.json is needed; HOME keeps the user's
	// auth files out.
	cmd := exec.Command(bin, append([]string{"--insecure-policy"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_RUNTIME_DIR="+home, "REGISTRY_AUTH_FILE="+filepath.Join(home, "auth.json"))
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = errors.New(err.Error() + ": " + string(ee.Stderr))
	}
	return out, err
}

func TestSkopeo(t *testing.T) {
	bin := skopeo(t)
	f := newFixture(t)
	home := t.TempDir()
	creds := "pier:" + token
	src := "docker://" + f.host + "/web:v3"

	out, err := runSkopeo(bin, home, "inspect", "--tls-verify=false", "--creds", creds, src)
	if err != nil {
		t.Fatal(err)
	}
	var inspected struct {
		Digest string
		Layers []string
	}
	if err := json.Unmarshal(out, &inspected); err != nil {
		t.Fatal(err)
	}
	if inspected.Digest != digest(t, f.web).String() || len(inspected.Layers) != 2 {
		t.Errorf("skopeo inspect: %+v, want digest %s and 2 layers", inspected, digest(t, f.web))
	}

	dir := filepath.Join(t.TempDir(), "copy")
	if _, err := runSkopeo(bin, home, "copy", "--src-tls-verify=false", "--src-creds", creds, src, "oci:"+dir+":v3"); err != nil {
		t.Fatal(err)
	}
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := ii.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != digest(t, f.web) {
		t.Errorf("skopeo copied %+v, want %s", im.Manifests, digest(t, f.web))
	}
	// A Docker-typed image copies too (skopeo converts it to OCI).
	if _, err := runSkopeo(bin, home, "copy", "--src-tls-verify=false", "--src-creds", creds, "docker://"+f.host+"/api:v1", "oci:"+dir+":api"); err != nil {
		t.Fatal(err)
	}

	if _, err := runSkopeo(bin, home, "inspect", "--tls-verify=false", src); err == nil {
		t.Error("skopeo inspect without credentials succeeded")
	}
	if _, err := runSkopeo(bin, home, "inspect", "--tls-verify=false", "--creds", "pier:pier_wrong", src); err == nil {
		t.Error("skopeo inspect with a wrong token succeeded")
	}
}
