package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Status classes of pier_mesh_requests_total.
const (
	class1xx = iota
	class2xx
	class3xx
	class4xx
	class5xx
	classError     // no response: network error, timeout
	classGRPCError // a response with grpc-status != 0 and an HTTP status below 500
	numClasses
)

var classNames = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx", "error", "grpc_error"}

// statusClass classifies a request and reports whether it succeeded.
// Statuses outside 100–599 are treated like 0: no usable response.
func statusClass(status int, grpcFailed bool) (class int, ok bool) {
	switch {
	case status < 100 || status > 599:
		return classError, false
	case status >= 500:
		return class5xx, false
	case grpcFailed:
		return classGRPCError, false
	}
	return status/100 - 1, true
}

type promVecs struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	open     *prometheus.GaugeVec
	conns    *prometheus.CounterVec
	denied   *prometheus.CounterVec
}

func newPromVecs(reg prometheus.Registerer) *promVecs {
	edge := []string{"src_app", "dst_app"}
	v := &promVecs{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pier_mesh_requests_total",
			Help: "Requests and gRPC calls between apps, by status class (1xx-5xx; error: no response; grpc_error: grpc-status != 0).",
		}, []string{"src_app", "dst_app", "status_class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pier_mesh_request_duration_seconds",
			Help:    "Latency of requests and gRPC calls between apps.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, edge),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pier_mesh_request_bytes_total",
			Help: "Bytes between apps over requests and TCP connections; in: towards dst_app, out: from dst_app.",
		}, []string{"src_app", "dst_app", "direction"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pier_mesh_tcp_connections_open",
			Help: "Opaque TCP connections between apps open now.",
		}, edge),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pier_mesh_tcp_connections_total",
			Help: "Opaque TCP connections opened between apps.",
		}, edge),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pier_mesh_denied_total",
			Help: "Requests and connections between apps refused by policy.",
		}, edge),
	}
	if reg != nil {
		reg.MustRegister(v.requests, v.duration, v.bytes, v.open, v.conns, v.denied)
	}
	return v
}

// forget deletes every series with app as source or destination.
func (v *promVecs) forget(app string) {
	for _, l := range []prometheus.Labels{{"src_app": app}, {"dst_app": app}} {
		v.requests.DeletePartialMatch(l)
		v.duration.DeletePartialMatch(l)
		v.bytes.DeletePartialMatch(l)
		v.open.DeletePartialMatch(l)
		v.conns.DeletePartialMatch(l)
		v.denied.DeletePartialMatch(l)
	}
}

// promEdge caches one edge's label-bound children so the hot path never
// hashes labels. Each child is made on first use, so an HTTP-only edge
// exposes no TCP series and the other way round.
type promEdge struct {
	v        *promVecs
	src, dst string

	requests          [numClasses]lazy[prometheus.Counter]
	duration          lazy[prometheus.Observer]
	bytesIn, bytesOut lazy[prometheus.Counter]
	open              lazy[prometheus.Gauge]
	conns, denied     lazy[prometheus.Counter]
}

func (p *promEdge) request(class int, seconds float64, in, out uint64) {
	p.requests[class].get(func() prometheus.Counter {
		return p.v.requests.WithLabelValues(p.src, p.dst, classNames[class])
	}).Inc()
	p.duration.get(func() prometheus.Observer { return p.v.duration.WithLabelValues(p.src, p.dst) }).Observe(seconds)
	p.addBytes(in, out)
}

func (p *promEdge) addBytes(in, out uint64) {
	if in > 0 {
		p.bytesIn.get(func() prometheus.Counter { return p.v.bytes.WithLabelValues(p.src, p.dst, "in") }).Add(float64(in))
	}
	if out > 0 {
		p.bytesOut.get(func() prometheus.Counter { return p.v.bytes.WithLabelValues(p.src, p.dst, "out") }).Add(float64(out))
	}
}

func (p *promEdge) openGauge() prometheus.Gauge {
	return p.open.get(func() prometheus.Gauge { return p.v.open.WithLabelValues(p.src, p.dst) })
}

func (p *promEdge) connOpened() {
	p.openGauge().Inc()
	p.conns.get(func() prometheus.Counter { return p.v.conns.WithLabelValues(p.src, p.dst) }).Inc()
}

func (p *promEdge) deny() {
	p.denied.get(func() prometheus.Counter { return p.v.denied.WithLabelValues(p.src, p.dst) }).Inc()
}

// lazy is a value made on first use. Racing makers may both run; one result
// wins. That is harmless here: WithLabelValues returns the same child.
type lazy[T any] struct{ p atomic.Pointer[T] }

func (l *lazy[T]) get(mk func() T) T {
	if p := l.p.Load(); p != nil {
		return *p
	}
	v := mk()
	l.p.CompareAndSwap(nil, &v)
	return *l.p.Load()
}
