package proxy

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's per-app golden signals.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inflight *prometheus.GaugeVec
}

// NewMetrics registers the proxy's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pier_http_requests_total",
			Help: "Requests served by the edge proxy, by app and status code.",
		}, []string{"app", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pier_http_request_duration_seconds",
			Help:    "Time from request arrival at the edge proxy to the end of the response, by app.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"app"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pier_http_requests_in_flight",
			Help: "Requests being proxied now, by app.",
		}, []string{"app"}),
	}
	reg.MustRegister(m.requests, m.latency, m.inflight)
	return m
}

func (m *Metrics) observe(app string, code int, d time.Duration) {
	m.requests.WithLabelValues(app, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(app).Observe(d.Seconds())
}

// Forget drops an app's series, e.g. when it is destroyed.
func (m *Metrics) Forget(app string) {
	m.requests.DeletePartialMatch(prometheus.Labels{"app": app})
	m.latency.DeleteLabelValues(app)
	m.inflight.DeleteLabelValues(app)
}
