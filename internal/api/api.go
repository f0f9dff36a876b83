// Package api is pier's HTTP/JSON API under /v1/ (and, when set, the
// image registry under /v2/). Every /v1/ route requires the bearer token;
// errors are {"error": "..."} with a status mapped from the error's kind in
// one place (statusOf).
package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/auth"
	"github.com/pier-dev/pier/internal/certs"
	"github.com/pier-dev/pier/internal/control"
	"github.com/pier-dev/pier/internal/machines"
	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/pier"
)

// Server serves the API.
type Server struct {
	Plane *control.Plane
	Log   *slog.Logger
	// Token is the bearer token every request must carry.
	Token string
	// URL returns where an app is served, for responses and the CLI.
	URL func(app string) string
	// Metrics serves /metrics (Prometheus text format).
	Metrics http.Handler
	// Ops runs the mutating operations: deploys, scales, connections...
	Ops *ops.Manager
	// Machines runs the machines API.
	Machines *machines.Manager
	// Certs keeps custom domains and their certificates.
	Certs *certs.Manager
	// Registry, if set, serves /v2/ (the OCI distribution API) with its
	// own authentication, which also accepts the token as a Basic
	// password, as registry clients send it.
	Registry http.Handler
}

// Handler returns the API's routes behind authentication.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/apps", s.listApps)
	mux.HandleFunc("POST /v1/apps", s.createApp)
	mux.HandleFunc("GET /v1/apps/{app}", s.getApp)
	mux.HandleFunc("DELETE /v1/apps/{app}", s.destroyApp)
	mux.HandleFunc("POST /v1/apps/{app}/deploys", s.deploy)
	mux.HandleFunc("GET /v1/apps/{app}/releases", s.releases)
	mux.HandleFunc("GET /v1/apps/{app}/releases/{version}/image", s.exportImage)
	mux.HandleFunc("POST /v1/apps/{app}/rollback", s.rollback)
	mux.HandleFunc("POST /v1/apps/{app}/scale", s.scale)
	mux.HandleFunc("GET /v1/apps/{app}/secrets", s.listSecrets)
	mux.HandleFunc("POST /v1/apps/{app}/secrets", s.setSecrets)
	mux.HandleFunc("POST /v1/apps/{app}/secrets/unset", s.unsetSecrets)
	mux.HandleFunc("GET /v1/apps/{app}/logs", s.logs)
	mux.HandleFunc("GET /v1/apps/{app}/events", s.events)
	s.resourceRoutes(mux)
	s.operationRoutes(mux)
	s.meshRoutes(mux)
	if s.Machines != nil {
		s.machineRoutes(mux)
	}
	if s.Certs != nil {
		s.certRoutes(mux)
	}
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, pier.Errorf(pier.NotFound, "no API route %s %s (see `pier help`)", r.Method, r.URL.Path), s.Log)
	})
	api := auth.Middleware(s.Token, mux)
	if s.Registry == nil {
		return api
	}
	root := http.NewServeMux()
	root.Handle("/v2/", s.Registry)
	root.Handle("/", api)
	return root
}

// statusOf is the one place error kinds become HTTP statuses.
func statusOf(k pier.Kind) int {
	switch k {
	case pier.Invalid:
		return http.StatusBadRequest
	case pier.NotFound:
		return http.StatusNotFound
	case pier.Conflict:
		return http.StatusConflict
	case pier.Unauthorized:
		return http.StatusUnauthorized
	case pier.Unavailable:
		return http.StatusServiceUnavailable
	case pier.Failed:
		return http.StatusUnprocessableEntity
	case pier.Timeout:
		return http.StatusRequestTimeout
	case pier.Precondition:
		return http.StatusPreconditionFailed
	default:
		return http.StatusInternalServerError
	}
}

// message is what the caller sees of err; internal errors are also logged,
// since they point at a bug or a broken host rather than bad input.
func message(err error, log *slog.Logger) string {
	if pier.KindOf(err) == pier.Internal {
		log.Error("internal error", "err", err)
		return "internal error: " + err.Error()
	}
	return err.Error()
}

func writeError(w http.ResponseWriter, err error, log *slog.Logger) {
	writeJSON(w, statusOf(pier.KindOf(err)), map[string]string{"error": message(err, log)})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// readJSON decodes a small JSON body strictly.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return pier.Errorf(pier.Invalid, "bad JSON body: %v", err)
	}
	return nil
}

// Message is one line of a streamed (NDJSON) response.
type Message struct {
	Type    string          `json:"type"` // output, result, error
	Text    string          `json:"text,omitempty"`
	Release *pier.Release   `json:"release,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"` // the result of operations other than deploys
	Error   string          `json:"error,omitempty"`
	Kind    string          `json:"kind,omitempty"`
}

// stream writes NDJSON messages and flushes each one, so the CLI shows
// progress live. The response starts with the first message: an operation
// that fails before saying anything gets a plain error with its status
// code. It is safe for concurrent use.
type stream struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	enc     *json.Encoder
	rc      *http.ResponseController
	started bool
}

func newStream(w http.ResponseWriter) *stream {
	return &stream{w: w, enc: json.NewEncoder(w), rc: http.NewResponseController(w)}
}

func (s *stream) send(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		s.started = true
		s.w.Header().Set("Content-Type", "application/x-ndjson")
		s.w.Header().Set("X-Content-Type-Options", "nosniff")
		s.w.WriteHeader(http.StatusOK)
	}
	s.enc.Encode(m)
	s.rc.Flush()
}

// Write sends p as output; it never fails, so a client that went away does
// not stop the work.
func (s *stream) Write(p []byte) (int, error) {
	s.send(Message{Type: "output", Text: string(p)})
	return len(p), nil
}

// end sends the result message, or err: a plain error answer if nothing
// was streamed yet.
func (s *stream) end(result Message, err error, log *slog.Logger) {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if err != nil && !started {
		writeError(s.w, err, log)
		return
	}
	if err != nil {
		s.send(Message{Type: "error", Error: message(err, log), Kind: pier.KindOf(err).String()})
		return
	}
	s.send(result)
}

func queryInt(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, pier.Errorf(pier.Invalid, "query parameter %s must be a whole number from %d to %d", name, lo, hi)
	}
	return n, nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "time": time.Now().UTC()})
}
