package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/pier"
)

func (s *Server) info(st control.AppStatus) control.AppStatus {
	st.URL = s.URL(st.Name)
	if st.Machines == nil {
		st.Machines = []pier.Machine{}
	}
	return st
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	apps, err := s.Plane.Store.Apps(r.Context())
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	out := make([]control.AppStatus, 0, len(apps))
	for _, a := range apps {
		st, err := s.Plane.Status(r.Context(), a.Name)
		if err != nil {
			writeError(w, err, s.Log)
			return
		}
		out = append(out, s.info(st))
	}
	writeJSON(w, http.StatusOK, out)
}

// CreateAppRequest creates an app. app_name is the Fly Machines API's field.
type CreateAppRequest struct {
	AppName string `json:"app_name"`
	OrgSlug string `json:"org_slug,omitempty"` // accepted for Fly clients; pier has one org
}

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) {
	var req CreateAppRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	if _, err := s.Plane.CreateApp(r.Context(), req.AppName); err != nil {
		writeError(w, err, s.Log)
		return
	}
	st, err := s.Plane.Status(r.Context(), req.AppName)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusCreated, s.info(st))
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	st, err := s.Plane.Status(r.Context(), r.PathValue("app"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, s.info(st))
}

func (s *Server) destroyApp(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	if s.Machines != nil {
		if err := s.Machines.DestroyAll(r.Context(), app); err != nil {
			writeError(w, err, s.Log)
			return
		}
	}
	if err := s.Plane.DestroyApp(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// deploy takes a gzipped tar of the app's source as the body. Problems with
// the input are answered with a plain error status; once the build starts,
// progress and the outcome stream as NDJSON Messages.
func (s *Server) deploy(w http.ResponseWriter, r *http.Request) {
	u, err := s.Plane.Prepare(r.Context(), r.PathValue("app"), r.Body)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	st := newStream(w)
	// The work outlives the request: a client that disconnects mid-deploy
	// does not leave a half-rolled release behind.
	rel, err := s.Plane.Deploy(context.WithoutCancel(r.Context()), u, st)
	st.finish(&rel, err, s.Log)
}

func (s *Server) releases(w http.ResponseWriter, r *http.Request) {
	rels, err := s.Plane.Releases(r.Context(), r.PathValue("app"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	if rels == nil {
		rels = []pier.Release{}
	}
	writeJSON(w, http.StatusOK, rels)
}

// RollbackRequest names the release to go back to; 0 means the previous one.
type RollbackRequest struct {
	Version int `json:"version"`
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	var req RollbackRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	if req.Version < 0 {
		writeError(w, pier.Errorf(pier.Invalid, "version must be positive"), s.Log)
		return
	}
	app := r.PathValue("app")
	if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	st := newStream(w)
	rel, err := s.Plane.Rollback(context.WithoutCancel(r.Context()), app, req.Version, st)
	st.finish(&rel, err, s.Log)
}

// ScaleRequest sets the number of machines.
type ScaleRequest struct {
	Count *int `json:"count"`
}

func (s *Server) scale(w http.ResponseWriter, r *http.Request) {
	var req ScaleRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	if req.Count == nil {
		writeError(w, pier.Errorf(pier.Invalid, "count is required"), s.Log)
		return
	}
	if _, err := s.Plane.Scale(r.Context(), r.PathValue("app"), *req.Count); err != nil {
		writeError(w, err, s.Log)
		return
	}
	st, err := s.Plane.Status(r.Context(), r.PathValue("app"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, s.info(st))
}

func (s *Server) listSecrets(w http.ResponseWriter, r *http.Request) {
	infos, err := s.Plane.Secrets(r.Context(), r.PathValue("app"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	if infos == nil {
		infos = []pier.SecretInfo{}
	}
	writeJSON(w, http.StatusOK, infos)
}

// SetSecretsRequest sets secrets by name.
type SetSecretsRequest struct {
	Values map[string]string `json:"values"`
}

// UnsetSecretsRequest removes secrets by name.
type UnsetSecretsRequest struct {
	Names []string `json:"names"`
}

func (s *Server) setSecrets(w http.ResponseWriter, r *http.Request) {
	var req SetSecretsRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.secretsChange(w, r, func(ctx context.Context, st *stream) (*pier.Release, error) {
		return s.Plane.SetSecrets(ctx, r.PathValue("app"), req.Values, st)
	})
}

func (s *Server) unsetSecrets(w http.ResponseWriter, r *http.Request) {
	var req UnsetSecretsRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.secretsChange(w, r, func(ctx context.Context, st *stream) (*pier.Release, error) {
		return s.Plane.UnsetSecrets(ctx, r.PathValue("app"), req.Names, st)
	})
}

// secretsChange validates up front (unknown app), then streams the roll.
func (s *Server) secretsChange(w http.ResponseWriter, r *http.Request, change func(context.Context, *stream) (*pier.Release, error)) {
	if _, err := s.Plane.Store.App(r.Context(), r.PathValue("app")); err != nil {
		writeError(w, err, s.Log)
		return
	}
	st := newStream(w)
	rel, err := change(context.WithoutCancel(r.Context()), st)
	st.finish(rel, err, s.Log)
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	n, err := queryInt(r, "lines", 100, 0, 100000)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	follow := r.URL.Query().Get("follow") == "true"
	var live <-chan pier.LogLine
	if follow { // subscribe before reading the tail so no line falls between
		ch, cancel := s.Plane.Logs.Subscribe(app)
		defer cancel()
		live = ch
	}
	tail, err := s.Plane.Logs.Tail(app, n)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	var last time.Time
	for _, l := range tail {
		enc.Encode(l)
		last = l.Time
	}
	rc.Flush()
	if !follow {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case l := <-live:
			if !l.Time.After(last) && !last.IsZero() {
				continue // already sent with the tail
			}
			last = time.Time{}
			if enc.Encode(l) != nil {
				return
			}
			rc.Flush()
		}
	}
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	n, err := queryInt(r, "limit", 50, 1, 10000)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	evs, err := s.Plane.Events(r.Context(), r.PathValue("app"), n)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	if evs == nil {
		evs = []pier.Event{}
	}
	writeJSON(w, http.StatusOK, evs)
}
