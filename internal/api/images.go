package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/internal/imagestore"
	"github.com/pier-dev/pier/internal/pier"
)

// exportImage streams the image of an app's release as a tarball:
// ?format=docker (the default; a docker-archive) or ?format=oci (an
// oci-archive). The version is vN, N or "current". Errors found before the
// first byte are plain API errors; a failure later cuts the connection, so
// that the client never takes a truncated archive for a whole one.
func (s *Server) exportImage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	app := r.PathValue("app")
	format := r.URL.Query().Get("format")
	if format == "" {
		format = imagestore.FormatDocker
	}
	if format != imagestore.FormatDocker && format != imagestore.FormatOCI {
		writeError(w, pier.Errorf(pier.Invalid, "unknown image format %q: use format=%s (docker-archive) or format=%s (oci-archive)", format, imagestore.FormatDocker, imagestore.FormatOCI), s.Log)
		return
	}
	a, err := s.Plane.Store.App(ctx, app)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	version, err := releaseVersion(r.PathValue("version"), a)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	if _, err := s.Plane.Store.Release(ctx, app, version); err != nil {
		writeError(w, err, s.Log)
		return
	}
	if s.Plane.Images == nil {
		writeError(w, pier.Errorf(pier.Unavailable, "this server keeps no release images"), s.Log)
		return
	}
	tag := fmt.Sprintf("v%d", version)
	img, err := s.Plane.Images.Image(ctx, app, tag)
	if errors.Is(err, imagestore.ErrNotFound) {
		writeError(w, pier.Errorf(pier.NotFound, "release %s of %s has no image: it was built before pier made images, collected (beyond --keep-releases), or built by a server that runs apps as host processes; deploy again under the runc runtime to make one", tag, app), s.Log)
		return
	}
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-tar")
	h.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-%s.tar"`, app, tag))
	h.Set("X-Content-Type-Options", "nosniff")
	cw := &countWriter{w: w}
	if err := imagestore.Export(ctx, cw, img, app+":"+tag, format); err != nil {
		if cw.n == 0 {
			h.Del("Content-Disposition")
			writeError(w, err, s.Log)
			return
		}
		if ctx.Err() == nil {
			s.Log.Error("export image", "app", app, "release", tag, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// releaseVersion reads vN, N or "current" (the app's release).
func releaseVersion(v string, a pier.App) (int, error) {
	if v == "current" {
		if a.Release == 0 {
			return 0, pier.Errorf(pier.NotFound, "%s has no current release (run `pier deploy`)", a.Name)
		}
		return a.Release, nil
	}
	n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
	if err != nil || n < 1 {
		return 0, pier.Errorf(pier.Invalid, "bad release %q: use vN, N or current (see `pier releases -a %s`)", v, a.Name)
	}
	return n, nil
}

// countWriter counts what went through, to tell whether a response began.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
