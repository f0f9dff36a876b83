// Package proxy is pier's edge proxy: it routes Host <app>.<domain> to the
// healthy machines of the app, balances by fewest requests in flight, drains
// machines before they stop, and counts requests and latency per app.
package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is an http.Handler. Routes are changed with AddApp, Add, Remove and
// Drain while it serves.
type Proxy struct {
	domain string
	log    *slog.Logger
	// WaitForBackend bounds how long a request to an app with no healthy
	// machine is held before it gets 503.
	WaitForBackend time.Duration
	// Wake, if set, is called (in its own goroutine) when a request arrives
	// for an app with no machine in traffic, so a scaled-to-zero app can
	// start one while the request waits.
	Wake func(app string)
	// Record, if set, is told of every request to an app when it ends:
	// the machine that served it ("" if none did), status and duration.
	// The mesh's golden metrics count edge traffic through it.
	Record func(app, machine string, r *http.Request, code int, d time.Duration, bytesOut int64)

	// domains maps custom domains to apps (SetDomains); read lock-free
	// on every request, replaced whole on change.
	domains atomic.Pointer[map[string]string]

	mu        sync.Mutex
	apps      map[string]*pool
	rp        *httputil.ReverseProxy
	transport *http.Transport
	metrics   *Metrics
	meshed    bool // requests go to machines through the mesh (UseMesh)
}

type pool struct {
	backends []*backend
	next     int
	changed  chan struct{} // closed (and replaced) when a backend is added
	inflight int           // requests being proxied, on any machine
	last     time.Time     // when the latest request arrived
}

type backend struct {
	pool     *pool
	app      string
	id       string
	url      *url.URL
	inflight int
	draining bool
	idle     chan struct{} // closed when draining and inflight reaches 0
}

type ctxKey struct{}

// New returns a proxy serving apps at <app>.<domain>.
func New(domain string, m *Metrics, log *slog.Logger) *Proxy {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// The default caps idle connections at 100 across all machines, which
	// makes a busy proxy reconnect to apps all the time; the per-machine
	// cap and the idle timeout are bound enough.
	t.MaxIdleConns = 0
	t.MaxIdleConnsPerHost = 256
	t.ResponseHeaderTimeout = 0 // apps may take their time; clients decide when to give up
	p := &Proxy{
		domain:         strings.ToLower(domain),
		log:            log,
		WaitForBackend: 10 * time.Second,
		apps:           map[string]*pool{},
		transport:      t,
		metrics:        m,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			b := pr.In.Context().Value(ctxKey{}).(*backend)
			pr.SetURL(b.url)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			pr.Out.Header.Set("X-Request-Id", pr.In.Header.Get("X-Request-Id"))
			StripInternal(pr.Out.Header)
			if p.meshed {
				// Over mTLS to the mesh's callee side, which sends the
				// request to the machine this proxy chose.
				pr.Out.URL.Scheme, pr.Out.URL.Host = "https", b.app+".internal"
				pr.Out.Header.Set(MachineHeader, b.id)
			}
		},
		Transport:  t,
		BufferPool: bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				w.WriteHeader(499) // client went away; nothing to send
				return
			}
			b := r.Context().Value(ctxKey{}).(*backend)
			p.log.Warn("proxy to machine failed", "machine", b.id, "host", r.Host, "err", err)
			page(w, http.StatusBadGateway, "The app's machine did not answer", "pier could not get a response from the app. Check `pier logs` for what it said.")
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return p
}

// MachineHeader names the machine the edge proxy chose, on requests it
// sends through the mesh.
const MachineHeader = "Pier-Machine"

// StripInternal removes from h every header pier's own parts pass between
// them (Pier-*, X-Pier-*) and the mesh's verified caller identity
// (X-Forwarded-Client-Cert): a client of the edge must not be able to send
// them in, whatever comes after the edge (the mesh's callee side, or the
// app itself under the process runtime).
func StripInternal(h http.Header) {
	for k := range h {
		if strings.HasPrefix(k, "Pier-") || strings.HasPrefix(k, "X-Pier-") || k == "X-Forwarded-Client-Cert" {
			delete(h, k)
		}
	}
}

// UseMesh sends requests to machines through the mesh with rt, which
// carries the edge proxy's own identity over mutual TLS: machines are
// reached only through the mesh's callee side. Call it before serving.
func (p *Proxy) UseMesh(rt http.RoundTripper) {
	p.rp.Transport = rt
	p.meshed = true
}

// AddApp makes the proxy answer for app (with 503 until it has a machine).
func (p *Proxy) AddApp(app string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.apps[app] == nil {
		p.apps[app] = &pool{changed: make(chan struct{})}
	}
}

// RemoveApp stops answering for app.
func (p *Proxy) RemoveApp(app string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.apps, app)
}

// Add routes app's traffic to the machine id at addr (host:port) too.
func (p *Proxy) Add(app, id, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pl := p.apps[app]
	if pl == nil {
		pl = &pool{changed: make(chan struct{})}
		p.apps[app] = pl
	}
	for _, b := range pl.backends {
		if b.id == id {
			return
		}
	}
	pl.backends = append(pl.backends, &backend{pool: pl, app: app, id: id, url: &url.URL{Scheme: "http", Host: addr}})
	pl.last = time.Now() // a machine that just joined counts as activity
	close(pl.changed)
	pl.changed = make(chan struct{})
}

// Remove stops routing new requests to machine id at once (it crashed or
// failed its checks); requests in flight are left to finish or fail.
func (p *Proxy) Remove(app, id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.take(app, id)
}

func (p *Proxy) take(app, id string) *backend {
	pl := p.apps[app]
	if pl == nil {
		return nil
	}
	for i, b := range pl.backends {
		if b.id == id {
			pl.backends = append(pl.backends[:i:i], pl.backends[i+1:]...)
			return b
		}
	}
	return nil
}

// Drain stops routing new requests to machine id and waits until its
// requests in flight have finished or ctx is done.
func (p *Proxy) Drain(ctx context.Context, app, id string) error {
	p.mu.Lock()
	b := p.take(app, id)
	if b == nil || b.inflight == 0 {
		p.mu.Unlock()
		return nil
	}
	b.draining = true
	b.idle = make(chan struct{})
	idle := b.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain machine %s: %w", id, ctx.Err())
	}
}

// CloseIdleConnections drops kept-alive connections to machines, e.g. after
// machines stopped, so none is reused against a port that changed hands.
func (p *Proxy) CloseIdleConnections() { p.transport.CloseIdleConnections() }

// Idle reports how long app has had no request in flight and none
// arriving; 0 while it is busy or unknown.
func (p *Proxy) Idle(app string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	pl := p.apps[app]
	if pl == nil || pl.inflight > 0 || pl.last.IsZero() {
		return 0
	}
	return time.Since(pl.last)
}

// Backends returns the ids of the machines app's traffic goes to.
func (p *Proxy) Backends(app string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	if pl := p.apps[app]; pl != nil {
		for _, b := range pl.backends {
			ids = append(ids, b.id)
		}
	}
	return ids
}

// pick chooses the machine with the fewest requests in flight, rotating
// among equals, and counts the request against it before unlocking, so a
// concurrent Drain sees it.
func (p *Proxy) pick(ctx context.Context, app string) (*backend, bool, error) {
	var deadline <-chan time.Time // made only when a request has to wait
	for {
		p.mu.Lock()
		pl := p.apps[app]
		if pl == nil {
			p.mu.Unlock()
			return nil, false, nil
		}
		pl.last = time.Now()
		if n := len(pl.backends); n > 0 {
			var best *backend
			for i := range n {
				b := pl.backends[(pl.next+i)%n]
				if best == nil || b.inflight < best.inflight {
					best = b
				}
			}
			pl.next = (pl.next + 1) % n
			best.inflight++
			pl.inflight++
			p.mu.Unlock()
			return best, true, nil
		}
		changed := pl.changed
		p.mu.Unlock()
		if deadline == nil {
			t := time.NewTimer(p.WaitForBackend)
			defer t.Stop()
			deadline = t.C
			if p.Wake != nil {
				go p.Wake(app)
			}
		}
		select {
		case <-changed:
		case <-deadline:
			return nil, true, errNoMachine
		case <-ctx.Done():
			return nil, true, ctx.Err()
		}
	}
}

var errNoMachine = errors.New("no healthy machine")

// bufferPool recycles the 32 KiB copy buffers of proxied bodies; without it
// each response allocates one, and garbage collection dominates the CPU.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

func (p *Proxy) release(b *backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b.inflight--
	b.pool.inflight--
	b.pool.last = time.Now()
	if b.draining && b.inflight == 0 {
		close(b.idle)
		b.draining = false
	}
}

// SetDomains replaces the custom domains routed to apps (domain -> app;
// domains lowercase, without a trailing dot).
func (p *Proxy) SetDomains(domains map[string]string) { p.domains.Store(&domains) }

// App returns the app a Host header names, or "".
func (p *Proxy) App(host string) string { return p.appOf(host) }

// appOf returns the app named by host, or "" if host is neither
// <app>.<domain> nor a custom domain.
func (p *Proxy) appOf(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if d := p.domains.Load(); d != nil {
		if app, ok := (*d)[host]; ok {
			return app
		}
	}
	app, ok := strings.CutSuffix(host, "."+p.domain)
	if !ok || strings.Contains(app, ".") {
		return ""
	}
	return app
}

// ServeHTTP routes one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	app := p.appOf(r.Host)
	if r.Header.Get("X-Request-Id") == "" {
		r.Header.Set("X-Request-Id", newRequestID())
	}
	b, known, err := p.pick(r.Context(), app)
	if !known {
		page(w, http.StatusNotFound, "No app here", fmt.Sprintf("pier has no app at %s. Apps are served at <app>.%s; see `pier apps list`.", r.Host, p.domain))
		return
	}
	sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	if err != nil {
		if errors.Is(err, errNoMachine) {
			page(sw, http.StatusServiceUnavailable, "No machine is ready", fmt.Sprintf("%s has no healthy machine right now. Check `pier status -a %s` and `pier logs -a %s`.", app, app, app))
		} else {
			sw.code = 499
		}
		p.metrics.observe(app, sw.code, time.Since(start))
		if p.Record != nil {
			p.Record(app, "", r, sw.code, time.Since(start), sw.n)
		}
		return
	}
	p.metrics.inflight.WithLabelValues(app).Inc()
	defer func() {
		p.release(b)
		p.metrics.inflight.WithLabelValues(app).Dec()
		p.metrics.observe(app, sw.code, time.Since(start))
		if p.Record != nil {
			p.Record(app, b.id, r, sw.code, time.Since(start), sw.n)
		}
	}()
	p.rp.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, b)))
}

func newRequestID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// statusWriter records the status code; Unwrap keeps Flush and Hijack
// (WebSocket upgrades) working through http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
	n           int64 // body bytes written
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wroteHeader && code >= 200 {
		s.code, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wroteHeader = true
	n, err := s.ResponseWriter.Write(b)
	s.n += int64(n)
	return n, err
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Hijack is how ReverseProxy completes an upgrade (WebSocket): it writes the
// 101 itself on the raw connection, so this is where the code is seen.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	s.code, s.wroteHeader = http.StatusSwitchingProtocols, true
	return http.NewResponseController(s.ResponseWriter).Hijack()
}

func page(w http.ResponseWriter, code int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Pier-Error", title)
	w.WriteHeader(code)
	fmt.Fprintf(w, "<!doctype html><title>%d %s · pier</title><h1>%s</h1><p>%s</p><hr><p>pier edge proxy</p>\n",
		code, html.EscapeString(title), html.EscapeString(title), html.EscapeString(msg))
}
