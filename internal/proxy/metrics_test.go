package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sample is one series of a gathered registry: its labels and its value
// (a counter's or gauge's value, or a histogram's sample count).
type sample struct {
	labels map[string]string
	value  float64
}

// gather returns the series of metric name in reg.
func gather(t *testing.T, reg *prometheus.Registry, name string) []sample {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []sample
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				s.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.value = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				s.value = float64(m.GetHistogram().GetSampleCount())
			}
			out = append(out, s)
		}
	}
	return out
}

// value returns the value of the series of name with exactly labels, and
// whether it exists.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	for _, s := range gather(t, reg, name) {
		if len(s.labels) != len(labels) {
			continue
		}
		match := true
		for k, v := range labels {
			if s.labels[k] != v {
				match = false
			}
		}
		if match {
			return s.value, true
		}
	}
	return 0, false
}

// waitValue waits until the series of name with labels has value want: a
// request is counted when the proxy's handler returns, which the client
// may see its response before.
func waitValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got, ok := value(t, reg, name, labels)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v (present %v), want %v; series: %v", name, labels, got, ok, want, gather(t, reg, name))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMetricsCountRequestsByAppAndCode(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/teapot" {
			w.WriteHeader(http.StatusTeapot)
		}
	})))
	f.p.AddApp("idle")

	for _, path := range []string{"/", "/a", "/b", "/teapot"} {
		f.get(t, "web.apps.test", path)
	}
	f.get(t, "idle.apps.test", "/")    // 503 after WaitForBackend
	f.get(t, "unknown.apps.test", "/") // 404, no app

	const requests = "pier_http_requests_total"
	const latency = "pier_http_request_duration_seconds"
	waitValue(t, f.reg, latency, map[string]string{"app": "web"}, 4)
	waitValue(t, f.reg, latency, map[string]string{"app": "idle"}, 1)
	counts := []struct {
		app, code string
		want      float64
	}{
		{"web", "200", 3},
		{"web", "418", 1},
		{"idle", "503", 1},
	}
	for _, c := range counts {
		t.Run(c.app+"_"+c.code, func(t *testing.T) {
			got, ok := value(t, f.reg, requests, map[string]string{"app": c.app, "code": c.code})
			if !ok || got != c.want {
				t.Errorf("%s{app=%q,code=%q} = %v (present %v), want %v", requests, c.app, c.code, got, ok, c.want)
			}
		})
	}
	for app, want := range map[string]float64{"web": 4, "idle": 1} {
		if got, ok := value(t, f.reg, latency, map[string]string{"app": app}); !ok || got != want {
			t.Errorf("%s{app=%q} count = %v (present %v), want %v", latency, app, got, ok, want)
		}
	}
	// Hosts that name no app must not mint series: any client could
	// otherwise grow the registry by sending made-up Host headers.
	for _, name := range []string{requests, latency} {
		for _, s := range gather(t, f.reg, name) {
			if app := s.labels["app"]; app != "web" && app != "idle" {
				t.Errorf("%s has a series for app %q", name, app)
			}
		}
	}
	if got, ok := value(t, f.reg, "pier_http_requests_in_flight", map[string]string{"app": "web"}); !ok || got != 0 {
		t.Errorf("in-flight gauge for web after all requests ended = %v (present %v), want 0", got, ok)
	}
}

func TestMetricsInFlight(t *testing.T) {
	f := newFixture(t)
	a := newSlow("a")
	f.p.Add("web", "a", upstreamSlow(t, a))
	res := startSlow(f, "web.apps.test")
	recv(t, a.entered, "the slow request to reach the machine")
	if got, _ := value(t, f.reg, "pier_http_requests_in_flight", map[string]string{"app": "web"}); got != 1 {
		t.Errorf("in flight while a request is held = %v, want 1", got)
	}
	a.finish()
	<-res
	waitValue(t, f.reg, "pier_http_requests_in_flight", map[string]string{"app": "web"}, 0)
}

func TestMetricsClientGoneIs499(t *testing.T) {
	f := newFixture(t)
	a := newSlow("a")
	f.p.Add("web", "a", upstreamSlow(t, a))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/slow", nil)
	req.Host = "web.apps.test"
	errc := make(chan error, 1)
	go func() {
		resp, err := f.srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	recv(t, a.entered, "the slow request to reach the machine")
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("request succeeded after the client cancelled it")
	}
	waitValue(t, f.reg, "pier_http_requests_total", map[string]string{"app": "web", "code": "499"}, 1)
}

func TestMetricsForget(t *testing.T) {
	f := newFixture(t)
	f.p.Add("web", "m1", upstream(t, named("web")))
	f.p.Add("api", "m2", upstream(t, named("api")))
	f.get(t, "web.apps.test", "/")
	f.get(t, "api.apps.test", "/")
	waitValue(t, f.reg, "pier_http_request_duration_seconds", map[string]string{"app": "web"}, 1)
	waitValue(t, f.reg, "pier_http_request_duration_seconds", map[string]string{"app": "api"}, 1)
	f.p.metrics.Forget("web")
	for _, name := range []string{"pier_http_requests_total", "pier_http_request_duration_seconds", "pier_http_requests_in_flight"} {
		apps := map[string]bool{}
		for _, s := range gather(t, f.reg, name) {
			apps[s.labels["app"]] = true
		}
		if apps["web"] || !apps["api"] {
			t.Errorf("%s after Forget(web): apps %v, want api only", name, apps)
		}
	}
}
