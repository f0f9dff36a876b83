package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

func (s *Server) meshRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/mesh", s.meshStatus)
	mux.HandleFunc("POST /v1/mesh/rotate", s.meshRotate)
	mux.HandleFunc("GET /v1/mesh/identities/{app}", s.meshIdentity)
	mux.HandleFunc("GET /v1/metrics/apps", s.statApps)
	mux.HandleFunc("GET /v1/metrics/edges", s.statEdges)
	mux.HandleFunc("GET /v1/metrics/apps/{app}", s.statApp)
	mux.HandleFunc("GET /v1/metrics/apps/{app}/history", s.statHistory)
}

func (s *Server) meshStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Plane.MeshStatus())
}

func (s *Server) meshRotate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Anchor bool `json:"anchor"`
	}
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	st, err := s.Plane.RotateMesh(r.Context(), req.Anchor)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) meshIdentity(w http.ResponseWriter, r *http.Request) {
	id, err := s.Plane.MeshIdentity(r.Context(), r.PathValue("app"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, id)
}

// duration reads a duration query parameter (e.g. window=5m).
func duration(r *http.Request, name string, def time.Duration) (time.Duration, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, pier.Errorf(pier.Invalid, "%s=%q: want a duration like 30s, 5m or 1h", name, v)
	}
	return d, nil
}

func (s *Server) stats(w http.ResponseWriter, r *http.Request, edges bool) {
	window, err := duration(r, "window", time.Minute)
	if err == nil {
		var out any
		if out, err = s.Plane.Stats(window, edges); err == nil {
			writeJSON(w, http.StatusOK, out)
			return
		}
	}
	writeError(w, err, s.Log)
}

func (s *Server) statApps(w http.ResponseWriter, r *http.Request)  { s.stats(w, r, false) }
func (s *Server) statEdges(w http.ResponseWriter, r *http.Request) { s.stats(w, r, true) }

// statApp is one app's metrics per machine and its busiest paths.
func (s *Server) statApp(w http.ResponseWriter, r *http.Request) {
	window, err := duration(r, "window", time.Minute)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	machines, paths, err := s.Plane.AppStats(r.Context(), r.PathValue("app"), window, limit)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"machines": machines, "paths": paths})
}

func (s *Server) statHistory(w http.ResponseWriter, r *http.Request) {
	window, err := duration(r, "window", 10*time.Minute)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	step, err := duration(r, "step", 10*time.Second)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	pts, err := s.Plane.History(r.Context(), r.PathValue("app"), r.URL.Query().Get("src"), window, step)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, pts)
}
