package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/internal/metrics"
)

// The caller side. Each accepted connection is tied to (caller, callee),
// then sniffed: HTTP goes through an http.Server (HTTP/1.1 and h2c) whose
// handler forwards each request over a pooled mTLS connection made with
// the caller's certificate; anything else is tunnelled over its own mTLS
// connection.
type outbound struct {
	m    *Mesh
	http *http.Server
	ln   *chanListener
	rp   *httputil.ReverseProxy

	mu      sync.Mutex
	clients map[string]*client // per caller app

	calls *calls // open requests, upgraded connections and tunnels
}

// client is the pooled transport of one caller, bound to the certificate
// it was made with: when the caller's certificate is renewed, a new client
// takes new requests and the old one's connections close once idle, so a
// connection never outlives the certificate it was opened with by much.
type client struct {
	t       *http.Transport
	cert    *tls.Certificate
	session tls.ClientSessionCache // resumption for tunnels; per certificate, as a resumed session keeps the identity it was made with
}

// Headers the mesh sets; a caller's values are removed.
const (
	hdrUpstreamProto = "Pier-Upstream-Proto" // "h2": the caller spoke HTTP/2 (gRPC)
	hdrXFCC          = "X-Forwarded-Client-Cert"
	hdrMachine       = "Pier-Machine" // the edge proxy's choice of machine (proxy.MachineHeader)
)

type outKey struct{}

// call is what the outbound side knows of one accepted connection.
type call struct {
	src, dst string
}

func newOutbound(m *Mesh) *outbound {
	o := &outbound{m: m, clients: map[string]*client{}, calls: newCalls()}
	o.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			c := pr.In.Context().Value(outKey{}).(call)
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = c.dst + Domain
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del(hdrXFCC)
			pr.Out.Header.Del(hdrUpstreamProto)
			pr.Out.Header.Del(hdrMachine)
			if pr.In.ProtoMajor == 2 {
				pr.Out.Header.Set(hdrUpstreamProto, "h2")
			}
		},
		Transport:  o,
		BufferPool: bufferPool{},
		// No FlushInterval: ReverseProxy flushes at once anyway for
		// answers without a length (gRPC, streams) and server-sent events;
		// forcing it for every answer costs a write per response.
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			c := r.Context().Value(outKey{}).(call)
			if revoked(r.Context()) {
				http.Error(w, denyMessage(c.src, c.dst), http.StatusForbidden)
				return
			}
			if errors.Is(err, context.Canceled) {
				return
			}
			m.log.Warn("mesh call failed", "src", c.src, "dst", c.dst, "err", err)
			http.Error(w, fmt.Sprintf("pier mesh: could not reach %s: %v", c.dst, err), http.StatusBadGateway)
		},
		ErrorLog: newErrorLog(m.log),
	}
	o.newServer()
	return o
}

// start runs the HTTP side, fed by carry.
func (o *outbound) start() { go o.http.Serve(o.ln) }

func (o *outbound) newServer() {
	o.ln = newChanListener(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	o.http = &http.Server{
		Handler:           o,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          newErrorLog(o.m.log),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, outKey{}, c.(*callConn).call)
		},
	}
	o.http.Protocols = new(http.Protocols)
	o.http.Protocols.SetHTTP1(true)
	o.http.Protocols.SetUnencryptedHTTP2(true)
}

func (o *outbound) serve(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			o.m.log.Warn("mesh outbound accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go o.handle(ctx, c)
	}
}

func (o *outbound) close() {
	if o.http != nil {
		o.http.Close()
	}
	if o.ln != nil {
		o.ln.Close()
	}
	o.mu.Lock()
	for _, c := range o.clients {
		c.t.CloseIdleConnections()
	}
	o.mu.Unlock()
}

// ServeHTTP forwards one request of a caller, tracked so that revoking
// its edge ends it (and, for an upgrade, the connection it became).
func (o *outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := r.Context().Value(outKey{}).(call)
	ctx, done := trackCall(r.Context(), o.calls, metrics.Edge{Src: c.src, Dst: c.dst})
	defer done()
	o.rp.ServeHTTP(w, r.WithContext(ctx))
}

// callConn is an accepted connection tied to its caller and callee.
type callConn struct {
	*peekedConn
	call call
}

func (o *outbound) handle(ctx context.Context, c net.Conn) {
	src, dst, err := o.identify(ctx, c)
	if err != nil {
		o.m.log.Warn("mesh: connection refused", "from", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	o.carry(ctx, c, call{src: src, dst: dst})
}

// carry serves a connection of a known caller to a known callee.
func (o *outbound) carry(ctx context.Context, c net.Conn, cl call) {
	pc, proto := sniff(c)
	if proto == opaque {
		o.tunnel(ctx, pc, cl)
		return
	}
	o.ln.push(&callConn{peekedConn: pc, call: cl})
}

// identify names the calling app (by the machine's address) and the
// called one (by the service address the connection was sent to).
func (o *outbound) identify(ctx context.Context, c net.Conn) (src, dst string, err error) {
	from, err := remoteAddr(c)
	if err != nil {
		return "", "", err
	}
	to, err := originalDst(c)
	if err != nil {
		return "", "", err
	}
	dst, ok := o.m.serviceOf(to.Addr())
	if !ok {
		return "", "", fmt.Errorf("%s is not a service address", to)
	}
	src, ok = o.m.callerOf(ctx, from)
	if !ok {
		return "", "", fmt.Errorf("no machine holds %s", from)
	}
	return src, dst, nil
}

// RoundTrip sends one request with the caller's pooled transport.
func (o *outbound) RoundTrip(r *http.Request) (*http.Response, error) {
	c := r.Context().Value(outKey{}).(call)
	cl, err := o.client(c.src)
	if err != nil {
		return nil, err
	}
	return cl.t.RoundTrip(r)
}

// client returns the caller's transport for its current certificate.
func (o *outbound) client(src string) (*client, error) {
	cert, err := o.m.cfg.Identities.Certificate(o.m.idOf(src))
	if err != nil {
		return nil, fmt.Errorf("certificate of %s: %w", src, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	// The authority hands out the same value until it renews.
	if c, ok := o.clients[src]; ok && c.cert == cert {
		return c, nil
	}
	if old, ok := o.clients[src]; ok {
		go retire(old.t)
	}
	cl := &client{cert: cert, session: tls.NewLRUClientSessionCache(64)}
	cl.t = &http.Transport{
		DialContext:         o.dialInbound,
		TLSClientConfig:     o.tlsConfig(cl, "h2", "http/1.1"),
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	o.clients[src] = cl
	return cl, nil
}

// retire closes a replaced transport's connections as they become idle.
func retire(t *http.Transport) {
	for range 120 { // bounded: long-lived streams are cut after 2 minutes
		t.CloseIdleConnections()
		time.Sleep(time.Second)
	}
	t.CloseIdleConnections()
}

// dialInbound connects to the inbound side, whatever the address asked.
func (o *outbound) dialInbound(ctx context.Context, network, _ string) (net.Conn, error) {
	addr := o.m.InboundAddr()
	if addr == "" {
		return nil, errors.New("the mesh's inbound side is not running")
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// tlsConfig is the client side of the mTLS hop for a caller: it presents
// the client's certificate, and accepts only a server proving the identity
// of the app it asked for.
func (o *outbound) tlsConfig(cl *client, protos ...string) *tls.Config {
	ids := o.m.cfg.Identities
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: protos,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cl.cert, nil
		},
		ClientSessionCache: cl.session,
		// The chain is checked against the SPIFFE bundle below, not
		// against a DNS name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			dst, ok := appOfSNI(cs.ServerName)
			if !ok {
				return fmt.Errorf("mesh: bad server name %q", cs.ServerName)
			}
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			id, err := ids.Verify(raw)
			if err != nil {
				return fmt.Errorf("mesh: %s's certificate: %w", dst, err)
			}
			if want := ids.AppID(dst); id != want {
				return fmt.Errorf("mesh: expected %s, the server is %s", want, id)
			}
			return nil
		},
	}
}

// tunnel carries an opaque TCP connection over its own mTLS connection.
func (o *outbound) tunnel(ctx context.Context, c net.Conn, cl call) {
	defer c.Close()
	ctx, done := trackCall(ctx, o.calls, metrics.Edge{Src: cl.src, Dst: cl.dst})
	defer done()
	client, err := o.client(cl.src)
	if err != nil {
		o.m.log.Warn("mesh tunnel", "src", cl.src, "dst", cl.dst, "err", err)
		return
	}
	cfg := o.tlsConfig(client, alpnTCP)
	cfg.ServerName = cl.dst + Domain
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 10 * time.Second}}
	addr := o.m.InboundAddr()
	up, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		o.m.log.Warn("mesh tunnel", "src", cl.src, "dst", cl.dst, "err", err)
		return
	}
	defer up.Close()
	// A cut closes both connections whole (see inbound.tunnel).
	stop := context.AfterFunc(ctx, func() { c.Close(); up.(*tls.Conn).NetConn().Close() })
	defer stop()
	pipe(c, up)
}

// alpnTCP names an opaque TCP tunnel in the mTLS handshake.
const alpnTCP = "pier-tcp"

// pipe copies both ways until both directions end; it returns the bytes
// read from a and from b.
func pipe(a, b net.Conn) (fromA, fromB int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		fromB = copyHalf(a, b)
	}()
	fromA = copyHalf(b, a)
	wg.Wait()
	return fromA, fromB
}

// copyHalf copies src to dst, then closes dst for writing (or whole).
func copyHalf(dst, src net.Conn) int64 {
	buf := buffers.Get().(*[]byte)
	n, _ := io.CopyBuffer(dst, src, *buf)
	buffers.Put(buf)
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := dst.(closeWriter); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	return n
}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

type bufferPool struct{}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// isUpgrade reports whether a request switches protocols (WebSocket).
func isUpgrade(h http.Header) bool {
	return strings.EqualFold(h.Get("Connection"), "upgrade") || h.Get("Upgrade") != ""
}
