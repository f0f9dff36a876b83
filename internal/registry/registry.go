// Package registry serves pier's release images read-only over the OCI
// distribution API under /v2/, so that skopeo, crane, podman, docker and
// containerd can pull an app's images with pier's API token:
//
//	skopeo inspect --creds pier:$PIER_TOKEN docker://HOST:4280/web:v3
//
// Pushes and deletes are refused: images enter pier by its builds only.
package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pier-dev/pier/internal/imagestore"
)

// Images is what the registry serves: an *imagestore.Store. Errors wrap
// imagestore.ErrNotFound or imagestore.ErrInvalidName for what is not
// there.
type Images interface {
	Repos(ctx context.Context) ([]string, error)
	Tags(ctx context.Context, repo string) ([]string, error)
	Image(ctx context.Context, repo, ref string) (v1.Image, error)
	Blob(ctx context.Context, repo string, digest v1.Hash) (io.ReadSeekCloser, error)
}

var _ Images = (*imagestore.Store)(nil)

// Registry is the /v2/ handler.
type Registry struct {
	// Log receives internal errors; New sets a logger that drops them.
	Log *slog.Logger

	images Images
	token  [32]byte // sha256 of the token, compared in constant time
	open   bool     // a token is set; without one every request is refused
	mux    *http.ServeMux
}

// New returns a registry of images that accepts requests carrying token,
// as the password of HTTP Basic authentication (any user name, as registry
// clients send it) or as a bearer token.
func New(images Images, token string) *Registry {
	g := &Registry{
		Log:    slog.New(slog.DiscardHandler),
		images: images,
		token:  sha256.Sum256([]byte(token)),
		open:   token != "",
		mux:    http.NewServeMux(),
	}
	// GET patterns match HEAD too.
	g.mux.HandleFunc("GET /v2/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{}\n"))
	})
	g.mux.HandleFunc("GET /v2/_catalog", g.catalog)
	g.mux.HandleFunc("GET /v2/{name}/tags/list", g.tags)
	g.mux.HandleFunc("GET /v2/{name}/manifests/{ref}", g.manifest)
	g.mux.HandleFunc("GET /v2/{name}/blobs/{digest}", g.blob)
	g.mux.HandleFunc("/", g.fallback)
	return g
}

func (g *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !g.authorized(r) {
		// A Basic challenge is what makes skopeo, crane, podman and docker
		// send the credentials they were given.
		w.Header().Set("WWW-Authenticate", `Basic realm="pier"`)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED",
			"authentication required: use any user name and pier's API token as the password (see pier auth token)")
		return
	}
	g.mux.ServeHTTP(w, r)
}

func (g *Registry) authorized(r *http.Request) bool {
	var got string
	if _, password, ok := r.BasicAuth(); ok {
		got = password
	} else if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		got = strings.TrimSpace(bearer)
	} else {
		return false
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], g.token[:]) == 1 && g.open
}

// fallback answers what no route took: unknown reads are 404, and every
// write (pushes, uploads, deletes) is refused.
func (g *Registry) fallback(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", fmt.Sprintf("no registry route %s (repositories are app names: /v2/APP/manifests/vN)", r.URL.Path))
		return
	}
	w.Header().Set("Allow", "GET, HEAD")
	writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "pier's registry is read-only: images are made by `pier deploy`")
}

// repoExists answers NAME_UNKNOWN (and false) if repo has no tags.
func (g *Registry) repoExists(w http.ResponseWriter, r *http.Request, repo string) bool {
	_, err := g.images.Tags(r.Context(), repo)
	if err == nil {
		return true
	}
	if isNotFound(err) {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", fmt.Sprintf("repository %s is not known (repositories are app names with deployed images)", repo))
		return false
	}
	g.internal(w, err)
	return false
}

func (g *Registry) manifest(w http.ResponseWriter, r *http.Request) {
	repo, ref := r.PathValue("name"), r.PathValue("ref")
	if !g.repoExists(w, r, repo) {
		return
	}
	img, err := g.images.Image(r.Context(), repo, ref)
	if isNotFound(err) {
		writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("%s has no image %s (see /v2/%s/tags/list)", repo, ref, repo))
		return
	}
	if err != nil {
		g.internal(w, err)
		return
	}
	raw, err := img.RawManifest()
	if err != nil {
		g.internal(w, err)
		return
	}
	mt, err := img.MediaType()
	if err != nil {
		g.internal(w, err)
		return
	}
	digest, err := img.Digest()
	if err != nil {
		g.internal(w, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", string(mt))
	h.Set("Docker-Content-Digest", digest.String())
	h.Set("Content-Length", strconv.Itoa(len(raw)))
	h.Set("ETag", `"`+digest.String()+`"`)
	if r.Method == http.MethodHead {
		return
	}
	w.Write(raw)
}

func (g *Registry) blob(w http.ResponseWriter, r *http.Request) {
	repo := r.PathValue("name")
	digest, err := v1.NewHash(r.PathValue("digest"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("bad digest %q (want sha256:<64 hex digits>)", r.PathValue("digest")))
		return
	}
	if !g.repoExists(w, r, repo) {
		return
	}
	rc, err := g.images.Blob(r.Context(), repo, digest)
	if isNotFound(err) {
		writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", fmt.Sprintf("no image of %s has blob %s", repo, digest))
		return
	}
	if err != nil {
		g.internal(w, err)
		return
	}
	defer rc.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", digest.String())
	h.Set("ETag", `"`+digest.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000, immutable")
	// ServeContent answers HEAD, Range and If-None-Match.
	http.ServeContent(w, r, "", time.Time{}, rc)
}

func (g *Registry) tags(w http.ResponseWriter, r *http.Request) {
	repo := r.PathValue("name")
	tags, err := g.images.Tags(r.Context(), repo)
	if isNotFound(err) {
		writeError(w, http.StatusNotFound, "NAME_UNKNOWN", fmt.Sprintf("repository %s is not known", repo))
		return
	}
	if err != nil {
		g.internal(w, err)
		return
	}
	page, ok := paginate(w, r, tags)
	if !ok {
		return
	}
	writeJSON(w, map[string]any{"name": repo, "tags": page})
}

func (g *Registry) catalog(w http.ResponseWriter, r *http.Request) {
	repos, err := g.images.Repos(r.Context())
	if err != nil {
		g.internal(w, err)
		return
	}
	page, ok := paginate(w, r, repos)
	if !ok {
		return
	}
	writeJSON(w, map[string]any{"repositories": page})
}

// paginate applies the n and last query parameters to the sorted items,
// adding a Link header to the next page when there is one.
func paginate(w http.ResponseWriter, r *http.Request, items []string) ([]string, bool) {
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i, found := slices.BinarySearch(items, last)
		if found {
			i++
		}
		items = items[i:]
	}
	if items == nil {
		items = []string{}
	}
	if q.Get("n") == "" {
		return items, true
	}
	n, err := strconv.Atoi(q.Get("n"))
	if err != nil || n < 0 {
		writeError(w, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", fmt.Sprintf("n=%s is not a count", q.Get("n")))
		return nil, false
	}
	if len(items) > n {
		items = items[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {items[n-1]}}
			w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
		}
	}
	return items, true
}

func isNotFound(err error) bool {
	return errors.Is(err, imagestore.ErrNotFound) || errors.Is(err, imagestore.ErrInvalidName)
}

func (g *Registry) internal(w http.ResponseWriter, err error) {
	g.Log.Error("registry", "err", err)
	writeError(w, http.StatusInternalServerError, "UNKNOWN", "internal error: "+err.Error())
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// writeError answers in the distribution spec's error format.
func writeError(w http.ResponseWriter, status int, code, message string) {
	type apiError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string][]apiError{"errors": {{Code: code, Message: message}}})
}
