package api

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/pier"
)

// leaseHeader carries a lease nonce, as in the Fly Machines API.
const leaseHeader = "fly-machine-lease-nonce"

func (s *Server) machineRoutes(mux *http.ServeMux) {
	base := "/v1/apps/{app}/machines"
	mux.HandleFunc("GET "+base, s.listMachines)
	mux.HandleFunc("POST "+base, s.createMachine)
	mux.HandleFunc("GET "+base+"/{id}", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		m, err := s.Machines.Get(app, id)
		return reply(w, http.StatusOK, m, err)
	}))
	mux.HandleFunc("POST "+base+"/{id}", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		var req struct {
			Config machines.Config `json:"config"`
			Name   string          `json:"name,omitempty"`
			Region string          `json:"region,omitempty"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		m, err := s.Machines.Update(r.Context(), app, id, nonce(r), req.Config)
		return reply(w, http.StatusOK, m, err)
	}))
	mux.HandleFunc("POST "+base+"/{id}/start", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		before, err := s.Machines.Get(app, id)
		if err != nil {
			return err
		}
		_, err = s.Machines.Start(r.Context(), app, id, nonce(r))
		return reply(w, http.StatusOK, map[string]string{"previous_state": before.State}, err)
	}))
	mux.HandleFunc("POST "+base+"/{id}/stop", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		var req machines.StopRequest
		if err := readOptionalJSON(r, &req); err != nil {
			return err
		}
		return reply(w, http.StatusOK, map[string]bool{"ok": true}, s.Machines.Stop(r.Context(), app, id, nonce(r), req))
	}))
	mux.HandleFunc("GET "+base+"/{id}/wait", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		q := r.URL.Query()
		m, err := s.Machines.Wait(r.Context(), app, id, q.Get("state"), q.Get("timeout"))
		return reply(w, http.StatusOK, map[string]any{"ok": true, "state": m.State}, err)
	}))
	mux.HandleFunc("POST "+base+"/{id}/exec", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		var req machines.ExecRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		res, err := s.Machines.Exec(r.Context(), app, id, nonce(r), req)
		return reply(w, http.StatusOK, res, err)
	}))
	mux.HandleFunc("DELETE "+base+"/{id}", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		force := r.URL.Query().Get("force") == "true"
		return reply(w, http.StatusOK, map[string]bool{"ok": true}, s.Machines.Destroy(r.Context(), app, id, force, nonce(r)))
	}))
	mux.HandleFunc("POST "+base+"/{id}/lease", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		var req machines.LeaseRequest
		if err := readOptionalJSON(r, &req); err != nil {
			return err
		}
		l, err := s.Machines.AcquireLease(r.Context(), app, id, nonce(r), req)
		return reply(w, http.StatusOK, map[string]any{"status": "success", "data": l}, err)
	}))
	mux.HandleFunc("GET "+base+"/{id}/lease", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		l, err := s.Machines.GetLease(app, id)
		return reply(w, http.StatusOK, map[string]any{"status": "success", "data": l}, err)
	}))
	mux.HandleFunc("DELETE "+base+"/{id}/lease", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		return reply(w, http.StatusOK, map[string]bool{"ok": true}, s.Machines.ReleaseLease(r.Context(), app, id, nonce(r)))
	}))
	mux.HandleFunc("GET "+base+"/{id}/metadata", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		md, err := s.Machines.Metadata(app, id)
		return reply(w, http.StatusOK, md, err)
	}))
	mux.HandleFunc("POST "+base+"/{id}/metadata/{key}", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		var req struct {
			Value *string `json:"value"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if req.Value == nil {
			return pier.Errorf(pier.Invalid, "value is required")
		}
		return noContent(w, s.Machines.SetMetadata(r.Context(), app, id, nonce(r), r.PathValue("key"), req.Value))
	}))
	mux.HandleFunc("DELETE "+base+"/{id}/metadata/{key}", s.machine(func(w http.ResponseWriter, r *http.Request, app, id string) error {
		return noContent(w, s.Machines.SetMetadata(r.Context(), app, id, nonce(r), r.PathValue("key"), nil))
	}))
}

func nonce(r *http.Request) string { return r.Header.Get(leaseHeader) }

// machine wraps a handler of one machine: the app must exist, and a
// returned error becomes the error response.
func (s *Server) machine(h func(w http.ResponseWriter, r *http.Request, app, id string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		app := r.PathValue("app")
		if _, err := s.Plane.Store.App(r.Context(), app); err != nil {
			writeError(w, err, s.Log)
			return
		}
		if err := h(w, r, app, r.PathValue("id")); err != nil {
			writeError(w, err, s.Log)
		}
	}
}

// reply writes v, or returns err for the caller to write.
func reply(w http.ResponseWriter, code int, v any, err error) error {
	if err != nil {
		return err
	}
	writeJSON(w, code, v)
	return nil
}

func noContent(w http.ResponseWriter, err error) error {
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// readOptionalJSON decodes a body that may be empty.
func readOptionalJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(b)) == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return pier.Errorf(pier.Invalid, "bad JSON body: %v", err)
	}
	return nil
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	s.machine(func(w http.ResponseWriter, r *http.Request, app, _ string) error {
		filter := map[string]string{}
		for k, v := range r.URL.Query() {
			if key, ok := strings.CutPrefix(k, "metadata."); ok && len(v) > 0 {
				filter[key] = v[0]
			}
		}
		writeJSON(w, http.StatusOK, s.Machines.List(app, filter))
		return nil
	})(w, r)
}

func (s *Server) createMachine(w http.ResponseWriter, r *http.Request) {
	s.machine(func(w http.ResponseWriter, r *http.Request, app, _ string) error {
		var req machines.CreateRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		m, err := s.Machines.Create(r.Context(), app, req)
		return reply(w, http.StatusOK, m, err)
	})(w, r)
}
