package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/pier-dev/pier/internal/auth"
	"github.com/pier-dev/pier/internal/ops"
	"github.com/pier-dev/pier/internal/pier"
)

// OperationHeader names the operation a mutating request started, on its
// answer, streamed or not: `pier ops watch` follows it from anywhere.
const OperationHeader = "Pier-Operation"

func (s *Server) operationRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/operations", s.listOperations)
	mux.HandleFunc("GET /v1/operations/{id}", s.getOperation)
	mux.HandleFunc("GET /v1/operations/{id}/events", s.operationEvents)
	mux.HandleFunc("POST /v1/operations/{id}/cancel", s.cancelOperation)
}

// work is what an operation does: ops.Func.
type work = ops.Func

// submit starts an operation for the request's token and names it on the
// answer; the work runs in the server, whatever becomes of the request.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, kind, target string, cancellable bool, fn work, drop func()) (ops.Operation, bool) {
	if target == "" {
		writeError(w, pier.Errorf(pier.Invalid, "a name is required"), s.Log)
		return ops.Operation{}, false
	}
	op, err := s.Ops.Submit(r.Context(), ops.Request{Kind: kind, Target: target, Who: auth.Principal(r.Context()), Cancellable: cancellable, Drop: drop}, fn)
	if err != nil {
		writeError(w, err, s.Log)
		return op, false
	}
	w.Header().Set(OperationHeader, op.ID)
	return op, true
}

// outcome is an operation's last event as an error (nil if it succeeded).
func outcome(ev ops.Event) error {
	switch ev.State {
	case ops.Succeeded:
		return nil
	case ops.Failed:
		return &pier.Error{Kind: pier.KindNamed(ev.Kind), Msg: ev.Text}
	default:
		return pier.Errorf(pier.Failed, "%s", ev.Text)
	}
}

// operate runs fn as an operation and streams its progress as Messages,
// ending with result's message made of the operation's result; a failure
// before any output is a plain error answer. A client that goes away
// leaves the operation running.
func (s *Server) operate(w http.ResponseWriter, r *http.Request, kind, target string, cancellable bool, fn work, drop func(), result func(json.RawMessage) Message) {
	op, ok := s.submit(w, r, kind, target, cancellable, fn, drop)
	if !ok {
		return
	}
	st := newStream(w)
	var last ops.Event
	err := s.Ops.Watch(r.Context(), op.ID, 1, func(ev ops.Event) error {
		switch {
		case ev.Type == ops.EventOutput:
			st.Write([]byte(ev.Text))
		case ev.State.Done():
			last = ev
		case ev.Text != "": // waiting its turn
			st.Write([]byte("==> " + ev.Text + "\n"))
		}
		return nil
	})
	if err != nil || !last.State.Done() {
		return // the client went away; the operation goes on
	}
	st.end(result(last.Result), outcome(last), s.Log)
}

// operateData is operate with the result as the message's data.
func (s *Server) operateData(w http.ResponseWriter, r *http.Request, kind, target string, cancellable bool, fn work) {
	s.operate(w, r, kind, target, cancellable, fn, nil, func(b json.RawMessage) Message { return Message{Type: "result", Data: b} })
}

// operateRelease is operate with the result, a release, in the message.
func (s *Server) operateRelease(w http.ResponseWriter, r *http.Request, kind, target string, cancellable bool, fn work, drop func()) {
	s.operate(w, r, kind, target, cancellable, fn, drop, func(b json.RawMessage) Message {
		m := Message{Type: "result"}
		if len(b) > 0 && string(b) != "null" {
			var rel pier.Release
			if json.Unmarshal(b, &rel) == nil {
				m.Release = &rel
			}
		}
		return m
	})
}

// operateJSON runs fn as an operation and answers, once it has ended,
// with its error or with code and answer's value: the answer of an API
// that is not streamed.
func (s *Server) operateJSON(w http.ResponseWriter, r *http.Request, kind, target string, fn work, code int, answer func(ctx context.Context, result json.RawMessage) (any, error)) {
	op, ok := s.submit(w, r, kind, target, false, fn, nil)
	if !ok {
		return
	}
	var last ops.Event
	if err := s.Ops.Watch(r.Context(), op.ID, 1, func(ev ops.Event) error {
		if ev.State.Done() {
			last = ev
		}
		return nil
	}); err != nil || !last.State.Done() {
		return
	}
	if err := outcome(last); err != nil {
		writeError(w, err, s.Log)
		return
	}
	v, err := answer(r.Context(), last.Result)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, code, v)
}

// quiet drops an operation's output where the answer has no room for it.
func quiet(fn func(ctx context.Context) (any, error)) work {
	return func(ctx context.Context, _ io.Writer) (any, error) { return fn(ctx) }
}

func (s *Server) listOperations(w http.ResponseWriter, r *http.Request) {
	limit, err := queryInt(r, "limit", 20, 1, 1000)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	list, err := s.Ops.List(r.Context(), r.URL.Query().Get("target"), limit)
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	if list == nil {
		list = []ops.Operation{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) getOperation(w http.ResponseWriter, r *http.Request) {
	op, err := s.Ops.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusOK, op)
}

// operationEvents streams an operation's events as NDJSON from event
// number `from` (default 1): with follow (the default) until its last,
// as they happen; without, those there are now.
func (s *Server) operationEvents(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	from, err := queryInt(r, "from", 1, 1, 1<<30)
	if err == nil {
		_, err = s.Ops.Get(r.Context(), id)
	}
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	rc := http.NewResponseController(w)
	send := func(ev ops.Event) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return rc.Flush()
	}
	if r.URL.Query().Get("follow") == "false" {
		evs, err := s.Ops.Store.OperationEvents(r.Context(), id, from)
		if err != nil {
			s.Log.Warn("read an operation's events", "op", id, "err", err)
		}
		for _, ev := range evs {
			if send(ev) != nil {
				return
			}
		}
		return
	}
	s.Ops.Watch(r.Context(), id, from, send)
}

func (s *Server) cancelOperation(w http.ResponseWriter, r *http.Request) {
	op, err := s.Ops.Cancel(r.Context(), r.PathValue("id"), auth.Principal(r.Context()))
	if err != nil {
		writeError(w, err, s.Log)
		return
	}
	writeJSON(w, http.StatusAccepted, op)
}
