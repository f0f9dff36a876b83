package mesh

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
)

// The callee side. It terminates mTLS as the callee app (chosen by SNI),
// requires and verifies a client certificate, then per request (HTTP) or
// per connection (opaque TCP) checks the policy, picks a machine and
// forwards. Metrics are recorded here, where the verified caller, the
// callee and the machine are all known.
type inbound struct {
	m    *Mesh
	tls  *tls.Config
	http *http.Server
	ln   *chanListener
	rp   *httputil.ReverseProxy
	h1   *http.Transport // to machines, HTTP/1.1 with keep-alive
	h2c  *http.Transport // to machines, HTTP/2 with prior knowledge

	calls *calls // open requests, upgraded connections and tunnels
}

// peer is a verified mTLS connection on the inbound side.
type peer struct {
	src, dst string
	srcID    spiffeid.ID
	hash     string // sha256 of the caller's leaf certificate, hex
}

type (
	inKey      struct{}
	backendKey struct{}
	h2Key      struct{}
	retryKey   struct{}
	failedKey  struct{}
)

func newInbound(m *Mesh) *inbound {
	in := &inbound{m: m, calls: newCalls()}
	in.h1 = &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}
	in.h2c = &http.Transport{
		DialContext:     (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		IdleConnTimeout: 90 * time.Second,
	}
	in.h2c.Protocols = new(http.Protocols)
	in.h2c.Protocols.SetUnencryptedHTTP2(true)
	ids := m.cfg.Identities
	in.tls = &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2", "http/1.1", alpnTCP},
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			dst, ok := appOfSNI(hello.ServerName)
			if !ok || !m.known(dst) {
				return nil, fmt.Errorf("mesh: no app answers to %q", hello.ServerName)
			}
			return ids.Certificate(ids.AppID(dst))
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			id, err := ids.Verify(raw)
			if err != nil {
				return fmt.Errorf("mesh: client certificate: %w", err)
			}
			if _, ok := m.callerOfID(id); !ok {
				return fmt.Errorf("mesh: %s is neither an app nor the edge proxy", id)
			}
			return nil
		},
	}
	in.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			b := pr.In.Context().Value(backendKey{}).(*backend)
			p := pr.In.Context().Value(inKey{}).(*peer)
			pr.SetURL(b.url)
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del(hdrUpstreamProto)
			pr.Out.Header.Del(hdrMachine)
			if p.src == Edge {
				// The edge proxy's forwarding headers are the client's.
				for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
					if v, ok := pr.In.Header[h]; ok {
						pr.Out.Header[h] = v
					}
				}
			}
			pr.Out.Header.Set(hdrXFCC, fmt.Sprintf("By=%s;Hash=%s;URI=%s", ids.AppID(p.dst), p.hash, p.srcID))
		},
		Transport:  roundTripFunc(in.toMachine),
		BufferPool: bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if revoked(r.Context()) {
				p := r.Context().Value(inKey{}).(*peer)
				http.Error(w, denyMessage(p.src, p.dst), http.StatusForbidden)
				return
			}
			if errors.Is(err, context.Canceled) {
				w.WriteHeader(499)
				return
			}
			if errors.Is(err, context.DeadlineExceeded) {
				http.Error(w, "pier mesh: the app did not answer within its route timeout (pier.toml [[routes]])", http.StatusGatewayTimeout)
				return
			}
			b := r.Context().Value(backendKey{}).(*backend)
			m.log.Warn("mesh: machine did not answer", "machine", b.id, "err", err)
			http.Error(w, "pier mesh: the app's machine did not answer", http.StatusBadGateway)
		},
		ErrorLog: newErrorLog(m.log),
	}
	in.newServer()
	return in
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// toMachine sends a request to the machine in HTTP/2 when the caller spoke
// HTTP/2 (gRPC needs it end to end), in HTTP/1.1 otherwise.
func (in *inbound) send(r *http.Request) (*http.Response, error) {
	if h2, _ := r.Context().Value(h2Key{}).(bool); h2 {
		return in.h2c.RoundTrip(r)
	}
	return in.h1.RoundTrip(r)
}

// toMachine sends the request, and retries it on another pick of machine
// when its route allows (see retriesFor) and the answer says the machine
// failed rather than the request.
func (in *inbound) toMachine(r *http.Request) (*http.Response, error) {
	resp, err := in.send(r)
	retries, _ := r.Context().Value(retryKey{}).(int)
	p, _ := r.Context().Value(inKey{}).(*peer)
	for range retries {
		if !retryable(resp, err) || r.Context().Err() != nil {
			break
		}
		if failed, ok := r.Context().Value(failedKey{}).(*bool); ok {
			*failed = true // the first machine's answer was a failure
		}
		b, perr := in.m.pick(r.Context(), p.dst)
		if perr != nil {
			break
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		retry := r.Clone(r.Context())
		retry.URL.Host = b.url.Host
		start := time.Now()
		resp, err = in.send(retry)
		if err != nil || resp.StatusCode >= 502 {
			b.done(0)
		} else {
			b.done(time.Since(start))
		}
	}
	return resp, err
}

func retryable(resp *http.Response, err error) bool {
	if err != nil {
		return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retriesFor is how many retries a request may get on its route: only
// idempotent methods without a body, and never a protocol upgrade.
func retriesFor(rt pier.Route, r *http.Request) int {
	if rt.Retries <= 0 || r.ContentLength != 0 || isUpgrade(r.Header) {
		return 0
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return min(rt.Retries, 3)
	}
	return 0
}

func (in *inbound) newServer() {
	in.ln = newChanListener(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	in.http = &http.Server{
		Handler:   in,
		TLSConfig: &tls.Config{NextProtos: []string{"h2", "http/1.1"}},
		ErrorLog:  newErrorLog(in.m.log),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, inKey{}, in.m.peerOf(c.(*tls.Conn)))
		},
		IdleTimeout: 5 * time.Minute,
	}
}

func (in *inbound) serve(ctx context.Context, ln net.Listener) {
	go in.http.Serve(in.ln)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			in.m.log.Warn("mesh inbound accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go in.handle(ctx, c)
	}
}

func (in *inbound) close() {
	if in.http != nil {
		in.http.Close()
	}
	if in.ln != nil {
		in.ln.Close()
	}
	in.h1.CloseIdleConnections()
	in.h2c.CloseIdleConnections()
}

func (in *inbound) handle(ctx context.Context, c net.Conn) {
	tc := tls.Server(c, in.tls)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		in.m.log.Debug("mesh: handshake refused", "from", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == alpnTCP {
		in.tunnel(ctx, c, tc, in.m.peerOf(tc))
		return
	}
	in.ln.push(tc)
}

// peerOf reads the verified caller of a finished handshake.
func (m *Mesh) peerOf(tc *tls.Conn) *peer {
	cs := tc.ConnectionState()
	p := &peer{}
	p.dst, _ = appOfSNI(cs.ServerName)
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		if len(leaf.URIs) == 1 {
			if id, err := spiffeid.FromURI(leaf.URIs[0]); err == nil {
				p.srcID = id
				p.src, _ = m.callerOfID(id)
			}
		}
		sum := sha256.Sum256(leaf.Raw)
		p.hash = hex.EncodeToString(sum[:])
	}
	return p
}

// ServeHTTP handles one request that arrived over mTLS.
func (in *inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.Context().Value(inKey{}).(*peer)
	e := metrics.Edge{Src: p.src, Dst: p.dst}
	rec := in.m.cfg.Metrics
	// Tracked before the policy is read, so that a revocation cannot miss
	// it (see calls).
	cctx, done := trackCall(r.Context(), in.calls, e)
	defer done()
	if p.src != Edge && !in.m.cfg.Policy.Allowed(p.src, p.dst) {
		rec.Denied(e)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, denyMessage(p.src, p.dst))
		return
	}
	start := time.Now()
	route := metrics.Route{Method: r.Method, Path: r.URL.Path}
	r = r.WithContext(cctx)
	b, err := in.m.backendFor(r, p)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, context.Canceled) {
			code = 499
		}
		http.Error(w, fmt.Sprintf("pier mesh: %s has no machine in traffic", p.dst), code)
		rec.Request(e, "", route, code, false, time.Since(start), 0, 0)
		return
	}
	ctx := context.WithValue(r.Context(), backendKey{}, b)
	rt := in.m.route(p.dst, r.URL.Path)
	if rt.Timeout.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rt.Timeout.Duration)
		defer cancel()
	}
	var retried bool
	if n := retriesFor(rt, r); n > 0 {
		ctx = context.WithValue(context.WithValue(ctx, retryKey{}, n), failedKey{}, &retried)
	}
	if r.Header.Get(hdrUpstreamProto) == "h2" {
		ctx = context.WithValue(ctx, h2Key{}, true)
	}
	body := &countingBody{ReadCloser: r.Body}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	sw := &statusWriter{ResponseWriter: w}
	// Deferred: ReverseProxy ends a call cut mid-answer by panicking with
	// http.ErrAbortHandler, and the machine must still be told the call is
	// over (or its in-flight count, which drains wait on, never drops).
	defer func() {
		d := time.Since(start)
		status := sw.status
		if status == 0 {
			status = http.StatusOK // nothing written: net/http answers 200
		}
		if status == http.StatusBadGateway || status == 499 || retried || revoked(cctx) {
			b.done(0)
		} else {
			b.done(d)
		}
		rec.Request(e, b.id, route, status, grpcFailed(sw.Header()), d, body.n.Load(), sw.n)
	}()
	in.rp.ServeHTTP(sw, r.WithContext(ctx))
}

// backendFor picks the machine of a call: the one the edge proxy chose
// (it balances, drains and wakes machines itself), else by latency.
func (m *Mesh) backendFor(r *http.Request, p *peer) (*backend, error) {
	if id := r.Header.Get(hdrMachine); id != "" && p.src == Edge {
		if b := m.machine(p.dst, id); b != nil {
			return b, nil
		}
		return nil, fmt.Errorf("machine %s of %s left traffic: %w", id, p.dst, errNoBackend)
	}
	return m.pick(r.Context(), p.dst)
}

// grpcFailed reads a gRPC status from response headers or trailers.
func grpcFailed(h http.Header) bool {
	s := h.Get("Grpc-Status")
	if s == "" {
		s = h.Get(http.TrailerPrefix + "Grpc-Status")
	}
	return s != "" && s != "0"
}

// tunnel forwards an opaque TCP connection (tc, over raw) to a machine of
// the callee.
func (in *inbound) tunnel(ctx context.Context, raw net.Conn, tc *tls.Conn, p *peer) {
	defer tc.Close()
	e := metrics.Edge{Src: p.src, Dst: p.dst}
	rec := in.m.cfg.Metrics
	ctx, done := trackCall(ctx, in.calls, e)
	defer done()
	if !in.m.cfg.Policy.Allowed(p.src, p.dst) {
		rec.Denied(e)
		return
	}
	b, err := in.m.pick(ctx, p.dst)
	if err != nil {
		return
	}
	start := time.Now()
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	up, err := d.DialContext(dctx, "tcp", b.url.Host)
	cancel()
	rec.ConnOpened(e, b.id)
	if err != nil {
		b.done(0)
		rec.ConnClosed(e, b.id, time.Since(start), 0, 0, true)
		return
	}
	b.done(time.Since(start)) // the connect time is the machine's latency sample
	// A cut closes both connections whole, not a half-close that would
	// let one direction run on. The raw connection, not tc: closing tc
	// may wait on a close_notify to a peer that does not read.
	stop := context.AfterFunc(ctx, func() { raw.Close(); up.Close() })
	defer stop()
	fromCaller, fromMachine := pipe(tc, up)
	up.Close()
	rec.ConnClosed(e, b.id, time.Since(start), fromCaller, fromMachine, false)
}

type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// statusWriter remembers the status code and counts the body.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 || s.status < 200 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.n += int64(n)
	return n, err
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack is how ReverseProxy completes an upgrade (WebSocket): it writes
// the 101 itself on the raw connection.
func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	s.status = http.StatusSwitchingProtocols
	return http.NewResponseController(s.ResponseWriter).Hijack()
}

func newErrorLog(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelDebug)
}
