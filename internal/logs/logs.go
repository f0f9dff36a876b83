// Package logs keeps what apps write: one JSON-lines file per app under the
// data dir (rotated at a size limit) and live subscriptions for `pier logs -f`.
package logs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/pier"
)

// MaxFileBytes is the size at which an app's log file is rotated to <app>.log.1.
const MaxFileBytes = 16 << 20

// Hub stores and fans out log lines. It is safe for concurrent use.
type Hub struct {
	dir   string
	mu    sync.Mutex
	subs  map[string]map[chan pier.LogLine]struct{}
	files map[string]*openFile
}

// NewHub keeps log files in dir.
func NewHub(dir string) (*Hub, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &Hub{dir: dir, subs: map[string]map[chan pier.LogLine]struct{}{}, files: map[string]*openFile{}}, nil
}

func (h *Hub) path(app string) string { return filepath.Join(h.dir, app+".log") }

// Append stores one line and hands it to live subscribers. A subscriber too
// slow to keep up misses lines rather than stalling the app.
func (h *Hub) Append(l pier.LogLine) {
	b, _ := json.Marshal(l)
	b = append(b, '\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.file(l.App); f != nil {
		if n, err := f.f.Write(b); err == nil {
			f.size += int64(n)
		}
	}
	for ch := range h.subs[l.App] {
		select {
		case ch <- l:
		default:
		}
	}
}

// file returns app's open log file, rotating it when it is full. h.mu is held.
func (h *Hub) file(app string) *openFile {
	f := h.files[app]
	if f != nil && f.size > MaxFileBytes {
		f.f.Close()
		os.Rename(h.path(app), h.path(app)+".1")
		f = nil
	}
	if f == nil {
		file, err := os.OpenFile(h.path(app), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil
		}
		fi, err := file.Stat()
		if err != nil {
			file.Close()
			return nil
		}
		f = &openFile{f: file, size: fi.Size()}
		h.files[app] = f
	}
	return f
}

type openFile struct {
	f    *os.File
	size int64
}

// Writer returns a writer whose every Write is one line of app's machine on
// stream (the process driver writes whole lines).
func (h *Hub) Writer(app, machine, stream string) *LineWriter {
	return &LineWriter{hub: h, app: app, machine: machine, stream: stream}
}

// LineWriter turns writes into log lines.
type LineWriter struct {
	hub                  *Hub
	app, machine, stream string
	partial              []byte
}

// Write splits p into lines; an unterminated tail waits for the next write.
func (w *LineWriter) Write(p []byte) (int, error) {
	n := len(p)
	buf := append(w.partial, p...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		w.hub.Append(pier.LogLine{Time: time.Now().UTC(), App: w.app, Machine: w.machine, Stream: w.stream, Line: string(bytes.TrimRight(buf[:i], "\r"))})
		buf = buf[i+1:]
	}
	w.partial = append([]byte(nil), buf...)
	return n, nil
}

// WriteLine stores one whole line written at t (by a machine while no
// server was reading it, and handed over later).
func (w *LineWriter) WriteLine(t time.Time, line string) {
	if t.IsZero() {
		t = time.Now()
	}
	w.hub.Append(pier.LogLine{Time: t.UTC(), App: w.app, Machine: w.machine, Stream: w.stream, Line: line})
}

// Flush writes out an unterminated last line.
func (w *LineWriter) Flush() {
	if len(w.partial) > 0 {
		w.Write([]byte{'\n'})
	}
}

// Tail returns the last n lines of app.
func (h *Hub) Tail(app string, n int) ([]pier.LogLine, error) {
	var out []pier.LogLine
	for _, p := range []string{h.path(app) + ".1", h.path(app)} {
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			var l pier.LogLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				out = append(out, l)
				if len(out) > 2*n+1024 {
					out = append(out[:0:0], out[len(out)-n:]...)
				}
			}
		}
		f.Close()
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, nil
}

// Subscribe returns a channel of app's new lines until cancel is called.
func (h *Hub) Subscribe(app string) (<-chan pier.LogLine, func()) {
	ch := make(chan pier.LogLine, 1024)
	h.mu.Lock()
	if h.subs[app] == nil {
		h.subs[app] = map[chan pier.LogLine]struct{}{}
	}
	h.subs[app][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs[app], ch)
		h.mu.Unlock()
	}
}

// Close closes the open log files.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for app, f := range h.files {
		f.f.Close()
		delete(h.files, app)
	}
}

// Remove deletes an app's log files.
func (h *Hub) Remove(app string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.files[app]; f != nil {
		f.f.Close()
		delete(h.files, app)
	}
	os.Remove(h.path(app))
	os.Remove(h.path(app) + ".1")
}
