package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The benchmarks use the real clock and a real Prometheus registry: the
// cost a proxy pays per request.

func BenchmarkRequest(b *testing.B) {
	r := New(prometheus.NewRegistry(), Options{})
	e, route := Edge{"web", "api"}, Route{"GET", "/users/42?full=1"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.Request(e, "m1", route, 200, false, time.Duration(1+i%50)*time.Millisecond, 512, 4096)
	}
}

// BenchmarkRequestParallel records from every P onto one edge and route,
// spread over four machines: the contended case.
func BenchmarkRequestParallel(b *testing.B) {
	r := New(prometheus.NewRegistry(), Options{})
	e, route := Edge{"web", "api"}, Route{"GET", "/users/42?full=1"}
	machines := []string{"m1", "m2", "m3", "m4"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			r.Request(e, machines[i%len(machines)], route, 200, false, time.Duration(1+i%50)*time.Millisecond, 512, 4096)
			i++
		}
	})
}

func BenchmarkApps(b *testing.B) {
	r := New(nil, Options{})
	for i := range 10000 {
		r.Request(Edge{"web", "api"}, "m1", Route{"GET", "/"}, 200, false, time.Duration(i)*time.Microsecond, 0, 0)
	}
	for b.Loop() {
		r.Apps(time.Minute)
	}
}
