package metrics

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func newProm(t *testing.T) (*Registry, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	clk := newClock()
	return New(reg, Options{Now: clk.Now}), reg
}

func record(r *Registry) {
	web, db := Edge{"web", "api"}, Edge{"worker", "db"}
	r.Request(web, "m1", Route{"GET", "/"}, 200, false, 3*time.Millisecond, 10, 100)
	r.Request(web, "m1", Route{"GET", "/"}, 200, false, 700*time.Millisecond, 10, 100)
	r.Request(web, "m2", Route{"GET", "/"}, 503, false, 20*time.Millisecond, 10, 0)
	r.Request(web, "m1", Route{"POST", "/rpc"}, 200, true, time.Millisecond, 5, 5)
	r.Request(web, "m1", Route{"GET", "/"}, 0, false, 10*time.Second, 0, 0)
	r.ConnOpened(db, "d1")
	r.ConnOpened(db, "d1")
	r.ConnClosed(db, "d1", time.Second, 300, 4000, false)
	r.Denied(Edge{"web", "admin"})
}

// scrape returns the sample lines of reg's text exposition, sorted.
func scrape(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	var lines []string
	for l := range strings.Lines(rec.Body.String()) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines
}

func TestExposition(t *testing.T) {
	r, reg := newProm(t)
	record(r)
	want := strings.Fields(`
pier_mesh_denied_total{dst_app="admin",src_app="web"} 1
pier_mesh_request_bytes_total{direction="in",dst_app="api",src_app="web"} 35
pier_mesh_request_bytes_total{direction="in",dst_app="db",src_app="worker"} 300
pier_mesh_request_bytes_total{direction="out",dst_app="api",src_app="web"} 205
pier_mesh_request_bytes_total{direction="out",dst_app="db",src_app="worker"} 4000
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.0005"} 0
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.001"} 1
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.0025"} 1
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.005"} 2
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.01"} 2
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.025"} 3
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.05"} 3
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.1"} 3
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.25"} 3
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="0.5"} 3
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="1"} 4
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="2.5"} 4
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="5"} 4
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="10"} 5
pier_mesh_request_duration_seconds_bucket{dst_app="api",src_app="web",le="+Inf"} 5
pier_mesh_request_duration_seconds_count{dst_app="api",src_app="web"} 5
pier_mesh_request_duration_seconds_sum{dst_app="api",src_app="web"} 10.724
pier_mesh_requests_total{dst_app="api",src_app="web",status_class="2xx"} 2
pier_mesh_requests_total{dst_app="api",src_app="web",status_class="5xx"} 1
pier_mesh_requests_total{dst_app="api",src_app="web",status_class="error"} 1
pier_mesh_requests_total{dst_app="api",src_app="web",status_class="grpc_error"} 1
pier_mesh_tcp_connections_open{dst_app="db",src_app="worker"} 1
pier_mesh_tcp_connections_total{dst_app="db",src_app="worker"} 2
`)
	// Fields split each line in two: name{labels} and value.
	var wantLines []string
	for i := 0; i < len(want); i += 2 {
		wantLines = append(wantLines, want[i]+" "+want[i+1])
	}
	slices.Sort(wantLines)
	if got := scrape(t, reg); !slices.Equal(got, wantLines) {
		t.Errorf("exposition:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantLines, "\n"))
	}
}

func TestForgetExposition(t *testing.T) {
	r, reg := newProm(t)
	record(r)
	r.Forget("api")
	r.Forget("db")

	want := []string{`pier_mesh_denied_total{dst_app="admin",src_app="web"} 1`}
	if got := scrape(t, reg); !slices.Equal(got, want) {
		t.Errorf("after Forget:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
