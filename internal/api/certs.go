package api

import (
	"net/http"

	"github.com/pier-dev/pier/internal/pier"
)

// AddCertRequest makes domain a custom domain of app.
type AddCertRequest struct {
	App    string `json:"app"`
	Domain string `json:"domain"`
}

func (s *Server) certRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/certs", s.listCerts)
	mux.HandleFunc("POST /v1/certs", s.addCert)
	mux.HandleFunc("GET /v1/certs/ca", s.certsCA)
	mux.HandleFunc("DELETE /v1/certs/{domain}", s.removeCert)
}

func (s *Server) listCerts(w http.ResponseWriter, r *http.Request) {
	out, err := s.Certs.List(r.Context())
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) addCert(w http.ResponseWriter, r *http.Request) {
	var req AddCertRequest
	if err := readJSON(r, &req); err != nil {
		writeError(w, err, s.Log)
		return
	}
	if err := pier.ValidateAppName(req.App); err != nil {
		writeError(w, err, s.Log)
		return
	}
	c, err := s.Certs.Add(r.Context(), req.App, req.Domain)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

func (s *Server) removeCert(w http.ResponseWriter, r *http.Request) {
	if err := s.Certs.Remove(r.Context(), r.PathValue("domain")); err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// certsCA answers the PEM of the local CA that certifies the server's local
// domains, for clients to trust.
func (s *Server) certsCA(w http.ResponseWriter, r *http.Request) {
	pem, err := s.Certs.CAPEM()
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(pem)
}
