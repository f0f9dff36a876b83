package api

import (
	"context"
	"encoding/json"
	"io"
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
	s.operateJSON(w, r, control.OpAppCreate, req.AppName, quiet(func(ctx context.Context) (any, error) {
		return s.Plane.CreateApp(ctx, req.AppName)
	}), http.StatusCreated, s.appAnswer(req.AppName))
}

// appAnswer answers with the app as it is once an operation is done.
func (s *Server) appAnswer(app string) func(context.Context, json.RawMessage) (any, error) {
	return func(ctx context.Context, _ json.RawMessage) (any, error) {
		st, err := s.Plane.Status(ctx, app)
		if err != nil {
			return nil, err
		}
		return s.info(st), nil
	}
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
	s.operateJSON(w, r, control.OpAppDestroy, app, quiet(func(ctx context.Context) (any, error) {
		if s.Machines != nil {
			if err := s.Machines.DestroyAll(ctx, app); err != nil {
				return nil, err
			}
		}
		return nil, s.Plane.DestroyApp(ctx, app)
	}), http.StatusOK, func(context.Context, json.RawMessage) (any, error) { return map[string]bool{"ok": true}, nil })
}

// deploy takes a gzipped tar of the app's source as the body. Problems with
// the input are answered with a plain error status; then the build and
// rollout run as an operation, its progress and outcome streamed as NDJSON
// Messages.
func (s *Server) deploy(w http.ResponseWriter, r *http.Request) {
	u, err := s.Plane.Prepare(r.Context(), r.PathValue("app"), r.Body)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateRelease(w, r, control.OpDeploy, u.App, true, func(ctx context.Context, out io.Writer) (any, error) {
		return s.Plane.Deploy(ctx, u, out)
	}, u.Close)
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
	s.operateRelease(w, r, control.OpRollback, app, true, func(ctx context.Context, out io.Writer) (any, error) {
		return s.Plane.Rollback(ctx, app, req.Version, out)
	}, nil)
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
	app := r.PathValue("app")
	if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateJSON(w, r, control.OpScale, app, quiet(func(ctx context.Context) (any, error) {
		return s.Plane.Scale(ctx, app, *req.Count)
	}), http.StatusOK, s.appAnswer(app))
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
	s.secretsChange(w, r, control.OpSecretsSet, func(ctx context.Context, out io.Writer) (any, error) {
		return s.Plane.SetSecrets(ctx, r.PathValue("app"), req.Values, out)
	})
}

func (s *Server) unsetSecrets(w http.ResponseWriter, r *http.Request) {
	var req UnsetSecretsRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.secretsChange(w, r, control.OpSecretsUnset, func(ctx context.Context, out io.Writer) (any, error) {
		return s.Plane.UnsetSecrets(ctx, r.PathValue("app"), req.Names, out)
	})
}

// secretsChange validates up front (unknown app), then streams the roll.
func (s *Server) secretsChange(w http.ResponseWriter, r *http.Request, kind string, change work) {
	if _, err := s.Plane.Store.App(r.Context(), r.PathValue("app")); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateRelease(w, r, kind, r.PathValue("app"), false, change, nil)
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
