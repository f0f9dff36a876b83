// Package mesh is pier's service mesh data plane: it carries every
// app-to-app call over mutual TLS, authorises it against the app graph and
// records golden metrics for it, with no change to application code.
//
// The model is a node proxy (like a sidecar that is not inside the
// machine). A machine calls another app at http://<app>.internal: the name
// resolves (through the machine's /etc/hosts) to the app's service address,
// and the runtime's firewall sends any TCP connection to a service address
// to the outbound listener on the machine's gateway. There the caller is
// known by the connection's source address (machines cannot change their
// address: they hold no CAP_NET_ADMIN or CAP_NET_RAW) and the callee by its
// original destination.
//
// The outbound side then opens, with the caller app's certificate
// (SPIFFE ID spiffe://<trust-domain>/app/<caller>), a TLS 1.3 connection
// to the inbound listener, naming the callee in SNI. The inbound side
// presents the callee's certificate, verifies the caller's against the
// trust bundle, checks that a `call` connection caller → callee exists
// (403 for HTTP, a closed connection for TCP, counted as denied), picks a
// healthy machine of the callee by latency (peak EWMA, power of two
// choices) and forwards the request to it. HTTP/1.1, HTTP/2 (h2c, so gRPC)
// and WebSocket are understood per request and multiplexed over pooled
// connections between the two sides; anything else is tunnelled as opaque
// TCP with connection-level metrics. The callee receives the verified
// caller in X-Forwarded-Client-Cert (Envoy's format). Both sides track
// every open call by edge, so that removing a connection (Revoke) ends the
// calls it allowed at once: WebSockets, tunnels and answers still
// streaming, not only the calls that begin afterwards.
//
// Both sides live in the pier server process today, so the mTLS hop
// crosses loopback; the split is what lets the two sides sit on different
// hosts later without changing either.
package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/pier-dev/pier/internal/metrics"
	"github.com/pier-dev/pier/internal/pier"
)

// Identities issues the mesh's certificates and verifies peers'.
type Identities interface {
	Certificate(id spiffeid.ID) (*tls.Certificate, error)
	Verify(rawCerts [][]byte) (spiffeid.ID, error)
	AppID(app string) spiffeid.ID
	TrustDomain() spiffeid.TrustDomain
}

// Edge is the caller name of pier's edge proxy (as in the metrics), whose
// identity is spiffe://<trust-domain>/edge. It may call every app: apps
// are public through it.
const Edge = "edge"

func (m *Mesh) edgeID() spiffeid.ID {
	id, _ := spiffeid.FromSegments(m.cfg.Identities.TrustDomain(), Edge)
	return id
}

// idOf is the identity of a caller: an app, or the edge proxy.
func (m *Mesh) idOf(src string) spiffeid.ID {
	if src == Edge {
		return m.edgeID()
	}
	return m.cfg.Identities.AppID(src)
}

// callerOfID names the caller an identity proves: an app or the edge.
func (m *Mesh) callerOfID(id spiffeid.ID) (string, bool) {
	if id == m.edgeID() {
		return Edge, true
	}
	return appOfID(id)
}

// EdgeTransport sends the edge proxy's requests to the callee side over
// mutual TLS with the edge's identity, on pooled connections; a request
// names its app in the URL host (<app>.internal) and may name the machine
// in the Pier-Machine header.
func (m *Mesh) EdgeTransport() http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		cl, err := m.out.client(Edge)
		if err != nil {
			return nil, err
		}
		return cl.t.RoundTrip(r)
	})
}

// Policy says whether src may call dst.
type Policy interface {
	Allowed(src, dst string) bool
}

// Recorder receives the golden metrics of every call.
type Recorder interface {
	Request(e metrics.Edge, machine string, route metrics.Route, status int, grpcFailed bool, d time.Duration, bytesIn, bytesOut int64)
	ConnOpened(e metrics.Edge, machine string)
	ConnClosed(e metrics.Edge, machine string, d time.Duration, bytesIn, bytesOut int64, failed bool)
	Denied(e metrics.Edge)
}

// Domain is the suffix of service names: <app>.internal.
const Domain = ".internal"

// Config holds what a Mesh needs.
type Config struct {
	Identities Identities
	Policy     Policy
	Metrics    Recorder
	Log        *slog.Logger
	// Wake, if set, is called when a call arrives for an app with no
	// machine in traffic, so a scaled-to-zero app can start one.
	Wake func(app string)
	// WaitForBackend bounds how long a call waits for a machine of the
	// callee to be in traffic (default 10s).
	WaitForBackend time.Duration
	// WaitForCaller bounds how long a connection from an address no
	// machine holds yet waits for the machine to be known (a machine may
	// call out before its start is recorded; default 2s).
	WaitForCaller time.Duration
	// RecheckEvery is how often the open calls are checked against the
	// policy again, and those it no longer allows cut (default 10s): a
	// backstop, as a revoked connection is cut at once through Revoke.
	RecheckEvery time.Duration
}

// Mesh is the data plane. Machines join it as they start (Join/Leave),
// enter and leave traffic through Add/Remove/Drain (it is a
// machines.Router), and apps get service addresses with SetService.
type Mesh struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	members  map[netip.Addr]string // machine address → app
	byID     map[string]netip.Addr // machine id → address
	joined   chan struct{}         // closed and replaced when a machine joins
	services map[netip.Addr]string // service address → app
	vips     map[string]netip.Addr // app → service address
	pools    map[string]*pool      // app → machines in traffic
	routes   map[string][]pier.Route

	inboundAddr string // where the inbound side listens, once started
	out         *outbound
	in          *inbound
}

// New returns a Mesh; Serve starts its listeners.
func New(cfg Config) *Mesh {
	if cfg.WaitForBackend == 0 {
		cfg.WaitForBackend = 10 * time.Second
	}
	if cfg.WaitForCaller == 0 {
		cfg.WaitForCaller = 2 * time.Second
	}
	if cfg.RecheckEvery == 0 {
		cfg.RecheckEvery = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Mesh{
		cfg: cfg, log: cfg.Log,
		members: map[netip.Addr]string{}, byID: map[string]netip.Addr{}, joined: make(chan struct{}),
		services: map[netip.Addr]string{}, vips: map[string]netip.Addr{}, pools: map[string]*pool{},
		routes: map[string][]pier.Route{},
	}
	m.in = newInbound(m)
	m.out = newOutbound(m)
	return m
}

// Serve runs the inbound side on inbound (a loopback listener) and, if
// outbound is not nil, the outbound side on it (the listener the firewall
// redirects service addresses to). It returns when ctx is done.
func (m *Mesh) Serve(ctx context.Context, inbound, outbound net.Listener) error {
	m.mu.Lock()
	m.inboundAddr = inbound.Addr().String()
	m.mu.Unlock()
	m.out.start()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.in.serve(ctx, inbound) }()
	go func() { defer wg.Done(); m.recheck(ctx) }()
	if outbound != nil {
		wg.Add(1)
		go func() { defer wg.Done(); m.out.serve(ctx, outbound) }()
	}
	<-ctx.Done()
	inbound.Close()
	if outbound != nil {
		outbound.Close()
	}
	m.in.close()
	m.out.close()
	wg.Wait()
	return nil
}

// Carry serves c as a connection from a machine of src to dst, as if it
// had arrived at the outbound listener: for callers that are known by the
// listener they used rather than by address. Serve must be running.
func (m *Mesh) Carry(ctx context.Context, c net.Conn, src, dst string) {
	if !m.known(dst) {
		c.Close()
		return
	}
	m.out.carry(ctx, c, call{src: src, dst: dst})
}

// SetWake sets Config.Wake; call it before Serve.
func (m *Mesh) SetWake(f func(app string)) { m.cfg.Wake = f }

// InboundAddr is the address of the inbound side ("" before Serve).
func (m *Mesh) InboundAddr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.inboundAddr
}

// Join records that the machine id of app holds addr, so its outbound
// calls carry app's identity.
func (m *Mesh) Join(app, id string, addr netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.byID[id]; ok {
		delete(m.members, old)
	}
	m.members[addr] = app
	m.byID[id] = addr
	close(m.joined)
	m.joined = make(chan struct{})
}

// Leave forgets the machine id.
func (m *Mesh) Leave(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.byID[id]; ok {
		delete(m.members, a)
		delete(m.byID, id)
	}
}

// callerOf names the app of the machine at addr, waiting a little for a
// machine that is starting.
func (m *Mesh) callerOf(ctx context.Context, addr netip.Addr) (string, bool) {
	deadline := time.NewTimer(m.cfg.WaitForCaller)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		app, ok := m.members[addr]
		joined := m.joined
		m.mu.Unlock()
		if ok {
			return app, true
		}
		select {
		case <-joined:
		case <-deadline.C:
			return "", false
		case <-ctx.Done():
			return "", false
		}
	}
}

// SetService gives app the service address vip: <app>.internal resolves
// to it inside machines, and connections to it reach app.
func (m *Mesh) SetService(app string, vip netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.vips[app]; ok {
		delete(m.services, old)
	}
	m.vips[app] = vip
	m.services[vip] = app
}

// RemoveService forgets app's service address and machines.
func (m *Mesh) RemoveService(app string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if vip, ok := m.vips[app]; ok {
		delete(m.services, vip)
		delete(m.vips, app)
	}
	delete(m.pools, app)
	delete(m.routes, app)
}

// SetRoutes sets the timeouts and retries of calls to app (from its
// release's pier.toml [[routes]]).
func (m *Mesh) SetRoutes(app string, routes []pier.Route) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes[app] = routes
}

// route is the policy of a call to app at path: the longest matching
// prefix, or none.
func (m *Mesh) route(app, path string) pier.Route {
	m.mu.Lock()
	defer m.mu.Unlock()
	var best pier.Route
	for _, r := range m.routes[app] {
		if strings.HasPrefix(path, r.Path) && len(r.Path) > len(best.Path) {
			best = r
		}
	}
	return best
}

// ServiceAddr is app's service address, which <app>.internal names.
func (m *Mesh) ServiceAddr(app string) (netip.Addr, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	vip, ok := m.vips[app]
	return vip, ok
}

func (m *Mesh) serviceOf(vip netip.Addr) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	app, ok := m.services[vip]
	return app, ok
}

// known says whether app has a service address or machines in traffic
// (machines of the machines API have no service address).
func (m *Mesh) known(app string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.vips[app]
	return ok || m.pools[app] != nil
}

// appOfID returns the app an identity names: spiffe://<td>/app/<app>.
func appOfID(id spiffeid.ID) (string, bool) {
	app, ok := strings.CutPrefix(id.Path(), "/app/")
	if !ok || app == "" || strings.Contains(app, "/") {
		return "", false
	}
	return app, true
}

// appOfSNI returns the app a TLS server name asks for: <app>.internal.
func appOfSNI(name string) (string, bool) {
	app, ok := strings.CutSuffix(strings.ToLower(name), Domain)
	return app, ok && app != "" && !strings.Contains(app, ".")
}

// errNoBackend is returned when the callee has no machine in traffic.
var errNoBackend = errors.New("no machine in traffic")

func denyMessage(src, dst string) string {
	return fmt.Sprintf("pier mesh: %s may not call %s: there is no connection %s -> %s. Run `pier connect %s %s` to allow it.\n", src, dst, src, dst, src, dst)
}
