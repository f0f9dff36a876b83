package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/resources"
)

func (s *Server) resourceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/resource-types", s.resourceTypes)
	mux.HandleFunc("GET /v1/resources", s.listResources)
	mux.HandleFunc("POST /v1/resources", s.createResource)
	mux.HandleFunc("GET /v1/resources/{name}", s.getResource)
	mux.HandleFunc("DELETE /v1/resources/{name}", s.deleteResource)
	mux.HandleFunc("GET /v1/resources/{name}/events", s.resourceEvents)
	mux.HandleFunc("GET /v1/resources/{name}/backups", s.listBackups)
	mux.HandleFunc("POST /v1/resources/{name}/backups", s.createBackup)
	mux.HandleFunc("POST /v1/resources/{name}/restore", s.restoreBackup)
	mux.HandleFunc("GET /v1/connections", s.listConnections)
	mux.HandleFunc("POST /v1/apps/{app}/connections", s.connect)
	mux.HandleFunc("GET /v1/apps/{app}/connections/{target}", s.showConnection)
	mux.HandleFunc("DELETE /v1/apps/{app}/connections/{target}", s.disconnect)
	mux.HandleFunc("GET /v1/graph", s.graph)
}

// CreateResourceRequest creates a resource of a type with parameters.
type CreateResourceRequest struct {
	Name   string         `json:"name"`
	Type   string         `json:"type"`
	Params map[string]any `json:"params,omitempty"`
}

// ConnectRequest connects an app to a resource.
type ConnectRequest struct {
	Target string           `json:"target"`
	Access resources.Access `json:"access,omitempty"`
	As     string           `json:"as,omitempty"`
}

// RestoreRequest restores a resource from one of its backups.
type RestoreRequest struct {
	BackupID string `json:"backup_id"`
}

func (s *Server) resourceTypes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Plane.ResourceTypes())
}

func (s *Server) listResources(w http.ResponseWriter, r *http.Request) {
	rs, err := s.Plane.ListResources(r.Context())
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, rs)
}

func (s *Server) createResource(w http.ResponseWriter, r *http.Request) {
	var req CreateResourceRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateData(w, r, control.OpResourceCreate, req.Name, true, func(ctx context.Context, out io.Writer) (any, error) {
		return s.Plane.CreateResource(ctx, req.Name, req.Type, req.Params, out)
	})
}

func (s *Server) getResource(w http.ResponseWriter, r *http.Request) {
	res, err := s.Plane.GetResource(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) deleteResource(w http.ResponseWriter, r *http.Request) {
	force := r.URL.Query().Get("force") == "true"
	name := r.PathValue("name")
	if _, err := s.Plane.Store.Resource(r.Context(), name); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateData(w, r, control.OpResourceDelete, name, false, func(ctx context.Context, out io.Writer) (any, error) {
		return map[string]bool{"deleted": true}, s.Plane.DeleteResource(ctx, name, force, out)
	})
}

func (s *Server) resourceEvents(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	limit, err := queryInt(r, "limit", 50, 1, 1000)
	if err == nil {
		_, err = s.Plane.Store.Resource(r.Context(), name)
	}
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	evs, err := s.Plane.Store.Events(r.Context(), "resource/"+name, limit)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, evs)
}

func (s *Server) listBackups(w http.ResponseWriter, r *http.Request) {
	bs, err := s.Plane.Backups(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	if bs == nil {
		bs = []resources.Backup{}
	}
	writeJSON(w, http.StatusOK, bs)
}

func (s *Server) createBackup(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := s.Plane.Store.Resource(r.Context(), name); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateJSON(w, r, control.OpBackup, name, quiet(func(ctx context.Context) (any, error) {
		return s.Plane.Backup(ctx, name, "manual")
	}), http.StatusCreated, func(_ context.Context, b json.RawMessage) (any, error) { return b, nil })
}

func (s *Server) restoreBackup(w http.ResponseWriter, r *http.Request) {
	var req RestoreRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	name := r.PathValue("name")
	if _, err := s.Plane.Store.Resource(r.Context(), name); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateData(w, r, control.OpRestore, name, false, func(ctx context.Context, out io.Writer) (any, error) {
		return map[string]string{"restored": req.BackupID}, s.Plane.RestoreBackup(ctx, name, req.BackupID, out)
	})
}

func (s *Server) listConnections(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cs, err := s.Plane.Connections(r.Context(), q.Get("app"), q.Get("target"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, cs)
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	var req ConnectRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	app := r.PathValue("app")
	if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateData(w, r, control.OpConnect, app, false, func(ctx context.Context, out io.Writer) (any, error) {
		return s.Plane.Connect(ctx, app, req.Target, req.Access, req.As, out)
	})
}

func (s *Server) showConnection(w http.ResponseWriter, r *http.Request) {
	c, err := s.Plane.ShowConnection(r.Context(), r.PathValue("app"), r.PathValue("target"), r.URL.Query().Get("reveal") == "true")
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) disconnect(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
		writeError(w, err, s.Log)
		return
	}
	s.operateData(w, r, control.OpDisconnect, app, false, func(ctx context.Context, out io.Writer) (any, error) {
		return map[string]bool{"disconnected": true}, s.Plane.Disconnect(ctx, app, r.PathValue("target"), out)
	})
}

func (s *Server) graph(w http.ResponseWriter, r *http.Request) {
	g, err := s.Plane.Graph(r.Context())
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, g)
}
