// Package metrics owns the mesh's golden metrics: request, connection and
// denial counts per edge (Src app → Dst app, served by a Dst machine), their
// in-memory history with latency percentiles, and their Prometheus
// exposition. Proxies record on the hot path; `pier stat`, `pier top`, the
// dependency graph and the API query.
//
// # Recording
//
// Recording an event on existing series takes a read lock on the
// registry's maps and the mutex of each series it updates, and does not
// allocate once the series are warm (see BenchmarkRequest and
// TestRequestDoesNotAllocate). Prometheus children are bound to their
// labels once per edge, not per call.
//
// A request succeeds when its status is 1xx–4xx and its gRPC status (if
// any) is OK. Status 0 (no response: network error, timeout) and statuses
// outside 100–599 count as failures with status_class "error"; 5xx as
// failures with "5xx"; a failed gRPC call with an HTTP status below 500
// (grpc-status travels in a 200 response) as a failure with "grpc_error".
// Denials are counted apart from requests. Bytes "in" flow towards Dst,
// "out" flow back from it; a TCP connection's bytes count when it closes.
//
// # History and windows
//
// Each series keeps 600 1-second buckets (10 minutes) and 1440 1-minute
// buckets (24 hours) in rings indexed by unix time. A query window is
// clamped to [1s, 24h]; windows up to 10 minutes read 1-second buckets and
// longer ones 1-minute buckets. The window covers the current, partly
// elapsed bucket and the ceil(window/width)-1 completed buckets before it;
// RPS divides by the window itself, so the newest partial bucket makes it
// read up to one bucket-width low.
//
// Latency percentiles come from a fixed log-scale histogram layout (147
// bins, each 10% wide, from 50µs to 61.7s; values outside clamp to the
// first or last bin) merged over the window. They are nearest-rank and
// within 5% of the exact value between 50µs and 60s.
//
// # Memory
//
// A bucket is 64 bytes plus its latency histogram, which covers only the
// bins between that bucket's fastest and slowest request, at 4 bytes a bin
// (at most 147). Buckets are allocated 60 at a time (3.8 KB) on first write
// and released when all their data has expired. Measured per series: about
// 10 KB after one event; 151 KB when busy every second of the day with one
// latency bin per bucket, 370 KB with latencies spread over a decade, and
// at most 1.4 MB. A request touches two series, its traffic key (Src, Dst,
// machine) and its route (at most 100 per Dst app, plus one overflow route
// per method); a denial touches (Src, Dst, ""). A series idle for 24 hours
// with no open connection is dropped.
package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FromEdge is the Src of traffic from pier's public edge proxy.
const FromEdge = "edge"

// Edge is a directed pair of apps: Src calls Dst.
type Edge struct{ Src, Dst string }

// Options configure a Registry.
type Options struct {
	// Now is the clock; default time.Now. Tests inject a fake one.
	Now func() time.Time
}

// Registry records the mesh's metrics and answers queries about them.
// Its methods are safe for concurrent use.
type Registry struct {
	now       func() time.Time
	prom      *promVecs
	lastSweep atomic.Int64

	mu     sync.RWMutex
	series map[seriesKey]*series
	routes map[string]*routeTable // by Dst app
	edges  map[Edge]*promEdge
}

type seriesKey struct{ src, dst, machine string }

// New returns a Registry exposing its metrics on reg (which may be nil).
func New(reg prometheus.Registerer, opts Options) *Registry {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Registry{
		now:    opts.Now,
		prom:   newPromVecs(reg),
		series: make(map[seriesKey]*series),
		routes: make(map[string]*routeTable),
		edges:  make(map[Edge]*promEdge),
	}
}

// Request records one HTTP request or gRPC call from e.Src to e.Dst,
// served by machine. status is the HTTP status, or 0 when there was no
// response; grpcFailed is set when a gRPC call returned grpc-status != 0.
func (r *Registry) Request(e Edge, machine string, route Route, status int, grpcFailed bool, d time.Duration, bytesIn, bytesOut int64) {
	now := r.now().UnixNano()
	s, rs := r.requestSeries(e, machine, route, now)
	class, ok := statusClass(status, grpcFailed)
	dl := delta{requests: 1, bytesIn: nonNeg(bytesIn), bytesOut: nonNeg(bytesOut), bin: binOf(d)}
	if !ok {
		dl.failures = 1
	}
	s.record(now, dl)
	rs.record(now, dl)
	s.prom.request(class, d.Seconds(), dl.bytesIn, dl.bytesOut)
}

// ConnOpened records an opaque TCP connection from e.Src to e.Dst's machine.
func (r *Registry) ConnOpened(e Edge, machine string) {
	now := r.now().UnixNano()
	s := r.trafficSeries(e, machine, now)
	s.record(now, delta{opened: 1, open: 1, bin: -1})
	s.prom.connOpened()
}

// ConnClosed records the end of a connection counted by ConnOpened, with
// the bytes it carried. failed marks connections that ended in an error;
// they are reported as TCPFailed. d, the connection's lifetime, is not a
// latency signal and is not recorded.
func (r *Registry) ConnClosed(e Edge, machine string, d time.Duration, bytesIn, bytesOut int64, failed bool) {
	now := r.now().UnixNano()
	s := r.trafficSeries(e, machine, now)
	dl := delta{bytesIn: nonNeg(bytesIn), bytesOut: nonNeg(bytesOut), bin: -1, open: -1}
	if failed {
		dl.tcpFailed = 1
	}
	if s.record(now, dl) > 0 {
		s.prom.openGauge().Dec()
	}
	s.prom.addBytes(dl.bytesIn, dl.bytesOut)
}

// Denied records an attempt from e.Src to e.Dst refused by policy.
func (r *Registry) Denied(e Edge) {
	now := r.now().UnixNano()
	s := r.trafficSeries(e, "", now)
	s.record(now, delta{denied: 1, bin: -1})
	s.prom.deny()
}

// Forget drops every series where app is Src or Dst, from queries and from
// Prometheus; call it when the app is destroyed.
func (r *Registry) Forget(app string) {
	r.mu.Lock()
	for k := range r.series {
		if k.src == app || k.dst == app {
			delete(r.series, k)
		}
	}
	for e := range r.edges {
		if e.Src == app || e.Dst == app {
			delete(r.edges, e)
		}
	}
	delete(r.routes, app)
	r.mu.Unlock()
	r.prom.forget(app)
}

func nonNeg(n int64) uint64 { return uint64(max(n, 0)) }

// requestSeries returns the traffic and route series of a request,
// creating them on first use.
func (r *Registry) requestSeries(e Edge, machine string, route Route, now int64) (s, rs *series) {
	var buf [128]byte
	key, method := routeKey(buf[:0], route)
	k := seriesKey{e.Src, e.Dst, machine}

	r.mu.RLock()
	s = r.series[k]
	if rt := r.routes[e.Dst]; rt != nil {
		rs = rt.find(key, method)
	}
	r.mu.RUnlock()
	if s != nil && rs != nil {
		return s, rs
	}

	r.maybeSweep(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	s = r.newTrafficLocked(k, now)
	rt := r.routes[e.Dst]
	if rt == nil {
		rt = &routeTable{routes: make(map[string]*series), other: make(map[string]*series)}
		r.routes[e.Dst] = rt
	}
	if rs = rt.find(key, method); rs != nil {
		return s, rs
	}
	rs = newSeries(now)
	rs.dst, rs.method = e.Dst, method
	if len(rt.routes) < maxRoutes {
		rs.path = string(key[len(method)+1:])
		rt.routes[string(key)] = rs
	} else {
		rs.path = otherPath
		rt.other[method] = rs
	}
	return s, rs
}

// trafficSeries returns the series of (e, machine), creating it on first use.
func (r *Registry) trafficSeries(e Edge, machine string, now int64) *series {
	k := seriesKey{e.Src, e.Dst, machine}
	r.mu.RLock()
	s := r.series[k]
	r.mu.RUnlock()
	if s != nil {
		return s
	}
	r.maybeSweep(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.newTrafficLocked(k, now)
}

// newTrafficLocked returns the series of k, creating it if needed.
// r.mu must be held for writing.
func (r *Registry) newTrafficLocked(k seriesKey, now int64) *series {
	if s := r.series[k]; s != nil {
		return s
	}
	e := Edge{k.src, k.dst}
	p := r.edges[e]
	if p == nil {
		p = &promEdge{v: r.prom, src: k.src, dst: k.dst}
		r.edges[e] = p
	}
	s := newSeries(now)
	s.src, s.dst, s.machine, s.prom = k.src, k.dst, k.machine, p
	r.series[k] = s
	return s
}

// maybeSweep drops series idle for longer than the history holds, at most
// once a minute. Their Prometheus counters stay: they are cumulative.
func (r *Registry) maybeSweep(now int64) {
	last := r.lastSweep.Load()
	if now-last < int64(time.Minute) || !r.lastSweep.CompareAndSwap(last, now) {
		return
	}
	cutoff := now - int64(maxWindow)
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, s := range r.series {
		if s.idle(cutoff) {
			delete(r.series, k)
		}
	}
	for app, rt := range r.routes {
		for _, m := range []map[string]*series{rt.routes, rt.other} {
			for k, s := range m {
				if s.idle(cutoff) {
					delete(m, k)
				}
			}
		}
		if len(rt.routes)+len(rt.other) == 0 {
			delete(r.routes, app)
		}
	}
}
